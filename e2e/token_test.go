package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/internal/testenv"
)

// spyEnv makes the test binary, re-executed, act as a local user who reads
// every process's argv and environment it can (see spy).
const spyEnv = "MIDFS_E2E_SPY"

func init() {
	if os.Getenv(spyEnv) == "1" {
		os.Exit(spy())
	}
}

// spy reads /proc/PID/cmdline and /proc/PID/environ of every process, as
// fast as it can, until SIGTERM; then it prints each distinct content it
// read, quoted, one per line, and the number of sweeps.
func spy() int {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	seen := map[string]bool{}
	sweeps := 0
	for {
		select {
		case <-stop:
			w := bufio.NewWriter(os.Stdout)
			for s := range seen {
				fmt.Fprintf(w, "%q\n", s)
			}
			fmt.Fprintf(w, "sweeps %d\n", sweeps)
			w.Flush()
			return 0
		default:
		}
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err != nil {
				continue
			}
			for _, f := range []string{"cmdline", "environ"} {
				if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), f)); err == nil && len(b) > 0 {
					seen[string(b)] = true
				}
			}
		}
		sweeps++
	}
}

// TestPrintedJoinCommandHidesTheToken runs the command `bots add` prints, as
// an operator pastes it into a shell, while an unprivileged user polls /proc:
// the user never sees the token, so cannot join first.
func TestPrintedJoinCommandHidesTheToken(t *testing.T) {
	nobody, nogroup := lookupID(t, "passwd", "nobody"), lookupID(t, "group", "nogroup")
	a := startAuthority(t)
	out := a.admin("bots", "add", "robot", "--roles=access", "--logins=root")
	tok := regexp.MustCompile(`The bot token: (\S+)`).FindStringSubmatch(out)
	line := regexp.MustCompile(`(?m)^.*midfs mount /opt/machine-id .*$`).FindString(out)
	if tok == nil || line == "" {
		t.Fatalf("no token or mount command in `bots add` output:\n%s", out)
	}
	base := publicDir(t)
	dir := filepath.Join(base, "machine-id")
	os.Mkdir(dir, 0o755)
	script := strings.Replace(line, "midfs mount /opt/machine-id", midfsBin+" mount "+dir+" --storage=memory", 1)

	// The spy is this test binary, copied where nobody may run it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	spyBin := filepath.Join(base, "spy")
	if out, err := exec.Command("cp", self, spyBin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	spyCmd := exec.Command(spyBin)
	spyCmd.Env = []string{spyEnv + "=1"}
	spyCmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nogroup, Groups: []uint32{}}}
	var spied strings.Builder
	spyCmd.Stdout, spyCmd.Stderr = &spied, &spied
	if err := spyCmd.Start(); err != nil {
		t.Fatal(err)
	}

	// An interactive shell reads the line from its input, as from a
	// terminal: the shell's own argv holds no part of it.
	sh := exec.Command("sh")
	sh.Stdin = strings.NewReader(script + "\n")
	logs := &testenv.LogBuffer{}
	sh.Stdout, sh.Stderr = logs, logs
	sh.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { sh.Wait(); close(done) }()
	waitFor(t, "the mount from the printed command", 60*time.Second, func() bool {
		select {
		case <-done:
			t.Fatalf("the printed command exited before mounting:\n%s", logs)
		default:
		}
		return mounted(dir) && exec.Command("test", "-r", filepath.Join(dir, "key.pub")).Run() == nil
	})
	syscall.Kill(-sh.Process.Pid, syscall.SIGTERM)
	<-done
	waitFor(t, "the agent to unmount", 20*time.Second, func() bool { return !mounted(dir) })
	spyCmd.Process.Signal(syscall.SIGTERM)
	spyCmd.Wait()

	report := spied.String()
	if !strings.Contains(report, `mount\x00`+dir) { // %q-quoted by the spy
		t.Fatalf("the spy never saw the agent's command line, so it proves nothing:\n%s", tail(report, 5))
	}
	if strings.Contains(report, tok[1]) {
		t.Errorf("a local user read the join token from /proc while the printed command ran:\n%s", line)
	}
	if strings.Contains(logs.String(), "command line") {
		t.Errorf("the printed command draws the command-line warning:\n%s", logs)
	}
	t.Logf("spy: %s", tail(report, 1))
}

// TestTokenInArgvWarns: --token=SECRET still joins, as the seed guide has
// it, but says how to keep the secret out of the process list; the safe
// forms do not warn.
func TestTokenInArgvWarns(t *testing.T) {
	a := startAuthority(t)
	base := publicDir(t)
	for i, form := range []string{"argv", "env", "file"} {
		tok := a.addBot("robot"+strconv.Itoa(i), "access", "root")
		dir := filepath.Join(base, form)
		os.Mkdir(dir, 0o755)
		args := []string{"--auth-server=" + a.addr, "--ca-pin=" + a.pin, "--storage=memory"}
		switch form {
		case "argv":
			args = append(args, "--token="+tok)
		case "env":
			t.Setenv("MIDFS_TOKEN", tok)
		case "file":
			f := filepath.Join(t.TempDir(), "token")
			os.WriteFile(f, []byte(tok+"\n"), 0o600)
			args = append(args, "--token-file="+f)
		}
		ag := startMount(t, dir, args...)
		ag.stop()
		os.Unsetenv("MIDFS_TOKEN")
		warned := strings.Contains(ag.logs.String(), "--token-file=FILE, the MIDFS_TOKEN variable, or --token=-")
		if warned != (form == "argv") {
			t.Errorf("token in %s: warned=%v, want %v:\n%s", form, warned, form == "argv", tail(ag.logs.String(), 10))
		}
		if strings.Contains(ag.logs.String(), tok) {
			t.Errorf("token in %s: the agent logged the token", form)
		}
	}
}

// TestWrongTokenGetsHintAndReference: a mistyped token is refused with one
// line that says what to do and gives a reference, and the authority's log
// line carries that reference with the real reason.
func TestWrongTokenGetsHintAndReference(t *testing.T) {
	a := startAuthority(t)
	a.addBot("robot", "access", "root")
	dir := filepath.Join(publicDir(t), "machine-id")
	os.Mkdir(dir, 0o755)
	wrong := strings.Repeat("ab", 32)
	r := runEnv(t, []string{"MIDFS_TOKEN=" + wrong}, "mount", dir, "--auth-server="+a.addr, "--ca-pin="+a.pin, "--storage=memory")
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	line := lines[len(lines)-1] // after the agent's log lines
	ref := regexp.MustCompile(`\(ref ([0-9a-f]{8})\)`).FindStringSubmatch(line)
	if r.code != 11 || !strings.HasPrefix(line, "midfs: join refused") || ref == nil || !strings.Contains(line, "`midfs bots add NAME`") {
		t.Fatalf("want exit 11 and one line with a ref and the `midfs bots add` hint: %s", r)
	}
	waitFor(t, "the authority to log the refusal", 10*time.Second, func() bool {
		return strings.Contains(a.logs.String(), "[ref "+ref[1]+"]")
	})
	for _, l := range strings.Split(a.logs.String(), "\n") {
		if strings.Contains(l, "[ref "+ref[1]+"]") && !strings.Contains(l, "token_unknown") {
			t.Errorf("the log line with the ref does not give the reason: %s", l)
		}
	}
	if mounted(dir) {
		t.Error("a refused join left a mount")
	}
}
