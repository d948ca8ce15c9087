package store

import (
	"context"
	"time"

	"github.com/midfs/midfs/auth/audit"
)

// EventReader reads the audit trail.
type EventReader interface {
	// Events returns the stored events q selects, at most q.Limit.
	Events(ctx context.Context, q EventQuery) ([]audit.Event, error)
	// LastEventID is the ID of the newest stored event, 0 if none.
	LastEventID(ctx context.Context) (int64, error)
}

// EventWriter writes the audit trail, inside the transaction of the change
// an event describes: the event commits with the change, or neither does.
type EventWriter interface {
	// AddEvent stores e with the next ID (e.ID is ignored).
	AddEvent(ctx context.Context, e *audit.Event) error
	// PruneEvents removes up to limit of the oldest events whose time is
	// before cutoff, and says how many.
	PruneEvents(ctx context.Context, cutoff time.Time, limit int) (int64, error)
}

// EventQuery selects events. Every filter set must hold.
//
// Events come in one of two orders:
//
//   - By time (the default): by Time, then ID; After continues a listing
//     after the event it names. A listing of a time range made page by
//     page sees every event of the range that committed before it began
//     (bound it with MaxID) exactly once.
//   - By ID (ByID): by ID, after After.ID. IDs grow in the order events
//     commit, and a backend returns an event only once no event with a
//     lower ID can commit any more, so that a reader that follows the
//     trail by ID (`midfs events --follow`) misses none.
type EventQuery struct {
	Since time.Time // Time >= Since; zero: no bound
	Until time.Time // Time < Until; zero: no bound
	Types []string  // Type is one of these; none: every type
	Bot   string    // Bot is this; "": any
	After EventKey  // continue after this event; zero: from the start
	ByID  bool
	MaxID int64 // ID <= MaxID; 0: no bound
	Limit int   // at most this many; 0: DefaultEventLimit
}

// EventKey names an event's place in a listing.
type EventKey struct {
	Time time.Time
	ID   int64
}

// Key is e's place in a listing.
func Key(e audit.Event) EventKey { return EventKey{Time: e.Time, ID: e.ID} }

// DefaultEventLimit is the page size when a query gives none, and
// MaxEventLimit the largest a backend serves.
const (
	DefaultEventLimit = 1000
	MaxEventLimit     = 10000
)

// PageLimit is q.Limit bounded to (0, MaxEventLimit].
func (q EventQuery) PageLimit() int {
	switch {
	case q.Limit <= 0:
		return DefaultEventLimit
	case q.Limit > MaxEventLimit:
		return MaxEventLimit
	}
	return q.Limit
}
