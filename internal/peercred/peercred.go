// Package peercred says which process is at the other end of a Unix
// socket connection, as the kernel recorded it: what the servers of this
// project's local sockets (the ssh-agent, the node's hook socket) admit
// or refuse a client by.
package peercred

import (
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Peer is the process at the other end of a connection, as the kernel
// recorded it when that process connected (SO_PEERCRED, SO_PEERGROUPS):
// what it was then, not what its PID may have become since.
type Peer struct {
	UID, GID uint32
	PID      uint32 // 0 when it is outside our PID namespace
	Groups   []uint32
}

// Of is the peer of c.
func Of(c *net.UnixConn) (Peer, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var p Peer
	var perr error
	err = raw.Control(func(fd uintptr) {
		cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			perr = err
			return
		}
		p = Peer{UID: cred.Uid, GID: cred.Gid, PID: uint32(max(cred.Pid, 0))}
		p.Groups, perr = peerGroups(int(fd))
	})
	if err != nil {
		return Peer{}, err
	}
	return p, perr
}

// peerGroups reads the peer's supplementary groups (Linux 4.13+). x/sys has
// no wrapper for this option: the kernel fills an array of gid_t and says
// how long it must be (ERANGE) when the one given is too short.
func peerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 32)
	for {
		n := uint32(len(buf) * 4)
		_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch {
		case e == unix.ERANGE && int(n/4) > len(buf):
			buf = make([]uint32, n/4)
		case e != 0:
			return nil, e
		default:
			return buf[:n/4], nil
		}
	}
}
