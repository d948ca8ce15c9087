package fs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"
	"unsafe"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
)

// Taking a mount over. The kernel keeps a FUSE connection alive for as long
// as any process holds a descriptor of it; node IDs and file handles are
// the kernel's too. A process that is handed the descriptor, the state and
// the generations (state.go) answers for all of them as its predecessor
// would, so the mount is never unmounted or replaced: readers see a pause,
// not an error.
//
// Two things stand in the way, and this file handles them:
//
//   - The kernel sends INIT once per connection, and go-fuse will not serve
//     a connection without reading it. So a successor replays the INIT the
//     kernel sent at mount time (kept in the state) to its go-fuse server
//     over a socket pair, and only then points the server's descriptor at
//     the FUSE connection (replayInit).
//   - Requests the predecessor read but did not answer. Where the kernel
//     has FUSE_NOTIFY_RESEND (Linux 6.9), the predecessor stops answering
//     (it holds the gate: requests it reads wait in it), and the successor,
//     once the predecessor is gone, asks the kernel to send every unanswered
//     request again. That also covers a predecessor killed in the middle of
//     anything. Where the kernel lacks it, the predecessor drains instead:
//     its descriptor is made non-blocking so its readers stop once nothing
//     is queued, and it answers everything it read before handing over
//     (drainNonblocking). A kill -9 on such a kernel leaves the requests
//     that process had read unanswered: their callers wait until killed.

// noResend makes the kernel look as if it lacked FUSE_NOTIFY_RESEND, for
// tests of the draining handover.
var noResend = false

// keepDevice finds the descriptor go-fuse opened for the new mount (the
// one not in before), keeps a duplicate for handovers, and keeps the
// kernel's INIT in the state.
func (s *Server) keepDevice(srv *fuse.Server, before map[int]bool) error {
	var found []int
	for fd := range fuseFDs() {
		if !before[fd] {
			found = append(found, fd)
		}
	}
	if len(found) != 1 {
		return fmt.Errorf("%d new /dev/fuse descriptors after mounting", len(found))
	}
	dup, err := unix.FcntlInt(uintptr(found[0]), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return err
	}
	s.dev = os.NewFile(uintptr(dup), "/dev/fuse")
	ks := srv.KernelSettings()
	n := int(ks.Length)
	if size := int(unsafe.Sizeof(*ks)); n <= 0 || n > size {
		n = size
	}
	s.st.hdr.initLen = uint32(copy(s.st.hdr.init[:], unsafe.Slice((*byte)(unsafe.Pointer(ks)), n)))
	s.opts.Keep("fuse", s.dev)
	return nil
}

// issuanceFiles come from one issuance (the key and its certificates);
// every other file comes from the cluster's CAs and the node list.
var issuanceFiles = map[string]bool{identity.FileIdentity: true, identity.FileKey: true,
	identity.FileSSHCert: true, identity.FileSSHPub: true, identity.FileTLSCert: true}

// Keeps says whether the generation a takeover found can go on serving in
// place of snap: its certificates stay valid past until, and every file but
// the issuance's own is what snap would serve (the same node list, CAs and
// cluster). A restart then changes nothing readers see: a process that read
// a certificate before it and reads the key after it, as ssh does across a
// login, gets one issuance however long the restart took.
func (s *Server) Keeps(snap *Snapshot, until time.Time) bool {
	g := s.current.Load()
	if snap == nil || snap.Identity == nil || !g.expires.After(until) {
		return false
	}
	for i, f := range identity.Files {
		if issuanceFiles[f.Name] {
			continue
		}
		b, err := identity.Render(f.Name, snap.Identity, snap.Nodes, s.paths())
		if err != nil || !bytes.Equal(b, g.files[i]) {
			return false
		}
	}
	return true
}

// Expires is when the first certificate of the issuance served now runs
// out.
func (s *Server) Expires() time.Time { return s.current.Load().expires }

// Issuance is the key and certificates the tree serves now, read back from
// its files, for an ssh-agent socket to sign with what key.pub names; ok is
// false when the tree serves no key file (NoKeyFiles).
func (s *Server) Issuance() (id *identity.Identity, ok bool) {
	g := s.current.Load()
	files := map[string][]byte{}
	for i, f := range identity.Files {
		files[f.Name] = g.files[i]
	}
	key, err := identity.ParsePrivateKeyPEM(files[identity.FileKey])
	if err != nil {
		return nil, false
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(files[identity.FileSSHCert])
	cert, isCert := pub.(*ssh.Certificate)
	if err != nil || !isCert {
		return nil, false
	}
	return &identity.Identity{Key: key, SSHCert: cert}, true
}

// kernelInit is the INIT the kernel sent at mount time.
func (s *Server) kernelInit() fuse.InitIn {
	var in fuse.InitIn
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&in)), unsafe.Sizeof(in)), s.st.hdr.init[:s.st.hdr.initLen])
	return in
}

// CanResend says whether the kernel resends the requests a killed server
// read and did not answer (FUSE_NOTIFY_RESEND, Linux 6.9).
func (s *Server) CanResend() bool {
	in := s.kernelInit()
	return !noResend && in.Flags64()&fuse.CAP_HAS_RESEND != 0
}

// Resume takes over the mount at opts.Dir from the descriptors a
// predecessor kept (Options.Keep) or handed over (Handover): the FUSE
// connection, the state and the generations. It answers nothing until
// Start, which is for once the predecessor is gone. The descriptors are
// the server's from then on, whatever the outcome; ones it does not know
// are closed and dropped.
func Resume(opts Options, fds map[string]*os.File) (*Server, error) {
	opts, err := checkOptions(opts)
	if err != nil {
		return nil, err
	}
	dev, stf := fds["fuse"], fds["state"]
	if dev == nil || stf == nil {
		closeAll(fds)
		return nil, errors.New("the handed-over descriptors lack the FUSE connection or the state")
	}
	st, err := openState(stf, opts.Dir)
	if err != nil {
		closeAll(fds)
		return nil, err
	}
	s := newServer(opts, st)
	s.dev = dev
	drop := func(name string) { // once per name
		if f := fds[name]; f != nil {
			opts.Drop(name)
			f.Close()
			delete(fds, name)
		}
	}
	for name, f := range fds {
		if _, key := parseGenKeyName(name); name == "fuse" || name == "state" || key {
			continue
		}
		id, ok := parseGenName(name)
		if !ok {
			s.log.Info("dropping a handed-over descriptor this midfs does not use", "name", name)
			drop(name)
			continue
		}
		g, err := loadGeneration(f, fds[genKeyName(id)])
		if err == nil && g.id != id {
			g.fd, g.keyFd = nil, nil // drop closes them
			g.release()
			err = fmt.Errorf("it holds generation %d", g.id)
		}
		if err != nil {
			s.log.Warn("dropping a handed-over generation that does not load", "name", name, "err", err)
			drop(name)
			drop(genKeyName(id))
			continue
		}
		s.gens[id] = g
	}
	for name := range fds {
		if id, key := parseGenKeyName(name); key && s.gens[id] == nil {
			s.log.Info("dropping a handed-over key memfd without its generation", "name", name)
			drop(name)
		}
	}
	cur := s.gens[st.hdr.currentGen]
	if cur == nil {
		s.forgetResumed()
		return nil, fmt.Errorf("the handed-over state serves generation %d, which was not handed over", st.hdr.currentGen)
	}
	s.current.Store(cur)
	srv, err := s.replayInit()
	if err != nil {
		s.forgetResumed()
		return nil, err
	}
	s.fuse = srv
	return s, nil
}

// forgetResumed lets a failed Resume's descriptors go, without zeroing or
// dropping anything: they may still be the predecessor's.
func (s *Server) forgetResumed() {
	for _, g := range s.gens {
		g.release()
	}
	s.st.unmap()
	s.st.fd.Close()
	s.dev.Close()
}

func closeAll(fds map[string]*os.File) {
	for _, f := range fds {
		f.Close()
	}
}

// Start serves a resumed mount: the kernel is asked to send again what the
// predecessor read and did not answer, and serving begins. Call it once
// the predecessor can read no more from the connection (it has exited).
func (s *Server) Start() {
	// A draining predecessor left the shared descriptor non-blocking.
	if fl, err := unix.FcntlInt(s.dev.Fd(), unix.F_GETFL, 0); err == nil && fl&unix.O_NONBLOCK != 0 {
		unix.FcntlInt(s.dev.Fd(), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	s.resend()
	s.serve(s.fuse)
	s.connID = fuseConnID(s.opts.Dir)
	for _, n := range s.files {
		n.cache.mu.Lock()
		behind := n.cache.behind(s.currentID())
		n.cache.mu.Unlock()
		if behind {
			s.settleLater(n)
		}
	}
	s.collectSoon()
	s.log.Info("credential filesystem taken over", "dir", s.opts.Dir, "generation", s.currentID())
}

// resend asks the kernel for every request that was read and not answered.
func (s *Server) resend() {
	if !s.CanResend() {
		s.log.Debug("this kernel cannot resend requests (FUSE_NOTIFY_RESEND, Linux 6.9); a predecessor drained instead")
		return
	}
	var out [16]byte // fuse_out_header: len, error (the notify code), unique 0
	binary.LittleEndian.PutUint32(out[0:], uint32(len(out)))
	binary.LittleEndian.PutUint32(out[4:], fuseNotifyResend)
	if _, err := unix.Write(int(s.dev.Fd()), out[:]); err != nil {
		s.log.Warn("the kernel refused to resend pending requests", "err", err)
	}
}

const fuseNotifyResend = 7 // FUSE_NOTIFY_RESEND in linux/fuse.h

// replayInit starts a go-fuse server on the connection without the kernel
// sending INIT again: go-fuse reads the kept INIT from a socket pair as if
// it were the device, answers it there, and then its descriptor number is
// made to point at the connection (dup3). go-fuse has not started reading
// yet, so the switch happens under nobody's feet.
func (s *Server) replayInit() (*fuse.Server, error) {
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(sp[1])
	if _, err := unix.Write(sp[1], s.st.hdr.init[:s.st.hdr.initLen]); err != nil {
		unix.Close(sp[0])
		return nil, fmt.Errorf("replay INIT: %w", err)
	}
	mo := s.mountOptions()
	mo.DirectMount = false // nothing to mount: /dev/fd/N names a connection
	srv, err := fuse.NewServer(s.raw, "/dev/fd/"+strconv.Itoa(sp[0]), mo)
	if err != nil {
		return nil, fmt.Errorf("serve the handed-over connection: %w", err)
	}
	if err := unix.Dup3(int(s.dev.Fd()), sp[0], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("serve the handed-over connection: %w", err)
	}
	return srv, nil
}

// Handover stops answering the kernel so that a successor can take the
// mount over, and returns what it needs, by the names Resume knows. From
// then on requests wait in the kernel. The descriptors stay this server's:
// send them, do not close them. Either the successor takes over and this
// process exits without unmounting, or Continue serves again.
func (s *Server) Handover(timeout time.Duration) (map[string]*os.File, error) {
	if s.dev == nil {
		return nil, errors.New("this mount's FUSE connection cannot be handed over (see the log at mount)")
	}
	s.publishMu.Lock()
	s.settling.Lock() // the invalidations in flight end; later ones see frozen
	s.frozen.Store(true)
	s.handedOver.Store(true)
	s.settling.Unlock()
	s.publishMu.Unlock()
	if s.CanResend() {
		s.gate.Lock() // waits for the requests in hand; the next ones wait
	} else if err := s.drainNonblocking(timeout); err != nil {
		s.thaw()
		return nil, err
	}
	fds := map[string]*os.File{"fuse": s.dev, "state": s.st.fd}
	s.gensMu.RLock()
	for id, g := range s.gens {
		fds[genName(id)] = g.fd
		if g.keyFd != nil {
			fds[genKeyName(id)] = g.keyFd
		}
	}
	s.gensMu.RUnlock()
	return fds, nil
}

// Continue serves again after a Handover that no successor took.
func (s *Server) Continue() error {
	if s.CanResend() {
		s.gate.Unlock()
	} else {
		srv, err := s.replayInit()
		if err != nil {
			return err
		}
		s.fuseMu.Lock()
		s.fuse = srv
		s.fuseMu.Unlock()
		s.handedOver.Store(false)
		s.Start()
	}
	s.thaw()
	return nil
}

// thaw ends a Handover's freeze and publishes what came meanwhile.
func (s *Server) thaw() {
	s.publishMu.Lock()
	s.frozen.Store(false)
	s.handedOver.Store(false)
	held := s.held
	s.held = nil
	s.publishMu.Unlock()
	if held != nil {
		s.Publish(held)
	}
}

// drainNonblocking stops this process reading the connection while it
// answers all it has read: the shared descriptor is made non-blocking, and
// every thread is interrupted (SIGURG, which the Go runtime ignores), so a
// read waiting in the kernel is restarted and fails with EAGAIN once no
// request is queued, which ends go-fuse's readers. While requests keep
// arriving faster than they are answered, queue never empties; then it
// gives up after timeout and serves on.
func (s *Server) drainNonblocking(timeout time.Duration) error {
	fd := s.dev.Fd()
	fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	if _, err := unix.FcntlInt(fd, unix.F_SETFL, fl|unix.O_NONBLOCK); err != nil {
		return err
	}
	s.fuseMu.Lock()
	served := s.served
	s.fuseMu.Unlock()
	deadline := time.Now().Add(timeout)
	for {
		kickThreads()
		select {
		case <-served:
			return nil
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			unix.FcntlInt(fd, unix.F_SETFL, fl)
			return fmt.Errorf("requests kept arriving for %v: could not stop serving to hand over; serving on", timeout)
		}
	}
}

// kickThreads interrupts whatever system call each other thread waits in.
func kickThreads() {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return
	}
	pid, self := unix.Getpid(), unix.Gettid()
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil && tid != self {
			unix.Tgkill(pid, tid, unix.SIGURG)
		}
	}
}
