package postgres

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/store"
)

// eventSchema is the audit trail: the columns queries filter on, and the
// event's JSON. xid is the transaction that wrote the event: IDs come from
// a sequence when the row is inserted, so replicas' transactions commit
// in another order than their IDs; a transaction's ID (xid8, which never
// wraps) tells a follower which events are final: every transaction older
// than the oldest one still running has committed or rolled back
// (pg_snapshot_xmin), so an event of one of them can be read without one
// of a lower (xid, id) appearing later. Following is in (xid, id) order.
const eventSchema = `
CREATE TABLE events (
	id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at   timestamptz NOT NULL,
	type text NOT NULL,
	bot  text NOT NULL DEFAULT '',
	data text NOT NULL,
	xid  xid8 NOT NULL DEFAULT pg_current_xact_id()
);
CREATE INDEX events_at ON events (at, id);
CREATE INDEX events_bot ON events (bot, at, id);
CREATE INDEX events_type ON events (type, at, id);
CREATE INDEX events_xid ON events (xid, id);`

func (t *txn) AddEvent(ctx context.Context, e *audit.Event) error {
	data, err := store.EncodeEvent(e)
	if err != nil {
		return err
	}
	t.q.later(`INSERT INTO events(at, type, bot, data) VALUES ($1, $2, $3, $4)`, e.Time, e.Type, e.Bot, data)
	return nil
}

func (t *txn) PruneEvents(ctx context.Context, cutoff time.Time, limit int) (int64, error) {
	return t.exec(ctx, `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < $1 ORDER BY at, id LIMIT $2)`, cutoff, limit)
}

// pos is a position: the (xid, id) of the last event before it.
type pos struct {
	xid uint64
	id  int64
}

func (p pos) String() store.EventPos { return store.EventPos(fmt.Sprintf("%d:%d", p.xid, p.id)) }

func parsePos(s store.EventPos) (pos, error) {
	if s == "" {
		return pos{}, nil
	}
	x, i, ok := strings.Cut(string(s), ":")
	xid, err1 := strconv.ParseUint(x, 10, 64)
	id, err2 := strconv.ParseInt(i, 10, 64)
	if !ok || err1 != nil || err2 != nil {
		return pos{}, fmt.Errorf("%w %q", store.ErrBadEventPos, s)
	}
	return pos{xid, id}, nil
}

// EventEnd is before every transaction still running: what they write
// comes after it.
func (r reader) EventEnd(ctx context.Context) (store.EventPos, error) {
	var xmin string
	if err := r.q.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text`).Scan(&xmin); err != nil {
		return "", err
	}
	return store.EventPos(xmin + ":0"), nil
}

func (r reader) Events(ctx context.Context, q store.EventQuery) ([]store.StoredEvent, error) {
	w := filters(q)
	if q.Upto != "" {
		p, err := parsePos(q.Upto)
		if err != nil {
			return nil, err
		}
		w.cond(`(xid, id) <= ($%d::text::xid8, $%d)`, strconv.FormatUint(p.xid, 10), p.id)
	}
	if !q.After.Time.IsZero() || q.After.ID != 0 {
		w.cond(`(at, id) > ($%d, $%d)`, q.After.Time, q.After.ID)
	}
	evs, _, err := r.queryEvents(ctx, w, `at, id`, q.PageLimit())
	return evs, err
}

func (r reader) EventsAfter(ctx context.Context, from store.EventPos, q store.EventQuery) ([]store.StoredEvent, store.EventPos, error) {
	p, err := parsePos(from)
	if err != nil {
		return nil, from, err
	}
	w := filters(q)
	w.cond(`(xid, id) > ($%d::text::xid8, $%d)`, strconv.FormatUint(p.xid, 10), p.id)
	w.cond(`xid < pg_snapshot_xmin(pg_current_snapshot())`)
	evs, last, err := r.queryEvents(ctx, w, `xid, id`, q.PageLimit())
	if err != nil || len(evs) == 0 {
		return nil, from, err
	}
	return evs, last.String(), nil
}

// where is the WHERE clause of a query being built; conditions number
// their parameters with %d.
type where struct {
	conds []string
	args  []any
}

func (w *where) cond(c string, args ...any) {
	nums := make([]any, len(args))
	for i := range args {
		nums[i] = len(w.args) + i + 1
	}
	w.conds = append(w.conds, fmt.Sprintf(c, nums...))
	w.args = append(w.args, args...)
}

func filters(q store.EventQuery) *where {
	w := &where{}
	if !q.Since.IsZero() {
		w.cond(`at >= $%d`, q.Since)
	}
	if !q.Until.IsZero() {
		w.cond(`at < $%d`, q.Until)
	}
	if len(q.Types) > 0 {
		w.cond(`type = ANY($%d)`, q.Types)
	}
	if q.Bot != "" {
		w.cond(`bot = $%d`, q.Bot)
	}
	return w
}

// queryEvents runs the query and returns its events and the (xid, id) of
// the last.
func (r reader) queryEvents(ctx context.Context, w *where, order string, limit int) ([]store.StoredEvent, pos, error) {
	sql := `SELECT id, at, data, xid::text FROM events`
	if len(w.conds) > 0 {
		sql += ` WHERE ` + strings.Join(w.conds, ` AND `)
	}
	sql += fmt.Sprintf(` ORDER BY %s LIMIT %d`, order, limit)
	rows, err := r.q.Query(ctx, sql, w.args...)
	if err != nil {
		return nil, pos{}, err
	}
	defer rows.Close()
	var out []store.StoredEvent
	var last pos
	for rows.Next() {
		var at time.Time
		var data []byte
		var xid string
		if err := rows.Scan(&last.id, &at, &data, &xid); err != nil {
			return nil, pos{}, err
		}
		if last.xid, err = strconv.ParseUint(xid, 10, 64); err != nil {
			return nil, pos{}, fmt.Errorf("stored event %d: xid %q", last.id, xid)
		}
		out = append(out, store.StoredEvent{ID: last.id, Time: at.UTC(), JSON: store.StoredJSON(last.id, data)})
	}
	return out, last, rows.Err()
}
