package node_test

import (
	"context"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/iam/ststest"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/seal"
	"github.com/midfs/midfs/internal/pgtest"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/node"
	"github.com/midfs/midfs/node/enforce"
	"github.com/midfs/midfs/wire"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func quiet() *slog.Logger {
	if os.Getenv("MIDFS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func startAuthority(t *testing.T) *auth.Server {
	t.Helper()
	s, err := auth.Start(context.Background(), auth.Config{
		DataDir: filepath.Join(t.TempDir(), "auth"), Listen: "127.0.0.1:0", ClusterName: "node.example", Logger: quiet(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// config is a node's configuration with its state in dir: identity and
// host key in files there (dir:PATH storage, so the test leaves nothing in
// the machine's keyring), run directory and fragment there too.
func config(t *testing.T, s *auth.Server, dir, token string) node.Config {
	t.Helper()
	store, err := joiner.OpenStore("dir:"+dir, "id")
	if err != nil {
		t.Fatal(err)
	}
	hostStore, err := joiner.OpenStore("dir:"+dir, "host")
	if err != nil {
		t.Fatal(err)
	}
	return node.Config{
		Join: joiner.Config{AuthServer: s.Addr(), Token: token, CAPin: s.CAPin(), Store: store, Logger: quiet(),
			CertTTL: time.Minute, RenewInterval: 30 * time.Second, JoinTimeout: 10 * time.Second},
		Name: "web", Addr: "127.0.0.1:1", Labels: map[string]string{"env": "dev", "team": "web"},
		RunDir: filepath.Join(dir, "run"), SSHDConfig: filepath.Join(dir, "midfs-node.conf"),
		// A path sshd would run; not run here.
		Hook:         "/usr/bin/true",
		HostKeyStore: hostStore,
	}
}

func nodeToken(t *testing.T, s *auth.Server, labels map[string]string) string {
	t.Helper()
	nt, err := s.AddNodeToken(context.Background(), admin.NodeTokenSpec{Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	return nt.Token
}

func readCert(t *testing.T, path string) *ssh.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*ssh.Certificate)
}

// Start joins and leaves sshd everything it needs: the run directory's
// files, the enforcement state (labels as the authority sees the node, the
// user CA), and a fragment that names only files that exist and that the
// real sshd accepts. The node is online with its token's labels. A
// renewal gives a new certificate for the same host key; a restart needs
// no token and serves the same host key.
func TestStartServesSSHDAndRestartsWithoutToken(t *testing.T) {
	s := startAuthority(t)
	dir := t.TempDir()
	cfg := config(t, s, dir, nodeToken(t, s, map[string]string{"env": "prod"}))
	a, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if a.Printed != "Include "+cfg.SSHDConfig {
		t.Errorf("Include line %q", a.Printed)
	}
	run := cfg.RunDir
	cert := readCert(t, filepath.Join(run, node.FileHostCert))
	if !slices.Equal(cert.ValidPrincipals, []string{"web.node.example", "web"}) || cert.CertType != ssh.HostCert {
		t.Fatalf("host certificate for %v", cert.ValidPrincipals)
	}
	hostPub, _ := os.ReadFile(filepath.Join(run, node.FileHostKey))
	if !strings.HasPrefix(string(hostPub), string(ssh.MarshalAuthorizedKey(cert.Key))[:40]) {
		t.Fatalf("host_key.pub %q is not the certificate's key", hostPub)
	}
	// sshd signs with the host key through the socket.
	conn, err := net.Dial("unix", filepath.Join(run, node.FileAgentSocket))
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("session id and the rest of the key exchange")
	sig, err := agent.NewClient(conn).Sign(cert.Key, data)
	conn.Close()
	if err != nil || cert.Key.Verify(data, sig) != nil {
		t.Fatalf("signing with the host key through the socket: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(run, node.FileAgentSocket)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("agent socket: %v %v; want 0600, for root only", fi.Mode(), err)
	}
	st, err := enforce.Load(run)
	if err != nil || st.Node != "web" || st.Cluster != "node.example" || st.Labels["env"] != "prod" || st.Labels["team"] != "web" || len(st.UserCAs) != 1 {
		t.Fatalf("enforcement state %+v %v; want the token's env=prod over the node's own", st, err)
	}
	frag, err := os.ReadFile(cfg.SSHDConfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"HostKeyAgent " + run + "/agent.sock", "HostKey " + run + "/host_key\n", "HostCertificate " + run + "/host_key-cert.pub",
		"TrustedUserCAKeys " + run + "/user_ca.pub", "RevokedKeys " + run + "/revoked.krl",
		"AuthorizedPrincipalsCommand /usr/bin/true " + run + "/authorize.sock %u %k", "AuthorizedPrincipalsCommandUser nobody"} {
		if !strings.Contains(string(frag), want) {
			t.Errorf("fragment lacks %q:\n%s", want, frag)
		}
	}
	if sshd, err := exec.LookPath("/usr/sbin/sshd"); err == nil {
		main := filepath.Join(dir, "sshd_config")
		os.WriteFile(main, []byte("Include "+cfg.SSHDConfig+"\nPort 2\nUsePAM no\n"), 0o600)
		os.MkdirAll("/run/sshd", 0o755)
		if out, err := exec.Command(sshd, "-t", "-f", main).CombinedOutput(); err != nil {
			t.Errorf("sshd -t refuses a config that includes the fragment: %v\n%s", err, out)
		}
	}
	res, err := s.Get(context.Background(), policy.KindNode, "web")
	if err != nil || !res.Nodes[0].Status.Online || !res.Nodes[0].Status.Enforcing {
		t.Fatalf("get nodes/web: %+v %v", res, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	a.RenewNow()
	deadline := time.Now().Add(30 * time.Second)
	for readCert(t, filepath.Join(run, node.FileHostCert)).Serial == cert.Serial {
		if time.Now().After(deadline) {
			t.Fatal("RenewNow renewed nothing")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if c := readCert(t, filepath.Join(run, node.FileHostCert)); string(c.Key.Marshal()) != string(cert.Key.Marshal()) {
		t.Fatal("the renewal changed the host key: sshd would need a reload")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	again := config(t, s, dir, "")
	b, err := node.Start(context.Background(), again)
	if err != nil {
		t.Fatalf("restart without a token: %v", err)
	}
	defer b.Close()
	if b.Printed != "" {
		t.Errorf("the restart wrote the fragment anew: %q", b.Printed)
	}
	if c := readCert(t, filepath.Join(run, node.FileHostCert)); string(c.Key.Marshal()) != string(cert.Key.Marshal()) {
		t.Fatal("the restart changed the host key")
	}
}

// What cannot work is refused before anything is contacted or written,
// with one line: a fragment path sshd_config cannot name or that cannot
// be written, a hook binary sshd would not run, bad labels.
func TestStartRefusesWhatCannotWork(t *testing.T) {
	s := startAuthority(t)
	tok := nodeToken(t, s, nil)
	bin := filepath.Join(t.TempDir(), "midfs") // under /tmp, which everyone may write
	os.WriteFile(bin, nil, 0o755)
	for _, c := range []struct {
		name string
		mod  func(*node.Config)
		want string
	}{
		{"fragment path with a space", func(c *node.Config) { c.SSHDConfig = filepath.Join(t.TempDir(), "a b.conf") }, "--sshd-config"},
		{"fragment in a missing directory", func(c *node.Config) { c.SSHDConfig = filepath.Join(t.TempDir(), "no", "x.conf") }, "--sshd-config"},
		{"fragment path is a directory", func(c *node.Config) { c.SSHDConfig = t.TempDir() }, "directory"},
		{"run dir relative", func(c *node.Config) { c.RunDir = "run" }, "--run-dir"},
		{"hook binary under /tmp", func(c *node.Config) { c.Hook = bin }, "root owns"},
		{"hook not installed", func(c *node.Config) { c.Hook = "/usr/bin/midfs-node-hook-none" }, "installed beside midfs"},
		{"bad label", func(c *node.Config) { c.Labels = map[string]string{"env": "a b"} }, "--labels"},
		{"bad name", func(c *node.Config) { c.Name = "web_1.-x" }, "--name"},
		{"both reloads", func(c *node.Config) { c.SSHDPidFile, c.SSHDUnit = "/run/sshd.pid", "ssh" }, "not both"},
	} {
		dir := t.TempDir()
		cfg := config(t, s, dir, tok)
		c.mod(&cfg)
		_, err := node.Start(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v; want one line naming %q", c.name, err, c.want)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: left %v in the node's directory", c.name, ents)
		}
	}
	// None of them spent the token.
	a, err := node.Start(context.Background(), config(t, s, t.TempDir(), tok))
	if err != nil {
		t.Fatalf("join after the refused starts: %v", err)
	}
	a.Close()
}

// While the authority is down the node agent keeps serving sshd what it
// has and says it is failing; once the authority is back it recovers by
// itself, with the same identity.
func TestRunRidesOutTheAuthorityGoingAway(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "auth")
	start := func(listen string) *auth.Server {
		s, err := auth.Start(context.Background(), auth.Config{DataDir: dataDir, Listen: listen, ClusterName: "node.example", Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := start("127.0.0.1:0")
	addr := s.Addr()
	dir := t.TempDir()
	cfg := config(t, s, dir, nodeToken(t, s, nil))
	cfg.HeartbeatInterval = time.Second
	a := runNode(t, cfg)
	s.Close()
	waitUntil(t, "the node agent to notice the authority is gone", func() bool { return a.Status().Failing })
	conn, err := net.Dial("unix", filepath.Join(cfg.RunDir, node.FileAgentSocket))
	if err != nil {
		t.Fatalf("the host key is no longer served while the authority is down: %v", err)
	}
	keys, err := agent.NewClient(conn).List()
	conn.Close()
	if err != nil || len(keys) == 0 {
		t.Fatalf("agent socket while the authority is down: %v %v", keys, err)
	}
	s = start(addr)
	defer s.Close()
	waitUntil(t, "the node agent to recover", func() bool { return !a.Status().Failing })
	a.RenewNow()
	before := a.Status().LastRenewal
	waitUntil(t, "a renewal after the authority came back", func() bool { return a.Status().LastRenewal.After(before) })
}

// runNode starts a node agent and runs it until the test ends.
func runNode(t *testing.T, cfg node.Config) *node.Agent {
	t.Helper()
	a, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go a.Run(ctx)
	return a
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A node given several replicas' addresses joins through the first, and
// when that one goes away heartbeats and renews through another: the
// replicas share one PostgreSQL state, so the node stays online and
// its host certificate renews.
func TestRunFailsOverToAnotherReplica(t *testing.T) {
	url := pgtest.Shared(t).NewURL(t)
	_, raw := seal.Generate()
	sealFile := filepath.Join(t.TempDir(), "ca-key-seal")
	if err := os.WriteFile(sealFile, []byte(hex.EncodeToString(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	replica := func() *auth.Server {
		s, err := auth.Start(context.Background(), auth.Config{DataDir: t.TempDir(), DB: url, CAKeySeal: sealFile,
			Listen: "127.0.0.1:0", ClusterName: "node.example", Logger: quiet()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	first, second := replica(), replica()
	dir := t.TempDir()
	cfg := config(t, first, dir, nodeToken(t, first, nil))
	cfg.Join.AuthServer = first.Addr() + "," + second.Addr()
	cfg.HeartbeatInterval = time.Second
	a := runNode(t, cfg)
	first.Close()

	a.RenewNow()
	before := a.Status().LastRenewal
	waitUntil(t, "a renewal through the second replica", func() bool { return a.Status().LastRenewal.After(before) && !a.Status().Failing })
	// Online by the second replica's reckoning, past the stay of any
	// heartbeat the first one took (1.5 intervals).
	gone := time.Now().Add(2 * time.Second)
	waitUntil(t, "the node online through the second replica after the first's last heartbeat ran out", func() bool {
		res, err := second.Get(context.Background(), policy.KindNode, "web")
		return time.Now().After(gone) && err == nil && res.Nodes[0].Status.Online
	})
}

// A node joins by IAM with an iam token of role Node, against a real
// authority whose STS is the stand-in: it serves sshd as a token-joined
// node does, with the token's labels; a renewal joins again through IAM
// (STS sees it) while the node is online, keeping its name and host key;
// a restart presents the identity it kept and joins again, no new token.
func TestStartJoinsWithIAMAndJoinsAgain(t *testing.T) {
	caller := ststest.Caller{AccessKeyID: "ASIANODEIAMTEST00001", SecretAccessKey: "node-iam-secret", SessionToken: "node-iam-session",
		Account: "111111111111", Arn: "arn:aws:sts::111111111111:assumed-role/midfs-bot/i-0fedcba9876543210"}
	sts := ststest.Start(caller)
	t.Cleanup(sts.Close)
	s, err := auth.Start(context.Background(), auth.Config{
		DataDir: filepath.Join(t.TempDir(), "auth"), Listen: "127.0.0.1:0", ClusterName: "node.example", Logger: quiet(),
		STSEndpoint: sts.URL, InsecureTestMode: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	if _, err := s.CreateYAML(context.Background(), []byte(testenv.IAMNodeTokenYAML), false); err != nil {
		t.Fatal(err)
	}
	testenv.IsolateAWS(t)
	t.Setenv("AWS_ACCESS_KEY_ID", caller.AccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", caller.SecretAccessKey)
	t.Setenv("AWS_SESSION_TOKEN", caller.SessionToken)
	t.Setenv("AWS_REGION", "us-east-1")
	verified := func() int {
		n := 0
		for _, r := range sts.Results() {
			if r.Status == 200 {
				n++
			}
		}
		return n
	}

	dir := t.TempDir()
	cfg := config(t, s, dir, "iam-nodes")
	cfg.Join.JoinMethod = wire.JoinIAM
	a, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	run := cfg.RunDir
	cert := readCert(t, filepath.Join(run, node.FileHostCert))
	if !slices.Equal(cert.ValidPrincipals, []string{"web.node.example", "web"}) {
		t.Fatalf("host certificate for %v", cert.ValidPrincipals)
	}
	if st, err := enforce.Load(run); err != nil || st.Labels["env"] != "prod" || st.Labels["team"] != "web" {
		t.Fatalf("enforcement state %+v %v; want the token's env=prod over the node's own", st, err)
	}
	online := func() bool {
		res, err := s.Get(context.Background(), policy.KindNode, "web")
		return err == nil && res.Nodes[0].Status.Online && res.Nodes[0].Status.Enforcing
	}
	if !online() || verified() != 1 {
		t.Fatalf("after the IAM join: online %v, STS verified %d joins", online(), verified())
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	a.RenewNow()
	waitUntil(t, "a renewal (an IAM join again, then a host certificate)", func() bool {
		return readCert(t, filepath.Join(run, node.FileHostCert)).Serial != cert.Serial
	})
	if c := readCert(t, filepath.Join(run, node.FileHostCert)); string(c.Key.Marshal()) != string(cert.Key.Marshal()) {
		t.Fatal("the renewal changed the host key")
	}
	if verified() != 2 || !online() || a.Status().Failing {
		t.Errorf("after joining again: STS verified %d joins (want 2), online %v, failing %v (%s)", verified(), online(), a.Status().Failing, a.Status().LastError)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Restarted while the node is still online under its name.
	b, err := node.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer b.Close()
	if c := readCert(t, filepath.Join(run, node.FileHostCert)); string(c.Key.Marshal()) != string(cert.Key.Marshal()) {
		t.Fatal("the restart changed the host key")
	}
	if verified() != 3 || b.Printed != "" {
		t.Errorf("restart: STS verified %d joins (want 3), fragment written anew %q", verified(), b.Printed)
	}
}
