package service

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// systemd's file descriptor store: descriptors a service hands to the
// service manager (sd_notify FDSTORE=1, FDNAME=) outlive the process and
// come back to the next one of the unit, at a restart after a crash too
// (LISTEN_FDS, LISTEN_FDNAMES). The agent keeps its FUSE connection and the
// filesystem's state there, so a restart takes the mount over.

// fdStoreMax is how many descriptors the unit lets the service store:
// $FDSTORE, which systemd 254 and later set from FileDescriptorStoreMax=
// (and which contrib/midfs@.service sets for older ones). 0: no store.
func fdStoreMax() int {
	n, err := strconv.Atoi(os.Getenv("FDSTORE"))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// FDStore says whether descriptors given to Keep outlive this process.
func (s *Service) FDStore() bool { return s.notify.enabled() && s.fdMax > 0 }

// Keep puts f in the service manager's file descriptor store under name,
// replacing what it held under that name. Without a store it does nothing.
// A name is a short word of letters, digits, '-' and '_'.
func (s *Service) Keep(name string, f *os.File) {
	if !s.FDStore() {
		return
	}
	if !validFDName(name) {
		slog.Error("not storing a descriptor with a bad name", "name", name)
		return
	}
	// FDNAME= need not be unique: storing again would add a second one.
	s.Drop(name)
	if err := s.notify.notifyFDs([]int{int(f.Fd())}, "FDSTORE=1", "FDNAME="+name); err != nil {
		slog.Warn("cannot keep a descriptor in the service manager's store; a restart will not take the mount over",
			"name", name, "err", err)
	}
}

// Drop removes what the store holds under name.
func (s *Service) Drop(name string) {
	if !s.FDStore() || !validFDName(name) {
		return
	}
	if err := s.notify.notify("FDSTOREREMOVE=1", "FDNAME="+name); err != nil {
		slog.Debug("sd_notify FDSTOREREMOVE failed", "name", name, "err", err)
	}
}

func validFDName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Stored returns, once, the descriptors the service manager passed this
// process from its store, by name; nil when it passed none.
func (s *Service) Stored() map[string]*os.File {
	fds := s.stored
	s.stored = nil
	return fds
}

// listenFDs takes the descriptors systemd passed (sd_listen_fds): fds 3
// and up, $LISTEN_FDS of them, named by $LISTEN_FDNAMES, for this process
// only ($LISTEN_PID). The variables are unset and the descriptors made
// close-on-exec, so no child process takes them for its own.
func listenFDs() (map[string]*os.File, error) {
	pid, nfds, names := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_FDNAMES")
	for _, v := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "LISTEN_PIDFDID"} {
		os.Unsetenv(v)
	}
	if nfds == "" || pid != strconv.Itoa(os.Getpid()) {
		return nil, nil
	}
	n, err := strconv.Atoi(nfds)
	if err != nil || n < 0 || n > 1024 {
		return nil, fmt.Errorf("LISTEN_FDS=%q is not a count of descriptors", nfds)
	}
	nameList := strings.Split(names, ":")
	fds := make(map[string]*os.File, n)
	for i := range n {
		fd := 3 + i
		unix.CloseOnExec(fd)
		name := "unknown"
		if i < len(nameList) && nameList[i] != "" {
			name = nameList[i]
		}
		if old := fds[name]; old != nil {
			// Two of one name: a store that was not cleaned. Keep the
			// later one; the earlier goes with the name's next Drop.
			old.Close()
		}
		fds[name] = os.NewFile(uintptr(fd), name)
	}
	return fds, nil
}
