package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
	"github.com/midfs/midfs/fs"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/service/mounthelper"
)

// TestMain lets tests run this test binary as the midfs binary (and as the
// mount probe it starts): a child with MIDFS_TEST_MAIN=1 runs main's run.
func TestMain(m *testing.M) {
	if os.Getenv("MIDFS_TEST_MAIN") == "1" || filepath.Base(os.Args[0]) == mounthelper.ProbeArgv0 {
		os.Exit(run(os.Args))
	}
	os.Exit(m.Run())
}

// parseMountArgs parses a mount command line as main would (flags after
// the mountpoint included) and returns the plan, without running it.
func parseMountArgs(t *testing.T, args ...string) (*mountPlan, error) {
	t.Helper()
	app := newApp()
	var plan *mountPlan
	var perr error
	cliconfig.FindCommand(app.Commands, "mount").Action = func(c *cli.Context) error {
		plan, perr = parseMount(c, c.Args().First(), false)
		return nil
	}
	if err := app.Run(cliconfig.PermuteArgs(app, append([]string{"midfs", "mount"}, args...))); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return plan, perr
}

func TestMountFlagsAfterMountpoint(t *testing.T) {
	pin := "sha256:" + strings.Repeat("ab", 32)
	p, err := parseMountArgs(t, "/opt/machine-id", "--auth-server=auth.example.com:3025", "--token", "tok",
		"--ca-pin="+pin, "--owner=0:0", "--reader=1234", "--reader", "@0", "--certificate-ttl=2h",
		"--renewal-interval", "30m", "--storage=memory", "--key-algorithm=ed25519", "--join-timeout=5s")
	if err != nil {
		t.Fatal(err)
	}
	j := p.join
	if p.dir != "/opt/machine-id" || p.embedded || j.AuthServer != "auth.example.com:3025" || j.Token != "tok" || j.CAPin != pin {
		t.Errorf("plan %+v", p)
	}
	if j.CertTTL != 2*time.Hour || j.RenewInterval != 30*time.Minute || j.JoinTimeout != 5*time.Second || j.Algorithm != identity.Ed25519 {
		t.Errorf("durations or algorithm: %+v", j)
	}
	want := []fs.Reader{{UID: 1234}, {GID: 0, IsGroup: true}}
	if !slices.Equal(p.readers, want) || p.uid != 0 || p.gid != 0 || p.storage != "memory" {
		t.Errorf("owner %d:%d readers %+v storage %q", p.uid, p.gid, p.readers, p.storage)
	}
}

func TestMountReadsTheTokenFromAFileOrStandardInput(t *testing.T) {
	auth := []string{"--auth-server=auth.example.com:3025", "--ca-pin=sha256:" + strings.Repeat("ab", 32)}
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte("\n  s3cret-token \n"), 0o600)
	p, err := parseMountArgs(t, append([]string{"/m", "--token-file=" + file}, auth...)...)
	if err != nil || p.join.Token != "s3cret-token" {
		t.Errorf("--token-file: token %q, err %v", p.join.Token, err)
	}

	t.Setenv("MIDFS_TOKEN", "from-env")
	p, err = parseMountArgs(t, append([]string{"/m"}, auth...)...)
	if err != nil || p.join.Token != "from-env" {
		t.Errorf("MIDFS_TOKEN: token %q, err %v", p.join.Token, err)
	}
	if _, set := os.LookupEnv("MIDFS_TOKEN"); set {
		t.Error("MIDFS_TOKEN is still in the environment, for every child to inherit")
	}

	app := newApp()
	app.Reader = strings.NewReader("piped-token\n")
	var plan *mountPlan
	cliconfig.FindCommand(app.Commands, "mount").Action = func(c *cli.Context) (err error) {
		plan, err = parseMount(c, c.Args().First(), false)
		return err
	}
	if err := app.Run(cliconfig.PermuteArgs(app, append([]string{"midfs", "mount", "/m", "--token=-"}, auth...))); err != nil || plan.join.Token != "piped-token" {
		t.Errorf("--token=-: plan %+v, err %v", plan, err)
	}
}

func TestMountRefusesBadTokenInput(t *testing.T) {
	auth := []string{"--auth-server=auth.example.com:3025", "--ca-pin=sha256:" + strings.Repeat("ab", 32)}
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(data), 0o600)
		return p
	}
	for name, args := range map[string][]string{
		"missing file": {"--token-file=" + filepath.Join(dir, "nope")},
		"empty file":   {"--token-file=" + write("empty", " \n")},
		"two words":    {"--token-file=" + write("two", "abc def\n")},
		"huge file":    {"--token-file=" + write("huge", strings.Repeat("a", joiner.MaxTokenInput+1))},
		"both":         {"--token-file=" + write("ok", "abc"), "--token=abc"},
		"embedded":     {"--token-file=" + write("ok2", "abc")},
	} {
		if name != "embedded" {
			args = append(args, auth...)
		}
		_, err := parseMountArgs(t, append([]string{"/m"}, args...)...)
		var e *exitError
		if !errors.As(err, &e) || e.code != exitUsage || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %v; want one line and exit %d", name, err, exitUsage)
		}
		if err != nil && strings.Contains(err.Error(), "abc") {
			t.Errorf("%s: the error shows the token: %v", name, err)
		}
	}
}

func TestMountDefaultsToEmbeddedAuthority(t *testing.T) {
	p, err := parseMountArgs(t, "mnt")
	if err != nil {
		t.Fatal(err)
	}
	cwd, _ := os.Getwd()
	if !p.embedded || p.dataDir != "/var/lib/midfs" || p.dir != filepath.Join(cwd, "mnt") {
		t.Errorf("plan %+v", p)
	}
	if p.uid != uint32(os.Getuid()) || p.gid != uint32(os.Getgid()) {
		t.Errorf("owner %d:%d, want the running user", p.uid, p.gid)
	}
}

// Several replicas: the flag repeated, comma-separated, or MIDFS_AUTH_SERVER.
func TestMountTakesSeveralAuthServers(t *testing.T) {
	pin := "--ca-pin=sha256:" + strings.Repeat("ab", 32)
	p, err := parseMountArgs(t, "m", "--auth-server=a.example:3025", "--auth-server", "b.example:3025,10.0.0.3:3025", pin, "--storage=memory")
	if err != nil || p.join.AuthServer != "a.example:3025,b.example:3025,10.0.0.3:3025" {
		t.Fatalf("repeated and comma-separated --auth-server: %v %+v", err, p)
	}
	t.Setenv("MIDFS_AUTH_SERVER", "a.example:3025,b.example:3025")
	if p, err := parseMountArgs(t, "m", pin, "--storage=memory"); err != nil || p.join.AuthServer != "a.example:3025,b.example:3025" {
		t.Fatalf("MIDFS_AUTH_SERVER with two: %v %+v", err, p)
	}
}

func TestMountRefusesBadFlags(t *testing.T) {
	pin := "--ca-pin=sha256:" + strings.Repeat("ab", 32)
	for _, args := range [][]string{
		{},                 // no mountpoint
		{"a", "b"},         // two mountpoints
		{"m", "--token=x"}, // token without --auth-server
		{"m", "--auth-server=h:1", "--ca-pin=sha1:00"},
		{"m", "--auth-server=nohostport"},
		{"m", "--auth-server=h:1", "--auth-server=nohostport", pin},
		{"m", "--auth-server=h:1", pin, "--renewal-interval=2h"},
		{"m", "--auth-server=h:1", pin, "--storage=disk"},
		{"m", "--auth-server=h:1", pin, "--key-algorithm=dsa"},
		{"m", "--auth-server=h:1", pin, "--owner=no-such-user-here"},
		{"m", "--auth-server=h:1", pin, "--reader=@no-such-group-here"},
		{"m", "--auth-server=h:1", pin, "--join-method=kerberos"},
		{"m", "--auth-server=h:1", pin, "--key-files=false"},
		{"/m", "--auth-server=h:1", pin, "--ssh-agent=/m/agent.sock"},
		{"/m", "--auth-server=h:1", pin, "--ssh-agent=/run/${HOME}.sock"},
		{"/m", "--auth-server=h:1", pin, "--ssh-agent=/run/a\nb.sock"},
	} {
		_, err := parseMountArgs(t, args...)
		var e *exitError
		if !errors.As(err, &e) || e.code != exitUsage || strings.Contains(err.Error(), "\n") {
			t.Errorf("mount %q: %v; want one line and exit %d", args, err, exitUsage)
		}
	}
}

// botToken makes a bot on s and returns its one-time token.
func botToken(t *testing.T, s *auth.Server) string {
	t.Helper()
	tok, err := s.AddBot(context.Background(), admin.BotSpec{Name: "robot", Roles: []string{"access"}, Logins: []string{"root"}, Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

// tokenStillWorks proves that nothing joined with token.
func tokenStillWorks(t *testing.T, s *auth.Server, token string) {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	_, err := joiner.Join(context.Background(), joiner.Config{AuthServer: s.Addr(), Token: token, CAPin: s.CAPin(), Logger: quiet})
	if err != nil {
		t.Errorf("the token no longer works (%v): the failed mount must not have joined", err)
	}
}

func TestMountBadMountpointJoinsNothing(t *testing.T) {
	s := startAuth(t)
	token := botToken(t, s)
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	for _, dir := range []string{filepath.Join(t.TempDir(), "missing"), file} {
		r := runCLI(t, "", "mount", dir, "--auth-server="+s.Addr(), "--token="+token, "--ca-pin="+s.CAPin(), "--storage=memory")
		if r.code != exitMountPoint || !strings.Contains(r.err, dir) {
			t.Errorf("mount %s: %s; want exit %d naming the path", dir, r, exitMountPoint)
		}
	}
	tokenStillWorks(t, s, token)
}

// --ssh-agent and --key-files: read from flags, and --key-files=false
// without an agent is one line naming what it needs.
func TestMountAgentFlags(t *testing.T) {
	pin := "--ca-pin=sha256:" + strings.Repeat("ab", 32)
	p, err := parseMountArgs(t, "/opt/machine-id", "--auth-server=h:1", "--token=x", pin, "--ssh-agent=/run/robot.agent", "--key-files=false")
	if err != nil || p.agent != "/run/robot.agent" || p.keyFiles {
		t.Fatalf("plan agent %q key files %v: %v", p.agent, p.keyFiles, err)
	}
	p, err = parseMountArgs(t, "/opt/machine-id", "--auth-server=h:1", "--token=x", pin)
	if err != nil || p.agent != "" || !p.keyFiles {
		t.Fatalf("by default: plan agent %q key files %v: %v", p.agent, p.keyFiles, err)
	}
	_, err = parseMountArgs(t, "/opt/machine-id", "--auth-server=h:1", "--token=x", pin, "--key-files=false")
	if err == nil || err.Error() != "--key-files=false needs --ssh-agent=PATH: without the key files, ssh can only sign through the agent socket" {
		t.Errorf("--key-files=false alone: %v", err)
	}
}

// A socket path the agent cannot use is refused before the join, so the
// one-time token still works.
func TestMountBadAgentSocketJoinsNothing(t *testing.T) {
	s := startAuth(t)
	token := botToken(t, s)
	base := t.TempDir()
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o644)
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o777)
	os.Chmod(open, 0o777)
	for _, sock := range []string{file, filepath.Join(base, "missing", "agent.sock"), filepath.Join(open, "agent.sock")} {
		r := runCLI(t, "", "mount", t.TempDir(), "--auth-server="+s.Addr(), "--token="+token, "--ca-pin="+s.CAPin(),
			"--storage=memory", "--ssh-agent="+sock)
		if r.code != exitUsage || !strings.Contains(r.err, "--ssh-agent") || strings.Count(strings.TrimSpace(r.err), "\n") != 0 {
			t.Errorf("mount --ssh-agent=%s: %s; want exit %d and one line", sock, r, exitUsage)
		}
	}
	tokenStillWorks(t, s, token)
}

// midfs ls of a tree without the key files says why it cannot list, in one
// line, and where the nodes are to be seen.
func TestLsWithoutKeyFiles(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, identity.FileSSHPub), []byte("ecdsa-sha2-nistp256 AAAA\n"), 0o644)
	r := runCLI(t, "", "ls", "--mount", dir)
	if r.code != exitFailure || !strings.Contains(r.err, "--key-files=false") || !strings.Contains(r.err, "ssh_config") || strings.Count(strings.TrimSpace(r.err), "\n") != 0 {
		t.Errorf("midfs ls without key: %s", r)
	}
}

func TestMountWrongPinJoinsNothing(t *testing.T) {
	s, other := startAuth(t), startAuth(t)
	token := botToken(t, s)
	r := runCLI(t, "", "mount", t.TempDir(), "--auth-server="+s.Addr(), "--token="+token, "--ca-pin="+other.CAPin(), "--storage=memory")
	if r.code != exitCAPin || !strings.Contains(r.err, "CA pin mismatch") {
		t.Errorf("wrong pin: %s", r)
	}
	tokenStillWorks(t, s, token)
}

func TestMountUsedTokenRefused(t *testing.T) {
	s := startAuth(t)
	token := botToken(t, s)
	tokenStillWorks(t, s, token) // uses it
	r := runCLI(t, "", "mount", t.TempDir(), "--auth-server="+s.Addr(), "--token="+token, "--ca-pin="+s.CAPin(), "--storage=memory")
	if r.code != exitJoinRefused || !strings.HasPrefix(r.err, "join refused: join token is invalid, expired or already used (ref ") ||
		!strings.Contains(r.err, "`midfs bots add NAME`") {
		t.Errorf("used token: %s", r)
	}
}

// agentProc is `midfs mount` running as a child process.
type agentProc struct {
	cmd    *exec.Cmd
	stderr *bytes.Buffer
	exited chan error
}

// startAgent runs `midfs mount dir args...`.
func startAgent(t *testing.T, dir string, args ...string) *agentProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, append([]string{"mount", dir, "--log-format=text", "--log-level=debug"}, args...)...)
	cmd.Env = append(os.Environ(), "MIDFS_TEST_MAIN=1")
	a := &agentProc{cmd: cmd, stderr: &bytes.Buffer{}, exited: make(chan error, 1)}
	cmd.Stderr = a.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		err := <-a.exited
		a.exited <- err
		fs.CleanStale(dir) // a killed agent leaves a dead mount that TempDir cannot remove
		if t.Failed() {
			t.Logf("agent log:\n%s", a.stderr)
		}
	})
	return a
}

// waitMounted waits until dir serves the tree, or fails if the agent exits.
func (a *agentProc) waitMounted(t *testing.T, dir string) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(dir, identity.FileSSHCert)); err == nil {
			return
		}
		select {
		case err := <-a.exited:
			a.exited <- err
			t.Fatalf("agent exited before mounting (%v): %s", err, a.stderr)
		case <-deadline:
			t.Fatalf("%s not mounted after 30s", dir)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (a *agentProc) wait(t *testing.T) int {
	t.Helper()
	select {
	case err := <-a.exited:
		a.exited <- err
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not exit within 30s")
	}
	return -1
}

func isMounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// The whole agent lifetime against a real authority: mount, ls, SIGHUP,
// SIGKILL (stale mount cleaned up by the next mount, which restarts from
// the stored bot identity without a token), SIGTERM (unmounted, exit 0).
func TestMountLifecycle(t *testing.T) {
	testenv.RequireFUSE(t)
	s := startAuth(t)
	if err := s.AddNode(context.Background(), identity.Node{Name: "web", Addr: "127.0.0.1:3022", Labels: map[string]string{"env": "prod"}}); err != nil {
		t.Fatal(err)
	}
	token := botToken(t, s)
	dir := t.TempDir()
	store := t.TempDir()
	common := []string{"--auth-server=" + s.Addr(), "--storage=dir:" + store}

	a := startAgent(t, dir, append([]string{"--token=" + token, "--ca-pin=" + s.CAPin()}, common...)...)
	a.waitMounted(t, dir)
	var want []string
	for _, f := range identity.Files {
		want = append(want, f.Name)
	}
	if got := listDir(t, dir); !slices.Equal(got, want) {
		t.Errorf("tree %v, want %v", got, want)
	}
	r := runCLI(t, "", "ls", "--mount", dir)
	if r.code != 0 || !strings.Contains(r.out, "Node Name") || !strings.Contains(r.out, "web") || !strings.Contains(r.out, "env=prod") {
		t.Errorf("midfs ls: %s", r)
	}

	// Read through new processes: the mount keeps one process on the
	// generation it has been reading (fs per-process affinity).
	readKey := func() []byte {
		b, _ := exec.Command("cat", filepath.Join(dir, identity.FileSSHPub)).Output()
		return b
	}
	key1 := readKey()
	a.cmd.Process.Signal(syscall.SIGHUP)
	deadline := time.Now().Add(20 * time.Second)
	for {
		key2 := readKey()
		if len(key2) > 0 && !bytes.Equal(key1, key2) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP did not renew the identity (key.pub unchanged after 20s)")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// SIGKILL leaves a dead mount; the next mount cleans it up and, with
	// no token at all, restarts from the stored bot identity.
	a.cmd.Process.Kill()
	a.wait(t)
	b := startAgent(t, dir, common...)
	b.waitMounted(t, dir)
	if got := listDir(t, dir); len(got) != len(want) {
		t.Errorf("after restart: tree %v", got)
	}

	b.cmd.Process.Signal(syscall.SIGTERM)
	if code := b.wait(t); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0", code)
	}
	if isMounted(dir) {
		t.Error("still mounted after SIGTERM")
	}
}

// Without --auth-server the agent runs its own authority; the admin
// commands work against its data dir while it runs.
func TestMountEmbeddedAuthority(t *testing.T) {
	testenv.RequireFUSE(t)
	dir, data := t.TempDir(), filepath.Join(t.TempDir(), "state")
	a := startAgent(t, dir, "--data-dir="+data)
	a.waitMounted(t, dir)
	if got := listDir(t, dir); len(got) != len(identity.Files) {
		t.Errorf("tree %v", got)
	}
	b, err := os.ReadFile(filepath.Join(dir, identity.FileSSHCert))
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	cert, ok := pub.(*ssh.Certificate)
	if err != nil || !ok {
		t.Fatalf("key-cert.pub %q: %v", b, err)
	}
	me, _ := user.Current()
	if host, _ := os.Hostname(); cert.KeyId != "bot-"+machineBotName() || !slices.Contains(cert.ValidPrincipals, me.Username) {
		t.Errorf("certificate of host %s: key id %q principals %v; want bot-%s and login %s", host, cert.KeyId, cert.ValidPrincipals, machineBotName(), me.Username)
	}
	r := runCLI(t, data, "auth", "export", "--type=user")
	if r.code != 0 || !strings.HasPrefix(r.out, "ecdsa-sha2-nistp256 ") {
		t.Errorf("auth export against the embedded authority: %s", r)
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	if code := a.wait(t); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
	if isMounted(dir) {
		t.Error("still mounted after SIGTERM")
	}
}
