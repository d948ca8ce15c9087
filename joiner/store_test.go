package joiner

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func randomName(t *testing.T) string {
	b := make([]byte, 8)
	rand.Read(b)
	return "test-" + hex.EncodeToString(b)
}

func TestKeyringStoreRoundTrip(t *testing.T) {
	if os.Getenv("MIDFS_TEST_PRIVATE_SESSION") == "1" {
		inPrivateSession(t)
	}
	name := randomName(t)
	s, err := OpenStore("keyring", name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Delete() })
	if _, err := s.Load(); !errors.Is(err, ErrNotStored) {
		t.Fatalf("empty keyring: Load = %v, want ErrNotStored", err)
	}
	blob := bytes.Repeat([]byte("secret-bot-identity "), 300) // bigger than the first read buffer
	if err := s.Save(blob, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("Load after Save: %d bytes, err %v", len(got), err)
	}
	// Save again replaces, not adds.
	if err := s.Save([]byte("second"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Load(); string(got) != "second" {
		t.Fatalf("Load after second Save = %q", got)
	}
	// Only possessor and user: no group or other bits.
	id, err := unix.KeyctlSearch(unix.KEY_SPEC_USER_KEYRING, "user", "midfs:bot:"+name, 0)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := unix.KeyctlString(unix.KEYCTL_DESCRIBE, id)
	if err != nil {
		t.Fatal(err)
	}
	// "user;UID;GID;PERM;DESC"
	if f := strings.Split(desc, ";"); len(f) < 5 || f[3] != "3f3f0000" {
		t.Errorf("key description %q: want permissions 3f3f0000", desc)
	}
	if err := s.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); !errors.Is(err, ErrNotStored) {
		t.Fatalf("Load after Delete = %v, want ErrNotStored", err)
	}
	if err := s.Delete(); err != nil {
		t.Fatalf("deleting nothing: %v", err)
	}
}

// Under a service manager the agent has a session keyring of its own that
// does not link @u (systemd's KeyringMode=private, its default for system
// services). The round trip above must work there too: it runs again in a
// child of `keyctl session -`, which joins a new empty session keyring
// first, as systemd does for a unit.
func TestKeyringStoreInAPrivateSessionKeyring(t *testing.T) {
	if os.Getenv("MIDFS_TEST_PRIVATE_SESSION") == "1" {
		return // the child runs TestKeyringStoreRoundTrip only
	}
	keyctl, err := exec.LookPath("keyctl")
	if err != nil {
		t.Skip("keyctl not installed (apt-get install keyutils)")
	}
	cmd := exec.Command(keyctl, "session", "-", os.Args[0], "-test.run=^TestKeyringStoreRoundTrip$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "MIDFS_TEST_PRIVATE_SESSION=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestKeyringStoreRoundTrip") {
		t.Fatalf("the keyring store fails in a private session keyring: %v\n%s", err, out)
	}
}

// inPrivateSession fails the test unless this process runs as a service
// does: in a session keyring that does not link @u, so keys in @u are not
// possessed.
func inPrivateSession(t *testing.T) {
	t.Helper()
	user, err := unix.KeyctlGetKeyringID(unix.KEY_SPEC_USER_KEYRING, true)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := unix.KeyctlBuffer(unix.KEYCTL_READ, unix.KEY_SPEC_SESSION_KEYRING, buf, 0)
	if err != nil {
		t.Fatalf("read the session keyring: %v", err)
	}
	for i := 0; i+4 <= n && i+4 <= len(buf); i += 4 {
		if int(binary.NativeEndian.Uint32(buf[i:])) == user {
			t.Fatal("the session keyring links @u: not the private session keyring of a service")
		}
	}
}

func TestDirStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "agent")
	s, err := OpenStore("dir:"+dir, "abc")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); !errors.Is(err, ErrNotStored) {
		t.Fatalf("Load = %v, want ErrNotStored", err)
	}
	if err := s.Save([]byte("one"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Save([]byte("two"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil || string(got) != "two" {
		t.Fatalf("Load = %q, %v", got, err)
	}
	fi, err := os.Stat(filepath.Join(dir, "bot-abc"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	di, _ := os.Stat(dir)
	if di.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", di.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("dir holds %d entries, want only bot-abc (no temp files left)", len(entries))
	}
	if err := s.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); !errors.Is(err, ErrNotStored) {
		t.Fatalf("Load after Delete = %v", err)
	}
}

func TestMemoryStoreKeepsNothing(t *testing.T) {
	s, _ := OpenStore("memory", "x")
	s.Save([]byte("x"), time.Time{})
	if _, err := s.Load(); !errors.Is(err, ErrNotStored) {
		t.Fatalf("Load = %v, want ErrNotStored", err)
	}
}

func TestOpenStoreRejectsBadSpecs(t *testing.T) {
	for _, spec := range []string{"disk", "dir:", "keyring:x"} {
		if _, err := OpenStore(spec, "x"); !errors.Is(err, ErrConfig) {
			t.Errorf("OpenStore(%q) = %v, want ErrConfig", spec, err)
		}
	}
}

func TestStoreNameSeparatesMounts(t *testing.T) {
	a := StoreName("auth:3025", "/opt/machine-id")
	if len(a) != 16 {
		t.Fatalf("name %q: want 16 hex digits", a)
	}
	if a != StoreName("auth:3025", "/opt/machine-id/") {
		t.Error("the same mountpoint spelled with a trailing slash gets another name")
	}
	if a == StoreName("auth:3025", "/opt/other") || a == StoreName("other:3025", "/opt/machine-id") {
		t.Error("different mounts or authorities share a name")
	}
}
