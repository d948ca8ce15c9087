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
//
// Pins live in the state memory (state.go), so a successor of this process
// keeps every process on the generation it was on. Every handle holds a
// slot: its process's pin, or for an open without a process to pin (tgid
// 0) an anonymous slot of its generation. A used slot keeps its generation
// alive, so a handle's generation is always there to read, in this process
// and in the next.
const (
	pinIdle   = 10 * time.Second
	pinMaxAge = 30 * time.Second
	maxPins   = 4096 // mapped pins beyond this are dropped, idle ones first
	sweepEach = time.Second
)

// noSlot is what acquire returns when every slot is taken: the handle then
// holds no slot and its generation may go while it is open. It takes
// pinSlots live handles of pinless processes to get there.
const noSlot = ^uint32(0)

type pinTable struct {
	mu        sync.Mutex
	slots     *[pinSlots]pinSlot // in the state memory
	high      *uint32            // slots at and above it were never used
	byTGID    map[uint32]uint32  // slots with slotMapped
	anon      map[uint64]uint32  // generation -> its anonymous slot
	free      []uint32
	lastSweep time.Time
}

// newPinTable indexes the slots of st: empty for a new mount, or as a
// predecessor left them.
func newPinTable(st *state) *pinTable {
	t := &pinTable{slots: &st.pins, high: &st.hdr.pinsHigh, byTGID: make(map[uint32]uint32), anon: make(map[uint64]uint32)}
	for i := int(min(*t.high, pinSlots)) - 1; i >= 0; i-- {
		p := &t.slots[i]
		switch {
		case p.flags&slotUsed == 0:
			t.free = append(t.free, uint32(i))
		case p.flags&slotMapped != 0:
			t.byTGID[p.tgid] = uint32(i)
		case p.tgid == 0:
			t.anon[p.gen] = uint32(i)
		}
	}
	return t
}

// acquire returns the generation process tgid should read (the current
// one, or the one it is pinned to) and the slot to release with the handle.
// tgid 0 (the kernel itself, or a process outside our PID namespace) has
// no affinity. The current generation is read under the table's lock, so
// that collect, which reads the slots under it too, sees every generation
// an open can still take.
func (t *pinTable) acquire(tgid uint32, currentGen func() uint64, now time.Time) (slot uint32, gen uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	current := currentGen()
	defer func() {
		if now.Sub(t.lastSweep) >= sweepEach || len(t.byTGID) > maxPins {
			t.sweep(now)
		}
	}()
	if tgid == 0 {
		return t.hold(t.anonSlot(current, now), now), current
	}
	i, ok := t.byTGID[tgid]
	if ok && !t.slots[i].live(now) {
		t.unmap(i)
		ok = false
	}
	if !ok {
		if i, ok = t.take(); !ok {
			return t.hold(t.anonSlot(current, now), now), current
		}
		t.slots[i] = pinSlot{tgid: tgid, flags: slotUsed | slotMapped, gen: current, created: now.UnixNano()}
		t.byTGID[tgid] = i
	}
	return t.hold(i, now), t.slots[i].gen
}

// anonSlot is the slot that holds generation gen's handles of no process.
func (t *pinTable) anonSlot(gen uint64, now time.Time) uint32 {
	if i, ok := t.anon[gen]; ok {
		return i
	}
	i, ok := t.take()
	if !ok {
		return noSlot
	}
	t.slots[i] = pinSlot{flags: slotUsed, gen: gen, created: now.UnixNano()}
	t.anon[gen] = i
	return i
}

func (t *pinTable) hold(i uint32, now time.Time) uint32 {
	if i != noSlot {
		t.slots[i].open++
		t.slots[i].last = now.UnixNano()
	}
	return i
}

func (t *pinTable) take() (uint32, bool) {
	if len(t.free) == 0 {
		if *t.high >= pinSlots {
			return 0, false
		}
		*t.high++
		return *t.high - 1, true
	}
	i := t.free[len(t.free)-1]
	t.free = t.free[:len(t.free)-1]
	return i, true
}

func (p *pinSlot) live(now time.Time) bool {
	n := now.UnixNano()
	return n-p.created < int64(pinMaxAge) && (p.open > 0 || n-p.last < int64(pinIdle))
}

// release lets a handle's slot go. A slot of a released handle that the
// kernel never saw (a slot number out of range) is ignored.
func (t *pinTable) release(i uint32, now time.Time) {
	if i >= pinSlots {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	p := &t.slots[i]
	if p.flags&slotUsed == 0 {
		return
	}
	p.open--
	p.last = now.UnixNano()
	if p.flags&slotMapped == 0 && p.open <= 0 {
		t.drop(i)
	}
}

// unmap ends slot i's affinity; it stays used while it holds handles.
func (t *pinTable) unmap(i uint32) {
	p := &t.slots[i]
	delete(t.byTGID, p.tgid)
	p.flags &^= slotMapped
	if p.open <= 0 {
		t.drop(i)
	}
}

func (t *pinTable) drop(i uint32) {
	p := &t.slots[i]
	if p.tgid == 0 && t.anon[p.gen] == i {
		delete(t.anon, p.gen)
	}
	*p = pinSlot{}
	t.free = append(t.free, i)
}

// sweep forgets pins that can no longer apply, which covers processes that
// exited (the kernel releases their handles). A pin still holding handles
// keeps its slot, and so its generation, until they are released.
func (t *pinTable) sweep(now time.Time) {
	t.lastSweep = now
	for _, i := range t.byTGID {
		p := &t.slots[i]
		if !p.live(now) || now.UnixNano()-p.created >= int64(pinMaxAge) {
			t.unmap(i)
		}
	}
	for _, i := range t.byTGID {
		if len(t.byTGID) <= maxPins {
			break
		}
		t.unmap(i)
	}
}

// generations adds to live the generation of every used slot: those a
// handle or a pin can still reach.
func (t *pinTable) generations(live map[uint64]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range *t.high {
		if p := &t.slots[i]; p.flags&slotUsed != 0 {
			live[p.gen] = true
		}
	}
}

// handles is the number of handles the slots hold, for tests: the kernel
// sends RELEASE after close(2) returns, so a test waits for it here.
func (t *pinTable) handles() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for i := range *t.high {
		n += int(t.slots[i].open)
	}
	return n
}

// size is the number of pins giving affinity, for tests.
func (t *pinTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byTGID)
}
