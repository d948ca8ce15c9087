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
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/joiner"
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
	// With an ssh-agent socket too: it is handed over with the mount.
	// A short path: a socket's is at most 107 bytes.
	sockDir, err := os.MkdirTemp("/run", "midfs-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "agent.sock")
	cmd := exec.Command(installed, append([]string{"mount", dir, "--log-format=json", "--log-level=debug", "--ssh-agent=" + sock},
		a.mountArgs(a.addBot("robot", "access", "root"))...)...)
	agentLog := newLogFile(t)
	cmd.Stdout, cmd.Stderr = agentLog, agentLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { stopAgentAt(t, dir, agentLog) })
	waitFor(t, "the mount", 60*time.Second, func() bool {
		select {
		case <-exited:
			t.Fatalf("the agent exited:\n%s", agentLog)
		default:
		}
		return mounted(dir) && exec.Command("test", "-r", filepath.Join(dir, "key.pub")).Run() == nil
	})
	waitFor(t, "the node in ssh_config", 30*time.Second, func() bool { return strings.Contains(string(logs.read("ssh_config")), "node-name") })

	loads := []*load{startLoad(t, exec.Command(os.Args[0]), dir), startLoad(t, exec.Command(os.Args[0]), dir)}
	target := "root@node-name." + cluster
	// With the key file: ssh_config names key.pub for the agent, so name
	// the key itself.
	lg := startLoginLoop(t, func() (string, error) {
		return sshWith(t, append(sshOptions(dir), "-o", "IdentityAgent=none", "-i", filepath.Join(dir, "key"), "-s"), target, "sftp")
	})
	// Through the agent socket, which ssh_config names.
	lgAgent := startLoginLoop(t, func() (string, error) { return sshWith(t, append(sshOptions(dir), "-s"), target, "sftp") })
	waitFor(t, "a first login each way", 30*time.Second, func() bool {
		return (lg.ok.Load() > 0 || lg.bad.Load() > 0) && (lgAgent.ok.Load() > 0 || lgAgent.bad.Load() > 0)
	})

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
	lg.finish(t, "with the key file")
	lgAgent.finish(t, "through the ssh-agent socket")
	for i, l := range loads {
		l.finish().check(t, fmt.Sprintf("reader %d", i+1))
	}
	if n := strings.Count(agentLog.String(), "took the mount over from the agent before"); n != *takeovers {
		t.Errorf("%d takeovers logged, want %d", n, *takeovers)
	}
	t.Logf("from the old agent's last word to the new one serving, min/median/max: %s",
		spread(gaps(agentLog.String(), "upgraded: the new agent serves the mount; exiting", "credential filesystem taken over")))
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

// Under a real systemd, midfs@.service keeps its mount across `systemctl
// restart` and across kill -9 (Restart=): the unit's file descriptor store
// holds the FUSE connection and the filesystem's state, and each start
// takes them back, while a reader inside the container reads every file
// and ssh logs in through the mount, both in loops.
func TestAgentUnitRestartsAndCrashesUnderLoad(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	m := bootWithUnits(t, map[string]string{"/usr/local/bin/midfs-e2e-load": self})
	// With an ssh-agent socket too: it is kept in the store with the mount.
	mnt := startRobotUnit(t, m, "log_level: debug\n")
	login, loginAgent := startSSHDIn(t, m, mnt)
	const unit = robotUnit

	ld := startLoad(t, m.command("/usr/local/bin/midfs-e2e-load"), mnt)
	lg := startLoginLoop(t, login)
	lgAgent := startLoginLoop(t, loginAgent)
	taken := 0
	tookOver := func(how string, oldPID string) {
		t.Helper()
		st := m.unit(unit, "ActiveState", "MainPID")
		if st["ActiveState"] != "active" || st["MainPID"] == oldPID || st["MainPID"] == "0" {
			t.Fatalf("after %s: %s is %v; its log:\n%s", how, unit, st, tail(m.journal(unit), 30))
		}
		taken++
		if n := strings.Count(m.journal(unit), "took the mount over from the service manager's store"); n != taken {
			t.Fatalf("after %s: %d takeovers logged, want %d:\n%s", how, n, taken, tail(m.journal(unit), 30))
		}
	}

	start := time.Now()
	for i := range *takeovers {
		// Restarts in a row would hit the unit's start rate limit, which
		// is not what this test is about; reset-failed resets it.
		m.mustRun("systemctl", "reset-failed", unit)
		pid := m.unit(unit, "MainPID")["MainPID"]
		if out, err := m.run("systemctl", "restart", unit); err != nil {
			t.Fatalf("restart %d: %v\n%s\n%s", i+1, err, out, tail(m.journal(unit), 30))
		}
		tookOver(fmt.Sprintf("restart %d", i+1), pid)
	}
	t.Logf("%d systemctl restarts in %v", *takeovers, time.Since(start).Round(time.Millisecond))
	// The store (systemd itself, PID 1 here) holds each issuance's key in
	// secret memory: never swapped, even while no agent runs.
	if out := m.mustRun("ls", "-l", "/proc/1/fd"); !strings.Contains(out, "/secretmem") {
		t.Errorf("the service manager's store holds no secret memory:\n%s", out)
	}
	if strings.Contains(m.journal(unit), "cannot be kept in secret memory") {
		t.Errorf("the agent keeps its key in ordinary memory:\n%s", tail(m.journal(unit), 30))
	}
	lgAgent.finish(t, "through the ssh-agent socket across restarts")
	// A kill -9 ends the connections the killed agent had accepted (the
	// listening socket survives in the store; an accepted one dies with
	// its process): an ssh talking to it at that moment fails, at most one
	// per kill. It says so, or, if the agent died before listing its keys,
	// falls back to loading key.pub, which ssh_config names for the agent,
	// as a private key. Any other failure counts.
	var cut atomic.Int64
	agentLost := func(out string) bool {
		return strings.Contains(out, "communication with agent failed") || strings.Contains(out, `key.pub": bad permissions`)
	}
	lgAgent = startLoginLoop(t, func() (string, error) {
		out, err := loginAgent()
		if err != nil && agentLost(out) {
			cut.Add(1)
			return out, nil
		}
		return out, err
	})
	start = time.Now()
	var afterKill []time.Duration
	for i := range *takeovers {
		m.mustRun("systemctl", "reset-failed", unit)
		st := m.unit(unit, "MainPID", "NRestarts")
		killed := time.Now()
		m.mustRun("kill", "-KILL", st["MainPID"])
		waitFor(t, fmt.Sprintf("systemd to restart the agent after kill %d", i+1), 60*time.Second, func() bool {
			now := m.unit(unit, "ActiveState", "NRestarts")
			return now["NRestarts"] != st["NRestarts"] && now["ActiveState"] == "active"
		})
		tookOver(fmt.Sprintf("kill -9 %d", i+1), st["MainPID"])
		if g := gaps("{\"msg\":\"killed\",\"time\":\""+killed.Format(time.RFC3339Nano)+"\"}\n"+lastLine(m.journal(unit), "credential filesystem taken over"),
			"killed", "credential filesystem taken over"); len(g) == 1 {
			afterKill = append(afterKill, g[0])
		}
	}
	t.Logf("%d kill -9s in %v", *takeovers, time.Since(start).Round(time.Millisecond))
	t.Logf("from kill -9 to the next agent serving, min/median/max: %s", spread(afterKill))
	t.Logf("from SIGUSR1 to the next agent serving, min/median/max: %s",
		spread(gaps(m.journal(unit), "restarting: the mount stays, in the service manager's file descriptor store", "credential filesystem taken over")))
	lg.finish(t, "with the key file")
	lgAgent.finish(t, "through the ssh-agent socket across kill -9s")
	t.Logf("%d logins through the ssh-agent socket were cut by a kill -9 of the agent serving them", cut.Load())
	if cut.Load() > int64(*takeovers) {
		t.Errorf("%d logins through the socket cut by %d kills: more than one a kill", cut.Load(), *takeovers)
	}
	ld.finish().check(t, "the reader in the container")

	if out, err := m.run("systemctl", "stop", unit); err != nil {
		t.Fatalf("systemctl stop %s: %v\n%s", unit, err, out)
	}
	if out, _ := m.run("findmnt", "-n", mnt); out != "" {
		t.Fatalf("still mounted after systemctl stop: %s", out)
	}
}

// addRobot adds, in m's authority, bot robot (logins root) and returns its
// join token.
func addRobot(t *testing.T, m *machine) string {
	t.Helper()
	out := m.mustRun("midfs", "bots", "add", "robot", "--roles=access", "--logins=root")
	tok := tokenRe.FindStringSubmatch(out)
	if tok == nil {
		t.Fatalf("no token in `bots add` output:\n%s", out)
	}
	return tok[1]
}

// robotUnit is the agent unit startRobotUnit starts.
const robotUnit = "midfs@robot.service"

// startRobotUnit starts, in m, an authority unit and an agent unit that
// joins it as bot robot (logins root) with an ssh-agent socket, its config
// given extra lines; it returns the mount point.
func startRobotUnit(t *testing.T, m *machine, extra string) string {
	t.Helper()
	addr, pin := startAuthUnit(t, m)
	tok := addRobot(t, m)
	mnt := "/opt/" + m.name
	forgetStoredIn(t, addr, mnt)
	if err := os.MkdirAll(m.path(mnt), 0o755); err != nil {
		t.Fatal(err)
	}
	m.writeFile("/etc/midfs/robot.yaml", fmt.Sprintf("mountpoint: %s\nauth_server: %s\nca_pin: %s\ntoken: %s\nssh_agent: /run/midfs-robot.agent\n%s",
		mnt, addr, pin, tok, extra), 0o600)
	if out, err := m.run("systemctl", "start", robotUnit); err != nil {
		t.Fatalf("systemctl start %s: %v\n%s\n%s", robotUnit, err, out, m.journal(robotUnit))
	}
	return mnt
}

// startSSHDIn starts an sshd inside m that trusts its authority, adds it
// as node-name, waits until the mount at mnt lists it, and returns a login
// through the mount's ssh_config with the key file, and one through the
// ssh-agent socket it names.
func startSSHDIn(t *testing.T, m *machine, mnt string) (keyFile, agent func() (string, error)) {
	t.Helper()
	m.mustRun("mkdir", "-p", "/etc/ssh/e2e", "/run/sshd")
	m.mustRun("midfs", "auth", "sign", "--host=node-name."+cluster+",node-name", "--format=openssh", "--out=/etc/ssh/e2e/host")
	m.writeFile("/etc/ssh/e2e/user_ca.pub", m.mustRun("midfs", "auth", "export", "--type=user"), 0o644)
	m.writeFile("/etc/ssh/e2e/sshd_config", `Port 2222
ListenAddress 127.0.0.1
HostKey /etc/ssh/e2e/host
HostCertificate /etc/ssh/e2e/host-cert.pub
TrustedUserCAKeys /etc/ssh/e2e/user_ca.pub
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
PidFile /run/e2e-sshd.pid
Subsystem sftp internal-sftp
`, 0o600)
	m.mustRun("systemd-run", "--unit=e2e-sshd", "--", "/usr/sbin/sshd", "-D", "-e", "-f", "/etc/ssh/e2e/sshd_config")
	waitFor(t, "sshd in the container to listen", 30*time.Second, func() bool {
		_, err := m.run("bash", "-c", "echo >/dev/tcp/127.0.0.1/2222")
		return err == nil
	})
	m.mustRun("midfs", "nodes", "add", "node-name", "--addr=127.0.0.1:2222")
	waitFor(t, "the node in the mount's ssh_config", 60*time.Second, func() bool {
		out, _ := m.run("cat", mnt+"/ssh_config")
		return strings.Contains(out, "Host node-name."+cluster)
	})
	// A whole login, then sshd's built-in sftp server, which ends at once:
	// no shell (a busy machine's root ~/.bashrc can take seconds). ssh_config names key.pub for the
	// agent: the key file login names the key itself.
	login := func(opts ...string) func() (string, error) {
		return func() (string, error) {
			args := append(append(append([]string{"ssh", "-s"}, sshOptions(mnt)...), opts...), "root@node-name."+cluster, "sftp")
			return m.run(args...)
		}
	}
	keyFile, agent = login("-o", "IdentityAgent=none", "-i", mnt+"/key"), login()
	for _, l := range []func() (string, error){keyFile, agent} {
		if out, err := l(); err != nil {
			t.Fatalf("ssh into the container's sshd: %v\n%s\n%s", err, out, m.journal("e2e-sshd.service"))
		}
	}
	return keyFile, agent
}

// forgetStoredIn removes, at the end of the test, the bot identity an
// agent of authority addr at mnt keeps in root's kernel keyring, which the
// container shares with the host.
func forgetStoredIn(t *testing.T, addr, mnt string) {
	store, err := joiner.OpenStore("keyring", joiner.StoreName(addr, mnt))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := store.Delete(); err != nil {
			t.Errorf("cannot remove the test's key from the user keyring: %v", err)
		}
	})
}

// lastLine is the last line of log that holds s.
func lastLine(log, s string) string {
	lines := strings.Split(log, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}

// An agent restarted while its authority is down (an upgrade during an
// outage, a crash) keeps serving the issuance it took over, past
// --join-timeout and for as long as that issuance is valid: a restart, a
// kill -9 and a restart while it is still joining all keep the mount, and
// ssh logs in through it, with the key file and through the ssh-agent
// socket. Once the authority is back, it joins.
func TestAgentUnitServesThroughAnAuthorityOutage(t *testing.T) {
	m := bootWithUnits(t, nil)
	// A join timeout far shorter than the outage: it no longer ends a
	// mount taken over.
	mnt := startRobotUnit(t, m, "join_timeout: 2s\n")
	login, loginAgent := startSSHDIn(t, m, mnt)
	const unit = robotUnit
	m.mustRun("systemctl", "stop", "midfs-auth.service")

	const retrying = "authority not reachable yet; retrying"
	serving := func(how string) {
		t.Helper()
		// Past --join-timeout: six tries take 7.75 s at least.
		before := strings.Count(m.journal(unit), retrying)
		waitFor(t, "the agent to retry the authority six times after "+how, 60*time.Second, func() bool {
			return strings.Count(m.journal(unit), retrying) >= before+6
		})
		if st := m.unit(unit, "ActiveState"); st["ActiveState"] != "active" {
			t.Fatalf("after %s, with the authority down: %s is %v:\n%s", how, unit, st, tail(m.journal(unit), 30))
		}
		if out, err := m.run("cat", mnt+"/tlscert"); err != nil || !strings.Contains(out, "CERTIFICATE") {
			t.Fatalf("after %s, with the authority down: cat tlscert: %v %q", how, err, out)
		}
		if out, err := login(); err != nil {
			t.Fatalf("after %s, with the authority down: ssh through the mount: %v\n%s", how, err, out)
		}
		if out, err := loginAgent(); err != nil {
			t.Fatalf("after %s, with the authority down: ssh through the ssh-agent socket: %v\n%s", how, err, out)
		}
	}
	restart := func(how string) {
		t.Helper()
		m.mustRun("systemctl", "reset-failed", unit)
		if out, err := m.run("systemctl", "restart", unit); err != nil {
			t.Fatalf("%s: %v\n%s\n%s", how, err, out, tail(m.journal(unit), 30))
		}
	}
	restart("a restart")
	serving("a restart")
	// A restart while it joins hands the mount on as well.
	taken := strings.Count(m.journal(unit), "took the mount over")
	restart("a restart while joining")
	if n := strings.Count(m.journal(unit), "took the mount over"); n != taken+1 {
		t.Fatalf("a restart while joining: %d takeovers logged, want %d:\n%s", n, taken+1, tail(m.journal(unit), 30))
	}
	serving("a restart while joining")
	st := m.unit(unit, "MainPID", "NRestarts")
	m.mustRun("kill", "-KILL", st["MainPID"])
	waitFor(t, "systemd to restart the agent after kill -9", 60*time.Second, func() bool {
		now := m.unit(unit, "ActiveState", "NRestarts")
		return now["NRestarts"] != st["NRestarts"] && now["ActiveState"] == "active"
	})
	serving("kill -9")

	joined := strings.Count(m.journal(unit), `"msg":"mounted"`)
	m.mustRun("systemctl", "start", "midfs-auth.service")
	waitFor(t, "the agent to join once the authority is back", 60*time.Second, func() bool {
		return strings.Count(m.journal(unit), `"msg":"mounted"`) > joined
	})
	if out, err := login(); err != nil {
		t.Fatalf("ssh through the mount once joined: %v\n%s", err, out)
	}
	if out, err := loginAgent(); err != nil {
		t.Fatalf("ssh through the ssh-agent socket once joined: %v\n%s", err, out)
	}
}
