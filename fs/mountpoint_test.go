package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A bad mountpoint gets one clear error that names it and says what to do.
func TestCheckMountpointErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("x"), 0o644)
	cases := []struct {
		path, want string
	}{
		{filepath.Join(dir, "missing"), "does not exist: create it first (mkdir -p " + filepath.Join(dir, "missing") + ")"},
		{filepath.Join(dir, "missing", "deeper"), "does not exist"},
		{file, "is not a directory"},
		{filepath.Join(dir, "${HOME}"), "which ssh expands"},
		{filepath.Join(dir, "a\nb"), "control character"},
	}
	for _, c := range cases {
		err := CheckMountpoint(c.path)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("CheckMountpoint(%s) = %v, want one line containing %q", c.path, err, c.want)
		}
	}
	if err := CheckMountpoint(dir); err != nil {
		t.Errorf("CheckMountpoint on an empty directory: %v", err)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(file, link)
	if err := CheckMountpoint(link); err == nil || !strings.Contains(err.Error(), "is not a directory") {
		t.Errorf("CheckMountpoint on a symlink to a file: %v", err)
	}
}

// A mountpoint a live midfs serves is refused, and left alone.
func TestCheckMountpointRefusesLiveMount(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{})
	err := CheckMountpoint(s.dir)
	if err == nil || !strings.Contains(err.Error(), "already served by a live FUSE filesystem (fuse.midfs)") {
		t.Fatalf("CheckMountpoint on a live mount: %v", err)
	}
	if cleaned, err := CleanStale(s.dir); cleaned || err != nil {
		t.Fatalf("CleanStale on a live mount: %v, %v", cleaned, err)
	}
	if _, err := os.ReadFile(s.path("key.pub")); err != nil {
		t.Fatalf("live mount damaged: %v", err)
	}
}

// After SIGKILL the mount is dead ("Transport endpoint is not connected");
// the next check cleans it and a new mount on the same path works.
func TestDeadMountIsCleanedAndRemounted(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{})
	s.kill()
	var st unix.Stat_t
	if err := unix.Stat(s.dir, &st); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("stat after SIGKILL: %v, want ENOTCONN", err)
	}
	if err := CheckMountpoint(s.dir); err != nil {
		t.Fatalf("CheckMountpoint on a dead mount: %v", err)
	}
	if _, ok := findMount(s.dir); ok {
		t.Fatal("dead mount still in the mount table")
	}
	s2 := startServer(t, serveConfig{Dir: s.dir})
	if _, err := os.ReadFile(s2.path("key")); err != nil {
		t.Fatalf("remount on the same path: %v", err)
	}
}

// A midfs whose server stops answering is aborted and unmounted.
func TestHungMountIsAbortedAndCleaned(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("waits for the hang timeout")
	}
	s := startServer(t, serveConfig{})
	s.cmd.Process.Signal(syscall.SIGSTOP)
	defer s.kill()
	// kill(2) returns before the process has stopped; until it has, it may
	// still answer.
	for !strings.Contains(procState(s.cmd.Process.Pid), "stopped") {
		time.Sleep(time.Millisecond)
	}
	cleaned, err := CleanStale(s.dir)
	if err != nil || !cleaned {
		t.Fatalf("CleanStale on a hung mount: %v, %v", cleaned, err)
	}
	if _, ok := findMount(s.dir); ok {
		t.Fatal("hung mount still in the mount table")
	}
}

// Unmount succeeds even while a reader holds a file open: the mount is
// detached and its connection ended, so nothing stale is left.
func TestUnmountWithOpenFiles(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{})
	r := startReader(t, s.dir, "")
	if got := r.do("open key"); got != "ok" {
		t.Fatal(got)
	}
	if got := s.do("quit"); got != "bye" {
		t.Fatalf("quit: %s\n%s", got, s.stderr)
	}
	s.cmd.Wait()
	if _, ok := findMount(s.dir); ok {
		t.Fatal("mount left behind")
	}
	if got := r.do("read key"); !strings.HasPrefix(got, "err ") {
		t.Errorf("read of a handle on an unmounted tree: %.30s", got)
	}
}

// A process that gets a mount namespace of its own while the tree is
// mounted (unshare, ip netns exec, a container) holds a copy of the mount,
// which keeps the FUSE connection alive after the unmount here. Unmount
// must still stop serving at once (the agent exits at SIGTERM), and the
// reader over there must get an error instead of a server that stays.
func TestUnmountWithACopyInAnotherMountNamespace(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{})
	r := startReaderWith(t, s.dir, "", &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS})
	r.data("cat key.pub")
	quit := make(chan string, 1)
	go func() { quit <- s.do("quit") }()
	select {
	case got := <-quit:
		if got != "bye" {
			t.Fatalf("quit: %s\n%s", got, s.stderr)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Unmount did not return in 20s while a copy of the mount lives in another mount namespace")
	}
	if got := r.do("cat key.pub"); got != "err ENOTCONN" && got != "err ECONNABORTED" {
		t.Errorf("reading the copy of a mount whose server stopped: %.40s", got)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	if got := unescapeMount(`/tmp/a\040b\134c`); got != `/tmp/a b\c` {
		t.Errorf("unescape: %q", got)
	}
	if got := unescapeMount(`/x\04`); got != `/x\04` {
		t.Errorf("short escape: %q", got)
	}
}

// umount(8) from outside ends the server's loop and closes Done (the agent
// stops on it); a later renewal and Unmount are then quiet no-ops.
func TestUnmountFromOutside(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{})
	if _, err := os.ReadFile(s.path("key")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(s.dir, 0); err != nil {
		t.Fatal(err)
	}
	waitGone := func() bool {
		for range 200 {
			if _, ok := findMount(s.dir); !ok {
				return true
			}
			time.Sleep(5 * time.Millisecond)
		}
		return false
	}
	if !waitGone() {
		t.Fatal("still mounted after umount")
	}
	if got := s.do("done"); got != "done" {
		t.Fatalf("Done after an outside umount: %s", got)
	}
	s.publish()
	if got := s.do("quit"); got != "bye" {
		t.Fatalf("quit after an outside umount: %s", got)
	}
	if log := s.stderr.String(); strings.Contains(log, "level=WARN") || strings.Contains(log, "level=ERROR") {
		t.Errorf("warnings after an outside umount:\n%s", log)
	}
}

func procState(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for l := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "State:"); ok {
			return v
		}
	}
	return ""
}

// The serving process sends its own mount no request, mounting included: a
// SIGKILL while one is in the server's hands (an open file's FLUSH at exit,
// or a statfs already read by the server) leaves a process that cannot exit
// and a hung mount until someone aborts the connection. go-fuse's WaitMount
// opens a file to poll it; a statfs probe after mounting hung a killed
// agent in the e2e kill test.
func TestServerOpensNothingOfItsOwnMount(t *testing.T) {
	s := startServer(t, serveConfig{Debug: true})
	s.do("opens") // after the mount: whatever it did is logged
	own := map[string]bool{}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", s.cmd.Process.Pid))
	for _, task := range tasks {
		own[task.Name()] = true // the request log names the thread
	}
	rx := regexp.MustCompile(`rx \d+: ([A-Z_]+) .* p(\d+)"?$`)
	for line := range strings.Lines(s.stderr.String()) {
		if m := rx.FindStringSubmatch(strings.TrimSpace(line)); m != nil && own[m[2]] && m[1] != "INIT" {
			t.Errorf("the server sent its own mount a %s: %s", m[1], line)
		}
	}
}
