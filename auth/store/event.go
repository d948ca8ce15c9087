package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/midfs/midfs/auth/audit"
)

// The audit trail (package auth/audit says what an event is). Events are
// written inside the transaction of the change they describe, so that the
// event commits with the change or neither does; they are read in two
// ways: listed by time (`midfs events --since`), and followed in the
// order they become readable (`midfs events --follow`).

// EventReader reads the audit trail.
type EventReader interface {
	// Events lists the events q selects, by Time then ID, at most
	// q.PageLimit().
	Events(ctx context.Context, q EventQuery) ([]StoredEvent, error)
	// EventsAfter follows the trail: the events after position pos that
	// q's filters select (q.After and q.Upto are ignored), at most
	// q.PageLimit(), and the position to go on from. An event is returned
	// only once no event that would come before it can still commit, so
	// that a follower that goes on from each answer's position sees every
	// event exactly once, whatever its time and however many writers
	// there are.
	EventsAfter(ctx context.Context, pos EventPos, q EventQuery) ([]StoredEvent, EventPos, error)
	// EventEnd is the position of the end of the trail now: a listing
	// bounded by it (EventQuery.Upto) and a follower that starts at it
	// see every event once between them.
	EventEnd(ctx context.Context) (EventPos, error)
}

// EventWriter writes the audit trail.
type EventWriter interface {
	// AddEvent stores e with the next ID (e.ID is ignored).
	AddEvent(ctx context.Context, e *audit.Event) error
	// PruneEvents removes up to limit of the oldest events whose time is
	// before cutoff, and says how many.
	PruneEvents(ctx context.Context, cutoff time.Time, limit int) (int64, error)
}

// EventPos is a place in the trail, as a backend writes it; "" is its
// start. It travels through the admin socket unchanged.
type EventPos string

// ErrBadEventPos: a position that the backend did not write.
var ErrBadEventPos = errors.New("bad event position")

// EventQuery selects events. Every filter that is set must hold.
type EventQuery struct {
	Since time.Time // Time >= Since; zero: no bound
	Until time.Time // Time < Until; zero: no bound
	Types []string  // Type is one of these; none: every type
	Bot   string    // Bot is this; "": any
	// After continues a listing after the event it names; zero: from the
	// start.
	After EventKey
	// Upto keeps events that become readable after the position (the
	// first page's EventEnd) out of a listing; "": no bound.
	Upto  EventPos
	Limit int // at most this many; 0: DefaultEventLimit
}

// EventKey is an event's place in a listing.
type EventKey struct {
	Time time.Time
	ID   int64
}

// StoredEvent is an event as read: its place, and its JSON (audit.Event's
// encoding, its ID included), which a listing hands on as it is: a page
// of events is not decoded and encoded again on its way to the admin
// socket.
type StoredEvent struct {
	ID   int64
	Time time.Time
	JSON json.RawMessage
}

// Key is e's place in a listing.
func (e StoredEvent) Key() EventKey { return EventKey{Time: e.Time, ID: e.ID} }

// Event decodes e.
func (e StoredEvent) Event() (audit.Event, error) {
	var ev audit.Event
	if err := json.Unmarshal(e.JSON, &ev); err != nil {
		return ev, fmt.Errorf("stored event %d: %w", e.ID, err)
	}
	return ev, nil
}

// EncodeEvent is what a backend stores of e: its JSON without the ID,
// which the backend gives (audit.Event's first field).
func EncodeEvent(e *audit.Event) ([]byte, error) {
	c := *e
	c.ID = 0
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("event %s: %w", e.Type, err)
	}
	const zeroID = `{"id":0,`
	if !bytes.HasPrefix(b, []byte(zeroID)) {
		return nil, fmt.Errorf("event %s: its JSON does not start with its ID", e.Type)
	}
	return append([]byte{'{'}, b[len(zeroID):]...), nil
}

// StoredJSON is the JSON of the event with ID id that EncodeEvent made
// data of.
func StoredJSON(id int64, data []byte) json.RawMessage {
	out := make([]byte, 0, len(data)+24)
	out = append(out, `{"id":`...)
	out = strconv.AppendInt(out, id, 10)
	if len(data) > 2 {
		out = append(out, ',')
	}
	return append(out, data[1:]...)
}

// DefaultEventLimit is the page size of a query that gives none, and
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

// CopyEvents appends the trail of from to to, by time, in transactions of
// at most MaxEventLimit events, and says how many it copied: what `midfs
// auth migrate` does once the state is moved. The events get new IDs in
// to, in the order of their times.
func CopyEvents(ctx context.Context, from Reader, to Store) (int64, error) {
	end, err := from.EventEnd(ctx)
	if err != nil {
		return 0, err
	}
	q := EventQuery{Upto: end, Limit: MaxEventLimit}
	var n int64
	for {
		page, err := from.Events(ctx, q)
		if err != nil {
			return n, err
		}
		err = to.Update(ctx, func(tx Tx) error {
			for _, se := range page {
				e, err := se.Event()
				if err != nil {
					return err
				}
				if err := tx.AddEvent(ctx, &e); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		n += int64(len(page))
		if len(page) < q.Limit {
			return n, nil
		}
		q.After = page[len(page)-1].Key()
	}
}
