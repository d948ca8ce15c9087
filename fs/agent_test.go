package fs

import (
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
)

// TestRenewSignalsOnlyWhatCatchesSIGHUP: renew trusts a PID only if the
// process catches SIGHUP, which most programs die of.
func TestRenewSignalsOnlyWhatCatchesSIGHUP(t *testing.T) {
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()
	if uid, catches, err := procSignalInfo(sleep.Process.Pid); err != nil || catches || uid != uint32(os.Getuid()) {
		t.Errorf("sleep: uid %d, catches SIGHUP %v, %v; want %d, false", uid, catches, err, os.Getuid())
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if _, catches, err := procSignalInfo(os.Getpid()); err != nil || !catches {
		t.Errorf("a process that catches SIGHUP: %v, %v", catches, err)
	}
}
