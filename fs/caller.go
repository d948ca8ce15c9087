package fs

import (
	"bytes"
	"context"
	"log/slog"
	"strconv"
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// maySeeSecrets says whether the caller may open key and identity, by the
// mount's Access. The kernel gives us the caller's effective uid and gid but
// not its supplementary groups; those come from /proc/<pid>/status. That
// read races with the caller: it is blocked in open(2) while we look, but if
// it is killed meanwhile and its pid reused, we read another process. A
// reused pid can only make us answer for the newcomer's groups to a caller
// that is already gone, so the race leaks nothing.
func (s *Server) maySeeSecrets(c *fuse.Caller) bool {
	if c == nil {
		return false
	}
	return s.access.Allows(c.Uid, c.Gid, func() []uint32 {
		if c.Pid == 0 {
			return nil
		}
		if st, ok := readStatus(c.Pid); ok {
			return st.groups
		}
		return nil
	})
}

// reportOpen logs an open of a secret file at debug level (every open of a
// secret is worth an audit line; public files would only be noise) and
// reports every open to the metrics hook.
// gen is the generation an open that succeeded reads, 0 for one refused.
func (s *Server) reportOpen(n *fileNode, c *fuse.Caller, result string, gen uint64) {
	if s.opts.OnOpen != nil {
		s.opts.OnOpen(n.file.Name, result)
	}
	ctx := context.Background()
	if !n.file.Secret || !s.log.Enabled(ctx, slog.LevelDebug) {
		return
	}
	var uid, pid uint32
	var comm string
	if c != nil {
		uid, pid = c.Uid, c.Pid
		if st, ok := readStatus(pid); ok {
			comm = st.name
		}
	}
	attrs := []slog.Attr{slog.String("file", n.file.Name), slog.Uint64("uid", uint64(uid)), slog.Uint64("pid", uint64(pid)),
		slog.String("comm", comm), slog.String("result", result)}
	if gen != 0 {
		attrs = append(attrs, slog.Uint64("generation", gen))
	}
	s.log.LogAttrs(ctx, slog.LevelDebug, "open secret file", attrs...)
}

// threadGroup maps the thread id the kernel sends to its process id (thread
// group id), so all threads of a process share one pin. pidfd_open succeeds
// only for a thread-group leader, which answers single-threaded readers
// (ssh, cat, openssl) with one cheap syscall. Other threads (Go programs
// read from whatever thread runs the goroutine) are looked up in
// /proc/<tid>/status once and remembered; a remembered answer is checked
// with one stat of /proc/<tgid>/task/<tid>, which exists exactly while that
// thread belongs to that process, so a reused tid is never misattributed.
func threadGroup(tid uint32) uint32 {
	if tid == 0 {
		return 0
	}
	if tgid, ok := tgids.get(tid); ok {
		var st unix.Stat_t
		if unix.Stat("/proc/"+strconv.FormatUint(uint64(tgid), 10)+"/task/"+strconv.FormatUint(uint64(tid), 10), &st) == nil {
			return tgid
		}
	}
	if fd, err := unix.PidfdOpen(int(tid), 0); err == nil {
		unix.Close(fd)
		return tid
	}
	st, ok := readStatus(tid)
	if !ok {
		return 0
	}
	tgids.put(tid, st.tgid)
	return st.tgid
}

// tgidCache remembers the thread group of threads that are not leaders.
type tgidCache struct {
	mu sync.Mutex
	m  map[uint32]uint32
}

const maxTGIDCache = 4096

var tgids = tgidCache{m: make(map[uint32]uint32)}

func (c *tgidCache) get(tid uint32) (uint32, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.m[tid]
	return v, ok
}

func (c *tgidCache) put(tid, tgid uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxTGIDCache {
		clear(c.m) // entries are cheap to relearn; stale ones are never trusted anyway
	}
	c.m[tid] = tgid
}

type procStatus struct {
	name   string
	tgid   uint32
	groups []uint32
}

// readStatus parses /proc/<pid>/status without allocating for the file.
func readStatus(pid uint32) (procStatus, bool) {
	if pid == 0 {
		return procStatus{}, false
	}
	fd, err := unix.Open("/proc/"+strconv.FormatUint(uint64(pid), 10)+"/status", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return procStatus{}, false
	}
	defer unix.Close(fd)
	var buf [16 << 10]byte
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err != nil || m == 0 {
			break
		}
		n += m
	}
	var st procStatus
	for line := range bytes.SplitSeq(buf[:n], []byte("\n")) {
		key, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		val = bytes.TrimSpace(val)
		switch string(key) {
		case "Name":
			st.name = string(val)
		case "Tgid":
			v, _ := strconv.ParseUint(string(val), 10, 32)
			st.tgid = uint32(v)
		case "Groups":
			for f := range bytes.FieldsSeq(val) {
				if v, err := strconv.ParseUint(string(f), 10, 32); err == nil {
					st.groups = append(st.groups, uint32(v))
				}
			}
		}
	}
	return st, st.tgid != 0
}
