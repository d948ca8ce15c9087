package service

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A handover to a new process of the program, without a service manager
// (midfs upgrade): the running process starts the new binary with one end
// of a socket pair, hands it its descriptors over the socket (SCM_RIGHTS:
// the secrets in them never touch a disk), and exits once the new process
// has taken them. The new process serves once the old one is gone, which
// it sees as the end of the socket.
//
//	new -> old  "hello"                 started, ready to take over
//	old -> new  "fds NAME,NAME,..."     with the descriptors attached
//	new -> old  "resumed" | "failed: WHY"
//	old exits; new reads the end of the socket, then serves

// handoverEnv names the descriptor of the socket in the new process.
const handoverEnv = "MIDFS_HANDOVER_FD"

// Successor is the new process, as the old one sees it.
type Successor struct {
	cmd  *exec.Cmd
	conn int
}

// StartSuccessor starts path with args and env and waits, for at most
// timeout, until it says it is ready to take over.
func StartSuccessor(path string, args, env []string, timeout time.Duration) (*Successor, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	theirs := os.NewFile(uintptr(sp[1]), "handover")
	defer theirs.Close()
	cmd := exec.Command(path, args...)
	cmd.Env = append(env, handoverEnv+"=3")
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
	// The new process outlives this one: not in its process group, so
	// a signal to the old group (a terminal's Ctrl-C) is not its too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		unix.Close(sp[0])
		return nil, fmt.Errorf("start %s: %w", path, err)
	}
	s := &Successor{cmd: cmd, conn: sp[0]}
	go cmd.Wait() // reaped whenever it exits, while this process lives
	msg, _, err := recvMsg(s.conn, timeout)
	if err != nil || msg != "hello" {
		s.Abort()
		return nil, fmt.Errorf("the new process %s did not start: %v %s", path, err, msg)
	}
	return s, nil
}

// Pid is the new process's.
func (s *Successor) Pid() int { return s.cmd.Process.Pid }

// Hand gives the new process the descriptors and waits, for at most
// timeout, until it has taken the mount over. On an error the new process
// has not served anything and is ended: the old one serves on.
func (s *Successor) Hand(fds map[string]*os.File, timeout time.Duration) error {
	var names []string
	var nums []int
	for name, f := range fds {
		if strings.ContainsAny(name, ", ") {
			return fmt.Errorf("descriptor name %q", name)
		}
		names = append(names, name)
		nums = append(nums, int(f.Fd()))
	}
	msg := "fds " + strings.Join(names, ",")
	if err := unix.Sendmsg(s.conn, []byte(msg), unix.UnixRights(nums...), nil, 0); err != nil {
		s.Abort()
		return fmt.Errorf("hand the descriptors over: %w", err)
	}
	reply, _, err := recvMsg(s.conn, timeout)
	if err == nil && reply != "resumed" {
		err = errors.New(strings.TrimPrefix(reply, "failed: "))
	}
	if err != nil {
		s.Abort()
		return fmt.Errorf("the new process did not take over: %w", err)
	}
	return nil
}

// Abort ends the new process.
func (s *Successor) Abort() {
	s.cmd.Process.Kill()
	unix.Close(s.conn)
}

// Predecessor is the old process, as the new one sees it.
type Predecessor struct {
	conn int
}

// PredecessorFromEnv returns the old process that started this one to
// take over, or nil. The variable is unset, so no child takes it.
func PredecessorFromEnv() *Predecessor {
	v := os.Getenv(handoverEnv)
	os.Unsetenv(handoverEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil
	}
	unix.CloseOnExec(fd)
	return &Predecessor{conn: fd}
}

// Take says this process is ready and waits, for at most timeout, for the
// descriptors.
func (p *Predecessor) Take(timeout time.Duration) (map[string]*os.File, error) {
	if err := unix.Sendmsg(p.conn, []byte("hello"), nil, nil, 0); err != nil {
		return nil, fmt.Errorf("tell the old process: %w", err)
	}
	msg, fds, err := recvMsg(p.conn, timeout)
	if err != nil {
		return nil, fmt.Errorf("no descriptors from the old process: %w", err)
	}
	names, ok := strings.CutPrefix(msg, "fds ")
	list := strings.Split(names, ",")
	if !ok || len(list) != len(fds) {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("the old process sent %q with %d descriptors", msg, len(fds))
	}
	files := make(map[string]*os.File, len(fds))
	for i, fd := range fds {
		files[list[i]] = os.NewFile(uintptr(fd), list[i])
	}
	return files, nil
}

// Resumed tells the old process to go, and returns once it has gone.
func (p *Predecessor) Resumed() {
	unix.Sendmsg(p.conn, []byte("resumed"), nil, nil, 0)
	buf := make([]byte, 64)
	for {
		n, err := unix.Read(p.conn, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			break // the end of the socket: every thread of it is gone
		}
	}
	unix.Close(p.conn)
}

// Failed tells the old process that this one cannot take over.
func (p *Predecessor) Failed(err error) {
	unix.Sendmsg(p.conn, []byte("failed: "+err.Error()), nil, nil, 0)
	unix.Close(p.conn)
}

// recvMsg reads one message and the descriptors attached to it (made
// close-on-exec), waiting at most timeout.
func recvMsg(conn int, timeout time.Duration) (string, []int, error) {
	pfd := []unix.PollFd{{Fd: int32(conn), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return "", nil, fmt.Errorf("no answer within %v", timeout)
		}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "", nil, err
		}
		if n > 0 {
			break
		}
	}
	buf, oob := make([]byte, 4096), make([]byte, unix.CmsgSpace(4*253))
	n, oobn, _, _, err := unix.Recvmsg(conn, buf, oob, unix.MSG_CMSG_CLOEXEC)
	if err != nil {
		return "", nil, err
	}
	if n == 0 {
		return "", nil, errors.New("the other process is gone")
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return "", nil, err
		}
		for i := range msgs {
			got, err := unix.ParseUnixRights(&msgs[i])
			if err == nil {
				fds = append(fds, got...)
			}
		}
	}
	return string(buf[:n]), fds, nil
}
