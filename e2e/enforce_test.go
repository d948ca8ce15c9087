package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/node/enforce"
	"github.com/midfs/midfs/wire"
)

// What an enforcing node's sshd does with what the authority decides, with
// the real binary as sshd's AuthorizedPrincipalsCommand and its KRL as
// RevokedKeys. The test plays the node agent's part (write the node's
// state, fetch the locks); `midfs node start` does that in production.

// hookDir makes a directory sshd accepts for the hook (safeDir) with a
// run directory in it.
func hookDir(t testing.TB) (bin, runDir string) {
	t.Helper()
	dir := safeDir(t)
	runDir = filepath.Join(dir, "run")
	if err := os.Mkdir(runDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "midfs"), runDir
}

// enforcingConfig is the sshd_config of an enforcing node: the hook (if
// bin is set) and the KRL.
func enforcingConfig(bin, runDir string) string {
	cfg := "RevokedKeys " + filepath.Join(runDir, enforce.KRLFile) + "\n"
	if bin != "" {
		cfg += fmt.Sprintf("AuthorizedPrincipalsCommand %s node authorize --run-dir=%s %%u %%k\nAuthorizedPrincipalsCommandUser nobody\n", bin, runDir)
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
	bin, runDir := hookDir(t)
	state := nodeState(t, a, "web", map[string]string{"env": "dev"})
	if err := enforce.Write(runDir, state); err != nil {
		t.Fatal(err)
	}
	hooked := startSSHDWith(t, a, enforcingConfig(bin, runDir), "web."+cluster, "web")
	krlOnly := startSSHDWith(t, a, enforcingConfig("", runDir), "web2."+cluster, "web2")
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

	// The same node labelled env=prod: the role denies it.
	state.Labels = map[string]string{"env": "prod"}
	enforce.Write(runDir, state)
	if login("web") == nil {
		t.Fatal("login on a node the bot's role denies succeeded")
	}
	state.Labels = map[string]string{"env": "dev"}
	enforce.Write(runDir, state)

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
	enforce.Write(runDir, state)
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
	enforce.Write(runDir, state)
	for _, host := range []string{"web", "web2"} {
		if err := login(host); err != nil {
			t.Errorf("%s refused the bot after its lock was removed", host)
		}
	}
}
