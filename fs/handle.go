package fs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// handle is one open file: the generation chosen at open, and the bytes
// rendered from it. Rendering waits for the first READ, because an open
// served from the kernel's page cache (FOPEN_KEEP_CACHE) never sends one; a
// private key that is not needed is never rendered.
type handle struct {
	node   *fileNode
	gen    *generation
	pin    *pin
	cached bool // counted in node.cache.cachedOpen

	mu       sync.Mutex
	buf      []byte
	rendered bool
	released bool
}

// Read serves the handle's own snapshot: every read of one handle, however
// late, sees the same bytes.
func (h *handle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return nil, syscall.EBADF
	}
	if !h.rendered {
		b, err := h.gen.render(h.node.idx)
		if err != nil {
			h.node.srv.log.Error("cannot render file", "file", h.node.file.Name, "err", err)
			return nil, syscall.EIO
		}
		h.buf, h.rendered = b, true
	}
	if off >= int64(len(h.buf)) {
		return fuse.ReadResultData(nil), 0
	}
	// Copy into go-fuse's buffer, so nothing refers to h.buf once it is
	// cleared at release.
	n := copy(dest, h.buf[off:])
	return fuse.ReadResultData(dest[:n]), 0
}

// Release zeroes the snapshot and lets the inode's cache state and the
// process's pin move on.
func (h *handle) Release(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	if h.node.file.Secret {
		clear(h.buf) // the others are the generation's, shared
	}
	h.buf, h.released = nil, true
	h.mu.Unlock()
	h.node.srv.pins.release(h.pin, h.node.srv.opts.Clock.Now())
	h.node.cache.release(h.node, h.cached)
	return 0
}
