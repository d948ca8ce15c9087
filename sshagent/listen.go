package sshagent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The socket appears at its path only once it has its final owner and mode:
// it is bound in a private directory next to the path (mode 0700), set up
// there, and renamed into place with renameat2, which never replaces a name
// another process made meanwhile (RENAME_NOREPLACE). A socket left at the
// path by a killed agent (nobody listens: ECONNREFUSED) is swapped out
// (RENAME_EXCHANGE) and removed only if it is the very file found stale;
// with replace, so is a live one (Options.Replace).
// The socket's directory must not let other users rename or remove entries
// (checkDir); otherwise none of this would hold.

// CheckPath says whether Listen could make a socket at path, without making
// it: the directory is safe, and nothing but a stale socket sits at the
// path. A caller checks this before work that would be wasted (a join that
// spends a one-time token).
func CheckPath(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("socket path %q is not absolute", path)
	}
	if err := checkDir(filepath.Dir(path)); err != nil {
		return err
	}
	_, mode, err := lstatID(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return err
	case mode&unix.S_IFMT != unix.S_IFSOCK:
		return fmt.Errorf("%s exists and is not a socket: remove it or pick another path", path)
	}
	return checkStale(path)
}

// fileID names one file: what was placed, so that only it is removed.
type fileID struct{ dev, ino uint64 }

func lstatID(path string) (fileID, uint32, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileID{}, 0, err
	}
	return fileID{uint64(st.Dev), st.Ino}, st.Mode, nil
}

// listen makes the socket at path, owned by uid:gid with mode, and returns
// its listener and the file it placed.
func listen(path string, uid, gid uint32, mode os.FileMode, replace bool) (*net.UnixListener, fileID, error) {
	dir := filepath.Dir(path)
	if err := checkDir(dir); err != nil {
		return nil, fileID{}, err
	}
	tmp, err := os.MkdirTemp(dir, ".midfs-agent-")
	if err != nil {
		return nil, fileID{}, fmt.Errorf("cannot make the socket in %s: %w", dir, err)
	}
	// Whatever is left in tmp goes: our socket if it was never placed, or
	// the stale one swapped out.
	defer os.RemoveAll(tmp)
	staged := filepath.Join(tmp, "agent.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: staged, Net: "unix"})
	if err != nil {
		return nil, fileID{}, fmt.Errorf("cannot make the socket in %s: %w", dir, err)
	}
	ln.SetUnlinkOnClose(false) // the name it was bound to is gone once placed
	id, err := setUp(staged, uid, gid, mode)
	if err == nil {
		err = place(staged, path, replace)
	}
	if err != nil {
		ln.Close()
		return nil, fileID{}, err
	}
	return ln, id, nil
}

// setUp gives the staged socket its owner and mode. chmod(2) and chown(2)
// by name are safe here: nobody else can reach the private directory.
func setUp(staged string, uid, gid uint32, mode os.FileMode) (fileID, error) {
	if err := os.Chmod(staged, mode); err != nil {
		return fileID{}, err
	}
	if uid != uint32(os.Geteuid()) || gid != uint32(os.Getegid()) {
		if err := os.Lchown(staged, int(uid), int(gid)); err != nil {
			return fileID{}, fmt.Errorf("cannot give the socket to %d:%d: %w", uid, gid, err)
		}
	}
	id, _, err := lstatID(staged)
	return id, err
}

// place renames staged to path, replacing only a stale socket, or with
// replace any socket.
func place(staged, path string, replace bool) error {
	for range 3 { // the path may come and go under us; then look again
		err := unix.Renameat2(unix.AT_FDCWD, staged, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("cannot place the socket at %s: %w", path, err)
		}
		old, mode, err := lstatID(path)
		switch {
		case errors.Is(err, os.ErrNotExist):
			continue
		case err != nil:
			return err
		case mode&unix.S_IFMT != unix.S_IFSOCK:
			return fmt.Errorf("%s exists and is not a socket: remove it or pick another path", path)
		}
		if !replace {
			if err := checkStale(path); err != nil {
				return err
			}
		}
		if err := unix.Renameat2(unix.AT_FDCWD, staged, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE); err != nil {
			return fmt.Errorf("cannot replace the socket %s: %w", path, err)
		}
		if got, _, err := lstatID(staged); err != nil || got != old {
			// Not the file found stale: someone made another meanwhile.
			// Give it its name back.
			unix.Renameat2(unix.AT_FDCWD, staged, unix.AT_FDCWD, path, unix.RENAME_EXCHANGE)
			return fmt.Errorf("%s changed while the socket there was replaced; try again", path)
		}
		return nil
	}
	return fmt.Errorf("%s keeps appearing and disappearing; is another agent starting there?", path)
}

// checkStale returns nil if nobody listens on the socket at path.
func checkStale(path string) error {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("another process serves %s (a running midfs?): stop it or pick another path", path)
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return fmt.Errorf("cannot tell whether %s is in use: %v", path, err)
}

// checkDir refuses a directory where another user could rename or remove
// the socket: it must belong to root or to this user, and be writable by
// nobody else unless sticky (/tmp), where only an entry's owner may.
func checkDir(dir string) error {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("the directory %s does not exist: create it first", dir)
		}
		return err
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("%s is not a directory", dir)
	case st.Uid != 0 && st.Uid != uint32(os.Geteuid()):
		return fmt.Errorf("the directory %s belongs to uid %d, who could replace the socket: use a directory of root or of this user, e.g. /run", dir, st.Uid)
	case st.Mode&0o022 != 0 && st.Mode&unix.S_ISVTX == 0:
		return fmt.Errorf("the directory %s is writable by other users (mode %04o), who could replace the socket: use a directory only its owner can write, e.g. /run", dir, st.Mode&0o7777)
	}
	return nil
}

// removeIfOurs removes the socket at path if it is still the one placed.
func removeIfOurs(path string, id fileID) error {
	cur, _, err := lstatID(path)
	if err != nil || cur != id {
		return nil // gone, or someone else's now
	}
	return os.Remove(path)
}
