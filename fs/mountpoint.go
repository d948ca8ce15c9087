package fs

import (
	"bufio"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
)

// probeTimeout is how long a FUSE mount may take to answer a stat before it
// counts as hung. A live midfs answers in microseconds.
const probeTimeout = 3 * time.Second

const fuseConnections = "/sys/fs/fuse/connections"

// CheckMountpoint returns one clear error if dir cannot take a new mount:
// missing, not a directory, already served by a live FUSE filesystem, or
// a path that ssh_config cannot name (identity.CheckDir). A dead FUSE
// mount left by a killed agent is cleaned up (CleanStale). Call it before
// joining, so a bad mountpoint never consumes a one-time token.
func CheckMountpoint(dir string) error {
	if named, err := filepath.Abs(dir); err == nil {
		if err := identity.CheckDir(named); err != nil {
			return fmt.Errorf("bad mountpoint: %w", err)
		}
	}
	abs, err := resolve(dir)
	if err != nil {
		return err
	}
	if _, err := CleanStale(abs); err != nil {
		return err
	}
	st, err := os.Stat(abs)
	switch {
	case errors.Is(err, iofs.ErrNotExist):
		return fmt.Errorf("mountpoint %s does not exist: create it first (mkdir -p %s)", abs, abs)
	case err != nil:
		return fmt.Errorf("mountpoint %s: %w", abs, err)
	case !st.IsDir():
		return fmt.Errorf("mountpoint %s is not a directory: pick a directory", abs)
	}
	if m, ok := findMount(abs); ok && m.isFUSE() {
		return fmt.Errorf("mountpoint %s is already served by a live FUSE filesystem (%s): unmount it first (umount %s) or pick another directory",
			abs, m.fstype, abs)
	}
	return nil
}

// CleanStale unmounts a dead FUSE mount at dir ("Transport endpoint is not
// connected", left when the serving process was killed) and reports whether
// it did. A FUSE mount that does not answer within probeTimeout is aborted
// through fusectl first, but only if it is a midfs mount: another
// filesystem's hung server is not ours to kill. A live mount is left alone.
func CleanStale(dir string) (bool, error) {
	abs, err := resolve(dir)
	if err != nil {
		return false, err
	}
	cleaned := false
	for range 8 { // dead mounts can be stacked; the topmost hides the rest
		m, ok := findMount(abs)
		if !ok || !m.isFUSE() {
			return cleaned, nil
		}
		switch probe(abs, probeTimeout) {
		case probeLive:
			return cleaned, nil
		case probeHung:
			if m.fstype != "fuse.midfs" {
				return cleaned, fmt.Errorf("mountpoint %s is a %s mount that does not answer: abort it (echo 1 > %s/%s/abort) and unmount it (umount -l %s)",
					abs, m.fstype, fuseConnections, m.connID(), abs)
			}
			if err := abortConn(m.connID()); err != nil {
				return cleaned, fmt.Errorf("mountpoint %s is a hung midfs mount and cannot be aborted: %w", abs, err)
			}
		}
		if err := unmount(abs, true); err != nil {
			return cleaned, fmt.Errorf("mountpoint %s is a dead FUSE mount and cannot be unmounted: %w (try umount -l %s as root)", abs, err, abs)
		}
		cleaned = true
	}
	return cleaned, fmt.Errorf("mountpoint %s: too many stale mounts stacked", abs)
}

// resolve makes dir absolute and resolves symlinks in its parent, without
// touching dir itself (it may be a dead or hung mount).
func resolve(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("mountpoint %q: %w", dir, err)
	}
	parent, base := filepath.Split(abs)
	if base == "" {
		return abs, nil
	}
	rp, err := filepath.EvalSymlinks(parent)
	if err != nil {
		if errors.Is(err, iofs.ErrNotExist) {
			return "", fmt.Errorf("mountpoint %s does not exist: create it first (mkdir -p %s)", abs, abs)
		}
		return "", fmt.Errorf("mountpoint %s: %w", abs, err)
	}
	abs = filepath.Join(rp, base)
	if _, mounted := findMount(abs); mounted {
		return abs, nil // lstat of a mountpoint asks its server, which may hang
	}
	// A symlink as the last component is followed, as mount(2) would.
	if st, err := os.Lstat(abs); err == nil && st.Mode()&os.ModeSymlink != 0 {
		if target, err := filepath.EvalSymlinks(abs); err == nil {
			abs = target
		}
	}
	return abs, nil
}

type probeResult int

const (
	probeLive probeResult = iota
	probeDead
	probeHung
)

// probe stats dir from a goroutine so a hung server cannot block the caller.
// Any answer, even an error, means a server is there — except ENOTCONN and
// ECONNABORTED, which the kernel gives for a connection whose server is gone.
func probe(dir string, timeout time.Duration) probeResult {
	done := make(chan error, 1)
	go func() {
		// statfs, not stat: the kernel answers stat of the root from its
		// attribute cache for a while after the server died, while statfs
		// always goes to the server and so sees the dead connection.
		var st unix.Statfs_t
		done <- unix.Statfs(dir, &st)
	}()
	select {
	case err := <-done:
		if errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED) {
			return probeDead
		}
		return probeLive
	case <-time.After(timeout):
		return probeHung
	}
}

// unmount unmounts dir: as root with umount(2), otherwise with the setuid
// fusermount; lazy detaches it even while it is busy.
func unmount(dir string, lazy bool) error {
	if os.Geteuid() == 0 {
		flags := 0
		if lazy {
			flags = unix.MNT_DETACH
		}
		return unix.Unmount(dir, flags)
	}
	path, ok := fusermount()
	if !ok {
		return errors.New("no fusermount3 or fusermount found to unmount as a normal user")
	}
	args := []string{"-u", dir}
	if lazy {
		args = []string{"-u", "-z", dir}
	}
	out, err := exec.Command(path, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %s", filepath.Base(path), strings.Join(args[:len(args)-1], " "), strings.TrimSpace(string(out)))
	}
	return nil
}

// fusermount finds the setuid helper a normal user mounts and unmounts with.
func fusermount() (string, bool) {
	for _, bin := range []string{"fusermount3", "fusermount"} {
		if path, err := exec.LookPath(bin); err == nil {
			return path, true
		}
	}
	return "", false
}

// abortConn ends FUSE connection id: every pending and future request fails,
// which unblocks whatever waits on a hung server.
func abortConn(id string) error {
	f, err := openAbort(id)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write([]byte("1"))
	return err
}

// openAbort opens the fusectl file that aborts connection id. The open file
// stays bound to that connection: once the connection is gone, writing to
// it does nothing, even if a new mount got the same number. fusectl is
// mounted if it is not (systemd normally does that at boot).
func openAbort(id string) (*os.File, error) {
	if id == "" {
		return nil, errors.New("unknown FUSE connection")
	}
	path := filepath.Join(fuseConnections, id, "abort")
	if _, err := os.Stat(path); errors.Is(err, iofs.ErrNotExist) {
		if err := unix.Mount("fusectl", fuseConnections, "fusectl", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("mount fusectl on %s: %w", fuseConnections, err)
		}
	}
	return os.OpenFile(path, os.O_WRONLY, 0)
}

// fuseConnID is the fusectl connection number of the mount at dir.
func fuseConnID(dir string) string {
	if m, ok := findMount(dir); ok && m.isFUSE() {
		return m.connID()
	}
	return ""
}

type mountEntry struct {
	dev    string // major:minor
	fstype string
	opts   string // the superblock's options; FUSE's name the mounting user (user_id=)
}

// MountUser returns the uid of the process that made the midfs mount at
// dir, which the kernel records in the mount table and no server can
// change: a PID the tree names is trusted only if it is that user's.
func MountUser(dir string) (uint32, error) {
	abs, err := resolve(dir)
	if err != nil {
		return 0, err
	}
	m, ok := findMount(abs)
	if !ok || m.fstype != "fuse.midfs" {
		return 0, fmt.Errorf("%s is not a midfs mount: is `midfs mount %s` running?", abs, abs)
	}
	for _, o := range strings.Split(m.opts, ",") {
		if v, ok := strings.CutPrefix(o, "user_id="); ok {
			uid, err := strconv.ParseUint(v, 10, 32)
			if err == nil {
				return uint32(uid), nil
			}
		}
	}
	return 0, fmt.Errorf("the mount table gives no user_id for the midfs mount %s", abs)
}

func (m mountEntry) isFUSE() bool { return m.fstype == "fuse" || strings.HasPrefix(m.fstype, "fuse.") }

// connID: a FUSE superblock's device is 0:N, and fusectl names the
// connection N.
func (m mountEntry) connID() string {
	_, minor, _ := strings.Cut(m.dev, ":")
	return minor
}

// findMount returns the topmost mount at exactly dir, from the mount table,
// without touching dir.
func findMount(dir string) (mountEntry, bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return mountEntry{}, false
	}
	defer f.Close()
	var found mountEntry
	ok := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fl := range fields {
			if fl == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		if unescapeMount(fields[4]) == dir {
			found = mountEntry{dev: fields[2], fstype: fields[sep+1]}
			if sep+3 < len(fields) {
				found.opts = fields[sep+3]
			}
			ok = true
		}
	}
	return found, ok
}

// unescapeMount undoes the octal escapes (\040 for space ...) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			okOct := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					okOct = false
					break
				}
				v = v*8 + (c - '0')
			}
			if okOct {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// CheckCanMount tells, before anything is spent on a mount (a one-time
// token, above all), whether this process can mount at all: it must be able
// to open /dev/fuse, and a normal user needs fusermount3 as well. Root
// mounts with mount(2) directly.
func CheckCanMount() error {
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		hint := "load the fuse module (modprobe fuse) and install fuse3"
		if errors.Is(err, iofs.ErrPermission) {
			hint = "run midfs as root, or let this user open /dev/fuse (it is usually mode 0666)"
		}
		return fmt.Errorf("cannot open /dev/fuse: %w: %s", errors.Unwrap(err), hint)
	}
	f.Close()
	if os.Geteuid() == 0 {
		return nil
	}
	if _, ok := fusermount(); !ok {
		return errors.New("no fusermount3 found, which a normal user needs to mount: install fuse3, or run midfs as root")
	}
	return nil
}
