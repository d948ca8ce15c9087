package main

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// harden keeps the agent's keys in its own memory: no core dumps, no
// ptrace by other processes of the same user (PR_SET_DUMPABLE 0 also makes
// /proc/PID/mem and friends root-only), and no swapping where the memlock
// limit allows. Each step is best effort: a failure is logged, not fatal,
// since an agent that refuses to run protects nothing.
func harden(log *slog.Logger) {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		log.Warn("cannot make the process non-dumpable", "error", err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		log.Warn("cannot disable core dumps", "error", err)
	}
	lockMemory(log)
}

// lockMemory calls mlockall only when it cannot backfire: with
// MCL_FUTURE, every later mmap beyond RLIMIT_MEMLOCK fails, and for the Go
// runtime a failed heap mmap is a fatal "out of memory". So it locks only
// with CAP_IPC_LOCK or an unlimited memlock limit. MCL_ONFAULT (Linux 4.4)
// locks pages as they are touched instead of populating every mapping, so
// locking does not inflate the resident size.
func lockMemory(log *slog.Logger) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); err != nil {
		log.Debug("memory not locked: cannot read RLIMIT_MEMLOCK", "error", err)
		return
	}
	if lim.Cur != unix.RLIM_INFINITY && !hasCapIPCLock() {
		log.Debug("memory not locked: RLIMIT_MEMLOCK is limited and CAP_IPC_LOCK is missing; keys may reach swap",
			"memlock_bytes", lim.Cur)
		return
	}
	err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT)
	if err == unix.EINVAL { // kernel older than 4.4
		err = unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE)
	}
	if err != nil {
		log.Debug("memory not locked", "error", err)
		return
	}
	log.Debug("memory locked: keys never reach swap")
}

func hasCapIPCLock() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[0].Effective&(1<<unix.CAP_IPC_LOCK) != 0
}
