package identity

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sshG is what the real ssh makes of config for target (`ssh -G`): each
// option, lower case, with its values in order.
func sshG(t testing.TB, config, target string) map[string][]string {
	t.Helper()
	opts, err := trySSHG(t, config, target)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

func trySSHG(t testing.TB, config, target string) (map[string][]string, error) {
	t.Helper()
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("ssh not installed (.ci/run installs it)")
	}
	cmd := exec.Command("ssh", "-G", "-F", config, target)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ssh -G -F %s %s: %v: %s", config, target, err, stderr.Bytes())
	}
	opts := map[string][]string{}
	for line := range strings.Lines(string(out)) {
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
		opts[k] = append(opts[k], v)
	}
	return opts, nil
}

func writeFile(t testing.TB, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testIdentity(t testing.TB, alg Algorithm) *Identity {
	t.Helper()
	key, err := GenerateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	var caKeys [3]crypto.Signer
	for i := range caKeys {
		caKeys[i], _ = GenerateKey(ECDSA)
	}
	return newIdentity(t, key, caKeys, rand.Reader, time.Now())
}

// A node stored before nodes were checked (an old database row) must not
// reach ssh_config: the line breaks of the first would give every bot's ssh
// a ProxyCommand, and the space of the second makes ssh reject the whole
// file. The good node next to them still works.
func TestSSHConfigSkipsNodesThatFailTheChecks(t *testing.T) {
	id := testIdentity(t, ECDSA)
	pwned := filepath.Join(t.TempDir(), "pwned")
	nodes := []Node{
		{Name: "evil", Addr: "10.0.0.1\n    ProxyCommand touch " + pwned + "\nMatch exec \"touch " + pwned + "\"\n#:22"},
		{Name: "spaced", Addr: "10.0.0.2 x:22"},
		{Name: "bad\nname", Addr: "10.0.0.3:22"},
		{Name: "labelled", Addr: "10.0.0.4:22", Labels: map[string]string{"env": "prod\nProxyCommand x"}},
		{Name: "noport", Addr: "10.0.0.5"},
		{Name: "good", Addr: "10.0.0.9:2222"},
	}
	b, err := Render(FileSSHConfig, id, nodes, Paths{Dir: "/opt/machine-id"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := writeFile(t, b)
	for _, target := range []string{"root@good.example.com", "root@evil.example.com", "root@spaced.example.com", "root@elsewhere"} {
		opts, err := trySSHG(t, cfg, target)
		if err != nil {
			t.Errorf("one bad node breaks ssh for every host: %v\n%s", err, b)
			continue
		}
		if pc := opts["proxycommand"]; len(pc) > 0 {
			t.Errorf("ssh %s gets ProxyCommand %q from:\n%s", target, pc, b)
		}
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Errorf("reading ssh_config ran the command injected through a node address:\n%s", b)
	}
	if t.Failed() {
		return
	}
	if opts := sshG(t, cfg, "root@good.example.com"); opts["hostname"][0] != "10.0.0.9" || opts["port"][0] != "2222" {
		t.Errorf("good node: hostname %v port %v, want 10.0.0.9 2222", opts["hostname"], opts["port"])
	}
	for _, bad := range []string{"evil", "spaced", "labelled", "noport", "bad"} {
		if bytes.Contains(b, []byte("Host "+bad)) {
			t.Errorf("node %s, which fails the checks, was written:\n%s", bad, b)
		}
	}
}

// A mountpoint with a space and a %-token names the files as they are:
// ssh must not expand %d (the home directory) in them.
func TestSSHConfigEscapesTheMountpoint(t *testing.T) {
	id := testIdentity(t, ECDSA)
	dir := `/mnt/my ids/%d "q" \x`
	b, err := Render(FileSSHConfig, id, testNodes, Paths{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	opts := sshG(t, writeFile(t, b), "root@web-1.example.com")
	if got, want := opts["userknownhostsfile"], filepath.Join(dir, FileKnownHosts); len(got) != 1 || got[0] != want {
		t.Errorf("userknownhostsfile %q, want %q; ssh_config:\n%s", got, want, b)
	}
	// ssh -G shows IdentityFile and CertificateFile before it expands
	// %-tokens (OpenSSH 9.2), so they show the escape: %% for %.
	for opt, file := range map[string]string{"identityfile": FileKey, "certificatefile": FileSSHCert} {
		path := filepath.Join(dir, file)
		if got := opts[opt]; len(got) != 1 || (got[0] != path && got[0] != strings.ReplaceAll(path, "%", "%%")) {
			t.Errorf("%s %q, want %q; ssh_config:\n%s", opt, got, path, b)
		}
	}
}

// With an agent socket, ssh_config names it (IdentityAgent) and names
// key.pub, never key: ssh opens the file IdentityFile names to look for a
// public key in it, and must never open the private key. The socket's path
// is escaped like the files' ('%', '"', '\\', spaces).
func TestSSHConfigNamesTheAgentAndNeverTheKey(t *testing.T) {
	id := testIdentity(t, ECDSA)
	at := Paths{Dir: "/opt/machine-id", Agent: `/run/my agent/%d "q" \x.sock`}
	b, err := Render(FileSSHConfig, id, testNodes, at)
	if err != nil {
		t.Fatal(err)
	}
	opts := sshG(t, writeFile(t, b), "root@web-1.example.com")
	if got := opts["identityagent"]; len(got) != 1 || got[0] != at.Agent {
		t.Errorf("identityagent %q, want %q; ssh_config:\n%s", got, at.Agent, b)
	}
	if got, want := opts["identityfile"], filepath.Join(at.Dir, FileSSHPub); len(got) != 1 || got[0] != want {
		t.Errorf("identityfile %q, want only %q; ssh_config:\n%s", got, want, b)
	}
	if got, want := opts["certificatefile"], filepath.Join(at.Dir, FileSSHCert); len(got) != 1 || got[0] != want {
		t.Errorf("certificatefile %q, want %q; ssh_config:\n%s", got, want, b)
	}
	if bytes.Contains(b, []byte(`/key"`)) {
		t.Errorf("ssh_config with an agent names the key file:\n%s", b)
	}
	for _, bad := range []string{"relative.sock", "/run/${HOME}.sock", "/run/a\nProxyCommand x"} {
		if b, err := Render(FileSSHConfig, id, nil, Paths{Dir: at.Dir, Agent: bad}); err == nil {
			t.Errorf("ssh_config rendered for agent socket %q:\n%s", bad, b)
		}
	}
}

// A cluster name that would change what known_hosts or ssh_config match is
// never written, and nor is a mountpoint ssh cannot name.
func TestRenderRefusesBadClusterNameAndDir(t *testing.T) {
	id := testIdentity(t, ECDSA)
	id.ClusterName = "example.com *\n@cert-authority *"
	for _, f := range []string{FileKnownHosts, FileSSHConfig, FileIdentity} {
		if b, err := Render(f, id, nil, Paths{Dir: "/opt/machine-id"}); err == nil {
			t.Errorf("%s rendered for cluster %q:\n%s", f, id.ClusterName, b)
		}
	}
	id.ClusterName = "example.com"
	for _, dir := range []string{"/mnt/a\nProxyCommand x", "/mnt/${HOME}", "relative"} {
		if b, err := Render(FileSSHConfig, id, nil, Paths{Dir: dir}); err == nil {
			t.Errorf("ssh_config rendered for mountpoint %q:\n%s", dir, b)
		}
	}
}

// One issuance, one key file: every open serves the same bytes, and the key
// in the identity file is the key file (for Ed25519 too, whose OpenSSH
// format carries a random check value).
func TestKeyBytesAreTheSameOnEveryOpen(t *testing.T) {
	for _, alg := range []Algorithm{ECDSA, Ed25519, RSA} {
		id := testIdentity(t, alg)
		first, err := Render(FileKey, id, nil, Paths{Dir: "/x"})
		if err != nil {
			t.Fatal(err)
		}
		again, _ := Render(FileKey, id, nil, Paths{Dir: "/x"})
		ident, _ := Render(FileIdentity, id, nil, Paths{Dir: "/x"})
		if !bytes.Equal(first, again) {
			t.Errorf("%s: key differs between two opens", alg)
		}
		if !bytes.HasPrefix(ident, first) {
			t.Errorf("%s: the identity file does not start with the key file's bytes", alg)
		}
		clear(first) // what a reader's release does: must not touch the next open
		if third, _ := Render(FileKey, id, nil, Paths{Dir: "/x"}); !bytes.Equal(third, again) {
			t.Errorf("%s: clearing one open's bytes changed the next open", alg)
		}
	}
}
