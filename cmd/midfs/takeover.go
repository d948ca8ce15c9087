package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/fs"
	"github.com/midfs/midfs/service"
)

// The agent keeps its mount across its own restarts and upgrades (fs/state.go,
// fs/takeover.go): a new agent process takes over the FUSE connection, the
// state and the generations of the old one, so readers see a pause, never
// the mount go.
//
//   - Under systemd, the descriptors live in the unit's file descriptor
//     store from the moment they exist; `systemctl restart` sends
//     RestartKillSignal= (SIGUSR1), on which the agent stops answering and
//     exits, leaving the mount to the next start. After a kill -9, the
//     restarted agent takes them back the same way.
//   - Without systemd, `midfs upgrade MOUNTPOINT` sends SIGUSR2: the agent
//     starts the binary it was started from (a new one, if it was replaced)
//     with its own arguments and hands the descriptors over a socket pair.

// XattrVersion on the mount's root is the version of the agent serving it;
// XattrUpgrade says it takes `midfs upgrade` (an older agent would die of
// the signal).
const (
	XattrVersion = "user.midfs.version"
	XattrUpgrade = "user.midfs.upgrade"
	upgradeProto = "sigusr2"
)

// handoverTimeout bounds each step of a handover: the new process starting,
// the old one ceasing to answer, the new one taking over.
const handoverTimeout = 30 * time.Second

func upgradeCommand() *cli.Command {
	return &cli.Command{
		Name:      "upgrade",
		Usage:     "hand a mount to a new agent process (the binary the agent was started from), without unmounting",
		ArgsUsage: "MOUNTPOINT",
		Description: "Install the new binary where the agent was started from, then run midfs upgrade: the agent serving\n" +
			"MOUNTPOINT starts it with its own arguments and hands it the FUSE connection, the files' snapshots and the\n" +
			"per-process pins. Readers see a pause of milliseconds, never an error; the mount is never replaced.\n" +
			"The bot identity comes from --storage (keyring by default). An agent run by systemd is upgraded with\n" +
			"`systemctl restart`, which keeps the mount the same way.\n" +
			exitHelp(exitFailure, exitUsage, exitMountPoint),
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "timeout", Value: time.Minute, Usage: "`DURATION` to wait for the new agent to serve"},
		},
		Action: runUpgrade,
	}
}

func runUpgrade(c *cli.Context) error {
	dir, err := oneArg(c, "MOUNTPOINT")
	if err != nil {
		return err
	}
	pid, err := fs.MountAgent(dir)
	if err != nil {
		return fail(exitMountPoint, err)
	}
	if unit := systemdUnit(pid); unit != "" {
		return failf(exitFailure, "the agent of %s (pid %d) is the systemd service %s: install the new binary and run `systemctl restart %s`, which keeps the mount", dir, pid, unit, unit)
	}
	if proto, _ := fs.RootXattr(dir, XattrUpgrade); proto != upgradeProto {
		return failf(exitFailure, "the agent of %s (pid %d) predates midfs upgrade and would die of its signal: restart it once (its readers then see the mount go)", dir, pid)
	}
	oldVersion, _ := fs.RootXattr(dir, XattrVersion)
	if err := unix.Kill(pid, unix.SIGUSR2); err != nil {
		return failf(exitFailure, "cannot signal the agent of %s (pid %d): %v; run midfs upgrade as its user or root", dir, pid, err)
	}
	// Polling with a deadline: a mount cannot notify a waiter.
	deadline := time.Now().Add(c.Duration("timeout"))
	for {
		if now, err := fs.MountAgent(dir); err == nil && now != pid {
			newVersion, _ := fs.RootXattr(dir, XattrVersion)
			fmt.Fprintf(c.App.Writer, "%s: agent %d (%s) handed over to agent %d (%s)\n", dir, pid, oldVersion, now, newVersion)
			return nil
		}
		if time.Now().After(deadline) {
			return failf(exitFailure, "the agent of %s (pid %d) did not hand over within %s; its log says why", dir, pid, c.Duration("timeout"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// systemdUnit is the systemd service process pid runs in, from its cgroup
// path; "" outside one.
func systemdUnit(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 || (parts[0] != "0" && parts[1] != "name=systemd") {
			continue
		}
		path := strings.Split(parts[2], "/")
		if unit := path[len(path)-1]; strings.HasSuffix(unit, ".service") {
			return unit
		}
	}
	return ""
}

// takeover is where a starting agent's mount comes from: the old agent of
// an upgrade, the service manager's store, or nowhere (a fresh mount).
type takeover struct {
	pred   *service.Predecessor
	stored map[string]*os.File
}

func takeoverOf(svc *running, pred *service.Predecessor) *takeover {
	return &takeover{pred: pred, stored: svc.Stored()}
}

// any says whether a mount is there to take over.
func (t *takeover) any() bool { return t.pred != nil || t.stored != nil }

// resume takes the mount over, and serves it, before anything else is
// done: readers wait meanwhile. It returns nil without an error when there
// is nothing to take over, or when what the service manager kept does not
// take (its mount is then left to be cleaned up and mounted again).
func (t *takeover) resume(opts fs.Options, svc *running, log *slog.Logger) (*fs.Server, error) {
	switch {
	case t.pred != nil:
		fds, err := t.pred.Take(handoverTimeout)
		if err != nil {
			return nil, err
		}
		srv, err := fs.Resume(opts, fds)
		if err != nil {
			t.pred.Failed(err)
			return nil, err
		}
		t.pred.Resumed() // returns once the old agent has exited
		srv.Start()
		log.Info("took the mount over from the agent before", "dir", opts.Dir)
		return srv, nil
	case t.stored != nil:
		names := make([]string, 0, len(t.stored))
		for name := range t.stored {
			names = append(names, name)
		}
		srv, err := fs.Resume(opts, t.stored)
		if err != nil {
			log.Error("cannot take the mount over from the service manager's store; mounting anew, which readers notice",
				"dir", opts.Dir, "err", err)
			for _, name := range names {
				svc.Drop(name)
			}
			return nil, nil
		}
		srv.Start()
		log.Info("took the mount over from the service manager's store", "dir", opts.Dir)
		return srv, nil
	}
	return nil, nil
}

// handOver answers SIGUSR1 and SIGUSR2. stop: the agent is to exit; keep:
// without unmounting, since another process has or will have the mount.
func handOver(sig os.Signal, srv *fs.Server, svc *running, p *mountPlan, exe string, log *slog.Logger) (stop, keep bool) {
	if sig == syscall.SIGUSR1 {
		// systemd's RestartKillSignal=: a restart is coming.
		if !svc.FDStore() {
			log.Warn("SIGUSR1 leaves the mount to the service manager's file descriptor store, which this service has not (FileDescriptorStoreMax=): unmounting")
			return true, false
		}
		if _, err := srv.Handover(handoverTimeout); err != nil {
			log.Error("cannot leave the mount to the restart; unmounting", "err", err)
			return true, false
		}
		log.Info("restarting: the mount stays, in the service manager's file descriptor store", "dir", p.dir)
		return true, true
	}
	if err := upgrade(srv, svc, p, exe, log); err != nil {
		log.Error("not upgraded; serving on", "err", err)
		return false, false
	}
	return true, true
}

// upgrade starts exe to take the mount over and hands it over.
func upgrade(srv *fs.Server, svc *running, p *mountPlan, exe string, log *slog.Logger) error {
	switch {
	case svc.FDStore():
		return fmt.Errorf("run by systemd: `systemctl restart` upgrades, and keeps the mount")
	case !p.embedded && p.storage == "memory":
		return fmt.Errorf("--storage=memory keeps no bot identity for a new process to start from")
	case exe == "":
		return fmt.Errorf("the path this agent was started from is unknown")
	}
	log.Info("upgrading: starting the new agent", "binary", exe)
	succ, err := service.StartSuccessor(exe, os.Args[1:], os.Environ(), handoverTimeout)
	if err != nil {
		return err
	}
	fds, err := srv.Handover(handoverTimeout)
	if err != nil {
		succ.Abort()
		return err
	}
	if err := succ.Hand(fds, handoverTimeout); err != nil {
		if cerr := srv.Continue(); cerr != nil {
			log.Error("cannot serve again after a failed handover", "err", cerr)
		}
		return err
	}
	log.Info("upgraded: the new agent serves the mount; exiting", "dir", p.dir, "pid", succ.Pid())
	return nil
}
