package sqlite

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/store"
)

// eventSchema is the audit trail. time is Unix nanoseconds; data is the
// event's JSON, the columns beside it are what queries filter on.
// AUTOINCREMENT: an ID is never given twice, even once every event older
// than it was pruned, so a follower's cursor never sees an ID again.
//
// The indexes serve `midfs events`: by time (every listing; the rowid,
// which is the ID, ends each index entry, so (time, id) order needs no
// sort), by bot, and by type, each then by time.
const eventSchema = `
CREATE TABLE events (
	id   INTEGER PRIMARY KEY AUTOINCREMENT,
	time INTEGER NOT NULL,
	type TEXT NOT NULL,
	bot  TEXT NOT NULL DEFAULT '',
	data TEXT NOT NULL
);
CREATE INDEX events_time ON events(time);
CREATE INDEX events_bot ON events(bot, time);
CREATE INDEX events_type ON events(type, time);
`

// unixNano is t in the time column; the zero time is the smallest value.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return math.MinInt64
	}
	return t.UnixNano()
}

func (t *txn) AddEvent(ctx context.Context, e *audit.Event) error {
	data, err := store.EncodeEvent(e)
	if err != nil {
		return err
	}
	_, err = t.exec(ctx, `INSERT INTO events(time, type, bot, data) VALUES (?, ?, ?, ?)`, e.Time.UnixNano(), e.Type, e.Bot, data)
	return err
}

func (t *txn) PruneEvents(ctx context.Context, cutoff time.Time, limit int) (int64, error) {
	return t.exec(ctx, `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < ? ORDER BY time LIMIT ?)`, cutoff.UnixNano(), limit)
}

// A position is the ID of the last event before it: with one writer per
// file, IDs are given in commit order, so an event with a higher ID than
// one already read can never commit earlier.

func parsePos(pos store.EventPos) (int64, error) {
	if pos == "" {
		return 0, nil
	}
	id, err := strconv.ParseInt(string(pos), 10, 64)
	if err != nil || id < 0 {
		return 0, fmt.Errorf("%w %q", store.ErrBadEventPos, pos)
	}
	return id, nil
}

func (r reader) EventEnd(ctx context.Context) (store.EventPos, error) {
	var id int64
	err := r.q.QueryRowContext(r.ctx(ctx), `SELECT coalesce(max(id), 0) FROM events`).Scan(&id)
	return store.EventPos(strconv.FormatInt(id, 10)), err
}

func (r reader) Events(ctx context.Context, q store.EventQuery) ([]store.StoredEvent, error) {
	upto, err := parsePos(q.Upto)
	if err != nil {
		return nil, err
	}
	after := !q.After.Time.IsZero() || q.After.ID != 0
	if after && !q.After.Time.Before(q.Since) {
		// The page starts at After, which implies Since: without it,
		// the index range of the query is the page's, not the window's.
		q.Since = time.Time{}
	}
	w := filters(q)
	if q.Upto != "" {
		w.cond(`+id <= ?`, upto) // + keeps the ID out of the index choice
	}
	if after {
		w.cond(`(time, id) > (?, ?)`, unixNano(q.After.Time), q.After.ID)
	}
	return r.queryEvents(ctx, w, `time, id`, q.PageLimit())
}

func (r reader) EventsAfter(ctx context.Context, pos store.EventPos, q store.EventQuery) ([]store.StoredEvent, store.EventPos, error) {
	after, err := parsePos(pos)
	if err != nil {
		return nil, pos, err
	}
	w := filters(q)
	w.cond(`id > ?`, after)
	evs, err := r.queryEvents(ctx, w, `id`, q.PageLimit())
	if err != nil || len(evs) == 0 {
		return nil, pos, err
	}
	return evs, store.EventPos(strconv.FormatInt(evs[len(evs)-1].ID, 10)), nil
}

// where is the WHERE clause of a query being built.
type where struct {
	conds []string
	args  []any
}

func (w *where) cond(c string, args ...any) {
	w.conds = append(w.conds, c)
	w.args = append(w.args, args...)
}

// filters is the clause of q's filters.
func filters(q store.EventQuery) *where {
	w := &where{}
	if !q.Since.IsZero() {
		w.cond(`time >= ?`, unixNano(q.Since))
	}
	if !q.Until.IsZero() {
		w.cond(`time < ?`, unixNano(q.Until))
	}
	if len(q.Types) > 0 {
		w.cond(`type IN (?`+strings.Repeat(`, ?`, len(q.Types)-1)+`)`, anys(q.Types)...)
	}
	if q.Bot != "" {
		w.cond(`bot = ?`, q.Bot)
	}
	return w
}

func (r reader) queryEvents(ctx context.Context, w *where, order string, limit int) ([]store.StoredEvent, error) {
	query := `SELECT id, time, data FROM events`
	if len(w.conds) > 0 {
		query += ` WHERE ` + strings.Join(w.conds, ` AND `)
	}
	query += ` ORDER BY ` + order + ` LIMIT ?`
	rows, err := r.q.QueryContext(r.ctx(ctx), query, append(w.args, limit)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.StoredEvent
	for rows.Next() {
		var id, ns int64
		var data []byte
		if err := rows.Scan(&id, &ns, &data); err != nil {
			return nil, err
		}
		if out == nil {
			out = make([]store.StoredEvent, 0, limit)
		}
		out = append(out, store.StoredEvent{ID: id, Time: time.Unix(0, ns).UTC(), JSON: store.StoredJSON(id, data)})
	}
	return out, rows.Err()
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
