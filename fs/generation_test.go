package fs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/testenv"
)

// The private key of a generation lies in secret memory of its own: not in
// the memfd of the other files, never swapped whoever holds it, and not
// readable through /proc/PID/mem, not even by root.
func TestGenerationKeyInSecretMemory(t *testing.T) {
	ca, _ := newTestCA()
	g := testServer(t, ca).current.Load()
	if !g.keySecret {
		if testenv.InCI() {
			t.Fatal("memfd_secret(2) is refused on this machine")
		}
		t.Skip("memfd_secret(2) is refused on this machine")
	}
	key := g.files[1]
	if !bytes.Contains(key, []byte("PRIVATE KEY")) {
		t.Fatalf("the key file holds %q", key)
	}
	if bytes.Contains(g.mem, key[:64]) {
		t.Error("the private key is in the memfd of the public files")
	}
	mem, err := os.Open("/proc/self/mem")
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	buf := make([]byte, 32)
	if _, err := mem.ReadAt(buf, int64(uintptr(unsafe.Pointer(&g.files[1][0])))); !errors.Is(err, syscall.EIO) {
		t.Errorf("reading the key through /proc/self/mem: %v, want EIO", err)
	}
	// The public files stay readable there: only the key is hidden.
	if _, err := mem.ReadAt(buf, int64(uintptr(unsafe.Pointer(&g.mem[0])))); err != nil {
		t.Errorf("reading the public files through /proc/self/mem: %v", err)
	}
}

// Where memfd_secret(2) is refused (an old kernel, a seccomp filter), the
// key is served from an ordinary memfd, says so once, and is handed over
// all the same.
func TestGenerationWithoutSecretMemory(t *testing.T) {
	saved := memfdSecret
	memfdSecret = func() (int, error) { return -1, unix.EPERM }
	defer func() { memfdSecret = saved }()
	ca, _ := newTestCA()
	g := testServer(t, ca).current.Load()
	if g.keySecret || g.keyFd == nil {
		t.Fatalf("secret %v, key memfd %v", g.keySecret, g.keyFd)
	}
	h, err := loadGeneration(dup(t, g.fd), dup(t, g.keyFd))
	if err != nil {
		t.Fatal(err)
	}
	defer h.release()
	if !bytes.Equal(h.files[1], g.files[1]) || !bytes.Contains(h.files[1], []byte("PRIVATE KEY")) {
		t.Error("a handed-over generation serves another key file")
	}
}

// A generation an agent of the layout before the key memfd hands over in
// an upgrade (every file in one memfd) is served as it was.
func TestGenerationOfTheFormerLayoutLoads(t *testing.T) {
	ca, _ := newTestCA()
	g := testServer(t, ca).current.Load()
	v1 := formerLayout(t, g)
	h, err := loadGeneration(v1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.release()
	if h.id != g.id || h.serial != g.serial || !h.expires.Equal(g.expires) {
		t.Errorf("header: %d %s %v, want %d %s %v", h.id, h.serial, h.expires, g.id, g.serial, g.expires)
	}
	for i, f := range identity.Files {
		if !bytes.Equal(h.files[i], g.files[i]) {
			t.Errorf("%s differs", f.Name)
		}
	}
	// A key memfd beside it is refused, not half served.
	v1b, key := dup(t, v1), dup(t, g.keyFd)
	defer v1b.Close()
	defer key.Close()
	if _, err := loadGeneration(v1b, key); err == nil {
		t.Error("a former-layout generation with a key memfd loaded")
	}
}

// formerLayout writes g as a generation of the former layout.
func formerLayout(t *testing.T, g *generation) *os.File {
	t.Helper()
	size := genHeader + 16*len(g.files)
	for _, f := range g.files {
		size += len(f)
	}
	f, mem, err := mapNew(newMemfd, "v1", size)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	copy(mem, g.mem[:genHeader])
	copy(mem, genV1)
	le, off := binary.LittleEndian, genHeader+16*len(g.files)
	for i, b := range g.files {
		le.PutUint64(mem[genHeader+16*i:], uint64(off))
		le.PutUint64(mem[genHeader+16*i+8:], uint64(len(b)))
		off += copy(mem[off:], b)
	}
	return f
}

func dup(t *testing.T, f *os.File) *os.File {
	t.Helper()
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return os.NewFile(uintptr(fd), f.Name())
}
