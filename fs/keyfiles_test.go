package fs

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/midfs/midfs/identity"
)

// With NoKeyFiles the tree has no key and no identity, for root too, and
// nothing else changes: the other files keep their inode numbers, and
// ssh_config sends ssh to the agent socket with key.pub, never to key.
func TestNoKeyFilesLeavesTheKeyOut(t *testing.T) {
	requireRoot(t)
	agent := filepath.Join(t.TempDir(), "agent %d.sock")
	full := startServer(t, serveConfig{Nodes: []identity.Node{{Name: "web", Addr: "127.0.0.1:2222"}}})
	s := startServer(t, serveConfig{AgentSocket: agent, NoKeyFiles: true, Nodes: []identity.Node{{Name: "web", Addr: "127.0.0.1:2222"}}})

	entries, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	var want []string
	for _, f := range identity.Files {
		if !f.Secret {
			want = append(want, f.Name)
		}
	}
	if !slices.Equal(names, want) {
		t.Fatalf("tree lists %q, want %q", names, want)
	}
	for _, name := range []string{identity.FileKey, identity.FileIdentity} {
		if _, err := os.Stat(s.path(name)); !os.IsNotExist(err) {
			t.Errorf("stat %s as root: %v, want it not to exist", name, err)
		}
	}
	for _, name := range want {
		var a, b syscall.Stat_t
		if err := syscall.Stat(s.path(name), &a); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Stat(full.path(name), &b); err != nil {
			t.Fatal(err)
		}
		if a.Ino != b.Ino {
			t.Errorf("%s has inode %d without the key files, %d with them", name, a.Ino, b.Ino)
		}
		if _, err := os.ReadFile(s.path(name)); err != nil {
			t.Errorf("read %s: %v", name, err)
		}
	}

	config := s.path(identity.FileSSHConfig)
	if got := sshOption(t, config, "root@web.test.example", "identityagent"); len(got) != 1 || got[0] != agent {
		t.Errorf("ssh reads IdentityAgent %q, want %q", got, agent)
	}
	if got := sshOption(t, config, "root@web.test.example", "identityfile"); len(got) != 1 || !strings.HasSuffix(got[0], "/"+identity.FileSSHPub) {
		t.Errorf("ssh reads IdentityFile %q, want only key.pub", got)
	}
}
