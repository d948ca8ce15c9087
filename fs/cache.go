package fs

import (
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// inodeCache decides, per file, how each open may use the kernel's caches.
//
// The kernel keeps one page cache and one size per inode, shared by every
// open file, while each of our handles reads its own generation. A handle
// that reads through the page cache (no FOPEN_DIRECT_IO) is only right if the
// cached pages and the kernel's i_size both belong to its generation: pages of
// another generation would be served as they are, and a smaller i_size cuts
// the read short. So:
//
//   - attrs is the generation whose size and mtime Getattr reports. It moves
//     to the current generation only when no handle reads through the cache,
//     and then by an invalidation (NotifyContent); fresh says the
//     invalidation has completed, so the kernel can no longer hold an older
//     size (its attr_version check drops replies sent before the notify).
//   - pages is the generation whose bytes may be in the page cache. Only
//     cached handles fill it, and they are all of generation pages.
//
// An open of generation g then gets:
//
//   - FOPEN_KEEP_CACHE when g == attrs, fresh, and g == pages: the page cache
//     holds g's bytes or nothing. The cheap path: OPEN and an async RELEASE.
//   - a plain open when g == attrs, fresh, and no cached handle is open: the
//     kernel drops the inode's pages at open, and g becomes pages.
//   - FOPEN_DIRECT_IO otherwise (cached handles of another generation are
//     open, or the size is not g's yet): reads bypass the page cache and never
//     fill it, and i_size does not matter to them. KEEP_CACHE is set too, so
//     this open does not drop the pages the cached handles rely on.
//
// While old cached handles stay open after a renewal, stat shows the old
// size (the one those handles read); the last release moves it on.
type inodeCache struct {
	mu       sync.Mutex
	st       *fileState // in the state memory (state.go), where a successor finds it
	settling bool       // an invalidation is in flight
}

// fileState's fields, all guarded by inodeCache.mu:
//
//	attrsGen   the generation Getattr reports
//	fresh      the invalidation that moved attrsGen has completed
//	pagesGen   the generation whose bytes may be in the page cache; 0: none yet
//	cachedOpen handles open that read through the page cache

func (c *inodeCache) init(g uint64) {
	*c.st = fileState{attrsGen: g, fresh: 1} // the kernel has cached nothing yet
}

// attrGen is the generation Getattr reports.
func (c *inodeCache) attrGen() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.attrsGen
}

// open returns the FOPEN flags for a new handle of generation g, and whether
// the handle reads through the page cache.
func (c *inodeCache) open(g uint64) (flags uint32, cached bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.st
	switch {
	case g != st.attrsGen || st.fresh == 0:
		return fuse.FOPEN_DIRECT_IO | fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, false
	case g == st.pagesGen:
		st.cachedOpen++
		return fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, true
	default:
		// attrs only differs from pages while no cached handle is open.
		st.pagesGen = g
		st.cachedOpen++
		return fuse.FOPEN_NOFLUSH, true
	}
}

// release accounts for a closed handle. When the last cached handle of an
// old generation goes, the size moves on to the current generation; that
// needs a notify, which must not run inside the FUSE request (RELEASE) that
// brought us here.
func (c *inodeCache) release(n *fileNode, cached bool) {
	c.mu.Lock()
	if cached && c.st.cachedOpen > 0 {
		c.st.cachedOpen--
	}
	behind := c.behind(n.srv.currentID())
	c.mu.Unlock()
	if behind {
		n.srv.settleLater(n)
	}
}

// behind says whether the attributes lag the current generation and could
// move now. c.mu is held.
func (c *inodeCache) behind(cur uint64) bool {
	return c.st.cachedOpen == 0 && !c.settling && (c.st.attrsGen != cur || c.st.fresh == 0)
}

// settle moves attrs to the current generation and invalidates the kernel's
// attributes and pages of the file, unless cached handles are open (then
// their last release calls it again). It loops so that a Publish arriving
// while a notify is in flight is not lost.
func (c *inodeCache) settle(n *fileNode) {
	for {
		c.mu.Lock()
		cur := n.srv.currentID()
		if !c.behind(cur) {
			c.mu.Unlock()
			return
		}
		c.st.attrsGen, c.st.fresh, c.settling = cur, 0, true
		c.mu.Unlock()

		// Offset 0, length 0: attributes and every page.
		st := n.srv.notifyContent(n.nodeID())
		ok := st == 0 || st == syscall.ENOENT // ENOENT: the kernel holds nothing of it
		gone := st == syscall.ENODEV || st == syscall.ENOTCONN || st == syscall.EBADF || n.srv.unmounted.Load()
		if !ok && !gone {
			n.srv.log.Warn("cannot invalidate kernel cache; reads of this file bypass it until the next renewal",
				"file", n.file.Name, "err", st)
		}

		c.mu.Lock()
		c.settling = false
		if ok {
			c.st.fresh = 1
		}
		c.mu.Unlock()
		if !ok {
			return
		}
	}
}
