package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
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
CREATE TABLE IF NOT EXISTS events (
	id   INTEGER PRIMARY KEY AUTOINCREMENT,
	time INTEGER NOT NULL,
	type TEXT NOT NULL,
	bot  TEXT NOT NULL DEFAULT '',
	data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_bot ON events(bot, time);
CREATE INDEX IF NOT EXISTS events_type ON events(type, time);
`

// unixNano is t in the time column; the zero time is the smallest value.
func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return math.MinInt64
	}
	return t.UnixNano()
}

func (t *txn) AddEvent(ctx context.Context, e *audit.Event) error {
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("event %s: %w", e.Type, err)
	}
	_, err = t.exec(ctx, `INSERT INTO events(time, type, bot, data) VALUES (?, ?, ?, ?)`, e.Time.UnixNano(), e.Type, e.Bot, data)
	return err
}

func (t *txn) PruneEvents(ctx context.Context, cutoff time.Time, limit int) (int64, error) {
	return t.exec(ctx, `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < ? ORDER BY time LIMIT ?)`, cutoff.UnixNano(), limit)
}

func (r reader) LastEventID(ctx context.Context) (int64, error) {
	var id int64
	err := r.q.QueryRowContext(r.ctx(ctx), `SELECT coalesce(max(id), 0) FROM events`).Scan(&id)
	return id, err
}

func (r reader) Events(ctx context.Context, q store.EventQuery) ([]audit.Event, error) {
	query, args := eventSQL(q)
	rows, err := r.q.QueryContext(r.ctx(ctx), query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []audit.Event
	for rows.Next() {
		var e audit.Event
		var id, ns int64
		var typ, bot string
		var data []byte
		if err := rows.Scan(&id, &ns, &typ, &bot, &data); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(data, &e); err != nil {
			return nil, fmt.Errorf("stored event %d: %w", id, err)
		}
		// The columns are what the event was filtered by.
		e.ID, e.Time, e.Type, e.Bot = id, time.Unix(0, ns).UTC(), typ, bot
		out = append(out, e)
	}
	return out, rows.Err()
}

// eventSQL builds the query of q. With a single writer, IDs are given in
// commit order, so the ByID order needs nothing more to miss no event.
func eventSQL(q store.EventQuery) (string, []any) {
	var where []string
	var args []any
	cond := func(c string, a ...any) {
		where = append(where, c)
		args = append(args, a...)
	}
	if !q.Since.IsZero() {
		cond(`time >= ?`, unixNano(q.Since))
	}
	if !q.Until.IsZero() {
		cond(`time < ?`, unixNano(q.Until))
	}
	if len(q.Types) > 0 {
		cond(`type IN (?`+strings.Repeat(`, ?`, len(q.Types)-1)+`)`, anys(q.Types)...)
	}
	if q.Bot != "" {
		cond(`bot = ?`, q.Bot)
	}
	if q.MaxID > 0 {
		cond(`id <= ?`, q.MaxID)
	}
	order := `time, id`
	if q.ByID {
		order = `id`
		cond(`id > ?`, q.After.ID)
	} else if !q.After.Time.IsZero() || q.After.ID != 0 {
		cond(`(time, id) > (?, ?)`, unixNano(q.After.Time), q.After.ID)
	}
	sql := `SELECT id, time, type, bot, data FROM events`
	if len(where) > 0 {
		sql += ` WHERE ` + strings.Join(where, ` AND `)
	}
	return sql + ` ORDER BY ` + order + ` LIMIT ?`, append(args, q.PageLimit())
}

func anys(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}
