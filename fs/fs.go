// Package fs serves a live identity as a read-only FUSE filesystem: the
// credential tree of a tbot destination directory (identity.Files), rendered
// from memory each time a file is opened. Nothing is ever written to disk.
//
// The package is handed snapshots (Mount's first one, then Publish); it never
// talks to the authority itself. Three properties matter to readers:
//
//   - Each open takes one generation (one issuance) and keeps it on the
//     handle, and a process that opens several files in a row gets them all
//     from the same generation (per-process affinity, see pins.go), so a key
//     and its certificates always belong together.
//   - Read-only for everyone, root included: every write-type call is EROFS.
//   - Secret files (key, identity) open only for the owner, root and the
//     configured readers; the decision is made in Open from the caller, by
//     the rule (Access) an ssh-agent socket serving the key uses too. With
//     NoKeyFiles they are not in the tree at all.
//
// Kernel caching is used where it is safe (see cache.go), so an open of an
// unchanged file costs one FUSE round trip.
package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
)

// Snapshot is what the filesystem serves: one issuance and the nodes the
// identity may reach (rendered into ssh_config).
type Snapshot struct {
	Identity *identity.Identity
	Nodes    []identity.Node
}

// Reader is a user (IsGroup false: UID) or group (IsGroup true: GID) that may
// open the secret files besides the owner and root. The caller resolves
// --reader=USER and --reader=@GROUP to ids.
type Reader struct {
	UID, GID uint32
	IsGroup  bool
}

// Options configure a mount.
type Options struct {
	Dir      string            // absolute mountpoint; ssh_config names the files by it
	UID, GID uint32            // owner of the tree
	Readers  []Reader          // may also open the secret files
	Xattrs   map[string]string // served read-only on the root directory
	Logger   *slog.Logger      // nil: slog.Default()
	// OnOpen, if set, is told of every open of a file with ResultOK,
	// ResultDenied or ResultEROFS. It runs inside the FUSE request: keep it
	// quick, and never touch the mount from it.
	OnOpen func(file, result string)
	Debug  bool // log every FUSE request (go-fuse's request log) at debug level
	// AgentSocket, if set, is an ssh-agent socket serving the key:
	// ssh_config names it and not the key file (identity.Paths).
	AgentSocket string
	// NoKeyFiles leaves key and identity out of the tree, for operators who
	// want the private key never readable: ssh signs through AgentSocket.
	NoKeyFiles bool
	// Clock times the per-process pins (pins.go) and stamps each
	// generation's mtime; nil: clock.Real(). Tests move a fake one.
	Clock clock.Clock
	// Keep, if set, is given every descriptor that a successor of this
	// process needs (state.go), under the name Resume knows it by, as soon
	// as it exists, and Drop the name of each that is no longer needed.
	// cmd/midfs hands them to systemd's file descriptor store, so that a
	// restart, even after a kill -9, takes the mount over. Keep must not
	// close f.
	Keep func(name string, f *os.File)
	Drop func(name string)
}

// Open results reported to Options.OnOpen.
const (
	ResultOK     = "ok"
	ResultDenied = "denied"
	ResultEROFS  = "erofs"
)

// Kernel cache lifetimes. The tree never changes shape, so names and
// negative lookups are cached long. Attributes change only at a renewal, and
// Publish invalidates them explicitly (cache.go), so the timeout is a safety
// net, not what keeps sizes right.
const (
	entryTimeout    = time.Hour
	negativeTimeout = time.Hour
)

var attrTimeout = 10 * time.Second // a variable so tests can watch it expire

// Server is a mounted credential filesystem.
type Server struct {
	opts   Options
	access Access // who may open the secret files
	log    *slog.Logger
	files  []*fileNode // the files in the tree
	byIdx  []*fileNode // indexed like identity.Files; nil for a file not served
	pins   *pinTable
	jrnl   *journal
	st     *state
	raw    *rawFS

	fuseMu sync.Mutex
	fuse   *fuse.Server  // serving the connection; a new one after Continue
	dev    *os.File      // this process's own descriptor of the FUSE connection
	served chan struct{} // closed when the current fuse server stops serving

	gensMu  sync.RWMutex
	gens    map[uint64]*generation
	current atomic.Pointer[generation]

	publishMu  sync.Mutex      // serializes Publish and collect
	badNodes   map[string]bool // guarded by publishMu: nodes left out of ssh_config, already logged
	saidKeyMem atomic.Bool     // the warning that the key is not in secret memory is logged
	held       *Snapshot       // guarded by publishMu: published during a Handover, for Continue

	gate           sync.RWMutex // every request holds it shared; Handover takes it to stop answering
	settling       sync.RWMutex // held shared by each invalidation in flight (cache.go)
	frozen         atomic.Bool  // Handover: nothing published, invalidated or collected
	collectPending atomic.Bool

	xattrMu    sync.Mutex
	rootXattrs atomic.Pointer[map[string]string] // set by SetXattr

	connID     string      // FUSE connection number, to abort a mount that will not unmount
	unmounted  atomic.Bool // Unmount was called, or the kernel ended the mount (umount from outside)
	handedOver atomic.Bool // a successor answers now: serving ended, the mount stays
	done       chan struct{}
}

// Mount serves first at opts.Dir and returns once the kernel answers for the
// tree, so no reader ever sees an empty or half-mounted directory.
func Mount(opts Options, first *Snapshot) (*Server, error) {
	opts, err := checkOptions(opts)
	if err != nil {
		return nil, err
	}
	dir := opts.Dir
	if err := CheckMountpoint(dir); err != nil {
		return nil, err
	}
	st, err := newState(dir)
	if err != nil {
		return nil, err
	}
	s := newServer(opts, st)
	opts.Keep("state", st.fd)
	g, err := s.newGeneration(first)
	if err != nil {
		s.closeState()
		return nil, fmt.Errorf("cannot serve the first identity: %w", err)
	}
	s.addGeneration(g)
	s.setCurrent(g)
	for _, n := range s.files {
		n.cache.init(g.id)
	}
	before := fuseFDs()
	srv, err := fuse.NewServer(s.raw, dir, s.mountOptions())
	if err != nil {
		s.closeState()
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	closeFUSEOnExec()
	if err := s.keepDevice(srv, before); err != nil {
		// Nothing can take this mount over; serve it all the same.
		s.log.Warn("the FUSE connection cannot be handed over: a restart will remount", "err", err)
	}
	s.serve(srv)
	// Nothing to wait for, and nothing of this mount to touch: once mount(2)
	// has returned (NewServer), the kernel holds every request for the
	// tree until Serve has answered its INIT, so no reader sees an empty
	// directory. Touching the mount from this process would be a hazard:
	// a SIGKILL while one of its requests is in the server's hands (an
	// open file, even a statfs) leaves a process that cannot exit, waiting
	// for the answer of the server that is exiting, and a hung mount. So
	// not srv.WaitMount either: its poll hack opens a file of the mount.
	s.connID = fuseConnID(dir)
	s.log.Info("credential filesystem mounted", "dir", dir, "owner", fmt.Sprintf("%d:%d", opts.UID, opts.GID),
		"readers", len(opts.Readers))
	return s, nil
}

// checkOptions fills the defaults in and checks the mountpoint's path.
func checkOptions(opts Options) (Options, error) {
	if !filepath.IsAbs(opts.Dir) {
		return opts, fmt.Errorf("mountpoint %q is not an absolute path", opts.Dir)
	}
	opts.Dir = filepath.Clean(opts.Dir)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real()
	}
	if opts.Keep == nil {
		opts.Keep = func(string, *os.File) {}
	}
	if opts.Drop == nil {
		opts.Drop = func(string) {}
	}
	if opts.NoKeyFiles && opts.AgentSocket == "" {
		return opts, errors.New("without the key files, ssh_config needs an ssh-agent socket to name")
	}
	return opts, nil
}

// newServer builds the tree over the state st, without touching the kernel.
func newServer(opts Options, st *state) *Server {
	s := &Server{opts: opts, access: Access{UID: opts.UID, GID: opts.GID, Readers: opts.Readers},
		log: opts.Logger, st: st, gens: map[uint64]*generation{}, done: make(chan struct{})}
	s.raw = &rawFS{RawFileSystem: fuse.NewDefaultRawFileSystem(), s: s}
	s.pins = newPinTable(st)
	s.jrnl = newJournal(st)
	s.byIdx = make([]*fileNode, len(identity.Files))
	for i, f := range identity.Files {
		if !s.serves(f) {
			continue
		}
		n := newFileNode(s, i, f)
		s.files = append(s.files, n)
		s.byIdx[i] = n
	}
	return s
}

// serve runs srv until it stops, for an unmount or a handover.
func (s *Server) serve(srv *fuse.Server) {
	s.fuseMu.Lock()
	s.fuse = srv
	served := make(chan struct{})
	s.served = served
	s.fuseMu.Unlock()
	go func() {
		srv.Serve()
		close(served)
		if s.handedOver.Load() {
			return
		}
		s.unmounted.Store(true) // umount(8) from outside ends up here too
		s.closeDone()
	}()
}

func (s *Server) closeDone() {
	select {
	case <-s.done:
	default:
		close(s.done)
	}
}

func (s *Server) mountOptions() *fuse.MountOptions {
	root := os.Geteuid() == 0
	return &fuse.MountOptions{
		FsName: "midfs",
		Name:   "midfs",
		// No default_permissions: the kernel would then refuse the 0600
		// files to --reader uids. Access is decided in Open instead.
		Options: []string{"ro", "nosuid", "nodev", "noexec"},
		// As root, mount(2) directly (no fusermount3 needed) and let other
		// users reach the public files. Without root, allow_other would need
		// user_allow_other in /etc/fuse.conf; the tree is then the owner's.
		AllowOther:       root,
		DirectMount:      root,
		DirectMountFlags: unix.MS_RDONLY | unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC,
		Debug:            s.opts.Debug,
		Logger:           slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
}

// Publish makes snap the current generation: opens from now on get it
// (except processes still pinned to an older one), and the kernel's cached
// sizes and pages of the old generation are invalidated. Call it from the
// renewal goroutine, never from inside a FUSE request.
func (s *Server) Publish(snap *Snapshot) {
	s.publishMu.Lock()
	defer s.publishMu.Unlock()
	if s.unmounted.Load() {
		return
	}
	if s.frozen.Load() {
		s.held = snap // a successor serves its own; Continue serves this one
		return
	}
	g, err := s.newGeneration(snap)
	if err != nil {
		s.log.Error("new identity not served, keeping the previous one", "err", err)
		return
	}
	s.addGeneration(g)
	s.setCurrent(g)
	for _, f := range s.files {
		f.cache.settle(f)
	}
	s.collect()
	s.log.Debug("identity published", "generation", g.id)
}

// Unmount unmounts the tree, ends its FUSE connection and returns once
// serving has stopped. If readers keep files open so the kernel refuses, it
// detaches the mount lazily. After an unmount from outside (umount(8)) it
// has nothing to do and returns nil.
func (s *Server) Unmount() error {
	if s.unmounted.Swap(true) {
		s.forget()
		return nil
	}
	defer s.forget()
	dir := s.opts.Dir
	// Opened while the mount is surely ours: once it is unmounted, its
	// connection number may go to the next FUSE mount.
	abort, aerr := openAbort(s.connID)
	if aerr == nil {
		defer abort.Close()
	}
	if err := unmountSoon(dir); err != nil {
		s.log.Warn("unmount refused, detaching lazily", "dir", dir, "err", err)
		if lerr := unmount(dir, true); lerr != nil {
			return fmt.Errorf("unmount %s: %v; lazy unmount: %w", dir, err, lerr)
		}
	}
	// The connection outlives the unmount here while readers of a lazily
	// detached tree keep files open, and while the mount has a copy in
	// another mount namespace, made while it was mounted (unshare, ip netns
	// exec, a container). Serving would go on, and this process would wait,
	// for as long as those last. End it: readers there get ENOTCONN, as
	// they would once this process is gone.
	if aerr != nil {
		s.log.Warn("cannot end the FUSE connection; it ends when this process exits", "dir", dir, "err", aerr)
		return nil
	}
	abort.Write([]byte("1"))
	s.fuseServer().Wait()
	s.log.Info("credential filesystem unmounted", "dir", dir)
	return nil
}

// forget lets everything a successor would have needed go, once the mount
// is gone: the generations are zeroed, and the descriptors dropped from
// wherever Keep put them.
func (s *Server) forget() {
	s.publishMu.Lock()
	defer s.publishMu.Unlock()
	if s.st == nil || s.handedOver.Load() {
		return
	}
	s.gensMu.Lock()
	for _, g := range s.gens {
		s.dropGeneration(g)
		g.wipe()
	}
	s.gens = map[uint64]*generation{}
	s.gensMu.Unlock()
	s.opts.Drop("fuse")
	if s.dev != nil {
		s.dev.Close()
	}
	s.closeState()
}

// closeState lets the state go (Keep's copy is dropped too).
func (s *Server) closeState() {
	s.opts.Drop("state")
	s.st.unmap()
	s.st.fd.Close()
}

func (s *Server) fuseServer() *fuse.Server {
	s.fuseMu.Lock()
	defer s.fuseMu.Unlock()
	return s.fuse
}

// unmountSoon unmounts dir, retrying for a moment: a reader that is
// finishing with a file makes the kernel refuse for that long.
func unmountSoon(dir string) error {
	var err error
	for delay := 5 * time.Millisecond; delay < 200*time.Millisecond; delay *= 2 {
		if err = unmount(dir, false); err == nil {
			return nil
		}
		time.Sleep(delay)
	}
	return err
}

// Done is closed once the filesystem is unmounted and served no more,
// whether by Unmount or by umount(8) from outside.
func (s *Server) Done() <-chan struct{} { return s.done }

// serves says whether f is in the tree: every file, but the secret ones
// under NoKeyFiles.
func (s *Server) serves(f identity.File) bool { return !f.Secret || !s.opts.NoKeyFiles }

// paths is where ssh_config points ssh.
func (s *Server) paths() identity.Paths {
	return identity.Paths{Dir: s.opts.Dir, Agent: s.opts.AgentSocket}
}

// newGeneration renders snap as the next generation.
func (s *Server) newGeneration(snap *Snapshot) (*generation, error) {
	if snap != nil {
		s.reportBadNodes(snap.Nodes)
	}
	s.st.hdr.lastGen++
	if s.st.hdr.lastGen >= 1<<32 {
		return nil, errors.New("out of generation numbers: remount")
	}
	g, err := renderGeneration(snap, s.paths(), s.serves, s.st.hdr.lastGen, s.opts.Clock.Now())
	if err == nil && g.keyFd != nil && !g.keySecret && !s.saidKeyMem.Swap(true) {
		s.log.Warn("the private key cannot be kept in secret memory (memfd_secret(2) needs Linux 5.14, no seccomp filter denying it, and room in RLIMIT_MEMLOCK): it is kept in ordinary memory, which can reach swap while no agent runs")
	}
	return g, err
}

// addGeneration makes g readable by ID and keeps its memfd, before
// anything in the state can name it.
func (s *Server) addGeneration(g *generation) {
	s.gensMu.Lock()
	s.gens[g.id] = g
	s.gensMu.Unlock()
	s.opts.Keep(genName(g.id), g.fd)
	if g.keyFd != nil {
		s.opts.Keep(genKeyName(g.id), g.keyFd)
	}
}

// dropGeneration takes g's memfds out of wherever Keep put them.
func (s *Server) dropGeneration(g *generation) {
	s.opts.Drop(genName(g.id))
	if g.keyFd != nil {
		s.opts.Drop(genKeyName(g.id))
	}
}

func (s *Server) setCurrent(g *generation) {
	s.current.Store(g)
	s.st.hdr.currentGen = g.id
}

func (s *Server) currentID() uint64 { return s.current.Load().id }

func (s *Server) generation(id uint64) *generation {
	s.gensMu.RLock()
	defer s.gensMu.RUnlock()
	return s.gens[id]
}

// collect zeroes and lets go every generation that nothing can reach: not
// current, held by no pin or handle (pins.go), not what a file's attributes
// report. publishMu is held: the current generation cannot change, and an
// open can only reach the current one or one a pin holds.
func (s *Server) collect() {
	if s.frozen.Load() {
		return
	}
	live := map[uint64]bool{s.currentID(): true}
	s.pins.generations(live)
	for _, n := range s.files {
		live[n.cache.attrGen()] = true
	}
	s.gensMu.Lock()
	var dead []*generation
	for id, g := range s.gens {
		if !live[id] {
			dead = append(dead, g)
			delete(s.gens, id)
		}
	}
	s.gensMu.Unlock()
	for _, g := range dead {
		s.dropGeneration(g)
		g.wipe()
		s.log.Debug("generation let go", "generation", g.id)
	}
}

// collectSoon collects a moment after a release, when an old generation
// may have lost its last handle.
func (s *Server) collectSoon() {
	s.gensMu.RLock()
	n := len(s.gens)
	s.gensMu.RUnlock()
	if n <= 1 || s.collectPending.Swap(true) {
		return
	}
	time.AfterFunc(sweepEach, func() {
		s.collectPending.Store(false)
		s.publishMu.Lock()
		defer s.publishMu.Unlock()
		if !s.unmounted.Load() {
			s.collect()
		}
	})
}

// settleLater runs an invalidation outside the FUSE request that found it
// due (cache.go), unless a handover has stopped them.
func (s *Server) settleLater(n *fileNode) {
	go func() {
		s.settling.RLock()
		defer s.settling.RUnlock()
		if s.frozen.Load() || s.unmounted.Load() {
			return
		}
		n.cache.settle(n)
	}()
}

// notifyContent invalidates the kernel's attributes and pages of a node.
func (s *Server) notifyContent(node uint64) syscall.Errno {
	srv := s.fuseServer()
	if srv == nil {
		return syscall.ENOTCONN
	}
	return syscall.Errno(srv.InodeNotify(node, 0, 0))
}

// reportBadNodes logs each node that ssh_config leaves out because it fails
// identity.CheckNode (the renderer skips it), once while it stays bad rather
// than at every renewal.
func (s *Server) reportBadNodes(nodes []identity.Node) {
	bad := map[string]bool{}
	for _, n := range nodes {
		err := identity.CheckNode(n)
		if err == nil {
			continue
		}
		bad[err.Error()] = true
		if !s.badNodes[err.Error()] {
			s.log.Warn("node left out of ssh_config: it fails the inventory checks; fix it on the authority with `midfs nodes add` or remove it with `midfs rm nodes/NAME`", "err", err)
		}
	}
	s.badNodes = bad
}
