package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/fs"
)

// XattrPID on the mount's root is the PID of the agent serving it, so that
// `midfs renew` signals that agent alone (pkill -f 'midfs mount' also hits
// every other agent and the shell that started one).
const XattrPID = "user.midfs.pid"

func renewCommand() *cli.Command {
	return &cli.Command{
		Name:      "renew",
		Usage:     "renew the credentials of one mount now, and wait until it has",
		ArgsUsage: "MOUNTPOINT",
		Description: "Sends SIGHUP to the agent serving MOUNTPOINT (the PID in its root's " + XattrPID + ")\n" +
			"and waits until the certificate it serves is a new one (" + fs.XattrCertSerial + ").\n" +
			exitHelp(exitFailure, exitUsage, exitMountPoint),
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Value: time.Minute, Usage: "`DURATION` to wait for the new certificate"},
		},
		Action: runRenew,
	}
}

func runRenew(c *cli.Context) error {
	dir, err := oneArg(c, "MOUNTPOINT")
	if err != nil {
		return err
	}
	pid, err := mountAgent(dir)
	if err != nil {
		return err
	}
	before, err := rootXattr(dir, fs.XattrCertSerial)
	if err != nil {
		return fail(exitMountPoint, err)
	}
	if err := unix.Kill(pid, unix.SIGHUP); err != nil {
		return failf(exitFailure, "cannot signal the agent of %s (pid %d): %v; run midfs renew as its user or root", dir, pid, err)
	}
	// Polling with a deadline: a mount cannot notify a waiter. The serial,
	// not key-cert.pub: the tree keeps serving a process that reads it
	// often the generation it read before (fs/pins.go).
	deadline := time.Now().Add(c.Duration("timeout"))
	for {
		now, err := rootXattr(dir, fs.XattrCertSerial)
		if err == nil && now != before {
			fmt.Fprintf(c.App.Writer, "%s renewed by agent %d\n", dir, pid)
			return nil
		}
		if time.Now().After(deadline) {
			return failf(exitFailure, "the agent of %s (pid %d) did not renew within %s; its log says why", dir, pid, c.Duration("timeout"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// rootXattr reads one of the xattrs the agent serves on the mount's root.
func rootXattr(dir, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Getxattr(dir, name, buf)
	if err != nil {
		return "", fmt.Errorf("%s does not give its %s (%v): is it served by an older midfs? send that agent SIGHUP", dir, name, err)
	}
	return string(buf[:n]), nil
}

// mountAgent finds the agent serving dir: the PID its root names, trusted
// only if that process belongs to the user the kernel says made the mount
// and catches SIGHUP. A forged or stale PID then cannot make renew signal
// another user's process, nor kill one that would die of SIGHUP.
func mountAgent(dir string) (int, error) {
	owner, err := fs.MountUser(dir)
	if err != nil {
		return 0, fail(exitMountPoint, err)
	}
	v, err := rootXattr(dir, XattrPID)
	if err != nil {
		return 0, fail(exitMountPoint, err)
	}
	pid, err := strconv.Atoi(v)
	if err != nil || pid <= 0 {
		return 0, failf(exitMountPoint, "%s names no agent PID in %s (%q)", dir, XattrPID, v)
	}
	uid, catchesHUP, err := procSignalInfo(pid)
	switch {
	case err != nil:
		return 0, failf(exitMountPoint, "the agent of %s (pid %d) is not visible here: %v", dir, pid, err)
	case uid != owner || !catchesHUP:
		return 0, failf(exitMountPoint, "pid %d, named by %s, is not the agent that made the mount; nothing was signalled", pid, dir)
	}
	return pid, nil
}

// procSignalInfo reads a process's real uid and whether it catches SIGHUP
// from /proc/PID/status.
func procSignalInfo(pid int) (uid uint32, catchesHUP bool, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	haveUID := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, val, _ := strings.Cut(sc.Text(), ":")
		fields := strings.Fields(val)
		if len(fields) == 0 {
			continue
		}
		switch key {
		case "Uid":
			n, err := strconv.ParseUint(fields[0], 10, 32)
			uid, haveUID = uint32(n), err == nil
		case "SigCgt":
			mask, err := strconv.ParseUint(fields[0], 16, 64)
			catchesHUP = err == nil && mask&(1<<(unix.SIGHUP-1)) != 0
		}
	}
	if !haveUID {
		return 0, false, errors.New("no Uid in its status")
	}
	return uid, catchesHUP, sc.Err()
}
