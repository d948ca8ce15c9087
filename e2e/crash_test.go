package e2e

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/joiner"
)

// The kills below land at random moments picked two ways, half the rounds
// each: anywhere in the whole renewal or join (from the signal, or from
// the start of the process, to the end as measured on this machine); or
// within answerWindow after the test sees the authority log that it has
// answered, which it does just before it sends the answer. The second kind
// lands while the answer is on its way or being kept: the case that used
// to lock the bot or burn the token, and too short (0.6 to 2 ms from the
// authority's log line to the agent's, measured here) for the first kind
// to hit often.
const answerWindow = time.Millisecond

// TestKillDuringRenewalNeverLocks renews with SIGHUP and kills the agent
// with SIGKILL at a random moment of that renewal, 50 times, restarting
// from the kernel keyring each time: every restart must mount and the bot
// must never be locked. The authority logs each retry of a renewal whose
// answer a kill cut off, which counts the kills that landed in the window.
func TestKillDuringRenewalNeverLocks(t *testing.T) {
	a := startAuthority(t)
	dir := filepath.Join(publicDir(t), "mnt")
	os.Mkdir(dir, 0o755)
	args := a.mountArgs(a.addBot("robot", "access", "root")) // default storage: keyring
	forgetStored(t, a, dir)
	ag := startMount(t, dir, args...)

	// How long a whole renewal takes here, by the agent's own log.
	var whole time.Duration
	for range 3 {
		n := len(logTimes(ag.logs.String(), "renewed"))
		ag.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, "the SIGHUP renewal", 30*time.Second, func() bool { return len(logTimes(ag.logs.String(), "renewed")) > n })
		hup, done := logTimes(ag.logs.String(), "SIGHUP: renewing now"), logTimes(ag.logs.String(), "renewed")
		whole = max(whole, done[len(done)-1].Sub(hup[len(hup)-1]))
	}

	const rounds = 50
	for round := range rounds {
		off := a.logs.Len()
		ag.cmd.Process.Signal(syscall.SIGHUP)
		if round%2 == 0 {
			time.Sleep(rand.N(whole))
		} else {
			waitLogged(t, a.logs, off, "bot renewed")
			spin(rand.N(answerWindow))
		}
		killed := ag
		kill(t, killed)
		ag = startMount(t, dir, args...) // fails the test if the restart does not mount
		<-killed.done
	}
	if logs := a.logs.String(); strings.Contains(logs, "locked") {
		t.Errorf("the authority locked the bot:\n%s", tail(logs, 10))
	}
	landed := len(logTimes(a.logs.String(), "renewal retried with the same key: issuing it again"))
	t.Logf("%d kills (half within %v of the SIGHUP, half within %v of the authority's answer); %d landed after the authority renewed and before the agent kept the answer",
		rounds, whole, answerWindow, landed)
	if landed == 0 {
		t.Error("no kill landed between the authority's answer and the agent keeping it: the test did not reach the window that used to lock")
	}
}

// TestKillDuringJoinSpendsNoToken starts an agent for a new bot and kills
// it with SIGKILL at a random moment of its join, 40 times, and restarts it
// with the same one-time token: every restart must mount. The authority
// logs each retry of a join whose answer a kill cut off, which counts the
// kills that landed in the window.
func TestKillDuringJoinSpendsNoToken(t *testing.T) {
	a := startAuthority(t)
	dir := filepath.Join(publicDir(t), "mnt")
	os.Mkdir(dir, 0o755)
	forgetStored(t, a, dir)

	// How long a start takes here, to the mount.
	start := time.Now()
	startMount(t, dir, a.mountArgs(a.addBot("calibration", "access", "root"))...).stop()
	whole := time.Since(start)

	const rounds = 40
	for round := range rounds {
		args := a.mountArgs(a.addBot(fmt.Sprintf("robot%d", round), "access", "root"))
		off := a.logs.Len()
		ag := startMountNoWait(t, dir, args...)
		if round%2 == 0 {
			time.Sleep(rand.N(whole))
		} else {
			waitLogged(t, a.logs, off, "bot joined")
			spin(rand.N(answerWindow))
		}
		kill(t, ag)
		startMount(t, dir, args...).stop() // fails the test if the restart does not mount
		<-ag.done
	}
	landed := len(logTimes(a.logs.String(), "token join retried with the same key: issuing the identity again"))
	t.Logf("%d kills (half within %v of the start, half within %v of the authority's answer); %d landed after the authority used the token and before the agent kept the answer",
		rounds, whole, answerWindow, landed)
	if landed == 0 {
		t.Error("no kill landed between the authority's answer and the agent keeping it: the test did not reach the window that used to burn the token")
	}
}

// kill sends SIGKILL to the agent and fails the test if it has not exited
// 10 s later. That one is stuck on its own mount: it held a file of it
// open, and exiting closes it, which waits for the answer of the server
// that is exiting. The restart ends it: it aborts the hung mount.
func kill(t *testing.T, ag *agent) {
	t.Helper()
	ag.cmd.Process.Kill()
	select {
	case <-ag.done:
	case <-time.After(10 * time.Second):
		t.Errorf("the agent did not exit within 10 s of SIGKILL: stuck on its own mount")
	}
}

// spin waits d without sleeping: time.Sleep comes back up to a millisecond
// late here, as long as the window the kill must land in.
func spin(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
	}
}

// waitLogged waits until logs has a line with message msg after offset off.
// It polls often: the kill that follows must land within a millisecond.
func waitLogged(t *testing.T, logs *testenv.LogBuffer, off int, msg string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for len(logTimes(logs.Since(off), msg)) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for the authority to log %q", msg)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// forgetStored removes, at the end of the test, the bot identity that the
// agents of this authority and mountpoint keep in root's kernel keyring.
func forgetStored(t *testing.T, a *authority, dir string) {
	desc := "midfs:bot:" + joiner.StoreName(a.addr, dir)
	t.Cleanup(func() {
		if id, err := unix.KeyctlSearch(unix.KEY_SPEC_USER_KEYRING, "user", desc, 0); err == nil {
			unix.KeyctlInt(unix.KEYCTL_INVALIDATE, id, 0, 0, 0)
		}
	})
}
