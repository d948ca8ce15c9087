package fs

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The filesystem's state lives in memory that outlives the process. A memfd
// (the "state") holds what readers depend on besides the bytes of the files:
// the kernel's INIT request, the current generation, each file's cache
// accounting (cache.go) and the per-process pins (pins.go); one memfd per
// generation (generation.go) holds the bytes of every file of one issuance.
// The process works on them in place, through shared mappings. A successor
// (an upgrade, a systemd restart, a restart after kill -9 under systemd) is
// handed the same descriptors with the FUSE device (takeover.go) and maps
// the same memory, so it answers for the kernel's node IDs and file handles
// as its predecessor would have, without any state being written out at a
// convenient moment: after a kill -9 the memory is as the dead process left
// it. Only one process works on the state at a time.

const stateMagic = "midfs/state/v1\x00\x00"

const (
	maxFiles = 64      // files a tree may serve; file handles have 7 bits for the index
	pinSlots = 1 << 13 // pins and anonymous handles that can be live at once
)

// stateHeader is the first part of the state.
type stateHeader struct {
	magic [16]byte
	// init is the INIT request the kernel sent when the tree was mounted
	// (fuse.InitIn, its header included). A successor's go-fuse server is
	// started by replaying it (takeover.go): the kernel sends INIT once.
	initLen    uint32
	_          uint32
	init       [256]byte
	lastGen    uint64 // the last generation ID handed out
	currentGen uint64 // the generation new opens get
	// pinsHigh is one past the highest pin slot ever used: slots above it
	// are untouched, so their pages are never faulted in.
	pinsHigh    uint32
	dirLen      uint32
	dir         [4096]byte // the mountpoint, to refuse the state of another mount
	journalNext uint32     // the journal entry written next (journal.go)
	_           uint32
}

// fileState is one file's kernel cache accounting (see cache.go).
type fileState struct {
	attrsGen   uint64
	pagesGen   uint64
	fresh      uint32
	cachedOpen int32
}

// pinSlot is one pin (pins.go): a process's affinity to a generation, or
// the anonymous holder of handles opened without a process to pin.
type pinSlot struct {
	tgid    uint32
	flags   uint32 // slotUsed, slotMapped
	gen     uint64
	created int64 // Unix nanoseconds
	last    int64
	open    int64 // handles held
}

const (
	slotUsed   = 1 << iota // holds handles or affinity
	slotMapped             // in the TGID map: gives affinity
)

// journalEntry is one handled request that changed the state (journal.go).
type journalEntry struct {
	result uint64 // the file handle
	flags  uint32 // FOPEN flags answered
	_      uint32
	unique uint64 // the request's, without FUSE_UNIQUE_RESEND; written last
}

// stateLayout is the whole state memfd. It is never allocated: it is the
// type of the shared mapping.
type stateLayout struct {
	hdr     stateHeader
	files   [maxFiles]fileState
	journal [journalLen]journalEntry
	pins    [pinSlots]pinSlot
}

const stateSize = int(unsafe.Sizeof(stateLayout{}))

// state is the mapped state memfd.
type state struct {
	fd  *os.File
	mem []byte
	*stateLayout
}

// newState makes the state of a fresh mount at dir.
func newState(dir string) (*state, error) {
	if len(dir) > len(stateHeader{}.dir) {
		return nil, fmt.Errorf("mountpoint %s is too long", dir)
	}
	f, err := newMemfd("midfs-state", stateSize)
	if err != nil {
		return nil, err
	}
	st, err := mapState(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	copy(st.hdr.magic[:], stateMagic)
	st.hdr.dirLen = uint32(copy(st.hdr.dir[:], dir))
	return st, nil
}

// openState maps a state handed over by a predecessor and checks that it
// is one, of the mount at dir.
func openState(f *os.File, dir string) (*state, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() != int64(stateSize) {
		return nil, fmt.Errorf("the handed-over state is %d bytes, this midfs expects %d: a different version made it", fi.Size(), stateSize)
	}
	st, err := mapState(f)
	if err != nil {
		return nil, err
	}
	switch {
	case string(st.hdr.magic[:]) != stateMagic:
		err = errors.New("the handed-over state is not a midfs state of this version")
	case st.mountDir() != dir:
		err = fmt.Errorf("the handed-over state is of the mount at %s, not %s", st.mountDir(), dir)
	case st.hdr.initLen == 0 || int(st.hdr.initLen) > len(st.hdr.init):
		err = errors.New("the handed-over state holds no INIT request")
	}
	if err != nil {
		st.unmap()
		return nil, err
	}
	return st, nil
}

func mapState(f *os.File) (*state, error) {
	mem, err := unix.Mmap(int(f.Fd()), 0, stateSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the state: %w", err)
	}
	return &state{fd: f, mem: mem, stateLayout: (*stateLayout)(unsafe.Pointer(&mem[0]))}, nil
}

func (st *state) mountDir() string { return string(st.hdr.dir[:st.hdr.dirLen]) }

// unmap drops this process's mapping; the memory stays with whoever else
// holds the descriptor.
func (st *state) unmap() {
	if st.mem != nil {
		unix.Munmap(st.mem)
		st.mem, st.stateLayout = nil, nil
	}
}

// newMemfd makes an anonymous memory file of size bytes, close-on-exec.
// Its pages are not on any filesystem: the secrets of a generation live in
// memory only, like the rest of the process.
func newMemfd(name string, size int) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), name)
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, fmt.Errorf("size the %s memfd: %w", name, err)
	}
	return f, nil
}
