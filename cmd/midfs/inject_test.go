package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// What would reach a bot's ssh_config or known_hosts as more than a value
// is refused by the command line with one line that says what is allowed,
// and nothing is stored.
func TestCLIRefusesInjection(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	evil := "10.0.0.1\n    ProxyCommand touch /tmp/pwned\n#:22"
	yamlFile := filepath.Join(t.TempDir(), "node.yaml")
	os.WriteFile(yamlFile, []byte("kind: node\nmetadata:\n  name: evil\nspec:\n  addr: \"10.0.0.1\\n    ProxyCommand touch /tmp/pwned\\n#:22\"\n"), 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"nodes", "add", "evil", "--addr=" + evil}, "HOST:PORT"},
		{[]string{"nodes", "add", "spaced", "--addr=10.0.0.1 x:22"}, "HOST:PORT"},
		{[]string{"nodes", "add", "web", "--addr=10.0.0.1:22", "--labels=env=prod\nProxyCommand x"}, "bad value"},
		{[]string{"create", "-f", yamlFile}, "HOST:PORT"},
		{[]string{"bots", "add", "robot", "--roles=access", "--logins=root;id"}, "bad login"},
		{[]string{"bots", "add", "robot", "--roles=access", "--logins=ro\x00ot"}, "bad login"},
	} {
		r := runCLI(t, dir, c.args...)
		if r.code == 0 || strings.ContainsAny(r.err, "\r\n") || !strings.Contains(r.err, c.want) {
			t.Errorf("midfs %q: %s; want a one-line error containing %q", c.args, r, c.want)
		}
	}
	if out := mustCLI(t, dir, "get", "nodes"); strings.Contains(out, "evil") || strings.Contains(out, "spaced") || strings.Contains(out, "web") {
		t.Errorf("a refused node was stored:\n%s", out)
	}
	if out := mustCLI(t, dir, "bots", "ls"); strings.Contains(out, "robot") {
		t.Errorf("a bot with a refused login was made:\n%s", out)
	}

	r := runCLI(t, "", "auth", "start", "--data-dir", t.TempDir(), "--listen=127.0.0.1:0", "--cluster-name=example.com\n@cert-authority *")
	if r.code == 0 || strings.ContainsAny(r.err, "\r\n") || !strings.Contains(r.err, "bad cluster name") {
		t.Errorf("auth start with a cluster name holding a line break: %s", r)
	}
}
