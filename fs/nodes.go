package fs

import (
	"maps"
	"slices"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/midfs/midfs/identity"
)

// rawFS answers the kernel directly (go-fuse's raw API), not through
// go-fuse's node tree: the tree is one fixed directory, and every number the
// kernel keeps must mean the same in a successor of this process. So node
// IDs and inode numbers are fixed (the root is 1, file i of identity.Files
// is 2+i), lookups are not counted (no node is ever forgotten), and file
// handles carry their own state (handle.go). Every method that would change
// the tree answers EROFS; a method left to the default answers ENOSYS,
// which for Open would stop the kernel sending opens for the whole mount.
type rawFS struct {
	fuse.RawFileSystem // ENOSYS for what is not here: locks, ioctl, poll, lseek, bmap
	s                  *Server
}

const rootID = fuse.FUSE_ROOT_ID

// fileNode is one served file.
type fileNode struct {
	srv   *Server
	idx   int // in identity.Files and generation.sizes
	file  identity.File
	mode  uint32
	cache inodeCache
}

// nodeID is the file's node ID and inode number: fixed by its place in
// identity.Files, so a file keeps its number whichever files the tree
// leaves out, and in whichever process serves it.
func (n *fileNode) nodeID() uint64 { return uint64(2 + n.idx) }

func newFileNode(s *Server, i int, f identity.File) *fileNode {
	mode := uint32(0o644)
	if f.Secret {
		mode = 0o600
	}
	return &fileNode{srv: s, idx: i, file: f, mode: mode, cache: inodeCache{st: &s.st.files[i]}}
}

// node returns the file of a node ID, nil for the root, an unknown ID or a
// file the tree leaves out.
func (s *Server) node(id uint64) *fileNode {
	if id < 2 || id-2 >= uint64(len(s.byIdx)) {
		return nil
	}
	return s.byIdx[id-2]
}

func (s *Server) child(name string) *fileNode {
	for _, n := range s.files {
		if n.file.Name == name {
			return n
		}
	}
	return nil
}

func (r *rawFS) String() string { return "midfs" }

// Lookup finds a child of the fixed tree; a miss is cached by the kernel
// (negativeTimeout), since names never appear later.
func (r *rawFS) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	if h.NodeId != rootID {
		return fuse.ENOTDIR
	}
	n := r.s.child(name)
	if n == nil {
		out.SetEntryTimeout(negativeTimeout)
		return fuse.OK
	}
	r.s.entry(n, out)
	return fuse.OK
}

// entry fills what a lookup (or readdirplus) says of file n.
func (s *Server) entry(n *fileNode, out *fuse.EntryOut) {
	out.NodeId = n.nodeID()
	out.Generation = 1
	out.SetEntryTimeout(entryTimeout)
	out.SetAttrTimeout(attrTimeout)
	n.attr(&out.Attr)
}

// Forget: nodes are never dropped, so the kernel's lookup counts are not
// kept.
func (r *rawFS) Forget(nodeid, nlookup uint64) {}

func (r *rawFS) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	out.SetTimeout(attrTimeout)
	if in.NodeId == rootID {
		r.s.rootAttr(&out.Attr)
		return fuse.OK
	}
	n := r.s.node(in.NodeId)
	if n == nil {
		return fuse.ENOENT
	}
	n.attr(&out.Attr)
	return fuse.OK
}

func (s *Server) rootAttr(out *fuse.Attr) {
	o := &s.opts
	out.Ino = rootID
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	out.Owner = fuse.Owner{Uid: o.UID, Gid: o.GID}
	out.Size = 4096
	out.Blksize = 4096
	t := uint64(s.current.Load().at.Unix())
	out.Mtime, out.Ctime, out.Atime = t, t, t
}

// attr reports the size of the generation whose bytes the kernel may
// cache for this file (normally the current one; see cache.go), so stat,
// ls -l and wc -c agree with what a read returns.
func (n *fileNode) attr(out *fuse.Attr) {
	g := n.srv.generation(n.cache.attrGen())
	if g == nil {
		g = n.srv.current.Load()
	}
	o := &n.srv.opts
	out.Ino = n.nodeID()
	out.Mode = syscall.S_IFREG | n.mode
	out.Nlink = 1
	out.Owner = fuse.Owner{Uid: o.UID, Gid: o.GID}
	out.Size = uint64(g.sizes[n.idx])
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	t := uint64(g.at.Unix())
	ns := uint32(g.at.Nanosecond())
	out.Mtime, out.Ctime, out.Atime = t, t, t
	out.Mtimensec, out.Ctimensec, out.Atimensec = ns, ns, ns
}

// Open decides, once and from the caller, whether the file may be opened,
// and which generation the handle will read.
func (r *rawFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	s := r.s
	n := s.node(in.NodeId)
	if n == nil {
		if in.NodeId == rootID {
			return fuse.Status(syscall.EISDIR)
		}
		return fuse.ENOENT
	}
	caller := &in.Caller
	if in.Flags&syscall.O_ACCMODE != syscall.O_RDONLY || in.Flags&(syscall.O_TRUNC|syscall.O_APPEND|syscall.O_CREAT) != 0 {
		s.reportOpen(n, caller, ResultEROFS, 0)
		return fuse.EROFS
	}
	if n.file.Secret && !s.maySeeSecrets(caller) {
		s.reportOpen(n, caller, ResultDenied, 0)
		return fuse.EACCES
	}
	if fh, flags, ok := s.jrnl.handled(in.Unique); ok {
		out.Fh, out.OpenFlags = fh, flags // see journal.go
		return fuse.OK
	}
	h := fileHandle{idx: n.idx}
	h.slot, h.gen = s.pins.acquire(threadGroup(caller.Pid), s.currentID, s.opts.Clock.Now())
	out.OpenFlags, h.cached = n.cache.open(h.gen)
	out.Fh = h.fh()
	s.jrnl.record(in.Unique, out.Fh, out.OpenFlags)
	s.reportOpen(n, caller, ResultOK, h.gen)
	return fuse.OK
}

func (r *rawFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	return r.s.read(in.Fh, buf, in.Offset)
}

func (r *rawFS) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	if _, _, ok := r.s.jrnl.handled(in.Unique); ok {
		return // see journal.go
	}
	r.s.release(in.Fh)
	r.s.jrnl.record(in.Unique, in.Fh, 0)
}

// Flush and Fsync have nothing to write out.
func (r *rawFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status    { return fuse.OK }
func (r *rawFS) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status    { return fuse.OK }
func (r *rawFS) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) fuse.Status { return fuse.OK }

// Access answers access(2) the way Open would decide.
func (r *rawFS) Access(cancel <-chan struct{}, in *fuse.AccessIn) fuse.Status {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	if in.Mask&unixW != 0 {
		return fuse.EROFS
	}
	if in.NodeId == rootID {
		return fuse.OK
	}
	n := r.s.node(in.NodeId)
	switch {
	case n == nil:
		return fuse.ENOENT
	case in.Mask&unixX != 0:
		return fuse.EACCES
	case n.file.Secret && in.Mask&unixR != 0 && !r.s.maySeeSecrets(&in.Caller):
		return fuse.EACCES
	}
	return fuse.OK
}

// OpenDir lets the kernel cache the listing (FOPEN_CACHE_DIR): the tree
// never changes, so `ls` costs one OPENDIR round trip once warm.
func (r *rawFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	if in.NodeId != rootID {
		return fuse.ENOTDIR
	}
	out.OpenFlags = fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE
	return fuse.OK
}

// dirEntries is the fixed listing; an entry's Off is the offset after it.
func (s *Server) dirEntries() []fuse.DirEntry {
	es := make([]fuse.DirEntry, 0, len(s.files)+2)
	es = append(es, fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: rootID}, fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: rootID})
	for _, n := range s.files {
		es = append(es, fuse.DirEntry{Name: n.file.Name, Mode: syscall.S_IFREG, Ino: n.nodeID()})
	}
	for i := range es {
		es[i].Off = uint64(i + 1)
	}
	return es
}

func (r *rawFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	es := r.s.dirEntries()
	for _, e := range es[min(in.Offset, uint64(len(es))):] {
		if !out.AddDirEntry(e) {
			break
		}
	}
	return fuse.OK
}

// ReadDirPlus also answers the lookups of the files (not of . and ..,
// which the kernel does not take from it).
func (r *rawFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	es := r.s.dirEntries()
	for _, e := range es[min(in.Offset, uint64(len(es))):] {
		eo := out.AddDirLookupEntry(e)
		if eo == nil {
			break
		}
		if n := r.s.node(e.Ino); n != nil {
			r.s.entry(n, eo)
		}
	}
	return fuse.OK
}

func (r *rawFS) ReleaseDir(in *fuse.ReleaseIn) {}

// XattrCertSerial on the root is the serial of the certificate served
// now. It moves at every renewal and, unlike a file, holds no reader to the
// generation it read before (see pins.go), so a waiter can poll it.
const XattrCertSerial = "user.midfs.cert_serial"

// xattrs is what the root serves: Options.Xattrs (or what SetXattr made
// of them) and the serial.
func (s *Server) xattrs() map[string]string {
	var m map[string]string
	if p := s.rootXattrs.Load(); p != nil {
		m = maps.Clone(*p)
	} else {
		m = maps.Clone(s.opts.Xattrs)
	}
	if m == nil {
		m = map[string]string{}
	}
	m[XattrCertSerial] = s.current.Load().serial
	return m
}

// SetXattr changes one of the xattrs Options.Xattrs put on the root.
func (s *Server) SetXattr(name, value string) {
	s.xattrMu.Lock()
	defer s.xattrMu.Unlock()
	m := map[string]string{}
	if p := s.rootXattrs.Load(); p != nil {
		m = maps.Clone(*p)
	} else if s.opts.Xattrs != nil {
		m = maps.Clone(s.opts.Xattrs)
	}
	m[name] = value
	s.rootXattrs.Store(&m)
}

// Nothing lives in a file but its bytes: xattrs are the root's.
func (r *rawFS) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	if h.NodeId != rootID {
		return 0, fuse.ENOATTR
	}
	v, ok := r.s.xattrs()[attr]
	if !ok {
		return 0, fuse.ENOATTR
	}
	if len(dest) < len(v) {
		return uint32(len(v)), fuse.ERANGE
	}
	return uint32(copy(dest, v)), fuse.OK
}

func (r *rawFS) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (uint32, fuse.Status) {
	r.s.gate.RLock() // see Handover
	defer r.s.gate.RUnlock()
	if h.NodeId != rootID {
		return 0, fuse.OK
	}
	var b []byte
	for _, k := range slices.Sorted(maps.Keys(r.s.xattrs())) {
		b = append(append(b, k...), 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), fuse.ERANGE
	}
	return uint32(copy(dest, b)), fuse.OK
}

func (r *rawFS) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	out.Files = uint64(len(r.s.files) + 1)
	return fuse.OK
}

// Readlink: nothing here is a link.
func (r *rawFS) Readlink(cancel <-chan struct{}, h *fuse.InHeader) ([]byte, fuse.Status) {
	return nil, fuse.EINVAL
}

// Every write-type call.
func (r *rawFS) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target, name string, out *fuse.EntryOut) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) fuse.Status {
	return fuse.EROFS
}
func (r *rawFS) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	return 0, fuse.EROFS
}
func (r *rawFS) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (uint32, fuse.Status) {
	return 0, fuse.EROFS
}
func (r *rawFS) CopyFileRange(cancel <-chan struct{}, in *fuse.CopyFileRangeIn) (uint32, fuse.Status) {
	return 0, fuse.EROFS
}
func (r *rawFS) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	return fuse.EROFS
}

// access(2) mask bits.
const (
	unixR = 4
	unixW = 2
	unixX = 1
)
