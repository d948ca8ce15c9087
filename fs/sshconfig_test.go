package fs

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/midfs/midfs/identity"
)

// sshOption is one option of `ssh -G -F config target`, as the real ssh
// reads the served ssh_config.
func sshOption(t *testing.T, config, target, option string) []string {
	t.Helper()
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("ssh not installed")
	}
	out, err := exec.Command("ssh", "-G", "-F", config, target).Output()
	if err != nil {
		t.Fatalf("ssh -G -F %s %s: %v", config, target, err)
	}
	var vals []string
	for line := range strings.Lines(string(out)) {
		if k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " "); k == option {
			vals = append(vals, v)
		}
	}
	return vals
}

// Mounted at a directory with a space and a %-token, the served ssh_config
// still names the served files: ssh must not expand %d to the home
// directory, and the files it names are there.
func TestSSHConfigNamesTheFilesOfAnOddMountpoint(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "my ids %d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, serveConfig{Dir: dir, Nodes: []identity.Node{{Name: "web", Addr: "127.0.0.1:2222"}}})
	config := s.path(identity.FileSSHConfig)
	got := sshOption(t, config, "root@web.test.example", "userknownhostsfile")
	if want := s.path(identity.FileKnownHosts); len(got) != 1 || got[0] != want {
		t.Fatalf("ssh reads UserKnownHostsFile %q, want %q", got, want)
	}
	if _, err := os.ReadFile(got[0]); err != nil {
		t.Fatalf("the known_hosts ssh would read: %v", err)
	}
}

// A node that fails the inventory checks (stored before they existed) is
// left out of ssh_config and logged once, not at every renewal; the other
// nodes are still served.
func TestBadNodeIsLeftOutAndLoggedOnce(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{Quiet: true, Nodes: []identity.Node{
		{Name: "evil", Addr: "10.0.0.1\n    ProxyCommand /bin/false\n#:22"},
		{Name: "web", Addr: "127.0.0.1:2222"},
	}})
	s.publish()
	s.publish()
	cfg, err := os.ReadFile(s.path(identity.FileSSHConfig))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(cfg, []byte("evil")) || bytes.Contains(cfg, []byte("ProxyCommand")) || !bytes.Contains(cfg, []byte("Host web.test.example")) {
		t.Errorf("ssh_config with a bad and a good node:\n%s", cfg)
	}
	if got := sshOption(t, s.path(identity.FileSSHConfig), "root@web.test.example", "port"); len(got) != 1 || got[0] != "2222" {
		t.Errorf("ssh reads port %q for the good node, want 2222", got)
	}
	if n := strings.Count(s.stderr.String(), "node left out of ssh_config"); n != 1 {
		t.Errorf("the bad node was logged %d times over three generations, want once:\n%s", n, s.stderr)
	}
}
