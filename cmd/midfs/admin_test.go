package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/wire"
)

const testCluster = "test.example.com"

// startAuth runs an authority in this process, on loopback, with its state
// in a temp dir; the CLI reaches it over its real admin socket.
func startAuth(t *testing.T) *auth.Server {
	t.Helper()
	s, err := auth.Start(context.Background(), auth.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", ClusterName: testCluster,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type cliResult struct {
	out  string
	code int
	err  string
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d, err %q, out:\n%s", r.code, r.err, r.out)
}

// runCLI runs the midfs command line in this process, as main would, with
// --data-dir appended when dataDir is set.
func runCLI(t *testing.T, dataDir string, args ...string) cliResult {
	t.Helper()
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	full := append([]string{"midfs"}, args...)
	if dataDir != "" {
		full = append(full, "--data-dir", dataDir)
	}
	err := app.Run(cliconfig.PermuteArgs(app, full))
	r := cliResult{out: out.String()}
	if err != nil {
		r.code, r.err = exitFailure, err.Error()
		if e, ok := err.(*exitError); ok {
			r.code = e.code
		}
	}
	return r
}

func mustCLI(t *testing.T, dataDir string, args ...string) string {
	t.Helper()
	r := runCLI(t, dataDir, args...)
	if r.code != 0 {
		t.Fatalf("midfs %s: %s", strings.Join(args, " "), r)
	}
	return r.out
}

func TestBotsAddFlagsAfterName(t *testing.T) {
	got := cliconfig.PermuteArgs(newApp(), []string{"midfs", "bots", "add", "robot", "--roles=access", "--logins=root"})
	want := []string{"midfs", "bots", "add", "--roles=access", "--logins=root", "robot"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PermuteArgs = %q, want %q", got, want)
	}

	s := startAuth(t)
	dir := s.DataDir()
	out := mustCLI(t, "", "bots", "add", "robot", "--roles=access", "--logins=root", "--data-dir", dir)
	for _, want := range []string{"The bot token: ", "expire in 60 minutes", "The CA pin: " + s.CAPin(),
		" | midfs mount /opt/machine-id --auth-server=" + s.AdvertiseAddr() + " --token=- --ca-pin=" + s.CAPin()} {
		if !strings.Contains(out, want) {
			t.Errorf("bots add output lacks %q:\n%s", want, out)
		}
	}
	// The token goes in through a pipe from the shell's echo builtin, never
	// in the argv of a process that other users could read.
	if m := regexp.MustCompile(`(?m)^echo ([0-9a-f]+) \| midfs mount `).FindStringSubmatch(out); m == nil || len(m[1]) != 64 {
		t.Errorf("no 256-bit token piped into the mount command:\n%s", out)
	}
	if regexp.MustCompile(`--token=[0-9a-f]{64}`).MatchString(out) {
		t.Errorf("the printed command puts the token in argv:\n%s", out)
	}
	bots, err := s.Bots(context.Background())
	if err != nil || len(bots) != 1 || !reflect.DeepEqual(bots[0].Spec.Roles, []string{"access"}) ||
		len(bots[0].Spec.Traits) != 1 || !reflect.DeepEqual(bots[0].Spec.Traits[0].Values, []string{"root"}) {
		t.Errorf("bot as stored: %+v %v", bots, err)
	}
	ls := mustCLI(t, dir, "bots", "ls")
	if !regexp.MustCompile(`robot\s+access\s+root\s+0\s+not joined yet`).MatchString(ls) {
		t.Errorf("bots ls:\n%s", ls)
	}
	// MIDFS_DATA_DIR selects the authority too.
	t.Setenv("MIDFS_DATA_DIR", dir)
	if st := mustCLI(t, "", "status"); !regexp.MustCompile(`CA pin +`+s.CAPin()).MatchString(st) || !strings.Contains(st, testCluster) {
		t.Errorf("status via MIDFS_DATA_DIR:\n%s", st)
	}
}

func TestAdminErrors(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	r := runCLI(t, t.TempDir(), "status")
	if r.code != exitAuthority || !strings.Contains(r.err, "midfs auth start") {
		t.Errorf("status without an authority: %s", r)
	}
	if r := runCLI(t, dir, "bots", "add", "ghost", "--roles=nope"); r.code == 0 || !strings.Contains(r.err, "nope") {
		t.Errorf("unknown role: %s", r)
	}
	if r := runCLI(t, dir, "bots", "add", "ghost"); r.code != exitUsage || !strings.Contains(r.err, "--roles") {
		t.Errorf("no roles: %s", r)
	}
	if strings.Contains(mustCLI(t, dir, "bots", "ls"), "ghost") {
		t.Error("a bot was made despite the errors")
	}
	if r := runCLI(t, dir, "get", "widgets"); r.code != exitUsage {
		t.Errorf("get widgets: %s", r)
	}
	if r := runCLI(t, dir, "rm", "roles"); r.code != exitUsage {
		t.Errorf("rm without a name: %s", r)
	}
	if r := runCLI(t, dir, "rm", "roles/access"); r.code != 0 {
		t.Errorf("rm of a role that no bot uses should work, got %s", r)
	}
	mustCLI(t, dir, "bots", "add", "robot", "--roles=editor")
	if r := runCLI(t, dir, "rm", "roles/editor"); r.code == 0 || !strings.Contains(r.err, "robot") {
		t.Errorf("rm of a role in use: %s", r)
	}
	if r := runCLI(t, dir, "auth", "export", "--type=nope"); r.code == 0 {
		t.Errorf("export of an unknown type: %s", r)
	}
	if r := runCLI(t, dir, "nodes", "add", "n1", "--addr=nope"); r.code == 0 || !strings.Contains(r.err, "HOST:PORT") {
		t.Errorf("node with a bad address: %s", r)
	}
}

func TestCreateAndGet(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	tmp := t.TempDir()
	bad := filepath.Join(tmp, "bad.yaml")
	os.WriteFile(bad, []byte("kind: role\nversion: v7\nmetadata:\n  name: dev\nspec:\n  allow:\n    logins: [a\n"), 0o644)
	r := runCLI(t, dir, "create", "-f", bad)
	if r.code == 0 || !strings.Contains(r.err, "line") || !strings.Contains(r.err, "bad.yaml") || !strings.Contains(r.err, "nothing was stored") {
		t.Errorf("malformed YAML: %s", r)
	}
	typo := filepath.Join(tmp, "typo.yaml")
	os.WriteFile(typo, []byte("kind: role\nversion: v7\nmetadata:\n  name: dev\nspec:\n  allow:\n    login: [root]\n"), 0o644)
	if r := runCLI(t, dir, "create", "-f", typo); r.code == 0 || !strings.Contains(r.err, "line 7") {
		t.Errorf("unknown field: %s", r)
	}
	// Two documents, the second broken: neither is stored.
	two := filepath.Join(tmp, "two.yaml")
	os.WriteFile(two, []byte("kind: role\nmetadata:\n  name: ok1\nspec: {}\n---\nkind: token\nversion: v2\nmetadata:\n  name: t1\nspec:\n  bot_name: b\n  join_method: iam\n"), 0o644)
	if r := runCLI(t, dir, "create", "-f", two); r.code == 0 || !strings.Contains(r.err, "allow rule") {
		t.Errorf("iam token without allow rules: %s", r)
	}
	if strings.Contains(mustCLI(t, dir, "get", "roles"), "ok1") {
		t.Error("a role was stored from a file whose other document failed")
	}

	good := filepath.Join(tmp, "good.yaml")
	os.WriteFile(good, []byte(`kind: role
version: v7
metadata:
  name: web
spec:
  allow:
    logins: [web, '{{internal.logins}}']
    node_labels:
      group: [web, api]
      env: staging
    rules:
      - resources: [node]
        verbs: [list]
---
kind: token
version: v2
metadata:
  name: example-bot
spec:
  roles: [Bot]
  bot_name: example
  join_method: iam
  allow:
    - aws_account: "111111111111"
      aws_arn: "arn:aws:sts::111111111111:assumed-role/teleport-bot-role/i-*"
`), 0o644)
	out := mustCLI(t, dir, "create", "-f", good)
	if !strings.Contains(out, "role/web created") || !strings.Contains(out, "token/example-bot created") {
		t.Errorf("create: %s", out)
	}
	if r := runCLI(t, dir, "create", "-f", good); r.code == 0 || !strings.Contains(r.err, "--force") {
		t.Errorf("create again without --force: %s", r)
	}
	if out := mustCLI(t, dir, "create", "-f", good, "--force"); !strings.Contains(out, "role/web updated") {
		t.Errorf("create --force: %s", out)
	}

	roles := mustCLI(t, dir, "get", "roles", "--format=text")
	for _, want := range []string{"Role", "Allowed to login as", "Node Labels", "Access to resources",
		"access", "editor", "auditor", "<all nodes>", "{{internal.logins}}", "env=staging,group=web|api", "node:list", "event:list,read"} {
		if !strings.Contains(roles, want) {
			t.Errorf("roles table lacks %q:\n%s", want, roles)
		}
	}
	// YAML out reads back in.
	y := mustCLI(t, dir, "get", "roles/web", "--format=yaml")
	if !strings.Contains(y, "env: staging") {
		t.Errorf("role YAML:\n%s", y)
	}
	if res, err := policy.ParseResources([]byte(y)); err != nil || len(res.Roles) != 1 || res.Roles[0].Metadata.Name != "web" {
		t.Errorf("get --format=yaml does not parse back: %v", err)
	}
	var js []map[string]any
	if err := json.Unmarshal([]byte(mustCLI(t, dir, "get", "tokens", "--format=json")), &js); err != nil || len(js) != 1 {
		t.Errorf("tokens JSON: %v %v", js, err)
	}
	// Binding a bot to the delegated token prints the iam command.
	out = mustCLI(t, dir, "bots", "add", "example", "--roles=web", "--token=example-bot")
	if !strings.Contains(out, "--join-method=iam --token=example-bot --ca-pin="+s.CAPin()) {
		t.Errorf("bots add --token:\n%s", out)
	}
	if r := runCLI(t, dir, "bots", "add", "other", "--roles=web", "--token=example-bot"); r.code == 0 || !strings.Contains(r.err, `"example"`) {
		t.Errorf("binding a token to the wrong bot: %s", r)
	}
	mustCLI(t, dir, "rm", "tokens/example-bot")
	if strings.Contains(mustCLI(t, dir, "get", "tokens"), "example-bot") {
		t.Error("rm tokens/NAME left the token")
	}
	// An iam token of nodes: no bot, the labels its nodes get.
	nodesTok := filepath.Join(tmp, "iam-nodes.yaml")
	os.WriteFile(nodesTok, []byte(testenv.IAMNodeTokenYAML), 0o644)
	mustCLI(t, dir, "create", "-f", nodesTok)
	if out := mustCLI(t, dir, "get", "tokens"); !regexp.MustCompile(`iam-nodes\s+node iam\s+env=prod\s+never\s+reusable`).MatchString(out) {
		t.Errorf("get tokens:\n%s", out)
	}
	if r := runCLI(t, dir, "bots", "add", "other", "--roles=web", "--token=iam-nodes"); r.code == 0 || !strings.Contains(r.err, "joins nodes") {
		t.Errorf("binding a bot to a token of nodes: %s", r)
	}
	mustCLI(t, dir, "nodes", "add", "node-name", "--addr=127.0.0.1:3022", "--labels=arch=x86_64,group=api-servers")
	if out := mustCLI(t, dir, "get", "nodes"); !regexp.MustCompile(`node-name\s+127.0.0.1:3022\s+arch=x86_64,group=api-servers`).MatchString(out) {
		t.Errorf("get nodes:\n%s", out)
	}
	mustCLI(t, dir, "nodes", "rm", "node-name")
	if strings.Contains(mustCLI(t, dir, "get", "nodes"), "node-name") {
		t.Error("nodes rm left the node")
	}
}

// TestSSHDTrustsExportAndSign: a real sshd accepts the host certificate of
// `auth sign` and a user certificate signed by the CA of `auth export
// --type=user`, and a real ssh client checks the host against the
// @cert-authority line of `auth export --type=host`.
func TestSSHDTrustsExportAndSign(t *testing.T) {
	sshd, err := exec.LookPath("/usr/sbin/sshd")
	if err != nil {
		t.Fatal("sshd not installed (.ci/run installs openssh-server)")
	}
	s := startAuth(t)
	dir := s.DataDir()
	tmp := t.TempDir()
	host := "node.test.example.com"
	out := mustCLI(t, dir, "auth", "sign", "--host="+host+",node", "--format=openssh", "--out="+filepath.Join(tmp, "host"))
	if !strings.Contains(out, "host-cert.pub") {
		t.Errorf("auth sign: %s", out)
	}
	if fi, err := os.Stat(filepath.Join(tmp, "host")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("host key file: %v %v", fi, err)
	}
	info, err := exec.Command("ssh-keygen", "-L", "-f", filepath.Join(tmp, "host-cert.pub")).CombinedOutput()
	if err != nil || !strings.Contains(string(info), "host certificate") || !strings.Contains(string(info), host) {
		t.Fatalf("ssh-keygen -L of the host cert: %v\n%s", err, info)
	}
	// The private key is what ssh-keygen reads, and matches the .pub file.
	pub, err := exec.Command("ssh-keygen", "-y", "-f", filepath.Join(tmp, "host")).Output()
	pubFile, _ := os.ReadFile(filepath.Join(tmp, "host.pub"))
	if err != nil || strings.Fields(string(pub))[1] != strings.Fields(string(pubFile))[1] {
		t.Fatalf("ssh-keygen -y of the host key: %v", err)
	}
	// --out writes what is printed, replacing the file whole.
	userCA := filepath.Join(tmp, "user_ca.pub")
	os.WriteFile(userCA, []byte("old\n"), 0o600)
	if out := mustCLI(t, dir, "auth", "export", "--type=user", "--out="+userCA); out != "wrote "+userCA+"\n" {
		t.Errorf("auth export --out printed %q", out)
	}
	if got, err := os.ReadFile(userCA); err != nil || string(got) != mustCLI(t, dir, "auth", "export", "--type=user") {
		t.Errorf("auth export --out wrote %q, %v; want what it prints", got, err)
	}
	if fi, err := os.Stat(userCA); err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf("auth export --out: mode %v, %v; want 0644 (sshd reads it)", fi.Mode(), err)
	}
	if r := runCLI(t, dir, "auth", "export", "--type=user", "--out="+filepath.Join(tmp, "no", "dir")); r.code == 0 || r.err == "" || strings.Contains(strings.TrimSpace(r.err), "\n") {
		t.Errorf("auth export --out into a missing directory: %s", r)
	}
	os.WriteFile(filepath.Join(tmp, "known_hosts"), []byte(mustCLI(t, dir, "auth", "export", "--type=host")), 0o644)
	for _, typ := range []string{"tls-user", "tls-host", "db"} {
		p := filepath.Join(tmp, typ+".pem")
		os.WriteFile(p, []byte(mustCLI(t, dir, "auth", "export", "--type="+typ)), 0o644)
		if out, err := exec.Command("openssl", "x509", "-in", p, "-noout", "-subject").CombinedOutput(); err != nil || !strings.Contains(string(out), testCluster) {
			t.Errorf("openssl x509 of export --type=%s: %v %s", typ, err, out)
		}
	}

	port := freeTCPPort(t)
	cfg := fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %[2]s/host\nHostCertificate %[2]s/host-cert.pub\n"+
		"TrustedUserCAKeys %[2]s/user_ca.pub\nAuthorizedKeysFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"+
		"PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\nPidFile %[2]s/sshd.pid\n", port, tmp)
	cfgPath := filepath.Join(tmp, "sshd_config")
	os.WriteFile(cfgPath, []byte(cfg), 0o600)
	os.MkdirAll("/run/sshd", 0o755)
	if out, err := exec.Command(sshd, "-t", "-f", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t: %v\n%s", err, out)
	}
	srv := exec.Command(sshd, "-D", "-e", "-f", cfgPath)
	var logs bytes.Buffer
	srv.Stderr = &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
			c.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	login := func(bot string, logins string, user string) (string, error) {
		bt, err := s.AddBot(context.Background(), admin.BotSpec{Name: bot, Roles: []string{"access"}, Logins: splitList(logins)})
		if err != nil {
			t.Fatal(err)
		}
		writeOutputIdentity(t, s, bt.Token, filepath.Join(tmp, bot))
		ssh := exec.Command("ssh", "-F", "none", "-i", filepath.Join(tmp, bot, "key"),
			"-o", "CertificateFile="+filepath.Join(tmp, bot, "key-cert.pub"),
			"-o", "UserKnownHostsFile="+filepath.Join(tmp, "known_hosts"), "-o", "GlobalKnownHostsFile=/dev/null",
			"-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias="+host, "-o", "BatchMode=yes",
			"-o", "IdentityAgent=none", "-o", "IdentitiesOnly=yes", "-p", strconv.Itoa(port), user+"@127.0.0.1", "echo", "logged-in-as-$(id -un)")
		out, err := ssh.CombinedOutput()
		return string(out), err
	}
	if out, err := login("robot", "root", "root"); err != nil || !strings.Contains(out, "logged-in-as-root") {
		t.Fatalf("ssh with the bot's certificate: %v\n%s\nsshd:\n%s", err, out, logs.String())
	}
	// A login the bot's roles do not allow is refused by sshd.
	if out, err := login("nologin", "", "root"); err == nil {
		t.Errorf("a bot without logins got in as root:\n%s", out)
	}
}

// writeOutputIdentity joins with token and writes the output identity's
// key and SSH certificate into dir, as the mount would serve them.
func writeOutputIdentity(t *testing.T, s *auth.Server, token, dir string) {
	t.Helper()
	os.MkdirAll(dir, 0o700)
	pool := x509.NewCertPool()
	pool.AddCert(hostCA(t, s))
	call := func(key *ecdsa.PrivateKey, cert []byte, path string, in, out any) {
		conf := &tls.Config{ServerName: wire.ServerName, RootCAs: pool}
		if key != nil {
			conf.Certificates = []tls.Certificate{{Certificate: [][]byte{cert}, PrivateKey: key}}
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
		defer hc.CloseIdleConnections()
		b, _ := json.Marshal(in)
		resp, err := hc.Post("https://"+s.Addr()+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s %s", path, resp.Status, body)
		}
		if err := json.Unmarshal(body, out); err != nil {
			t.Fatal(err)
		}
	}
	botKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	botPub, _ := x509.MarshalPKIXPublicKey(botKey.Public())
	var bi wire.BotIdentity
	call(nil, nil, wire.PathJoin, wire.JoinRequest{Token: token, PublicKey: botPub}, &bi)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	var certs wire.Certs
	call(botKey, bi.TLSCert, wire.PathCerts, wire.CertsRequest{PublicKey: pub}, &certs)
	keyPEM, err := identity.MarshalPrivateKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "key"), keyPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "key-cert.pub"), []byte(certs.SSHCert), 0o644)
}

func hostCA(t *testing.T, s *auth.Server) *x509.Certificate {
	t.Helper()
	pemText, err := s.Export(context.Background(), admin.ExportTLSHost)
	if err != nil {
		t.Fatal(err)
	}
	cas, err := identity.ParseCertsPEM([]byte(pemText))
	if err != nil || len(cas) != 1 {
		t.Fatalf("host CA PEM: %v", err)
	}
	return cas[0]
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestCreateRefusesYAMLOverOneMiB: parsing YAML takes tens of times its
// size in memory; create -f refuses more than 1 MiB, from a file or from
// standard input, with one line, and stores nothing.
func TestCreateRefusesYAMLOverOneMiB(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	big := filepath.Join(t.TempDir(), "big.yaml")
	doc := "kind: role\nversion: v7\nmetadata:\n  name: big\n  description: " + strings.Repeat("x", 1<<20) + "\nspec: {}\n"
	if err := os.WriteFile(big, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	stdin, err := os.Open(big)
	if err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	for _, args := range [][]string{{"create", "-f", big}, {"create", "-f", "-"}} {
		if args[2] == "-" {
			prev := os.Stdin
			os.Stdin = stdin
			defer func() { os.Stdin = prev }()
		}
		r := runCLI(t, dir, args...)
		if r.code != exitUsage || !strings.Contains(r.err, "larger than 1 MiB") || !strings.Contains(r.err, "nothing was stored") || strings.Contains(r.err, "\n") {
			t.Errorf("midfs %s with %d bytes: %s; want one line saying it is larger than 1 MiB", strings.Join(args, " "), len(doc), r)
		}
	}
	if strings.Contains(mustCLI(t, dir, "get", "roles"), "big") {
		t.Error("the role of the refused YAML was stored")
	}
}

// TestStatusAligns: every value of `midfs status` starts in one column,
// the CA pin's included.
func TestStatusAligns(t *testing.T) {
	s := startAuth(t)
	out := mustCLI(t, s.DataDir(), "status")
	lines := strings.Split(out, "\n")
	col := map[string]int{}
	for _, want := range []string{testCluster, s.Addr(), s.CAPin()} {
		for _, line := range lines {
			if i := strings.Index(line, want); i > 0 {
				col[want] = i
			}
		}
	}
	if len(col) != 3 || col[s.CAPin()] != col[testCluster] || col[s.Addr()] != col[testCluster] {
		t.Errorf("status: values start at columns %v, want one column:\n%s", col, out)
	}
}

// TestAuthSignKeepsTheHostKey: signing again keeps the host key at PREFIX
// and replaces only the certificate, so that an sshd reading both files
// at a connection never finds them unmatched; what is not a key midfs can
// sign is refused with one line, and nothing is written.
func TestAuthSignKeepsTheHostKey(t *testing.T) {
	s := startAuth(t)
	dir, tmp := s.DataDir(), t.TempDir()
	read := func(p string) string { b, _ := os.ReadFile(p); return string(b) }
	certKey := func(prefix string) string {
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(read(prefix + "-cert.pub")))
		if err != nil {
			t.Fatalf("%s-cert.pub: %v", prefix, err)
		}
		return string(ssh.MarshalAuthorizedKey(pub.(*ssh.Certificate).Key))
	}
	for _, alg := range []string{"ecdsa", "ed25519", "rsa"} {
		prefix := filepath.Join(tmp, alg)
		mustCLI(t, dir, "auth", "sign", "--host=a", "--key-algorithm="+alg, "--out="+prefix)
		key, cert := read(prefix), read(prefix+"-cert.pub")
		out := mustCLI(t, dir, "auth", "sign", "--host=a,b", "--out="+prefix)
		if !strings.HasPrefix(out, "kept the host key in "+prefix+";") {
			t.Errorf("%s: signing again printed %q", alg, out)
		}
		if read(prefix) != key {
			t.Errorf("%s: signing again replaced the host key", alg)
		}
		if read(prefix+"-cert.pub") == cert || certKey(prefix) != read(prefix+".pub") {
			t.Errorf("%s: signing again did not give a new certificate of the same key", alg)
		}
	}

	// Refused, and nothing written: another algorithm asked for by name,
	// and a file that is no private key.
	ecdsaKey, ecdsaCert := read(filepath.Join(tmp, "ecdsa")), read(filepath.Join(tmp, "ecdsa-cert.pub"))
	r := runCLI(t, dir, "auth", "sign", "--host=a", "--key-algorithm=ed25519", "--out="+filepath.Join(tmp, "ecdsa"))
	if r.code == 0 || !strings.Contains(r.err, "holds an ecdsa key, not ed25519") || strings.Contains(strings.TrimSpace(r.err), "\n") {
		t.Errorf("another algorithm than the key's: %s", r)
	}
	if read(filepath.Join(tmp, "ecdsa")) != ecdsaKey || read(filepath.Join(tmp, "ecdsa-cert.pub")) != ecdsaCert {
		t.Error("a refused sign changed the files")
	}
	junk := filepath.Join(tmp, "junk")
	os.WriteFile(junk, []byte("not a key\n"), 0o600)
	r = runCLI(t, dir, "auth", "sign", "--host=a", "--out="+junk)
	if r.code == 0 || !strings.Contains(r.err, "is not an unencrypted OpenSSH private key") || strings.Contains(strings.TrimSpace(r.err), "\n") {
		t.Errorf("a file that is no key at --out: %s", r)
	}
	if _, err := os.Stat(junk + "-cert.pub"); err == nil || read(junk) != "not a key\n" {
		t.Error("a refused sign wrote files")
	}
}
