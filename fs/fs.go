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
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
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
	fuse   *fuse.Server
	root   *dirNode
	files  []*fileNode
	pins   *pinTable

	publishMu sync.Mutex // serializes Publish
	current   atomic.Pointer[generation]
	lastID    uint64          // guarded by publishMu
	badNodes  map[string]bool // guarded by publishMu: nodes left out of ssh_config, already logged

	connID    string      // FUSE connection number, to abort a mount that will not unmount
	unmounted atomic.Bool // Unmount was called, or the kernel ended the mount (umount from outside)
	done      chan struct{}
}

// Mount serves first at opts.Dir and returns once the kernel answers for the
// tree, so no reader ever sees an empty or half-mounted directory.
func Mount(opts Options, first *Snapshot) (*Server, error) {
	s, err := newServer(opts, first)
	if err != nil {
		return nil, err
	}
	dir := s.opts.Dir
	if err := CheckMountpoint(dir); err != nil {
		return nil, err
	}
	srv, err := fuse.NewServer(gofs.NewNodeFS(s.root, s.nodeOptions()), dir, s.mountOptions())
	if err != nil {
		return nil, fmt.Errorf("mount %s: %w", dir, err)
	}
	s.fuse = srv
	closeFUSEOnExec()
	go func() {
		srv.Serve()
		s.unmounted.Store(true) // umount(8) from outside ends up here too
		close(s.done)
	}()
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

// newServer builds the tree serving first, without touching the kernel.
func newServer(opts Options, first *Snapshot) (*Server, error) {
	if !filepath.IsAbs(opts.Dir) {
		return nil, fmt.Errorf("mountpoint %q is not an absolute path", opts.Dir)
	}
	opts.Dir = filepath.Clean(opts.Dir)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real()
	}
	if opts.NoKeyFiles && opts.AgentSocket == "" {
		return nil, errors.New("without the key files, ssh_config needs an ssh-agent socket to name")
	}
	s := &Server{opts: opts, access: Access{UID: opts.UID, GID: opts.GID, Readers: opts.Readers},
		log: opts.Logger, pins: newPinTable(), done: make(chan struct{})}
	g, err := s.newGeneration(first)
	if err != nil {
		return nil, fmt.Errorf("cannot serve the first identity: %w", err)
	}
	s.current.Store(g)
	s.root = &dirNode{srv: s}
	for i, f := range identity.Files {
		if !s.serves(f) {
			continue
		}
		s.files = append(s.files, newFileNode(s, i, f, g))
	}
	return s, nil
}

func (s *Server) nodeOptions() *gofs.Options {
	et, nt, at := entryTimeout, negativeTimeout, attrTimeout
	return &gofs.Options{
		EntryTimeout:    &et,
		NegativeTimeout: &nt,
		AttrTimeout:     &at,
		NullPermissions: true, // every node sets its mode itself
		RootStableAttr:  &gofs.StableAttr{Ino: 1},
		Logger:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
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
	g, err := s.newGeneration(snap)
	if err != nil {
		s.log.Error("new identity not served, keeping the previous one", "err", err)
		return
	}
	s.current.Store(g)
	if s.unmounted.Load() {
		return
	}
	for _, f := range s.files {
		f.cache.settle(f)
	}
	s.log.Debug("identity published", "generation", g.id)
}

// Unmount unmounts the tree, ends its FUSE connection and returns once
// serving has stopped. If readers keep files open so the kernel refuses, it
// detaches the mount lazily. After an unmount from outside (umount(8)) it
// has nothing to do and returns nil.
func (s *Server) Unmount() error {
	if s.unmounted.Swap(true) {
		return nil
	}
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
	s.fuse.Wait()
	s.log.Info("credential filesystem unmounted", "dir", dir)
	return nil
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

// generation is one published snapshot with what Getattr needs precomputed,
// and the bytes of the files without secrets: rendered once, shared by every
// handle (ssh_config of 10,000 nodes is about 1 MB and takes milliseconds
// to render). Secret files are rendered per handle and cleared at release.
type generation struct {
	id     uint64
	snap   *Snapshot
	at     time.Time // publication time: mtime and ctime of every file
	sizes  []int64   // indexed like identity.Files; 0 for a file not served
	public [][]byte  // indexed like identity.Files; nil for secret files
	paths  identity.Paths
}

func (s *Server) newGeneration(snap *Snapshot) (*generation, error) {
	if snap == nil || snap.Identity == nil {
		return nil, errors.New("no identity in the snapshot")
	}
	id := snap.Identity
	if id.Key == nil || id.SSHCert == nil || id.TLSCert == nil {
		return nil, errors.New("identity lacks its key or certificates")
	}
	s.reportBadNodes(snap.Nodes)
	g := &generation{snap: snap, at: s.opts.Clock.Now(), sizes: make([]int64, len(identity.Files)),
		public: make([][]byte, len(identity.Files)), paths: s.paths()}
	for i, f := range identity.Files {
		if !s.serves(f) {
			continue // never rendered: the private key stays out of every buffer
		}
		b, err := identity.Render(f.Name, id, snap.Nodes, g.paths)
		if err != nil {
			return nil, fmt.Errorf("render %s: %w", f.Name, err)
		}
		g.sizes[i] = int64(len(b))
		if f.Secret {
			clear(b)
		} else {
			g.public[i] = b
		}
	}
	s.lastID++
	g.id = s.lastID
	return g, nil
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

// render produces the bytes of file i in generation g. The bytes of a
// secret file are the caller's, to clear when done; those of any other file
// are shared and must not be changed.
func (g *generation) render(i int) ([]byte, error) {
	if b := g.public[i]; b != nil {
		return b, nil
	}
	return identity.Render(identity.Files[i].Name, g.snap.Identity, g.snap.Nodes, g.paths)
}
