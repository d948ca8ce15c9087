// Package e2e drives the real midfs binary against real FUSE, a real OpenSSH
// sshd and client, and real mount(8). The tests need root: they mount, start
// sshd and act as other uids. Nothing here touches a mount from inside the
// process that serves it: every midfs runs as a child process.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/node"
)

// midfsBin is the binary under test: $MIDFS_BIN (make e2e sets it), or one
// built from this checkout. hookBin is sshd's hook, midfs-node-hook,
// beside it, as make builds and installs it.
var midfsBin, hookBin string

const cluster = "example.test"

func TestMain(m *testing.M) {
	if why := testenv.MissingFUSE(); why != "" {
		if testenv.InCI() {
			fmt.Printf("e2e: FAIL: %s; CI=true, so this fails instead of skipping\n", why)
			os.Exit(1)
		}
		fmt.Printf("e2e: skipped: %s; run `sudo make e2e`\n", why)
		os.Exit(0)
	}
	midfsBin = os.Getenv("MIDFS_BIN")
	if midfsBin == "" {
		dir, err := os.MkdirTemp("", "midfs-bin-")
		if err != nil {
			panic(err)
		}
		midfsBin = filepath.Join(dir, "midfs")
		for _, build := range [][]string{
			{"go", "build", "-tags", "urfave_cli_no_docs", "-o", midfsBin, "../cmd/midfs"},
			{"cc", "-O2", "-static", "-o", filepath.Join(dir, node.HookName), "../cmd/midfs-node-hook/midfs-node-hook.c"},
		} {
			if out, err := exec.Command(build[0], build[1:]...).CombinedOutput(); err != nil {
				fmt.Printf("e2e: %s: %v\n%s", strings.Join(build, " "), err, out)
				os.Exit(1)
			}
		}
		defer os.RemoveAll(dir)
	}
	hookBin = filepath.Join(filepath.Dir(midfsBin), node.HookName)
	if _, err := os.Stat(hookBin); err != nil {
		fmt.Printf("e2e: sshd's hook beside the binary under test: %v (make build makes both)\n", err)
		os.Exit(1)
	}
	// Every temp dir of this run (t.TempDir, publicDir, the agents' own)
	// goes under one root, so that the leftover check below sees this run's
	// mounts only, not those of another run on the same machine.
	sysTmp := os.TempDir()
	tmp, _ := os.Stat(sysTmp)
	root, err := os.MkdirTemp("", "midfs-e2e-run-")
	if err != nil {
		panic(err)
	}
	os.Chmod(root, 0o755) // the non-root readers must traverse it
	os.Setenv("TMPDIR", root)
	code := m.Run()
	if now, _ := os.Stat(sysTmp); tmp != nil && now != nil && now.Mode() != tmp.Mode() {
		fmt.Printf("e2e: the tests changed the mode of %s from %v to %v\n", sysTmp, tmp.Mode(), now.Mode())
		code = 1
	}
	if left := midfsMountsUnder(root); len(left) > 0 {
		fmt.Printf("e2e: the tests left midfs mounts behind: %s\n", strings.Join(left, ", "))
		code = 1
	} else {
		os.RemoveAll(root)
	}
	os.Exit(code)
}

// result is what one run of the binary did.
type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs midfs to completion with a deadline.
func run(t testing.TB, args ...string) result {
	t.Helper()
	return runEnv(t, nil, args...)
}

func runEnv(t testing.TB, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, midfsBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("midfs %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// mustRun runs midfs and fails the test unless it exits 0.
func mustRun(t testing.TB, args ...string) string {
	t.Helper()
	r := run(t, args...)
	if r.code != 0 {
		t.Fatalf("midfs %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// publicDir makes a directory every uid can traverse (t.TempDir is 0700,
// which would hide the mount from the non-root readers the tests use).
func publicDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "midfs-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() {
		if mounted(dir) || len(midfsMountsUnder(dir)) > 0 {
			t.Errorf("%s still has a mount at cleanup; not removing it", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// authority is a `midfs auth start` child process.
type authority struct {
	t       testing.TB
	dataDir string
	addr    string
	pin     string
	args    []string
	cmd     *exec.Cmd
	logs    *testenv.LogBuffer
	done    chan struct{}
	bots    int // bots made by mountRobot, for unique names
}

// startAuthority starts an authority on a loopback port with its own data dir.
func startAuthority(t testing.TB, extra ...string) *authority {
	t.Helper()
	return startAuthorityAt(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), extra...)
}

// startAuthorityAt is startAuthority listening on addr.
func startAuthorityAt(t testing.TB, addr string, extra ...string) *authority {
	t.Helper()
	a := &authority{t: t, dataDir: t.TempDir(), logs: &testenv.LogBuffer{}, addr: addr}
	a.args = append([]string{"auth", "start", "--data-dir", a.dataDir, "--listen", a.addr,
		"--cluster-name", cluster, "--log-format", "json", "--log-level", "debug"}, extra...)
	a.start()
	t.Cleanup(a.stop)
	st := a.admin("status")
	m := regexp.MustCompile(`sha256:[0-9a-f]{64}`).FindString(st)
	if m == "" {
		t.Fatalf("no CA pin in `midfs status`:\n%s", st)
	}
	a.pin = m
	return a
}

func (a *authority) start() {
	a.t.Helper()
	a.cmd = exec.Command(midfsBin, a.args...)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	a.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(a.cmd, a.done)
	waitFor(a.t, "the authority to answer on its admin socket", 30*time.Second, func() bool {
		select {
		case <-a.done:
			a.t.Fatalf("authority exited at start:\n%s", a.logs)
		default:
		}
		return run(a.t, "status", "--data-dir", a.dataDir).code == 0 && dialable(a.addr)
	})
}

// stop ends the authority with SIGTERM (a no-op when it is not running).
func (a *authority) stop() {
	if a.cmd == nil {
		return
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(15 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
		a.t.Errorf("authority ignored SIGTERM for 15s")
	}
	a.cmd = nil
}

// kill ends the authority with SIGKILL, as a crash would.
func (a *authority) kill() {
	a.cmd.Process.Kill()
	<-a.done
	a.cmd = nil
}

func (a *authority) restart() {
	a.t.Helper()
	a.stop()
	a.start()
}

// admin runs an admin command against this authority's data dir.
func (a *authority) admin(args ...string) string {
	a.t.Helper()
	return mustRun(a.t, append(args, "--data-dir", a.dataDir)...)
}

var tokenRe = regexp.MustCompile(`The bot token: ([0-9A-Za-z_-]+)`)

// addBot makes a bot and returns its one-time token.
func (a *authority) addBot(name, roles, logins string) string {
	a.t.Helper()
	out := a.admin("bots", "add", name, "--roles="+roles, "--logins="+logins)
	m := tokenRe.FindStringSubmatch(out)
	if m == nil {
		a.t.Fatalf("no token in `bots add` output:\n%s", out)
	}
	return m[1]
}

func dialable(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// agent is a `midfs mount` child process and its mountpoint.
type agent struct {
	t    testing.TB
	dir  string
	cmd  *exec.Cmd
	logs *testenv.LogBuffer
	done chan struct{}
	err  error
}

// mountArgs are the flags a test agent joins a with.
func (a *authority) mountArgs(token string) []string {
	return []string{"--auth-server=" + a.addr, "--token=" + token, "--ca-pin=" + a.pin}
}

// startMount runs `midfs mount DIR args...` and waits until the tree is
// served. It fails the test with the agent's output if the agent exits first.
func startMount(t testing.TB, dir string, args ...string) *agent {
	t.Helper()
	ag := startMountNoWait(t, dir, args...)
	waitFor(t, "the mount at "+dir, 60*time.Second, func() bool {
		select {
		case <-ag.done:
			t.Fatalf("midfs mount exited before mounting (%v):\n%s", ag.err, ag.logs)
		default:
		}
		// Listed in mountinfo is not enough: a dead mount is listed too.
		// Ready means a file can be opened, checked from a child process
		// so this test process is not pinned to a generation.
		return mounted(dir) && exec.Command("test", "-r", filepath.Join(dir, "key.pub")).Run() == nil
	})
	return ag
}

func startMountNoWait(t testing.TB, dir string, args ...string) *agent {
	t.Helper()
	ag := &agent{t: t, dir: dir, logs: &testenv.LogBuffer{}, done: make(chan struct{})}
	full := append([]string{"mount", dir, "--log-format=json", "--log-level=debug"}, args...)
	ag.cmd = exec.Command(midfsBin, full...)
	ag.cmd.Stdout, ag.cmd.Stderr = ag.logs, ag.logs
	if err := ag.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { ag.err = ag.cmd.Wait(); close(ag.done) }()
	t.Cleanup(ag.stop)
	return ag
}

// stop sends SIGTERM and checks the agent unmounted and exited 0.
func (ag *agent) stop() {
	select {
	case <-ag.done:
		return
	default:
	}
	ag.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ag.done:
		if ag.err != nil {
			ag.t.Errorf("midfs mount exited with %v after SIGTERM:\n%s", ag.err, tail(ag.logs.String(), 20))
		}
	case <-time.After(20 * time.Second):
		ag.cmd.Process.Kill()
		<-ag.done
		ag.t.Errorf("midfs mount ignored SIGTERM for 20s")
	}
	if mounted(ag.dir) {
		ag.t.Errorf("%s still mounted after the agent exited", ag.dir)
		exec.Command("umount", "-l", ag.dir).Run()
	}
}

// kill ends the agent with SIGKILL and leaves whatever the kernel leaves.
func (ag *agent) kill() {
	ag.cmd.Process.Kill()
	<-ag.done
}

func (ag *agent) file(name string) string { return filepath.Join(ag.dir, name) }

// read reads a served file through cat, a new process each time: the mount
// keeps a process that keeps reading on one issuance for a while (so that
// its key and certificate match), and tests want to see renewals.
func (ag *agent) read(name string) []byte {
	ag.t.Helper()
	b, err := exec.Command("cat", ag.file(name)).Output()
	if err != nil {
		ag.t.Fatalf("cat %s: %v", name, err)
	}
	return b
}

// mounted reports whether dir is a mount point of type fuse.midfs.
func mounted(dir string) bool {
	for _, m := range midfsMounts() {
		if m == dir {
			return true
		}
	}
	return false
}

func midfsMountsUnder(dir string) []string {
	var out []string
	for _, m := range midfsMounts() {
		if strings.HasPrefix(m, dir+"/") {
			out = append(out, m)
		}
	}
	return out
}

// midfsMounts lists the mount points of type fuse.midfs from mountinfo.
func midfsMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPER
		fields := strings.Fields(s.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && fields[i+1] == "fuse.midfs" && len(fields) > 4 {
				out = append(out, unescapeMount(fields[4]))
			}
		}
	}
	return out
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sshd is a real OpenSSH server on loopback that trusts the authority's user
// CA and presents a host certificate from `midfs auth sign`.
type sshd struct {
	port int
	dir  string // host key and certificate, user_ca.pub, sshd_config
	cmd  *exec.Cmd
	logs *testenv.LogBuffer
}

// startSSHD signs a host key for names and starts sshd on a free port.
func startSSHD(t testing.TB, a *authority, names ...string) *sshd {
	t.Helper()
	return startSSHDWith(t, a, "", names...)
}

// startSSHDWith is startSSHD with more lines for sshd_config.
func startSSHDWith(t testing.TB, a *authority, extraConfig string, names ...string) *sshd {
	t.Helper()
	bin, err := exec.LookPath("sshd")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/sshd"); err != nil {
			t.Fatal("sshd not installed (.ci/run installs openssh-server)")
		}
	}
	os.MkdirAll("/run/sshd", 0o755) // privilege separation directory
	dir := t.TempDir()
	a.admin("auth", "sign", "--host="+strings.Join(names, ","), "--format=openssh", "--out="+filepath.Join(dir, "host"))
	ca := a.admin("auth", "export", "--type=user")
	if err := os.WriteFile(filepath.Join(dir, "user_ca.pub"), []byte(ca), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &sshd{port: freePort(t), dir: dir, logs: &testenv.LogBuffer{}}
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %[2]s/host
HostCertificate %[2]s/host-cert.pub
TrustedUserCAKeys %[2]s/user_ca.pub
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PidFile %[2]s/sshd.pid
LogLevel VERBOSE
Subsystem sftp internal-sftp
`, s.port, dir) + extraConfig
	cfgPath := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-f", cfgPath).CombinedOutput(); err != nil {
		t.Fatalf("sshd -t rejects the config built from midfs auth sign/export: %v\n%s", err, out)
	}
	s.cmd = exec.Command(bin, "-D", "-e", "-f", cfgPath)
	s.cmd.Stdout, s.cmd.Stderr = s.logs, s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Kill(); s.cmd.Wait() })
	waitFor(t, "sshd to listen", 10*time.Second, func() bool { return dialable("127.0.0.1:" + strconv.Itoa(s.port)) })
	return s
}

func (s *sshd) addr() string { return "127.0.0.1:" + strconv.Itoa(s.port) }

// ssh runs the real OpenSSH client with the mount's ssh_config, strict host
// key checking on, no agent and no user config getting in the way.
func sshRun(t testing.TB, mnt, target string, command ...string) (string, error) {
	t.Helper()
	return sshWith(t, append(sshOptions(mnt), "-o", "IdentityAgent=none"), target, command...)
}

// sshLoginNoShell logs in through the mount and starts sshd's built-in sftp
// server, which ends at once (no input): a whole login that runs no shell,
// so it does not take the seconds a busy machine's root ~/.bashrc may.
func sshLoginNoShell(t testing.TB, mnt, target string) (string, error) {
	t.Helper()
	return sshWith(t, append(sshOptions(mnt), "-o", "IdentityAgent=none", "-s"), target, "sftp")
}

// sshOptions are the options every test ssh runs with: the mount's
// ssh_config, strict host key checking, never a prompt.
func sshOptions(mnt string) []string {
	return []string{"-F", filepath.Join(mnt, "ssh_config"), "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=10"}
}

// sshWith runs ssh with opts to target, with no SSH_AUTH_SOCK from the
// test's environment: only what ssh_config and opts say.
func sshWith(t testing.TB, opts []string, target string, command ...string) (string, error) {
	t.Helper()
	args := append(append(slices.Clone(opts), target), command...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", args...)
	cmd.Env = envWithout("SSH_AUTH_SOCK")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// envWithout is this process's environment less the named variables.
func envWithout(names ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, name) {
			env = append(env, kv)
		}
	}
	return env
}
