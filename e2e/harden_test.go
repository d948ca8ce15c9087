package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/internal/testenv"
)

// TestAgentNeverDumpsCore crashes an agent the way Go crashes hardest
// (GOTRACEBACK=crash raises SIGABRT) in a directory where a control
// process, under the same core settings, does leave a core file. The
// agent must leave none: its memory holds private keys.
func TestAgentNeverDumpsCore(t *testing.T) {
	pattern, _ := os.ReadFile("/proc/sys/kernel/core_pattern")
	if p := strings.TrimSpace(string(pattern)); p != "core" && p != "core.%p" {
		t.Skipf("core_pattern is %q: this test needs cores written to the working directory", p)
	}
	cwd := t.TempDir()
	unlimited := &syscall.Rlimit{Cur: ^uint64(0), Max: ^uint64(0)}
	var old syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_CORE, &old)
	if err := syscall.Setrlimit(syscall.RLIMIT_CORE, unlimited); err != nil {
		t.Skipf("cannot raise RLIMIT_CORE: %v", err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_CORE, &old)

	control := exec.Command("sleep", "60")
	control.Dir = cwd
	if err := control.Start(); err != nil {
		t.Fatal(err)
	}
	control.Process.Signal(syscall.SIGABRT)
	control.Wait()
	if cores(t, cwd) == 0 {
		t.Skip("the control process left no core file: cores are not written here")
	}
	for _, c := range coreFiles(cwd) {
		os.Remove(c)
	}

	a := startAuthority(t)
	dir := filepath.Join(publicDir(t), "mnt")
	os.Mkdir(dir, 0o755)
	args := append([]string{"mount", dir, "--storage=memory"}, a.mountArgs(a.addBot("robot", "access", "root"))...)
	ag := &agent{t: t, dir: dir, logs: &testenv.LogBuffer{}, done: make(chan struct{})}
	ag.cmd = exec.Command(midfsBin, args...)
	ag.cmd.Dir = cwd
	ag.cmd.Env = append(os.Environ(), "GOTRACEBACK=crash")
	ag.cmd.Stdout, ag.cmd.Stderr = ag.logs, ag.logs
	if err := ag.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { ag.err = ag.cmd.Wait(); close(ag.done) }()
	waitFor(t, "the mount", 30*time.Second, func() bool {
		return mounted(dir) && exec.Command("test", "-r", filepath.Join(dir, "key.pub")).Run() == nil
	})

	if lim := procField(t, ag.cmd.Process.Pid, "limits", "Max core file size"); !strings.HasPrefix(lim, "0 ") {
		t.Errorf("agent's core file size limit is %q, want 0", lim)
	}
	if lck := procField(t, ag.cmd.Process.Pid, "status", "VmLck:"); lck == "" || strings.HasPrefix(lck, "0 ") {
		t.Errorf("agent running as root has no locked memory (VmLck %q): keys may reach swap", lck)
	}

	ag.cmd.Process.Signal(syscall.SIGQUIT) // with GOTRACEBACK=crash: goroutine dump, then SIGABRT
	<-ag.done
	exec.Command("umount", "-l", dir).Run()
	if n := cores(t, cwd); n != 0 {
		t.Fatalf("the agent left %d core file(s) in %s", n, cwd)
	}
	if !strings.Contains(ag.logs.String(), "SIGQUIT") {
		t.Errorf("the agent did not crash as asked:\n%s", tail(ag.logs.String(), 10))
	}
}

func coreFiles(dir string) []string {
	m, _ := filepath.Glob(filepath.Join(dir, "core*"))
	return m
}

func cores(t *testing.T, dir string) int { return len(coreFiles(dir)) }

// procField returns the rest of the first line of /proc/PID/FILE that starts with key.
func procField(t *testing.T, pid int, file, key string) string {
	t.Helper()
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), file))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), key) {
			return strings.TrimSpace(strings.TrimPrefix(s.Text(), key))
		}
	}
	return ""
}
