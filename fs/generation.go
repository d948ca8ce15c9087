package fs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
)

// generation is one published snapshot, rendered once: the bytes of every
// file of one issuance, in memory files of its own (see state.go), so that
// a successor of this process serves a handle opened before it the bytes
// the handle was opened on, a private key included. Both are zeroed before
// they are let go, once no handle, pin or open can reach the generation.
type generation struct {
	id      uint64
	at      time.Time // publication time: mtime and ctime of every file
	serial  string    // of the TLS certificate: XattrCertSerial
	expires time.Time // when the first of its certificates runs out
	sizes   []int64   // indexed like identity.Files
	files   [][]byte  // indexed like identity.Files; views into mem or keyMem
	mem     []byte    // the shared mapping of fd
	fd      *os.File
	// The files that hold the private key (identity.File.Secret), in a
	// memory file of their own: see newKeyMemfd. Nil when the tree serves
	// no such file, and in a generation an older agent handed over (genV1).
	keyMem []byte
	keyFd  *os.File
	// keySecret says keyFd is secret memory (memfd_secret(2)); known for a
	// generation this process made.
	keySecret bool
}

// The memfd of a generation: a header, then the bytes of the files that
// hold no secret. A secret file's offset and length are in the key memfd.
//
//	magic [16]byte, id u64, at (Unix ns) i64, expires (Unix ns) i64,
//	files u32, serial length u32, serial [64]byte,
//	then per file: offset u64, length u64
//
// genV1 is the layout of midfs before the key memfd: every file in the one
// memfd. A generation in it, handed over by such an agent during an
// upgrade, is still served.
const (
	genMagic     = "midfs/gen/v2\x00\x00\x00\x00"
	genV1        = "midfs/gen/v1\x00\x00\x00\x00"
	genSerialMax = 64
	genOffID     = 16
	genOffAt     = genOffID + 8
	genOffExp    = genOffAt + 8
	genOffFiles  = genOffExp + 8
	genOffSerLen = genOffFiles + 4
	genOffSerial = genOffSerLen + 4
	genHeader    = genOffSerial + genSerialMax
)

// genName is how a generation's memfd is named where it is kept (systemd's
// file descriptor store, a handover); genKeyName its key memfd.
func genName(id uint64) string    { return "gen-" + strconv.FormatUint(id, 10) }
func genKeyName(id uint64) string { return genName(id) + "-key" }

// parseGenName is genName's inverse.
func parseGenName(name string) (uint64, bool) {
	if len(name) < 5 || name[:4] != "gen-" {
		return 0, false
	}
	id, err := strconv.ParseUint(name[4:], 10, 32)
	return id, err == nil && id > 0
}

// parseGenKeyName is genKeyName's inverse.
func parseGenKeyName(name string) (uint64, bool) {
	id, ok := parseGenName(strings.TrimSuffix(name, "-key"))
	return id, ok && name == genKeyName(id)
}

// memfdSecret is memfd_secret(2), a variable so that tests can take it
// away.
var memfdSecret = func() (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_MEMFD_SECRET, unix.O_CLOEXEC, 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

// newKeyMemfd makes the memory file of a generation's secret files.
// memfd_secret(2) (Linux 5.14, on by default since 6.5) gives memory that
// is locked and never swapped whoever holds it: the agent, or the service
// manager's store alone between a crash and the restart, when no mapping
// of an agent's keeps it locked. It is outside the kernel's own mapping
// too, so not even root reads it through /proc/PID/mem. Where the kernel
// (or a seccomp filter) refuses it, an ordinary memfd is used, and secret
// says so.
func newKeyMemfd(name string, size int) (f *os.File, secret bool, err error) {
	fd, err := memfdSecret()
	if err != nil {
		f, err := newMemfd(name, size)
		return f, false, err
	}
	f = os.NewFile(uintptr(fd), name)
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("size the %s memfd: %w", name, err)
	}
	return f, true, nil
}

// renderGeneration renders every file of snap that the tree serves, for a
// tree at paths; a file not served is left empty, never rendered, so the
// private key of a tree without key files stays out of every buffer.
func renderGeneration(snap *Snapshot, paths identity.Paths, serves func(identity.File) bool, id uint64, at time.Time) (*generation, error) {
	if snap == nil || snap.Identity == nil {
		return nil, errors.New("no identity in the snapshot")
	}
	ident := snap.Identity
	if ident.Key == nil || ident.SSHCert == nil || ident.TLSCert == nil {
		return nil, errors.New("identity lacks its key or certificates")
	}
	if len(identity.Files) > maxFiles {
		return nil, fmt.Errorf("%d files, at most %d can be served", len(identity.Files), maxFiles)
	}
	bufs := make([][]byte, len(identity.Files))
	defer func() {
		for _, b := range bufs {
			clear(b) // the private key's copies; the memfds have the bytes now
		}
	}()
	size, keySize := genHeader+16*len(identity.Files), 0
	for i, f := range identity.Files {
		if !serves(f) {
			continue
		}
		b, err := identity.Render(f.Name, ident, snap.Nodes, paths)
		if err != nil {
			return nil, fmt.Errorf("render %s: %w", f.Name, err)
		}
		bufs[i] = b
		if f.Secret {
			keySize += len(b)
		} else {
			size += len(b)
		}
	}
	serial := ident.TLSCert.SerialNumber.String()
	if len(serial) > genSerialMax {
		return nil, fmt.Errorf("certificate serial of %d digits", len(serial))
	}
	g := &generation{}
	var err error
	if g.fd, g.mem, err = mapNew(newMemfd, "midfs-"+genName(id), size); err != nil {
		return nil, err
	}
	if keySize > 0 {
		newKey := func(name string, size int) (*os.File, error) {
			f, secret, err := newKeyMemfd(name, size)
			g.keySecret = secret
			return f, err
		}
		g.keyFd, g.keyMem, err = mapNew(newKey, "midfs-"+genKeyName(id), keySize)
		if err != nil && g.keySecret {
			// Mapping secret memory counts against RLIMIT_MEMLOCK.
			g.keySecret = false
			g.keyFd, g.keyMem, err = mapNew(newMemfd, "midfs-"+genKeyName(id), keySize)
		}
		if err != nil {
			g.release()
			return nil, err
		}
	}
	le := binary.LittleEndian
	mem := g.mem
	copy(mem, genMagic)
	le.PutUint64(mem[genOffID:], id)
	le.PutUint64(mem[genOffAt:], uint64(at.UnixNano()))
	le.PutUint64(mem[genOffExp:], uint64(ident.Expires().UnixNano()))
	le.PutUint32(mem[genOffFiles:], uint32(len(bufs)))
	le.PutUint32(mem[genOffSerLen:], uint32(len(serial)))
	copy(mem[genOffSerial:], serial)
	off, keyOff := genHeader+16*len(bufs), 0
	for i, b := range bufs {
		at, to := &off, mem
		if identity.Files[i].Secret {
			at, to = &keyOff, g.keyMem
		}
		le.PutUint64(mem[genHeader+16*i:], uint64(*at))
		le.PutUint64(mem[genHeader+16*i+8:], uint64(len(b)))
		copy(to[*at:], b)
		*at += len(b)
	}
	return g.parse()
}

// mapNew makes a memory file of size bytes with newFile and maps it.
func mapNew(newFile func(string, int) (*os.File, error), name string, size int) (*os.File, []byte, error) {
	f, err := newFile(name, size)
	if err != nil {
		return nil, nil, err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("map a generation: %w", err)
	}
	return f, mem, nil
}

// mapHanded maps a memory file handed over by a predecessor, of at least
// min bytes.
func mapHanded(f *os.File, min int64) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() < min || fi.Size() > 1<<31 {
		return nil, fmt.Errorf("a generation of %d bytes", fi.Size())
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map a generation: %w", err)
	}
	return mem, nil
}

// loadGeneration maps a generation's memfds handed over by a predecessor;
// keyFd is nil when none was (no secret file is served, or genV1).
func loadGeneration(fd, keyFd *os.File) (*generation, error) {
	mem, err := mapHanded(fd, genHeader)
	if err != nil {
		return nil, err
	}
	g := &generation{fd: fd, mem: mem, keyFd: keyFd}
	if keyFd != nil {
		if g.keyMem, err = mapHanded(keyFd, 1); err != nil {
			g.mem, g.fd = nil, nil
			unix.Munmap(mem)
			return nil, err
		}
	}
	return g.parse()
}

// parse reads the header of a mapped generation and checks every bound, so
// that a foreign memfd is refused rather than served. On a refusal the
// mappings are let go, the descriptors not.
func (g *generation) parse() (*generation, error) {
	le := binary.LittleEndian
	mem := g.mem
	bad := func(why string) (*generation, error) {
		g.fd, g.keyFd = nil, nil
		g.release()
		return nil, fmt.Errorf("not a midfs generation: %s", why)
	}
	v1 := string(mem[:16]) == genV1
	if string(mem[:16]) != genMagic && !v1 {
		return bad("no magic")
	}
	if v1 && g.keyMem != nil {
		return bad("a key memfd beside a generation that has none")
	}
	n := int(le.Uint32(mem[genOffFiles:]))
	sl := int(le.Uint32(mem[genOffSerLen:]))
	if n != len(identity.Files) || sl > genSerialMax || genHeader+16*n > len(mem) {
		return bad("its files are not this midfs's")
	}
	g.id, g.at = le.Uint64(mem[genOffID:]), time.Unix(0, int64(le.Uint64(mem[genOffAt:])))
	g.expires, g.serial = time.Unix(0, int64(le.Uint64(mem[genOffExp:]))), string(mem[genOffSerial:genOffSerial+sl])
	g.sizes, g.files = make([]int64, n), make([][]byte, n)
	for i := range n {
		in := mem
		if identity.Files[i].Secret && !v1 {
			in = g.keyMem
		}
		off, l := le.Uint64(mem[genHeader+16*i:]), le.Uint64(mem[genHeader+16*i+8:])
		if off > uint64(len(in)) || l > uint64(len(in))-off {
			return bad("a file lies outside it")
		}
		g.files[i] = in[off : off+l : off+l]
		g.sizes[i] = int64(l)
	}
	return g, nil
}

// wipe zeroes the generation's memory, for every holder of the memfds, and
// lets it go. Only for a generation nothing can reach any more.
func (g *generation) wipe() {
	clear(g.mem)
	clear(g.keyMem)
	g.release()
}

// release lets this process's mappings and descriptors go, leaving the
// memory to whoever else holds it.
func (g *generation) release() {
	for _, m := range [][]byte{g.mem, g.keyMem} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	g.mem, g.keyMem, g.files = nil, nil, nil
	for _, f := range []*os.File{g.fd, g.keyFd} {
		if f != nil {
			f.Close()
		}
	}
}
