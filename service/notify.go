package service

import (
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// sd_notify without a dependency: one datagram per state change to the
// unixgram socket systemd names in $NOTIFY_SOCKET (a path, or an abstract
// socket written with a leading '@', which Go's net package maps to the
// leading NUL byte of the abstract namespace).

// notifier sends sd_notify states; the zero value (no socket) does nothing,
// so callers never need to check whether they run under systemd.
type notifier struct {
	addr string
}

// newNotifier reads $NOTIFY_SOCKET and unsets it, so that no child process
// (the mount probe, a helper) mistakes itself for the service's main process.
func newNotifier() *notifier {
	addr := os.Getenv("NOTIFY_SOCKET")
	os.Unsetenv("NOTIFY_SOCKET")
	return &notifier{addr: addr}
}

// enabled tells whether a service manager is listening.
func (n *notifier) enabled() bool { return n != nil && n.addr != "" }

// notify sends newline-separated assignments such as "READY=1" and
// "STATUS=...". Values must be single lines; newlines are replaced.
func (n *notifier) notify(states ...string) error {
	if !n.enabled() {
		return nil
	}
	if n.addr[0] != '/' && n.addr[0] != '@' {
		return fmt.Errorf("NOTIFY_SOCKET=%q is neither a path nor an abstract socket", n.addr)
	}
	for i, s := range states {
		states[i] = strings.ReplaceAll(s, "\n", " ")
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: n.addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte(strings.Join(states, "\n") + "\n")); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// notifyFDs sends states with descriptors attached (SCM_RIGHTS), as
// sd_pid_notify_with_fds does: "FDSTORE=1" and "FDNAME=..." put them in the
// service manager's file descriptor store.
func (n *notifier) notifyFDs(fds []int, states ...string) error {
	if !n.enabled() {
		return nil
	}
	if n.addr[0] != '/' && n.addr[0] != '@' {
		return fmt.Errorf("NOTIFY_SOCKET=%q is neither a path nor an abstract socket", n.addr)
	}
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer unix.Close(sock)
	msg := []byte(strings.Join(states, "\n") + "\n")
	// x/sys names an abstract socket with a leading '@', as systemd does.
	if err := unix.Sendmsg(sock, msg, unix.UnixRights(fds...), &unix.SockaddrUnix{Name: n.addr}, 0); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}
