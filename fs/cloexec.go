package fs

import (
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// closeFUSEOnExec marks every /dev/fuse descriptor of this process
// close-on-exec. go-fuse opens the device with a raw open(2) without
// O_CLOEXEC, so any child the agent starts (the readiness probe, a mount
// helper) would inherit it and keep the connection alive after the agent
// dies: readers would then hang forever instead of getting ENOTCONN, and the
// next mount could not clean the dead one up.
func closeFUSEOnExec() {
	for fd := range fuseFDs() {
		unix.CloseOnExec(fd)
	}
}

// fuseFDs is the set of this process's descriptors of /dev/fuse.
func fuseFDs() map[int]bool {
	fds := map[int]bool{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fds
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			fds[fd] = true
		}
	}
	return fds
}
