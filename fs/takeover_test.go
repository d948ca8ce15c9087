package fs

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/midfs/midfs/identity"
)

// Taking a mount over: the serving process hands its FUSE connection, state
// and generations to a new one (an upgrade), or a new one takes them from
// where a killed one kept them (systemd's file descriptor store, played
// here by the test process). Readers keep their handles, their snapshots
// and their pins; the mount is never replaced.

const (
	takeoverEnv = "MIDFS_FSTEST_TAKEOVER" // names of the descriptors from fd 3 (4 with a sync socket)
	syncEnv     = "MIDFS_FSTEST_SYNC"     // fd 3 is a socket to the predecessor
	storeEnv    = "MIDFS_FSTEST_STORE"    // Keep sends descriptors to this datagram socket
)

// handOver is the "handover" command: Handover, start the successor (this
// test binary) with the descriptors, and exit once it has resumed, without
// unmounting. The successor answers the command ("ok") once this process
// is gone and it serves.
func handOver(srv *Server) error {
	fds, err := srv.Handover(2 * time.Second)
	if err != nil {
		return err
	}
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		srv.Continue()
		return err
	}
	mine := os.NewFile(uintptr(sp[0]), "sync")
	theirs := os.NewFile(uintptr(sp[1]), "sync")
	files := []*os.File{theirs}
	var names []string
	for name, f := range fds {
		names = append(names, name)
		files = append(files, f)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), takeoverEnv+"="+strings.Join(names, ","), syncEnv+"=1")
	cmd.ExtraFiles = files
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err = cmd.Start()
	theirs.Close()
	buf := make([]byte, 64)
	n := 0
	if err == nil {
		n, err = mine.Read(buf)
	}
	if err != nil || string(buf[:n]) != "resumed" {
		if cerr := srv.Continue(); cerr != nil {
			return fmt.Errorf("successor failed (%v %q), and serving again failed: %v", err, buf[:n], cerr)
		}
		return fmt.Errorf("successor failed: %v %q", err, buf[:n])
	}
	os.Exit(0) // the successor serves; the mount stays
	return nil
}

// takeOver resumes from the descriptors named in names, from fd 3 on, and
// with a predecessor waits until it is gone before serving.
func takeOver(opts Options, names string) (*Server, error) {
	fd := 3
	var sync *os.File
	if os.Getenv(syncEnv) != "" {
		sync = os.NewFile(3, "sync")
		fd = 4
	}
	fds := map[string]*os.File{}
	for i, name := range strings.Split(names, ",") {
		unix.CloseOnExec(fd + i)
		fds[name] = os.NewFile(uintptr(fd+i), name)
	}
	srv, err := Resume(opts, fds)
	if sync == nil {
		if err == nil {
			srv.Start()
		}
		return srv, err
	}
	if err != nil {
		sync.Write([]byte("failed"))
		return nil, err
	}
	sync.Write([]byte("resumed"))
	buf := make([]byte, 1)
	for {
		if _, err := sync.Read(buf); err != nil {
			break // EOF: the predecessor has exited
		}
	}
	srv.Start()
	return srv, nil
}

// keepIn is Options.Keep and Drop sending to the datagram socket at path,
// as sd_notify's FDSTORE=1 and FDSTOREREMOVE=1 do.
func keepIn(path string) (func(string, *os.File), func(string)) {
	send := func(msg string, f *os.File) {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return
		}
		defer unix.Close(fd)
		var oob []byte
		if f != nil {
			oob = unix.UnixRights(int(f.Fd()))
		}
		if err := unix.Sendmsg(fd, []byte(msg), oob, &unix.SockaddrUnix{Name: path}, 0); err != nil {
			fmt.Fprintln(os.Stderr, "keep:", err)
		}
	}
	return func(name string, f *os.File) { send("keep "+name, f) }, func(name string) { send("drop "+name, nil) }
}

// fdStore plays systemd's file descriptor store for a test.
type fdStore struct {
	path string
	mu   sync.Mutex
	fds  map[string]*os.File
}

func newFDStore(t *testing.T) *fdStore {
	t.Helper()
	st := &fdStore{path: filepath.Join(t.TempDir(), "store"), fds: map[string]*os.File{}}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: st.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		buf, oob := make([]byte, 256), make([]byte, 256)
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			verb, name, _ := strings.Cut(string(buf[:n]), " ")
			var f *os.File
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
				if fds, err := unix.ParseUnixRights(&msgs[0]); err == nil && len(fds) == 1 {
					unix.CloseOnExec(fds[0])
					f = os.NewFile(uintptr(fds[0]), name)
				}
			}
			st.mu.Lock()
			if old := st.fds[name]; old != nil {
				old.Close()
			}
			delete(st.fds, name)
			if verb == "keep" && f != nil {
				st.fds[name] = f
			}
			st.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		st.mu.Lock()
		defer st.mu.Unlock()
		for _, f := range st.fds {
			f.Close()
		}
	})
	return st
}

// files returns copies of the stored descriptors, as systemd passes them
// to a restarted service, and their names in the same order.
func (st *fdStore) files(t *testing.T) ([]*os.File, string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	var files []*os.File
	var names []string
	for name, f := range st.fds {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			t.Fatal(err)
		}
		dup := os.NewFile(uintptr(fd), name)
		t.Cleanup(func() { dup.Close() })
		names = append(names, name)
		files = append(files, dup)
	}
	return files, strings.Join(names, ",")
}

func (st *fdStore) has(name string) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.fds[name] != nil
}

// stallReads makes every read of the file name wait forever, so a test can
// kill the server while it holds a request.
func stallReads(name string) {
	for i, f := range identity.Files {
		if f.Name == name {
			testHookRead = func(idx int) {
				if idx == i {
					fmt.Fprintln(os.Stderr, "stalled read")
					select {}
				}
			}
		}
	}
}

// A reader that holds key and key-cert.pub open across a handover reads the
// bytes of its snapshot after it, and opens again from its pinned issuance;
// the mount is the same mount throughout. Both ways: with the kernel's
// resend, and draining where the kernel would lack it.
func TestHandoverKeepsHandlesPinsAndTheMount(t *testing.T) {
	requireRoot(t)
	for _, noResend := range []bool{false, true} {
		t.Run(fmt.Sprintf("noResend=%v", noResend), func(t *testing.T) {
			s := startServer(t, serveConfig{NoResend: noResend})
			before, ok := findMount(s.dir)
			if !ok {
				t.Fatal("not mounted")
			}
			r := startReader(t, s.dir, "")
			for _, f := range []string{"key", "key-cert.pub"} {
				if got := r.do("open " + f); got != "ok" {
					t.Fatalf("open %s: %s", f, got)
				}
			}
			key, cert := r.data("read key"), r.data("read key-cert.pub")
			s.publish() // the reader's handles and pin are on the older issuance now

			if got := s.do("handover"); got != "ready" {
				t.Fatalf("handover: %s\n%s", got, s.stderr)
			}
			after, ok := findMount(s.dir)
			if !ok || after.dev != before.dev {
				t.Fatalf("the mount was replaced: %+v, then %+v", before, after)
			}
			if got := r.data("read key"); !bytes.Equal(got, key) {
				t.Error("a held key reads other bytes after the handover")
			}
			if got := r.data("read key-cert.pub"); !bytes.Equal(got, cert) {
				t.Error("a held certificate reads other bytes after the handover")
			}
			if got := r.data("cat key-cert.pub"); !bytes.Equal(got, cert) {
				t.Error("a process holding handles lost its pin in the handover")
			}
			fresh := startReader(t, s.dir, "")
			k2, c2 := fresh.data("cat key"), fresh.data("cat key-cert.pub")
			if bytes.Equal(k2, key) || privateKeyFP(t, k2) != sshCertFP(t, c2) {
				t.Error("a new process does not get the current issuance as one pair")
			}
			r.do("close key")
			r.do("close key-cert.pub")
			if got := s.do("released"); got != "ok" {
				t.Fatalf("the successor did not see the handles of before released: %s", got)
			}
			s.publish() // the successor renews too
			k3, c3 := fresh.data("cat key"), fresh.data("cat key-cert.pub")
			if privateKeyFP(t, k3) != sshCertFP(t, c3) {
				t.Error("torn pair after a renewal by the successor")
			}
		})
	}
}

// A server killed while it holds a request: its successor, given what it
// kept (as systemd's store does), takes the mount over, the kernel sends it
// the request again, and the reader gets its bytes. Held handles read on.
func TestKilledServerIsTakenOverAndItsRequestResent(t *testing.T) {
	requireRoot(t)
	store := newFDStore(t)
	cfg := serveConfig{StallRead: "known_hosts"}
	s := startServerWith(t, cfg, []string{storeEnv + "=" + store.path}, nil)
	cfg.Dir = s.dir
	r := startReader(t, s.dir, "")
	if got := r.do("open key"); got != "ok" {
		t.Fatal(got)
	}
	key := r.data("read key")
	waitFor(t, "the store to hold the mount", func() bool {
		return store.has("fuse") && store.has("state") && store.has("gen-1")
	})

	stalled := startReader(t, s.dir, "")
	answer := make(chan string, 1)
	go func() {
		fmt.Fprintln(stalled.in, "cat known_hosts")
		l, err := stalled.out.ReadString('\n')
		if err != nil {
			l = "error " + err.Error()
		}
		answer <- strings.TrimSpace(l)
	}()
	waitFor(t, "the server to hold the read", func() bool { return strings.Contains(s.stderr.String(), "stalled read") })
	s.kill()

	cfg.StallRead = ""
	files, names := store.files(t)
	next := startServerWith(t, cfg, []string{takeoverEnv + "=" + names, storeEnv + "=" + store.path}, files)
	select {
	case got := <-answer:
		if !strings.HasPrefix(got, "data ") || !strings.Contains(got, fmt.Sprintf("%x", "@cert-authority")) {
			t.Errorf("the read held by the killed server: %s", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the read held by the killed server was never answered\n%s", next.stderr)
	}
	if got := r.data("read key"); !bytes.Equal(got, key) {
		t.Error("a held key reads other bytes after the takeover")
	}
	if _, err := os.ReadFile(next.path("ssh_config")); err != nil {
		t.Errorf("a fresh read after the takeover: %v", err)
	}
}

// waitFor polls cond until it holds or ten seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A request the kernel resends after the process that handled it died
// before its reply arrived is answered as it was, and changes nothing
// twice: no pin or cache count is held or let go of two times.
func TestResentRequestsAreHandledOnce(t *testing.T) {
	ca, _ := newTestCA()
	s := testServer(t, ca)
	open := func(unique uint64) fuse.OpenOut {
		t.Helper()
		var out fuse.OpenOut
		in := &fuse.OpenIn{InHeader: fuse.InHeader{Unique: unique, NodeId: s.child("key-cert.pub").nodeID(), Caller: fuse.Caller{Pid: uint32(os.Getpid())}}}
		if st := s.raw.Open(nil, in, &out); st != fuse.OK {
			t.Fatalf("open: %v", st)
		}
		return out
	}
	first := open(41)
	if s.pins.handles() != 1 {
		t.Fatalf("%d handles after one open", s.pins.handles())
	}
	// A successor, over the same state, gets the OPEN again.
	next := newServer(s.opts, s.st)
	next.gens, next.files = s.gens, s.files
	next.current.Store(s.current.Load())
	again := func(unique uint64) fuse.OpenOut {
		var out fuse.OpenOut
		in := &fuse.OpenIn{InHeader: fuse.InHeader{Unique: unique, NodeId: s.child("key-cert.pub").nodeID(), Caller: fuse.Caller{Pid: uint32(os.Getpid())}}}
		next.raw.Open(nil, in, &out)
		return out
	}
	if got := again(41 | uniqueResend); got != first || next.pins.handles() != 1 {
		t.Errorf("a resent open: %+v and %d handles, want %+v and 1", got, next.pins.handles(), first)
	}
	if got := again(42 | uniqueResend); got.Fh == 0 || next.pins.handles() != 2 {
		t.Errorf("a resent open never handled before must be handled: %+v, %d handles", got, next.pins.handles())
	}
	rel := &fuse.ReleaseIn{InHeader: fuse.InHeader{Unique: 43}, Fh: first.Fh}
	next.raw.Release(nil, rel)
	rel.Unique |= uniqueResend
	next.raw.Release(nil, rel)
	if next.pins.handles() != 1 {
		t.Errorf("%d handles after one of two was released twice, want 1", next.pins.handles())
	}
}
