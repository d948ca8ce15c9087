package admin

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/midfs/midfs/auth/audit"
)

// EventQuery asks for a page of the audit trail (GET /v1/events): a page
// of a listing by time, or of following the trail (Follow). Paging and
// positions are those of store.EventQuery and store.EventReader.
type EventQuery struct {
	Since, Until time.Time
	Types        []string
	Bot          string
	// A listing goes on after the event (AfterTime, AfterID) and stops at
	// Upto, the End of its first page ("" on the first page).
	AfterTime time.Time
	AfterID   int64
	Upto      string
	// Following goes on from From (a listing's End, or the Next of the
	// page before).
	Follow bool
	From   string
	Limit  int
	// Wait, when following, is how long the authority may wait for an
	// event before it answers with none.
	Wait time.Duration
}

// MaxEventWait bounds EventQuery.Wait, below the client's timeout.
const MaxEventWait = 30 * time.Second

// EventPage is a page of events, each as the JSON of audit.Event: the
// line `midfs events --format=json` prints, which need not be decoded to
// be printed. End, in a listing, is where it stops (the end of the trail
// when its first page was read): where following it starts. Next, when
// following, is where to go on from.
type EventPage struct {
	Events []json.RawMessage `json:"events"`
	End    string            `json:"end,omitempty"`
	Next   string            `json:"next,omitempty"`
}

// An EventPage travels as JSON lines, one event each, with the positions
// in headers: the lines are the events as stored, which neither end has
// to decode (a busy hour is 100,000 of them).
const (
	eventEndHeader  = "Midfs-Events-End"
	eventNextHeader = "Midfs-Events-Next"
)

func (p *EventPage) writeHTTP(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set(eventEndHeader, p.End)
	h.Set(eventNextHeader, p.Next)
	bw := bufio.NewWriterSize(w, 64<<10)
	for _, e := range p.Events {
		bw.Write(e)
		bw.WriteByte('\n')
	}
	bw.Flush()
}

func (p *EventPage) readHTTP(resp *http.Response) error {
	p.End, p.Next = resp.Header.Get(eventEndHeader), resp.Header.Get(eventNextHeader)
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("admin socket: events: %w", err)
	}
	for len(body) > 0 {
		line, rest, _ := bytes.Cut(body, []byte{'\n'})
		p.Events = append(p.Events, json.RawMessage(line))
		body = rest
	}
	return nil
}

// Decode decodes the page's events.
func (p *EventPage) Decode() ([]audit.Event, error) {
	out := make([]audit.Event, len(p.Events))
	for i, raw := range p.Events {
		if err := json.Unmarshal(raw, &out[i]); err != nil {
			return nil, fmt.Errorf("event page: %w", err)
		}
	}
	return out, nil
}

func (q EventQuery) values() url.Values {
	v := url.Values{}
	setTime := func(k string, t time.Time) {
		if !t.IsZero() {
			v.Set(k, t.UTC().Format(time.RFC3339Nano))
		}
	}
	setInt := func(k string, n int64) {
		if n != 0 {
			v.Set(k, strconv.FormatInt(n, 10))
		}
	}
	setTime("since", q.Since)
	setTime("until", q.Until)
	if len(q.Types) > 0 {
		v.Set("type", strings.Join(q.Types, ","))
	}
	setString := func(k, s string) {
		if s != "" {
			v.Set(k, s)
		}
	}
	setString("bot", q.Bot)
	setTime("after_time", q.AfterTime)
	setInt("after_id", q.AfterID)
	setString("upto", q.Upto)
	if q.Follow {
		v.Set("follow", "true")
	}
	setString("from", q.From)
	setInt("limit", int64(q.Limit))
	if q.Wait > 0 {
		v.Set("wait", q.Wait.String())
	}
	return v
}

// parseEventQuery reads the query of GET /v1/events; errors are Invalid.
func parseEventQuery(v url.Values) (EventQuery, error) {
	var q EventQuery
	var err error
	getTime := func(k string) time.Time {
		s := v.Get(k)
		if s == "" || err != nil {
			return time.Time{}
		}
		t, e := time.Parse(time.RFC3339Nano, s)
		if e != nil {
			err = fmt.Errorf("bad %s %q: want an RFC 3339 time", k, s)
		}
		return t
	}
	getInt := func(k string) int64 {
		s := v.Get(k)
		if s == "" || err != nil {
			return 0
		}
		n, e := strconv.ParseInt(s, 10, 64)
		if e != nil || n < 0 {
			err = fmt.Errorf("bad %s %q: want a non-negative number", k, s)
		}
		return n
	}
	q.Since, q.Until, q.AfterTime = getTime("since"), getTime("until"), getTime("after_time")
	q.AfterID, q.Limit = getInt("after_id"), int(getInt("limit"))
	q.Bot, q.Upto, q.Follow, q.From = v.Get("bot"), v.Get("upto"), v.Get("follow") == "true", v.Get("from")
	if err == nil {
		q.Types, err = audit.ParseTypes(v.Get("type"))
	}
	if w := v.Get("wait"); w != "" && err == nil {
		if q.Wait, err = time.ParseDuration(w); err != nil || q.Wait < 0 || q.Wait > MaxEventWait {
			err = fmt.Errorf("bad wait %q: want a duration up to %s", w, MaxEventWait)
		}
	}
	return q, Mark(Invalid, err)
}

// Events reads a page of the audit trail.
func (c *Client) Events(ctx context.Context, q EventQuery) (*EventPage, error) {
	var p EventPage
	return &p, c.call(ctx, "GET", "/v1/events?"+q.values().Encode(), nil, &p)
}

// handleEvents serves GET /v1/events.
func handleEvents(a Authority) handler {
	return func(r *http.Request) (any, error) {
		q, err := parseEventQuery(r.URL.Query())
		if err != nil {
			return nil, err
		}
		return a.Events(r.Context(), q)
	}
}
