package fs

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/testenv"
)

func requireRoot(t testing.TB) {
	t.Helper()
	testenv.RequireFUSE(t)
}

// The tree holds exactly the files of a tbot destination, with the owner,
// modes and sizes a user expects from ls -l, and reads parse as what they
// claim to be.
func TestTreeListingModesAndContent(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{UID: 1234, GID: 2345, Nodes: []identity.Node{{Name: "web", Addr: "127.0.0.1:2222"}}})

	ents, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names, want []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	for _, f := range identity.Files {
		want = append(want, f.Name)
	}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("tree lists %v, want %v", names, want)
	}

	var st unix.Stat_t
	if err := unix.Stat(s.dir, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode != syscall.S_IFDIR|0o755 || st.Uid != 1234 || st.Gid != 2345 {
		t.Errorf("root dir: mode %o owner %d:%d, want 40755 1234:2345", st.Mode, st.Uid, st.Gid)
	}
	for _, f := range identity.Files {
		if err := unix.Stat(s.path(f.Name), &st); err != nil {
			t.Fatal(err)
		}
		mode := uint32(0o644)
		if f.Secret {
			mode = 0o600
		}
		if st.Mode != syscall.S_IFREG|mode || st.Uid != 1234 || st.Gid != 2345 {
			t.Errorf("%s: mode %o owner %d:%d, want %o 1234:2345", f.Name, st.Mode, st.Uid, st.Gid, syscall.S_IFREG|mode)
		}
		b, err := os.ReadFile(s.path(f.Name))
		if err != nil {
			t.Fatalf("read %s: %v", f.Name, err)
		}
		if len(b) == 0 || int64(len(b)) != st.Size {
			t.Errorf("%s: stat size %d, read %d bytes", f.Name, st.Size, len(b))
		}
	}

	key, _ := os.ReadFile(s.path("key"))
	cert, _ := os.ReadFile(s.path("key-cert.pub"))
	tlsc, _ := os.ReadFile(s.path("tlscert"))
	if k, c, x := privateKeyFP(t, key), sshCertFP(t, cert), tlsCertFP(t, tlsc); k != c || k != x {
		t.Errorf("key %s, SSH cert %s, TLS cert %s: not one key", k, c, x)
	}
	cfg, _ := os.ReadFile(s.path("ssh_config"))
	for _, w := range []string{"IdentityFile \"" + s.path("key") + "\"", "Host web.test.example", "HostName 127.0.0.1", "Port 2222"} {
		if !strings.Contains(string(cfg), w) {
			t.Errorf("ssh_config lacks %q:\n%s", w, cfg)
		}
	}
}

// The mount is what the design promises to mount(8), df and the kernel.
func TestMountOptions(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{})
	m, ok := findMount(s.dir)
	if !ok {
		t.Fatal("mount not in /proc/self/mountinfo")
	}
	if m.fstype != "fuse.midfs" {
		t.Errorf("type %s, want fuse.midfs", m.fstype)
	}
	line := mountinfoLine(t, s.dir)
	for _, w := range []string{" ro,", "nosuid", "nodev", "noexec", " midfs ", "allow_other"} {
		if !strings.Contains(line, w) {
			t.Errorf("mountinfo lacks %q: %s", w, line)
		}
	}
	if strings.Contains(line, "default_permissions") {
		t.Errorf("default_permissions would stop --reader uids from opening 0600 files: %s", line)
	}
}

func mountinfoLine(t *testing.T, dir string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var found string
	for l := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			found = l
		}
	}
	return found
}

// After a renewal a new open reads the new bytes, with a stat size to match,
// while a handle opened before keeps reading the old ones.
func TestPublishNewOpensSeeNewBytesOldHandlesKeepOld(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{})
	old := startReader(t, s.dir, "")
	for _, f := range identity.Files {
		if r := old.do("open " + f.Name); r != "ok" {
			t.Fatalf("open %s: %s", f.Name, r)
		}
	}
	before := map[string][]byte{}
	for _, f := range identity.Files {
		before[f.Name] = old.data("read " + f.Name)
	}
	s.publish()

	for _, f := range identity.Files {
		b, err := os.ReadFile(s.path(f.Name))
		if err != nil {
			t.Fatal(err)
		}
		changes := f.Name == "key" || f.Name == "key-cert.pub" || f.Name == "key.pub" || f.Name == "tlscert" || f.Name == "identity"
		if changes && bytes.Equal(b, before[f.Name]) {
			t.Errorf("%s: a new open after the renewal still reads the old bytes", f.Name)
		}
		if again := old.data("read " + f.Name); !bytes.Equal(again, before[f.Name]) {
			t.Errorf("%s: a handle opened before the renewal now reads other bytes", f.Name)
		}
	}
	// The old reader closes: stat must then agree with what a new open reads.
	for _, f := range identity.Files {
		old.do("close " + f.Name)
	}
	fresh := startReader(t, s.dir, "")
	for _, f := range identity.Files {
		b := fresh.data("cat " + f.Name)
		var st unix.Stat_t
		if err := unix.Stat(s.path(f.Name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != int64(len(b)) {
			t.Errorf("%s: stat says %d bytes, a read returns %d", f.Name, st.Size, len(b))
		}
	}
}
