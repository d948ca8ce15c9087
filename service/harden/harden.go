// Package harden keeps a process's secrets in its own memory: no core
// dumps, no ptrace by other processes of the same user, no swapping where
// the memlock limit allows, and start-up code pages handed back once serving
// begins. It imports only the standard library and x/sys; cmd/midfs calls
// it from the agent's wiring, and any long-running command holding keys may.
package harden

import (
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Process keeps the agent's keys in its own memory: no core dumps, no
// ptrace by other processes of the same user (PR_SET_DUMPABLE 0 also makes
// /proc/PID/mem and friends root-only), and no swapping where the memlock
// limit allows. Each step is best effort: a failure is logged, not fatal,
// since an agent that refuses to run protects nothing.
func Process(log *slog.Logger) {
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

// ReleaseStartupPages gives back the pages of the program's own code and
// read-only data that only starting up needed. Package initialisers, flag
// parsing and the join touch code all over a 30 MB binary, and the kernel
// maps 64 KB around each touched page, so a freshly mounted agent has some
// 15 MB of the binary resident (and pinned there by mlockall) while serving
// runs in a small part of it. These pages are clean copies of files, never
// a secret: they are unlocked and unmapped from this process. They stay in
// the page cache, reclaimable like any file cache; what the agent still
// runs maps back in with a minor fault.
func ReleaseStartupPages(log *slog.Logger) {
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		log.Debug("start-up pages kept: cannot read /proc/self/smaps", "error", err)
		return
	}
	before := residentFileKB()
	var lastErr error
	for _, r := range releasableMappings(smaps) {
		// munlock of pages that are not locked is a no-op; MADV_DONTNEED
		// refuses locked pages. On a private file mapping with no
		// private copy of any page, it drops this process's page table
		// entries and nothing else.
		if _, _, e := unix.Syscall(unix.SYS_MUNLOCK, r.start, r.end-r.start, 0); e != 0 {
			lastErr = e
		}
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, r.start, r.end-r.start, unix.MADV_DONTNEED); e != 0 {
			lastErr = e
		}
	}
	log.Debug("released start-up pages of the binary", "file_rss_kb_before", before, "file_rss_kb_after", residentFileKB(), "error", lastErr)
}

// memRange is [start, end) of a mapping.
type memRange struct{ start, end uintptr }

// releasableMappings picks from /proc/self/smaps the private mappings of
// files that this process cannot write and has never written: code and
// read-only data with no private (anonymous) copy of any page. Dropping
// such a copy would lose it: read-only data the dynamic linker relocated
// (RELRO, in libc) holds some. The heap, stacks and anything writable may
// hold keys and must stay locked.
func releasableMappings(smaps []byte) []memRange {
	var out []memRange
	var cur memRange
	candidate := false
	for _, line := range strings.Split(string(smaps), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if r, perms, path, ok := mappingHeader(f); ok {
			// ADDR PERMS OFFSET DEV INODE [PATH]
			cur = r
			candidate = perms == "r-xp" || perms == "r--p"
			candidate = candidate && strings.HasPrefix(path, "/") && f[4] != "0"
			continue
		}
		if candidate && f[0] == "Anonymous:" {
			if len(f) >= 2 && f[1] == "0" {
				out = append(out, cur)
			}
			candidate = false
		}
	}
	return out
}

// mappingHeader parses the first line of a mapping in smaps.
func mappingHeader(f []string) (r memRange, perms, path string, ok bool) {
	if len(f) < 5 {
		return r, "", "", false
	}
	lo, hi, found := strings.Cut(f[0], "-")
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if !found || err1 != nil || err2 != nil || end <= start {
		return r, "", "", false
	}
	if len(f) >= 6 {
		path = f[5]
	}
	return memRange{uintptr(start), uintptr(end)}, f[1], path, true
}

// residentFileKB is RssFile of /proc/self/status, or -1.
func residentFileKB() int {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err == nil {
				return n
			}
		}
	}
	return -1
}
