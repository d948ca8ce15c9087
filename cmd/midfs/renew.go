package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/fs"
)

func renewCommand() *cli.Command {
	return &cli.Command{
		Name:      "renew",
		Usage:     "renew the credentials of one mount now, and wait until it has",
		ArgsUsage: "MOUNTPOINT",
		Description: "Sends SIGHUP to the agent serving MOUNTPOINT (the PID in its root's " + fs.XattrPID + ")\n" +
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
	pid, err := fs.MountAgent(dir)
	if err != nil {
		return fail(exitMountPoint, err)
	}
	before, err := fs.RootXattr(dir, fs.XattrCertSerial)
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
		now, err := fs.RootXattr(dir, fs.XattrCertSerial)
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
