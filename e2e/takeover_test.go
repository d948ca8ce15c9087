package e2e

// The mount outlives the agent: `midfs upgrade` to a new binary, and, under
// a real systemd, `systemctl restart` and kill -9, while readers read every
// file in a loop (fresh opens and long-held handles) and ssh logs in
// through the mount in a loop. Readers may see a pause, never an error, a
// torn pair, a held handle changing, or the mount missing from the table.

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// takeovers is how many upgrades, restarts and kills each test makes. CI
// runs the full count; -midfs.takeovers=3 gives a quick look.
var takeovers = flag.Int("midfs.takeovers", 20, "upgrades, systemctl restarts and kill -9s in the takeover tests")

// buildVersion builds midfs with version v into dir: a binary that differs
// from the one under test.
func buildVersion(t *testing.T, dir, v string) string {
	t.Helper()
	out := filepath.Join(dir, "midfs-"+v)
	b, err := exec.Command("go", "build", "-tags", "urfave_cli_no_docs", "-ldflags", "-X main.version="+v, "-o", out, "../cmd/midfs").CombinedOutput()
	if err != nil {
		t.Fatalf("building midfs %s: %v\n%s", v, err, b)
	}
	return out
}

// binVersion is what `midfs --version` says of bin, up to the commit.
func binVersion(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out)) // midfs version V (commit C)
	if len(f) < 3 {
		t.Fatalf("midfs --version: %q", out)
	}
	return f[2]
}

// install puts bin at path the way a package manager does: a new file
// renamed over the old, which the running agent keeps executing.
func install(t *testing.T, bin, path string) {
	t.Helper()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".new", b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// agentPID is the agent serving dir, from the root's xattr.
func agentPID(dir string) int {
	buf := make([]byte, 32)
	n, err := unix.Getxattr(dir, "user.midfs.pid", buf)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(string(buf[:n]))
	return pid
}

func TestUpgradeUnderReadersAndLogins(t *testing.T) {
	a := startAuthority(t)
	s := startSSHD(t, a, "node-name."+cluster, "node-name")
	a.admin("nodes", "add", "node-name", "--addr="+s.addr())
	bins := t.TempDir()
	versions := []string{midfsBin, buildVersion(t, bins, "e2e-next")}
	names := []string{binVersion(t, versions[0]), "e2e-next"}
	installed := filepath.Join(bins, "midfs")
	install(t, versions[0], installed)

	dir := filepath.Join(publicDir(t), "machine-id")
	os.Mkdir(dir, 0o755)
	forgetStored(t, a, dir) // the default --storage=keyring: every new agent restarts from it
	logs := &agent{t: t, dir: dir}
	cmd := exec.Command(installed, append([]string{"mount", dir, "--log-format=json", "--log-level=debug"}, a.mountArgs(a.addBot("robot", "access", "root"))...)...)
	agentLog := newLogFile(t)
	cmd.Stdout, cmd.Stderr = agentLog, agentLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go cmd.Wait()
	t.Cleanup(func() { stopAgentAt(t, dir, agentLog) })
	waitFor(t, "the mount", 60*time.Second, func() bool {
		return mounted(dir) && exec.Command("test", "-r", filepath.Join(dir, "key.pub")).Run() == nil
	})
	waitFor(t, "the node in ssh_config", 30*time.Second, func() bool { return strings.Contains(string(logs.read("ssh_config")), "node-name") })

	loads := []*load{startLoad(t, exec.Command(os.Args[0]), dir), startLoad(t, exec.Command(os.Args[0]), dir)}
	lg := startLogins(func() (string, error) { return sshRun(t, dir, "root@node-name."+cluster, "true") })
	waitFor(t, "a first login", 30*time.Second, func() bool { return lg.ok.Load() > 0 || lg.bad.Load() > 0 })

	start := time.Now()
	for i := range *takeovers {
		install(t, versions[(i+1)%2], installed)
		before := agentPID(dir)
		r := run(t, "upgrade", dir)
		want := fmt.Sprintf("agent %d (%s) handed over to agent %d (%s)", before, names[i%2], agentPID(dir), names[(i+1)%2])
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Fatalf("upgrade %d: %s\nagent log:\n%s", i+1, r, tail(agentLog.String(), 30))
		}
		if after := agentPID(dir); after == before || after == 0 {
			t.Fatalf("upgrade %d: the agent is still pid %d", i+1, before)
		}
	}
	t.Logf("%d upgrades in %v", *takeovers, time.Since(start).Round(time.Millisecond))
	lg.finish(t)
	for i, l := range loads {
		l.finish().check(t, fmt.Sprintf("reader %d", i+1))
	}
	if n := strings.Count(agentLog.String(), "took the mount over from the agent before"); n != *takeovers {
		t.Errorf("%d takeovers logged, want %d", n, *takeovers)
	}
}

// newLogFile is a log buffer that agents started by other agents (an
// upgrade's new process inherits the old one's output) keep writing to.
func newLogFile(t *testing.T) *logFile {
	f, err := os.CreateTemp(t.TempDir(), "agent-log-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &logFile{File: f}
}

type logFile struct{ *os.File }

func (l *logFile) String() string {
	b, _ := os.ReadFile(l.Name())
	return string(b)
}

// stopAgentAt stops whichever agent serves dir now and waits for the
// unmount.
func stopAgentAt(t *testing.T, dir string, logs *logFile) {
	pid := agentPID(dir)
	if pid == 0 {
		if mounted(dir) {
			exec.Command("umount", "-l", dir).Run()
			t.Errorf("%s is mounted but names no agent", dir)
		}
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(20 * time.Second)
	for mounted(dir) || syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			exec.Command("umount", "-l", dir).Run()
			t.Errorf("the agent (pid %d) did not stop within 20s:\n%s", pid, tail(logs.String(), 20))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
