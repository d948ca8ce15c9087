package fs

import (
	"context"
	"maps"
	"slices"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/midfs/midfs/identity"
)

// dirNode is the root directory: a fixed list of files, read-only xattrs.
// Every method that would change it answers EROFS itself, because go-fuse's
// defaults for a missing Unlink or Rmdir succeed and drop the child.
type dirNode struct {
	gofs.Inode
	srv *Server
}

// Interfaces checked at compile time: a forgotten write-type method would
// fall back to a go-fuse default that is not EROFS.
var (
	_ gofs.NodeOnAdder        = (*dirNode)(nil)
	_ gofs.NodeLookuper       = (*dirNode)(nil)
	_ gofs.NodeGetattrer      = (*dirNode)(nil)
	_ gofs.NodeOpendirHandler = (*dirNode)(nil)
	_ gofs.NodeAccesser       = (*dirNode)(nil)
	_ gofs.NodeGetxattrer     = (*dirNode)(nil)
	_ gofs.NodeListxattrer    = (*dirNode)(nil)
	_ gofs.NodeStatfser       = (*dirNode)(nil)
	_ gofs.NodeSetxattrer     = (*dirNode)(nil)
	_ gofs.NodeRemovexattrer  = (*dirNode)(nil)
	_ gofs.NodeSetattrer      = (*dirNode)(nil)
	_ gofs.NodeCreater        = (*dirNode)(nil)
	_ gofs.NodeTmpfiler       = (*dirNode)(nil)
	_ gofs.NodeMkdirer        = (*dirNode)(nil)
	_ gofs.NodeMknoder        = (*dirNode)(nil)
	_ gofs.NodeLinker         = (*dirNode)(nil)
	_ gofs.NodeSymlinker      = (*dirNode)(nil)
	_ gofs.NodeUnlinker       = (*dirNode)(nil)
	_ gofs.NodeRmdirer        = (*dirNode)(nil)
	_ gofs.NodeRenamer        = (*dirNode)(nil)
	_ gofs.NodeFsyncer        = (*dirNode)(nil)
	_ gofs.FileReaddirenter   = (*dirHandle)(nil)
	_ gofs.FileSeekdirer      = (*dirHandle)(nil)

	_ gofs.NodeGetattrer      = (*fileNode)(nil)
	_ gofs.NodeOpener         = (*fileNode)(nil)
	_ gofs.NodeAccesser       = (*fileNode)(nil)
	_ gofs.NodeGetxattrer     = (*fileNode)(nil)
	_ gofs.NodeListxattrer    = (*fileNode)(nil)
	_ gofs.NodeSetxattrer     = (*fileNode)(nil)
	_ gofs.NodeRemovexattrer  = (*fileNode)(nil)
	_ gofs.NodeSetattrer      = (*fileNode)(nil)
	_ gofs.NodeAllocater      = (*fileNode)(nil)
	_ gofs.NodeWriter         = (*fileNode)(nil)
	_ gofs.NodeCopyFileRanger = (*fileNode)(nil)
	_ gofs.NodeFsyncer        = (*fileNode)(nil)
	_ gofs.FileReader         = (*handle)(nil)
	_ gofs.FileReleaser       = (*handle)(nil)
)

func (d *dirNode) OnAdd(ctx context.Context) {
	for _, f := range d.srv.files {
		ch := d.NewPersistentInode(ctx, f, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: f.ino()})
		d.AddChild(f.file.Name, ch, false)
	}
}

// Lookup finds a child of the fixed tree; a miss is cached by the kernel
// (negativeTimeout), since names never appear later.
func (d *dirNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ch := d.GetChild(name)
	if ch == nil {
		return nil, syscall.ENOENT
	}
	var a fuse.AttrOut
	ch.Operations().(*fileNode).Getattr(ctx, nil, &a)
	out.Attr = a.Attr
	return ch, 0
}

func (d *dirNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	o := &d.srv.opts
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	out.Uid, out.Gid = o.UID, o.GID
	out.Size = 4096
	g := d.srv.current.Load()
	t := uint64(g.at.Unix())
	out.Mtime, out.Ctime, out.Atime = t, t, t
	return 0
}

func (d *dirNode) entries() []fuse.DirEntry {
	es := make([]fuse.DirEntry, 0, len(d.srv.files)+2)
	es = append(es, fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: 1}, fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: 1})
	for _, f := range d.srv.files {
		es = append(es, fuse.DirEntry{Name: f.file.Name, Mode: syscall.S_IFREG, Ino: f.ino()})
	}
	return es
}

// OpendirHandle lets the kernel cache the listing (FOPEN_CACHE_DIR): the
// tree never changes, so `ls` costs one OPENDIR round trip once warm.
func (d *dirNode) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return &dirHandle{entries: d.entries()}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

func (d *dirNode) Access(ctx context.Context, mask uint32) syscall.Errno {
	if mask&unixW != 0 {
		return syscall.EROFS
	}
	return 0
}

// XattrCertSerial on the root is the serial of the certificate served
// now. It moves at every renewal and, unlike a file, holds no reader to the
// generation it read before (see pins.go), so a waiter can poll it.
const XattrCertSerial = "user.midfs.cert_serial"

// xattrs is what the root serves: the static Options.Xattrs and the serial.
func (d *dirNode) xattrs() map[string]string {
	m := maps.Clone(d.srv.opts.Xattrs)
	if m == nil {
		m = map[string]string{}
	}
	m[XattrCertSerial] = d.srv.current.Load().snap.Identity.TLSCert.SerialNumber.String()
	return m
}

func (d *dirNode) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, ok := d.xattrs()[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (d *dirNode) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names := slices.Sorted(maps.Keys(d.xattrs()))
	var b []byte
	for _, k := range names {
		b = append(append(b, k...), 0)
	}
	if len(dest) < len(b) {
		return uint32(len(b)), syscall.ERANGE
	}
	return uint32(copy(dest, b)), 0
}

func (d *dirNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = 4096
	out.Frsize = 4096
	out.NameLen = 255
	out.Files = uint64(len(d.srv.files) + 1)
	return 0
}

func (d *dirNode) Setxattr(context.Context, string, []byte, uint32) syscall.Errno {
	return syscall.EROFS
}
func (d *dirNode) Removexattr(context.Context, string) syscall.Errno { return syscall.EROFS }
func (d *dirNode) Setattr(context.Context, gofs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}
func (d *dirNode) Create(context.Context, string, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}
func (d *dirNode) Tmpfile(context.Context, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}
func (d *dirNode) Mkdir(context.Context, string, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (d *dirNode) Mknod(context.Context, string, uint32, uint32, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (d *dirNode) Link(context.Context, gofs.InodeEmbedder, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (d *dirNode) Symlink(context.Context, string, string, *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}
func (d *dirNode) Unlink(context.Context, string) syscall.Errno { return syscall.EROFS }
func (d *dirNode) Rmdir(context.Context, string) syscall.Errno  { return syscall.EROFS }
func (d *dirNode) Rename(context.Context, string, gofs.InodeEmbedder, string, uint32) syscall.Errno {
	return syscall.EROFS
}
func (d *dirNode) Fsync(context.Context, gofs.FileHandle, uint32) syscall.Errno { return 0 }

// dirHandle streams the fixed listing.
type dirHandle struct {
	entries []fuse.DirEntry
	pos     int
}

func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if h.pos >= len(h.entries) {
		return nil, 0
	}
	e := h.entries[h.pos]
	h.pos++
	e.Off = uint64(h.pos)
	return &e, 0
}

func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	h.pos = int(min(off, uint64(len(h.entries))))
	return 0
}

// fileNode is one served file.
type fileNode struct {
	gofs.Inode
	srv   *Server
	idx   int // in identity.Files and generation.sizes
	file  identity.File
	mode  uint32
	cache inodeCache
}

func newFileNode(s *Server, i int, f identity.File, g *generation) *fileNode {
	mode := uint32(0o644)
	if f.Secret {
		mode = 0o600
	}
	n := &fileNode{srv: s, idx: i, file: f, mode: mode}
	n.cache.init(g)
	return n
}

// ino is the file's inode number: fixed by its place in identity.Files, so
// a file keeps its number whichever files the tree leaves out.
func (n *fileNode) ino() uint64 { return uint64(2 + n.idx) }

// Getattr reports the size of the generation whose bytes the kernel may
// cache for this file (normally the current one; see cache.go), so stat,
// ls -l and wc -c agree with what a read returns.
func (n *fileNode) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	g := n.cache.attrGen()
	o := &n.srv.opts
	out.Mode = syscall.S_IFREG | n.mode
	out.Nlink = 1
	out.Uid, out.Gid = o.UID, o.GID
	out.Size = uint64(g.sizes[n.idx])
	out.Blksize = 4096
	t := uint64(g.at.Unix())
	ns := uint32(g.at.Nanosecond())
	out.Mtime, out.Ctime, out.Atime = t, t, t
	out.Mtimensec, out.Ctimensec, out.Atimensec = ns, ns, ns
	return 0
}

// Open decides, once and from the caller, whether the file may be opened,
// and which generation the handle will read.
func (n *fileNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	caller, _ := fuse.FromContext(ctx)
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY || flags&(syscall.O_TRUNC|syscall.O_APPEND|syscall.O_CREAT) != 0 {
		n.srv.reportOpen(ctx, n, caller, ResultEROFS)
		return nil, 0, syscall.EROFS
	}
	if n.file.Secret && !n.srv.maySeeSecrets(caller) {
		n.srv.reportOpen(ctx, n, caller, ResultDenied)
		return nil, 0, syscall.EACCES
	}
	h := &handle{node: n}
	var tgid uint32
	if caller != nil {
		tgid = threadGroup(caller.Pid)
	}
	h.pin, h.gen = n.srv.pins.acquire(tgid, n.srv.current.Load(), n.srv.opts.Clock.Now())
	var fuseFlags uint32
	fuseFlags, h.cached = n.cache.open(h.gen)
	n.srv.reportOpen(ctx, n, caller, ResultOK)
	return h, fuseFlags, 0
}

// Access answers access(2) the way Open would decide.
func (n *fileNode) Access(ctx context.Context, mask uint32) syscall.Errno {
	caller, _ := fuse.FromContext(ctx)
	switch {
	case mask&unixW != 0:
		return syscall.EROFS
	case mask&unixX != 0:
		return syscall.EACCES
	case n.file.Secret && mask&unixR != 0 && !n.srv.maySeeSecrets(caller):
		return syscall.EACCES
	}
	return 0
}

// Nothing lives in a file but its bytes.
func (n *fileNode) Getxattr(context.Context, string, []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENODATA
}
func (n *fileNode) Listxattr(context.Context, []byte) (uint32, syscall.Errno) { return 0, 0 }
func (n *fileNode) Setxattr(context.Context, string, []byte, uint32) syscall.Errno {
	return syscall.EROFS
}
func (n *fileNode) Removexattr(context.Context, string) syscall.Errno { return syscall.EROFS }
func (n *fileNode) Setattr(context.Context, gofs.FileHandle, *fuse.SetAttrIn, *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}
func (n *fileNode) Allocate(context.Context, gofs.FileHandle, uint64, uint64, uint32) syscall.Errno {
	return syscall.EROFS
}
func (n *fileNode) Write(context.Context, gofs.FileHandle, []byte, int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}
func (n *fileNode) CopyFileRange(context.Context, gofs.FileHandle, uint64, *gofs.Inode, gofs.FileHandle, uint64, uint64, uint64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}
func (n *fileNode) Fsync(context.Context, gofs.FileHandle, uint32) syscall.Errno { return 0 }

// access(2) mask bits.
const (
	unixR = 4
	unixW = 2
	unixX = 1
)
