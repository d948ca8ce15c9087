package fs

import (
	"bytes"
	"os"
	"slices"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

func getxattr(path, name string, buf []byte) (int, error) { return unix.Getxattr(path, name, buf) }
func listxattr(path string, buf []byte) (int, error)      { return unix.Listxattr(path, buf) }

// Every write-type call fails with EROFS, for root too, and leaves the tree
// exactly as it was.
func TestEveryWriteIsEROFS(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{Xattrs: map[string]string{"user.midfs.auth_server": "a:1"}})
	before := snapshotTree(t, s.dir)
	key, pub, dir := s.path("key"), s.path("key.pub"), s.dir
	openErr := func(path string, flags int) error {
		fd, err := unix.Open(path, flags, 0o644)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
	ops := []struct {
		name string
		call func() error
	}{
		{"open key O_WRONLY", func() error { return openErr(key, unix.O_WRONLY) }},
		{"open key O_RDWR", func() error { return openErr(key, unix.O_RDWR) }},
		{"open key.pub O_RDONLY|O_TRUNC", func() error { return openErr(pub, unix.O_RDONLY|unix.O_TRUNC) }},
		{"open key.pub O_WRONLY|O_APPEND", func() error { return openErr(pub, unix.O_WRONLY|unix.O_APPEND) }},
		{"create new file", func() error { return openErr(dir+"/new", unix.O_CREAT|unix.O_WRONLY) }},
		{"O_TMPFILE", func() error { return openErr(dir, unix.O_TMPFILE|unix.O_RDWR) }},
		{"truncate key", func() error { return unix.Truncate(key, 0) }},
		{"unlink key", func() error { return unix.Unlink(key) }},
		{"rmdir key", func() error { return unix.Rmdir(key) }},
		{"mkdir", func() error { return unix.Mkdir(dir+"/d", 0o755) }},
		{"rename key", func() error { return unix.Rename(key, dir+"/key2") }},
		{"rename over key.pub", func() error { return unix.Rename(key, pub) }},
		{"symlink", func() error { return unix.Symlink("key", dir+"/link") }},
		{"link", func() error { return unix.Link(key, dir+"/hard") }},
		{"mknod", func() error { return unix.Mknod(dir+"/fifo", unix.S_IFIFO|0o644, 0) }},
		{"chmod key", func() error { return unix.Chmod(key, 0o644) }},
		{"chmod dir", func() error { return unix.Chmod(dir, 0o777) }},
		{"chown key", func() error { return unix.Chown(key, 0, 0) }},
		{"utimes key", func() error { return unix.UtimesNano(key, []unix.Timespec{{Sec: 1}, {Sec: 1}}) }},
		{"setxattr key", func() error { return unix.Setxattr(key, "user.x", []byte("y"), 0) }},
		{"setxattr dir", func() error { return unix.Setxattr(dir, "user.midfs.auth_server", []byte("evil:1"), 0) }},
		{"removexattr dir", func() error { return unix.Removexattr(dir, "user.midfs.auth_server") }},
	}
	for _, op := range ops {
		if err := op.call(); err != unix.EROFS {
			t.Errorf("%s: %v, want EROFS", op.name, err)
		}
	}
	// fallocate needs a descriptor open for writing, which cannot exist:
	// on a read-only one the kernel refuses before asking us.
	fd, err := unix.Open(pub, unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(fd, 0, 0, 1<<20); err == nil {
		t.Error("fallocate on key.pub succeeded")
	}
	if _, err := unix.Write(fd, []byte("x")); err == nil {
		t.Error("write on key.pub succeeded")
	}
	unix.Close(fd)

	if after := snapshotTree(t, s.dir); !treesEqual(before, after) {
		t.Errorf("tree changed:\nbefore %v\nafter  %v", before, after)
	}
}

type treeEntry struct {
	name string
	mode os.FileMode
	data []byte
}

func snapshotTree(t *testing.T, dir string) []treeEntry {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []treeEntry
	for _, e := range ents {
		info, _ := e.Info()
		b, _ := os.ReadFile(dir + "/" + e.Name())
		out = append(out, treeEntry{e.Name(), info.Mode(), b})
	}
	buf := make([]byte, 256)
	n, _ := unix.Getxattr(dir, "user.midfs.auth_server", buf)
	out = append(out, treeEntry{"xattr", 0, buf[:max(n, 0)]})
	return out
}

func treesEqual(a, b []treeEntry) bool {
	return slices.EqualFunc(a, b, func(x, y treeEntry) bool {
		return x.name == y.name && x.mode == y.mode && bytes.Equal(x.data, y.data)
	})
}

// The same calls reach the node methods when the kernel does not stop them
// first (a mount without "ro", or a kernel that passes them on): each must
// be EROFS and keep the child. go-fuse's default Unlink and Rmdir would
// report success and drop the file from the tree.
func TestNodeMethodsRefuseWritesWithoutTheKernel(t *testing.T) {
	ca, err := newTestCA()
	if err != nil {
		t.Fatal(err)
	}
	s := testServer(t, ca)
	raw := s.raw
	hdr := func(node uint64) fuse.InHeader {
		return fuse.InHeader{NodeId: node, Caller: fuse.Caller{Owner: fuse.Owner{Uid: 0, Gid: 0}, Pid: 1}}
	}
	var ent fuse.EntryOut
	h := hdr(1)
	if st := raw.Lookup(nil, &h, "key", &ent); st != fuse.OK || ent.NodeId == 0 {
		t.Fatalf("lookup key: %v", st)
	}
	keyID := ent.NodeId
	rofs := fuse.Status(syscall.EROFS)

	checks := map[string]fuse.Status{}
	h = hdr(1)
	checks["unlink"] = raw.Unlink(nil, &h, "key")
	h = hdr(1)
	checks["rmdir"] = raw.Rmdir(nil, &h, "key")
	checks["mkdir"] = raw.Mkdir(nil, &fuse.MkdirIn{InHeader: hdr(1)}, "d", &fuse.EntryOut{})
	checks["mknod"] = raw.Mknod(nil, &fuse.MknodIn{InHeader: hdr(1)}, "n", &fuse.EntryOut{})
	checks["create"] = raw.Create(nil, &fuse.CreateIn{InHeader: hdr(1)}, "new", &fuse.CreateOut{})
	checks["tmpfile"] = raw.Tmpfile(nil, &fuse.CreateIn{InHeader: hdr(1)}, &fuse.CreateOut{})
	checks["rename"] = raw.Rename(nil, &fuse.RenameIn{InHeader: hdr(1), Newdir: 1}, "key", "key2")
	checks["link"] = raw.Link(nil, &fuse.LinkIn{InHeader: hdr(1), Oldnodeid: keyID}, "hard", &fuse.EntryOut{})
	h = hdr(1)
	checks["symlink"] = raw.Symlink(nil, &h, "key", "sym", &fuse.EntryOut{})
	checks["setattr"] = raw.SetAttr(nil, &fuse.SetAttrIn{SetAttrInCommon: fuse.SetAttrInCommon{InHeader: hdr(keyID)}}, &fuse.AttrOut{})
	checks["setxattr"] = raw.SetXAttr(nil, &fuse.SetXAttrIn{InHeader: hdr(1)}, "user.x", []byte("y"))
	h = hdr(1)
	checks["removexattr"] = raw.RemoveXAttr(nil, &h, "user.x")
	checks["open for writing"] = raw.Open(nil, &fuse.OpenIn{InHeader: hdr(keyID), Flags: syscall.O_WRONLY}, &fuse.OpenOut{})
	checks["open with O_TRUNC"] = raw.Open(nil, &fuse.OpenIn{InHeader: hdr(keyID), Flags: syscall.O_TRUNC}, &fuse.OpenOut{})
	_, checks["write"] = raw.Write(nil, &fuse.WriteIn{InHeader: hdr(keyID)}, []byte("x"))
	_, checks["copy_file_range"] = raw.CopyFileRange(nil, &fuse.CopyFileRangeIn{InHeader: hdr(keyID)})
	checks["fallocate"] = raw.Fallocate(nil, &fuse.FallocateIn{InHeader: hdr(keyID)})
	for op, st := range checks {
		if st != rofs {
			t.Errorf("%s: %v, want EROFS", op, st)
		}
	}
	h = hdr(1)
	if st := raw.Lookup(nil, &h, "key", &ent); st != fuse.OK || ent.NodeId != keyID {
		t.Errorf("tree changed: lookup of key %v, node %d", st, ent.NodeId)
	}
}
