package sshagent

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func listenAt(t *testing.T, path string, mode os.FileMode) (*Server, error) {
	t.Helper()
	key, cert := issue(t, time.Now(), time.Hour)
	s, err := Listen(Options{Path: path, UID: 65534, GID: 65534, Mode: mode, Allow: anyone}, key, cert)
	if err == nil {
		t.Cleanup(func() { s.Close() })
	}
	return s, err
}

// The socket appears with its owner and mode, never with the process's.
func TestSocketOwnerAndMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the socket away")
	}
	path := filepath.Join(t.TempDir(), "agent.sock")
	if _, err := listenAt(t, path, 0o660); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK || st.Mode&0o7777 != 0o660 || st.Uid != 65534 || st.Gid != 65534 {
		t.Errorf("socket mode %o owner %d:%d, want a socket 0660 65534:65534", st.Mode, st.Uid, st.Gid)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("the socket's directory holds %d entries, want the socket alone", len(entries))
	}
}

// What sits at the path decides: a file or a live socket is left alone
// with one line; a stale socket (its agent killed) is replaced.
func TestWhatSitsAtThePath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the socket away")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("mine"), 0o600)
	if _, err := listenAt(t, file, 0o600); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Errorf("over a regular file: %v", err)
	}
	if err := CheckPath(file); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Errorf("CheckPath of a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "mine" {
		t.Errorf("the file was changed: %q", b)
	}

	live := filepath.Join(dir, "live.sock")
	first, err := listenAt(t, live, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listenAt(t, live, 0o600); err == nil || !strings.Contains(err.Error(), "another process serves") {
		t.Errorf("over a live agent: %v", err)
	}
	if err := CheckPath(live); err == nil || !strings.Contains(err.Error(), "another process serves") {
		t.Errorf("CheckPath of a live agent's socket: %v", err)
	}
	if c, err := net.Dial("unix", live); err != nil {
		t.Errorf("the live agent lost its socket: %v", err)
	} else {
		c.Close()
	}
	first.Close()

	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // as a killed agent leaves it
	if err := CheckPath(stale); err != nil {
		t.Errorf("CheckPath of a stale socket: %v", err)
	}
	if _, err := listenAt(t, stale, 0o600); err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	if c, err := net.Dial("unix", stale); err != nil {
		t.Errorf("the new socket does not answer: %v", err)
	} else {
		c.Close()
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if strings.Join(names, " ") != "file stale.sock" {
		t.Errorf("left in the directory: %q, want file and stale.sock (live.sock went with its agent)", names)
	}
}

// A successor (Replace) takes the socket over from a live agent: new
// connections reach it, the predecessor keeps the one it has, and the
// predecessor's Close leaves the successor's socket in place.
func TestReplaceTakesTheSocketOver(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the socket away")
	}
	path := filepath.Join(t.TempDir(), "agent.sock")
	old, _ := start(t, filepath.Dir(path), 0o600, anyone)
	held := dial(t, path)
	key, cert := issue(t, time.Now(), time.Hour)
	if _, err := Listen(Options{Path: path, Mode: 0o600, Allow: anyone}, key, cert); err == nil {
		t.Fatal("a second agent took a live socket without Replace")
	}
	successor, err := Listen(Options{Path: path, Mode: 0o600, Allow: anyone, Replace: true}, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	defer successor.Close()
	if keys, err := dial(t, path).List(); err != nil || len(keys) != 2 || string(keys[0].Blob) != string(cert.Marshal()) {
		t.Errorf("a new connection does not reach the successor: %v", err)
	}
	if keys, err := held.List(); err != nil || len(keys) != 2 || string(keys[0].Blob) == string(cert.Marshal()) {
		t.Errorf("the predecessor's open connection broke: %v", err)
	}
	old.Close()
	if _, err := dial(t, path).List(); err != nil {
		t.Errorf("the predecessor's Close removed the successor's socket: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("%d entries left beside the socket", len(entries)-1)
	}
}

// Close leaves a socket that is not the one it placed.
func TestCloseLeavesAnotherSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the socket away")
	}
	path := filepath.Join(t.TempDir(), "agent.sock")
	s, err := listenAt(t, path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path)
	os.WriteFile(path, []byte("someone else's"), 0o600)
	s.Close()
	if b, _ := os.ReadFile(path); string(b) != "someone else's" {
		t.Errorf("Close removed or changed a file it did not place")
	}
}

// A directory where another user could swap the socket is refused; a
// sticky one (/tmp) is not.
func TestSocketDirectoryMustBeSafe(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the socket away")
	}
	base := t.TempDir()
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	if _, err := listenAt(t, filepath.Join(open, "agent.sock"), 0o600); err == nil || !strings.Contains(err.Error(), "writable by other users") {
		t.Errorf("in a 0777 directory: %v", err)
	}
	if entries, _ := os.ReadDir(open); len(entries) != 0 {
		t.Errorf("a refused listen left %d entries behind", len(entries))
	}
	os.Chmod(open, os.ModeSticky|0o777)
	if _, err := listenAt(t, filepath.Join(open, "agent.sock"), 0o600); err != nil {
		t.Errorf("in a sticky 1777 directory: %v", err)
	}
	theirs := filepath.Join(base, "theirs")
	os.Mkdir(theirs, 0o755)
	os.Chown(theirs, 4000, 4000)
	if _, err := listenAt(t, filepath.Join(theirs, "agent.sock"), 0o600); err == nil || !strings.Contains(err.Error(), "belongs to uid 4000") {
		t.Errorf("in another user's directory: %v", err)
	}
	if _, err := listenAt(t, filepath.Join(base, "missing", "agent.sock"), 0o600); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("in a missing directory: %v", err)
	}
	for _, dir := range []string{filepath.Join(base, "missing"), theirs} {
		if err := CheckPath(filepath.Join(dir, "agent.sock")); err == nil {
			t.Errorf("CheckPath in %s: no error", dir)
		}
	}
}
