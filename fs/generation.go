package fs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
)

// generation is one published snapshot, rendered once: the bytes of every
// file of one issuance, in a memfd of its own (see state.go), so that a
// successor of this process serves a handle opened before it the bytes the
// handle was opened on, a private key included. The memfd is zeroed before
// it is let go, once no handle, pin or open can reach the generation.
type generation struct {
	id      uint64
	at      time.Time // publication time: mtime and ctime of every file
	serial  string    // of the TLS certificate: XattrCertSerial
	expires time.Time // when the first of its certificates runs out
	sizes   []int64   // indexed like identity.Files
	files   [][]byte  // indexed like identity.Files; views into mem
	mem     []byte    // the shared mapping of fd
	fd      *os.File
}

// The memfd of a generation: a header, then the bytes of the files.
//
//	magic [16]byte, id u64, at (Unix ns) i64, expires (Unix ns) i64,
//	files u32, serial length u32, serial [64]byte,
//	then per file: offset u64, length u64
const (
	genMagic     = "midfs/gen/v1\x00\x00\x00\x00"
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
// file descriptor store, a handover).
func genName(id uint64) string { return "gen-" + strconv.FormatUint(id, 10) }

// parseGenName is genName's inverse.
func parseGenName(name string) (uint64, bool) {
	if len(name) < 5 || name[:4] != "gen-" {
		return 0, false
	}
	id, err := strconv.ParseUint(name[4:], 10, 32)
	return id, err == nil && id > 0
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
			clear(b) // the private key's copies; the memfd has the bytes now
		}
	}()
	size := genHeader + 16*len(identity.Files)
	for i, f := range identity.Files {
		if !serves(f) {
			continue
		}
		b, err := identity.Render(f.Name, ident, snap.Nodes, paths)
		if err != nil {
			return nil, fmt.Errorf("render %s: %w", f.Name, err)
		}
		bufs[i] = b
		size += len(b)
	}
	serial := ident.TLSCert.SerialNumber.String()
	if len(serial) > genSerialMax {
		return nil, fmt.Errorf("certificate serial of %d digits", len(serial))
	}
	fd, err := newMemfd("midfs-"+genName(id), size)
	if err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(int(fd.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("map a generation: %w", err)
	}
	le := binary.LittleEndian
	copy(mem, genMagic)
	le.PutUint64(mem[genOffID:], id)
	le.PutUint64(mem[genOffAt:], uint64(at.UnixNano()))
	le.PutUint64(mem[genOffExp:], uint64(ident.Expires().UnixNano()))
	le.PutUint32(mem[genOffFiles:], uint32(len(bufs)))
	le.PutUint32(mem[genOffSerLen:], uint32(len(serial)))
	copy(mem[genOffSerial:], serial)
	off := genHeader + 16*len(bufs)
	for i, b := range bufs {
		le.PutUint64(mem[genHeader+16*i:], uint64(off))
		le.PutUint64(mem[genHeader+16*i+8:], uint64(len(b)))
		copy(mem[off:], b)
		off += len(b)
	}
	return parseGeneration(fd, mem)
}

// loadGeneration maps a generation's memfd handed over by a predecessor.
func loadGeneration(fd *os.File) (*generation, error) {
	fi, err := fd.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() < genHeader || fi.Size() > 1<<31 {
		return nil, fmt.Errorf("a generation of %d bytes", fi.Size())
	}
	mem, err := unix.Mmap(int(fd.Fd()), 0, int(fi.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map a generation: %w", err)
	}
	return parseGeneration(fd, mem)
}

// parseGeneration reads the header of a mapped generation and checks every
// bound, so that a foreign memfd is refused rather than served.
func parseGeneration(fd *os.File, mem []byte) (*generation, error) {
	le := binary.LittleEndian
	bad := func(why string) (*generation, error) {
		unix.Munmap(mem)
		return nil, fmt.Errorf("not a midfs generation: %s", why)
	}
	if string(mem[:16]) != genMagic {
		return bad("no magic")
	}
	n := int(le.Uint32(mem[genOffFiles:]))
	sl := int(le.Uint32(mem[genOffSerLen:]))
	if n != len(identity.Files) || sl > genSerialMax || genHeader+16*n > len(mem) {
		return bad("its files are not this midfs's")
	}
	g := &generation{
		id: le.Uint64(mem[genOffID:]), at: time.Unix(0, int64(le.Uint64(mem[genOffAt:]))),
		expires: time.Unix(0, int64(le.Uint64(mem[genOffExp:]))), serial: string(mem[genOffSerial : genOffSerial+sl]),
		sizes: make([]int64, n), files: make([][]byte, n), mem: mem, fd: fd,
	}
	for i := range n {
		off, l := le.Uint64(mem[genHeader+16*i:]), le.Uint64(mem[genHeader+16*i+8:])
		if off > uint64(len(mem)) || l > uint64(len(mem))-off {
			return bad("a file lies outside it")
		}
		g.files[i] = mem[off : off+l : off+l]
		g.sizes[i] = int64(l)
	}
	return g, nil
}

// wipe zeroes the generation's memory, for every holder of the memfd, and
// lets it go. Only for a generation nothing can reach any more.
func (g *generation) wipe() {
	clear(g.mem)
	g.release()
}

// release lets this process's mapping and descriptor go, leaving the
// memory to whoever else holds it.
func (g *generation) release() {
	if g.mem != nil {
		unix.Munmap(g.mem)
		g.mem, g.files = nil, nil
	}
	if g.fd != nil {
		g.fd.Close()
	}
}
