package enforce

import (
	"bytes"
	"encoding/base64"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/wire"
)

// hookBin builds midfs-node-hook as make does, into a directory every
// user may read.
func hookBin(t *testing.T) string {
	t.Helper()
	cc, err := exec.LookPath("cc")
	if err != nil {
		if testenv.InCI() {
			t.Fatal("no C compiler: CI installs gcc")
		}
		t.Skip("no C compiler")
	}
	bin := filepath.Join(openDir(t), "midfs-node-hook")
	src := filepath.Join("..", "..", "cmd", "midfs-node-hook", "midfs-node-hook.c")
	if out, err := exec.Command(cc, "-O2", "-static", "-Wall", "-Wextra", "-Werror", "-o", bin, src).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	return bin
}

// openDir is a temporary directory that other users can traverse, as the
// run directory under /run is for sshd's hook user.
func openDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	return dir
}

func hookLog(t *testing.T) (*Hook, string, *testenv.LogBuffer) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("runs the hook as other users: needs root")
	}
	dir := openDir(t)
	logs := &testenv.LogBuffer{}
	allowed := uint32(65534) // nobody
	h, err := ListenHook(dir, func(uid uint32) bool { return uid == allowed }, func() time.Time { return t0 }, slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h, filepath.Join(dir, HookSocket), logs
}

// runHook runs the hook as sshd does: as uid, with the socket, the login
// and the certificate.
func runHook(t *testing.T, bin string, uid uint32, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// The hook as sshd runs it, against the node agent's socket: the login
// if the certificate may use it here, nothing otherwise, and the reason in
// the agent's log; nothing for a process that is not the hook's user, or
// before the node has a state.
func TestHookAnswersFromTheState(t *testing.T) {
	bin := hookBin(t)
	h, sock, logs := hookLog(t)
	ca := newSigner(t)
	k := base64.StdEncoding.EncodeToString(issue(t, ca, certOpts{}).Marshal())
	const nobody = 65534

	if out, _, err := runHook(t, bin, nobody, sock, "root", k); out != "" || err != nil {
		t.Fatalf("before any state: printed %q, %v; want nothing, exit 0", out, err)
	}
	if !strings.Contains(logs.String(), "no state yet") {
		t.Errorf("no reason logged for a login refused before the state:\n%s", logs)
	}

	h.Set(stateFor(ca, map[string]string{"env": "prod"}))
	if out, errs, err := runHook(t, bin, nobody, sock, "root", k); out != "root\n" || err != nil {
		t.Fatalf("allowed certificate: printed %q (%v, %s); want root", out, err, errs)
	}
	for _, c := range []struct{ user, cert, reason string }{
		{"admin", k, `principal \"admin\" not in the set`},
		{"root", "%%%", "not base64"},
		{"root", base64.StdEncoding.EncodeToString(ca.PublicKey().Marshal()), "not a certificate"},
	} {
		if out, _, err := runHook(t, bin, nobody, sock, c.user, c.cert); out != "" || err != nil {
			t.Errorf("%s: printed %q, %v; want nothing, exit 0", c.reason, out, err)
		}
		if !strings.Contains(logs.String(), c.reason) {
			t.Errorf("refusal %q not logged:\n%s", c.reason, logs)
		}
	}

	h.Set(stateFor(ca, map[string]string{"env": "prod"}, wire.Lock{ID: "l1", Bot: "robot", Message: "lost laptop"}))
	if out, _, _ := runHook(t, bin, nobody, sock, "root", k); out != "" {
		t.Errorf("locked bot: printed %q", out)
	}
	if !strings.Contains(logs.String(), "bot robot is locked (lock l1: lost laptop)") {
		t.Errorf("lock refusal not logged:\n%s", logs)
	}

	h.Set(stateFor(ca, map[string]string{"env": "prod"}))
	if out, _, _ := runHook(t, bin, 1234, sock, "root", k); out != "" {
		t.Errorf("a user who is not the hook's was answered %q", out)
	}
	if !strings.Contains(logs.String(), "not sshd's hook") {
		t.Errorf("a stranger's request not logged:\n%s", logs)
	}
}

// Whatever goes wrong on the way, the hook prints nothing (the login is
// refused), says why on standard error and exits 1.
func TestHookFailsClosed(t *testing.T) {
	bin := hookBin(t)
	_, sock, _ := hookLog(t)
	long := strings.Repeat("A", 64<<10+1)
	for _, c := range []struct {
		what string
		args []string
		want string
	}{
		{"no agent", []string{filepath.Join(filepath.Dir(sock), "none.sock"), "root", "AAAA"}, "is midfs node start running?"},
		{"missing argument", []string{sock, "root"}, "usage: midfs-node-hook SOCKET USER CERT_BASE64"},
		{"a newline in the login", []string{sock, "root\nadmin", "AAAA"}, "bad USER or CERT_BASE64"},
		{"an empty certificate", []string{sock, "root", ""}, "bad USER or CERT_BASE64"},
		{"a certificate too long", []string{sock, "root", long}, "bad USER or CERT_BASE64"},
	} {
		out, errs, err := runHook(t, bin, 65534, c.args...)
		var exit *exec.ExitError
		if out != "" || !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(errs, c.want) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%s: printed %q, %v, stderr %q; want nothing, exit 1, one line with %q", c.what, out, err, errs, c.want)
		}
	}
}

// A node agent that accepts and never answers cannot hold a login for
// sshd's LoginGraceTime: the hook gives up, and the login is refused.
func TestHookGivesUpOnAHungAgent(t *testing.T) {
	bin := hookBin(t)
	dir := openDir(t)
	sock := filepath.Join(dir, HookSocket)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(sock, 0o666)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	out, _, err := runHook(t, bin, 65534, sock, "root", "AAAA")
	var exit *exec.ExitError
	if out != "" || !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGALRM {
		t.Fatalf("printed %q, %v; want nothing, ended by its alarm", out, err)
	}
}

// A request that is not "USER\nCERT\n" is refused before any decision.
func TestReadRequest(t *testing.T) {
	for _, c := range []struct {
		in         string
		user, cert string
	}{
		{"root\nAAAA\n", "root", "AAAA"},
		{"root\nAAAA", "", ""},
		{"root\n\n", "", ""},
		{"\nAAAA\n", "", ""},
		{"root\nAAAA\nmore\n", "", ""},
		{"root\n" + strings.Repeat("A", maxRequest) + "\n", "", ""},
	} {
		user, cert, err := readRequest(strings.NewReader(c.in))
		if user != c.user || cert != c.cert || (c.user == "") != (err != nil) {
			t.Errorf("%.20q: %q %q %v", c.in, user, cert, err)
		}
	}
}
