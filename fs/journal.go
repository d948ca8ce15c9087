package fs

import "sync"

// A request the kernel sends again (FUSE_NOTIFY_RESEND, takeover.go) may
// have been handled already: by a predecessor killed after it changed the
// state and before its reply reached the kernel, or one that exited in the
// microseconds between a handler's return and go-fuse's write of the reply.
// Handled twice, an OPEN would hold a pin and a cache count that no RELEASE
// ever lets go, and a RELEASE would let go of one twice. So OPEN and RELEASE
// are journaled in the state by the request's unique number, which the
// kernel keeps when it resends (it only sets the top bit), and a resent one
// that the journal knows gets its first answer again, changing nothing.

const (
	journalLen   = 256     // far more than the requests that can be in flight at once
	uniqueResend = 1 << 63 // FUSE_UNIQUE_RESEND: the kernel's mark on a resent request
)

type journal struct {
	mu      sync.Mutex
	entries *[journalLen]journalEntry // in the state memory
	next    *uint32
}

func newJournal(st *state) *journal {
	return &journal{entries: &st.journal, next: &st.hdr.journalNext}
}

// handled returns the answer to a resent request that was handled before.
func (j *journal) handled(unique uint64) (fh uint64, flags uint32, ok bool) {
	if unique&uniqueResend == 0 {
		return 0, 0, false
	}
	unique &^= uniqueResend
	j.mu.Lock()
	defer j.mu.Unlock()
	for i := range j.entries {
		if e := &j.entries[i]; e.unique == unique {
			return e.result, e.flags, true
		}
	}
	return 0, 0, false
}

// record keeps the answer to a request that changed the state. Call it
// after the change: a crash between the two then costs a count that is
// never let go, where the other order could let go of one still held.
func (j *journal) record(unique, fh uint64, flags uint32) {
	j.mu.Lock()
	defer j.mu.Unlock()
	e := &j.entries[*j.next%journalLen]
	e.unique = 0 // torn by a crash, the entry matches nothing
	e.result, e.flags = fh, flags
	e.unique = unique &^ uniqueResend
	*j.next = (*j.next + 1) % journalLen
}
