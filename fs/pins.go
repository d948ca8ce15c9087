package fs

import (
	"sync"
	"time"
)

// Per-process affinity. Tools open a key and its certificate one after the
// other (ssh opens key, closes it, then opens key-cert.pub); a renewal in
// between would hand them a pair from two issuances. So a process (thread
// group) that opens a file while it still holds a handle on this mount, or
// within pinIdle of its last open or release, gets the generation it got
// before. pinMaxAge bounds how long a busy process can stay on an old one.
//
// pinIdle covers the longest gap of one tool's reads: ssh reads the
// certificate when it starts and the key when it signs, after connecting
// and key exchange, which on a loaded machine takes seconds (2 s was seen
// to be too short at a load of 20 on 2 cores). A process that comes back
// within it reads an issuance at most pinMaxAge old, still valid.
const (
	pinIdle   = 10 * time.Second
	pinMaxAge = 30 * time.Second
	maxPins   = 4096 // beyond this, idle pins are dropped first, then any
	sweepEach = time.Second
)

type pin struct {
	gen     *generation
	created time.Time
	last    time.Time // last open or release
	open    int       // handles held
}

type pinTable struct {
	mu        sync.Mutex
	byTGID    map[uint32]*pin
	lastSweep time.Time
}

func newPinTable() *pinTable { return &pinTable{byTGID: make(map[uint32]*pin)} }

// acquire returns the generation process tgid should read and the pin to
// release with the handle. tgid 0 (the kernel itself, or a process outside
// our PID namespace) has no affinity.
func (t *pinTable) acquire(tgid uint32, current *generation, now time.Time) (*pin, *generation) {
	if tgid == 0 {
		return nil, current
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.byTGID[tgid]
	if p == nil || !p.live(now) {
		p = &pin{gen: current, created: now}
		t.byTGID[tgid] = p
	}
	p.open++
	p.last = now
	if now.Sub(t.lastSweep) >= sweepEach || len(t.byTGID) > maxPins {
		t.sweep(now)
	}
	return p, p.gen
}

func (p *pin) live(now time.Time) bool {
	return now.Sub(p.created) < pinMaxAge && (p.open > 0 || now.Sub(p.last) < pinIdle)
}

func (t *pinTable) release(p *pin, now time.Time) {
	if p == nil {
		return
	}
	t.mu.Lock()
	p.open--
	p.last = now
	t.mu.Unlock()
}

// sweep forgets pins that can no longer apply, which covers processes that
// exited (the kernel releases their handles). A pin still holding handles
// is kept unless the table is over its bound; a handle keeps its own pin
// pointer, so dropping it only ends the affinity.
func (t *pinTable) sweep(now time.Time) {
	t.lastSweep = now
	for k, p := range t.byTGID {
		if !p.live(now) && p.open <= 0 || now.Sub(p.created) >= pinMaxAge {
			delete(t.byTGID, k)
		}
	}
	for k := range t.byTGID {
		if len(t.byTGID) <= maxPins {
			break
		}
		delete(t.byTGID, k)
	}
}

// handles is the number of handles the pins hold, for tests: the kernel
// sends RELEASE after close(2) returns, so a test waits for it here.
func (t *pinTable) handles() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, p := range t.byTGID {
		n += p.open
	}
	return n
}

// size is the number of pins held, for tests.
func (t *pinTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byTGID)
}
