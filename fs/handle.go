package fs

import (
	"github.com/hanwen/go-fuse/v2/fuse"
)

// A file handle holds no state of its own in this process: the number the
// kernel keeps for an open file (fh) says everything its reads and its
// release need, the generation it reads, its file, whether it reads through
// the page cache, and the pin slot it holds. So a successor of this process
// (state.go) serves every handle opened before it, as it was opened, with
// no table to hand over, and even after a kill -9.
//
//	bits 63-32  generation ID
//	bits 31-8   pin slot + 1 (0: none)
//	bit  7      cached (counted in the file's cachedOpen)
//	bits 6-0    index in identity.Files
type fileHandle struct {
	gen    uint64
	slot   uint32
	cached bool
	idx    int
}

func (h fileHandle) fh() uint64 {
	fh := h.gen<<32 | uint64(h.idx&0x7f)
	if h.slot != noSlot {
		fh |= uint64(h.slot+1) << 8
	}
	if h.cached {
		fh |= 1 << 7
	}
	return fh
}

func parseFH(fh uint64) fileHandle {
	h := fileHandle{gen: fh >> 32, slot: noSlot, cached: fh&(1<<7) != 0, idx: int(fh & 0x7f)}
	if s := uint32(fh>>8) & 0xffffff; s != 0 {
		h.slot = s - 1
	}
	return h
}

// read serves a handle its generation's bytes: every read of one handle,
// however late and in whichever process, sees the same bytes.
func (s *Server) read(fh uint64, dest []byte, off uint64) (fuse.ReadResult, fuse.Status) {
	h := parseFH(fh)
	if testHookRead != nil {
		testHookRead(h.idx)
	}
	g := s.generation(h.gen)
	if g == nil || h.idx >= len(g.files) {
		// A handle holds its generation alive (pins.go); this is a bug.
		s.log.Error("read of a handle whose generation is gone", "generation", h.gen, "file", h.idx)
		return nil, fuse.EIO
	}
	b := g.files[h.idx]
	if off >= uint64(len(b)) {
		return fuse.ReadResultData(nil), fuse.OK
	}
	// Copy into go-fuse's buffer: the generation's memory may be wiped once
	// the handle is released, while the reply is still being written.
	n := copy(dest, b[off:])
	return fuse.ReadResultData(dest[:n]), fuse.OK
}

// release lets the handle's pin slot go and the file's cache state move on.
func (s *Server) release(fh uint64) {
	h := parseFH(fh)
	s.pins.release(h.slot, s.opts.Clock.Now())
	if h.idx < len(s.byIdx) && s.byIdx[h.idx] != nil {
		n := s.byIdx[h.idx]
		n.cache.release(n, h.cached)
	}
	s.collectSoon()
}

// testHookRead, set by tests only, runs at the start of every read.
var testHookRead func(idx int)
