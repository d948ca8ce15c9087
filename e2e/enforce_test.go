package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/node"
	"github.com/midfs/midfs/node/enforce"
	"github.com/midfs/midfs/wire"
)

// What an enforcing node's sshd does with what the authority decides, with
// the real hook (midfs-node-hook) as sshd's AuthorizedPrincipalsCommand
// and its KRL as RevokedKeys. The test plays the node agent's part (answer
// the hook from the node's state, write the KRL, fetch the locks); `midfs
// node start` does that in production.

// hookNode is the node agent's part of enforcement, played by the test: a
// run directory sshd accepts (safeDir) with the hook's socket, answered
// from the state the test publishes.
type hookNode struct {
	hook, runDir string
	srv          *enforce.Hook
	logs         *testenv.LogBuffer // the refusals, with their reasons
}

func newHookNode(t testing.TB) *hookNode {
	t.Helper()
	dir := safeDir(t)
	h := &hookNode{hook: filepath.Join(dir, node.HookName), runDir: filepath.Join(dir, "run"), logs: &testenv.LogBuffer{}}
	if err := os.Mkdir(h.runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	nobody := lookupID(t, "passwd", enforce.HookUser)
	srv, err := enforce.ListenHook(h.runDir, func(uid uint32) bool { return uid == nobody }, time.Now, slog.New(slog.NewTextHandler(h.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	h.srv = srv
	return h
}

// publish makes st what logins are decided from: the hook's answers and
// sshd's KRL.
func (h *hookNode) publish(t testing.TB, st *enforce.State) {
	t.Helper()
	if err := enforce.Write(h.runDir, st); err != nil {
		t.Fatal(err)
	}
	h.srv.Set(st)
}

// sshdConfig is the sshd_config of an enforcing node: the hook (unless
// krlOnly) and the KRL.
func (h *hookNode) sshdConfig(krlOnly bool) string {
	cfg := "RevokedKeys " + filepath.Join(h.runDir, enforce.KRLFile) + "\n"
	if !krlOnly {
		cfg += fmt.Sprintf("AuthorizedPrincipalsCommand %s %s %%u %%k\nAuthorizedPrincipalsCommandUser %s\n",
			h.hook, filepath.Join(h.runDir, enforce.HookSocket), enforce.HookUser)
	}
	return cfg
}

// nodeState is the state of a node labelled labels, trusting a's user CA.
func nodeState(t testing.TB, a *authority, name string, labels map[string]string) *enforce.State {
	t.Helper()
	return &enforce.State{Cluster: cluster, Node: name, Labels: labels,
		UserCAs: []string{strings.TrimSpace(a.admin("auth", "export", "--type=user"))}, Fetched: time.Now()}
}

// fetchLocks gets the locks as a node agent does, here with the mount's
// identity (any identity of the cluster will do).
func fetchLocks(t testing.TB, a *authority, ag *agent) []wire.Lock {
	t.Helper()
	cert, err := tls.X509KeyPair(ag.read("tlscert"), ag.read("key"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ag.read("teleport-host-ca.crt")) {
		t.Fatal("no host CA in the mount")
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: wire.ServerName}}}
	resp, err := hc.Get("https://" + a.addr + wire.PathLocks)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %s %s", wire.PathLocks, resp.Status, body)
	}
	var list wire.LockList
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatal(err)
	}
	return list.Locks
}

func TestEnforcingSSHD(t *testing.T) {
	a := startAuthority(t)
	role := filepath.Join(t.TempDir(), "role.yaml")
	os.WriteFile(role, []byte(`kind: role
version: v7
metadata:
  name: not-prod
spec:
  allow:
    logins: ['{{internal.logins}}']
    node_labels:
      '*': '*'
  deny:
    node_labels:
      env: prod
`), 0o644)
	a.admin("create", "-f", role)
	ag := mountRobot(t, a, "not-prod", "root")
	hn := newHookNode(t)
	state := nodeState(t, a, "web", map[string]string{"env": "dev"})
	hn.publish(t, state)
	hooked := startSSHDWith(t, a, hn.sshdConfig(false), "web."+cluster, "web")
	krlOnly := startSSHDWith(t, a, hn.sshdConfig(true), "web2."+cluster, "web2")
	a.admin("nodes", "add", "web", "--addr="+hooked.addr(), "--labels=env=dev")
	a.admin("nodes", "add", "web2", "--addr="+krlOnly.addr(), "--labels=env=dev")
	mustRun(t, "renew", ag.dir)
	login := func(host string) error {
		t.Helper()
		out, err := sshRun(t, ag.dir, "root@"+host+"."+cluster, "true")
		if err != nil && !strings.Contains(out, "Permission denied (publickey)") {
			t.Fatalf("ssh %s: %v, not a refusal:\n%s", host, err, out)
		}
		return err
	}
	if err := login("web"); err != nil {
		t.Fatalf("login on a node the role allows: %v\nsshd:\n%s", err, tail(hooked.logs.String(), 10))
	}

	// The same node labelled env=prod: the role denies it, and the node
	// logs why.
	state.Labels = map[string]string{"env": "prod"}
	hn.publish(t, state)
	if login("web") == nil {
		t.Fatal("login on a node the bot's role denies succeeded")
	}
	if !strings.Contains(hn.logs.String(), "its roles do not allow node web (labels env=prod)") {
		t.Errorf("the refusal's reason was not logged:\n%s", hn.logs)
	}
	state.Labels = map[string]string{"env": "dev"}
	hn.publish(t, state)

	// A lock reaches the node with the next fetch and refuses the
	// certificate the bot already holds, in the hook and in sshd's KRL.
	out := a.admin("lock", "--bot=robot", "--message=e2e")
	id := regexp.MustCompile(`Created lock ([0-9a-f]+)`).FindStringSubmatch(out)
	if id == nil {
		t.Fatalf("lock printed:\n%s", out)
	}
	state.Locks, state.Fetched = fetchLocks(t, a, ag), time.Now()
	if len(state.Locks) != 1 || state.Locks[0].ID != id[1] {
		t.Fatalf("locks fetched: %+v", state.Locks)
	}
	hn.publish(t, state)
	for _, host := range []string{"web", "web2"} {
		if login(host) == nil {
			t.Errorf("%s let a locked bot in with a certificate of before the lock", host)
		}
	}
	if !strings.Contains(krlOnly.logs.String(), "revoked") {
		t.Errorf("sshd without the hook did not refuse by its KRL:\n%s", tail(krlOnly.logs.String(), 10))
	}
	a.admin("rm", "locks/"+id[1])
	state.Locks = fetchLocks(t, a, ag)
	hn.publish(t, state)
	for _, host := range []string{"web", "web2"} {
		if err := login(host); err != nil {
			t.Errorf("%s refused the bot after its lock was removed", host)
		}
	}
}
