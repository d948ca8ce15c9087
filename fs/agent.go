package fs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// XattrPID on the mount's root is the PID of the agent serving it, so that
// `midfs renew` signals that agent alone (pkill -f 'midfs mount' also hits
// every other agent and the shell that started one).
const XattrPID = "user.midfs.pid"

// RootXattr reads one of the xattrs the agent serves on the mount's root.
func RootXattr(dir, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Getxattr(dir, name, buf)
	if err != nil {
		return "", fmt.Errorf("%s does not give its %s (%v): is it served by an older midfs? send that agent SIGHUP", dir, name, err)
	}
	return string(buf[:n]), nil
}

// MountAgent finds the agent serving dir: the PID its root names, trusted
// only if that process belongs to the user the kernel says made the mount
// and catches SIGHUP. A forged or stale PID then cannot make renew signal
// another user's process, nor kill one that would die of SIGHUP.
func MountAgent(dir string) (int, error) {
	owner, err := MountUser(dir)
	if err != nil {
		return 0, err
	}
	v, err := RootXattr(dir, XattrPID)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(v)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s names no agent PID in %s (%q)", dir, XattrPID, v)
	}
	uid, catchesHUP, err := procSignalInfo(pid)
	switch {
	case err != nil:
		return 0, fmt.Errorf("the agent of %s (pid %d) is not visible here: %v", dir, pid, err)
	case uid != owner || !catchesHUP:
		return 0, fmt.Errorf("pid %d, named by %s, is not the agent that made the mount; nothing was signalled", pid, dir)
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
