package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/sqlite"
)

// What the audit trail costs issuance, measured in one run against the
// same authority without it (the baseline), and what reading it costs.
//
//	go test -run '^$' -bench 'Audit|Events' ./auth/
//
// BenchmarkRenewAudit: renewals (and the agent's whole cycle, a renewal
// and an output identity) with the trail on and off, in alternating
// chunks so that noise hits both; reports both rates and on/off.

func BenchmarkRenewAudit(b *testing.B) {
	for _, cycle := range []string{"renew", "renew+certs"} {
		for _, n := range benchClients {
			b.Run(fmt.Sprintf("cycle=%s/clients=%d", cycle, n), func(b *testing.B) {
				on := newRenewers(b, startTest(b), n, cycle)
				off := newRenewers(b, startTest(b, func(c *Config) { c.auditOff = true }), n, cycle)
				chunk := max(8*n, 64)
				var tOn, tOff time.Duration
				b.ResetTimer()
				for done := 0; done < b.N; done += chunk {
					k := min(chunk, b.N-done)
					tOff += off.run(b, k)
					tOn += on.run(b, k)
				}
				b.StopTimer()
				b.ReportMetric(float64(b.N)/tOn.Seconds(), "on-"+unitOf(cycle))
				b.ReportMetric(float64(b.N)/tOff.Seconds(), "off-"+unitOf(cycle))
				b.ReportMetric(tOff.Seconds()/tOn.Seconds(), "on/off")
			})
		}
	}
}

func unitOf(cycle string) string {
	if cycle == "renew" {
		return "renewals/s"
	}
	return "cycles/s"
}

// renewers are n bots of one authority renewing as fast as they can.
type renewers struct {
	s     *Server
	ids   []*botID
	certs bool
}

func newRenewers(b *testing.B, s *Server, n int, cycle string) *renewers {
	r := &renewers{s: s, ids: make([]*botID, n), certs: cycle != "renew"}
	for i := range r.ids {
		r.ids[i] = join(b, s, addBot(b, s, fmt.Sprintf("bot%d", i), []string{"access"}, []string{"root"}).Token)
	}
	return r
}

// run makes k renewals (or cycles) from the n clients and says how long
// they took.
func (r *renewers) run(b *testing.B, k int) time.Duration {
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := range r.ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(k) {
				id, status, msg := r.ids[i].tryRenew(b, r.s)
				if status != 200 {
					b.Errorf("renew: %d %s", status, msg)
					return
				}
				r.ids[i] = id
				if r.certs {
					if _, _, status, msg := id.tryCerts(b, r.s, 0); status != 200 {
						b.Errorf("certs: %d %s", status, msg)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start)
}

// BenchmarkEventsSince1h is `midfs events --since=1h --format=json` over a
// million stored events, without the process start: the pages of the
// admin socket, as the command asks for them and prints them. "spread": a million events over 89 days, 500 of
// them in the last hour; "busy": a tenth of them, 100,000, in the last
// hour. Reports the events printed and the time of the whole listing
// (ns/op).
func BenchmarkEventsSince1h(b *testing.B) {
	for _, c := range []struct {
		name   string
		recent int // of the million, in the last hour
	}{{"spread", 500}, {"busy", 100_000}} {
		b.Run(c.name, func(b *testing.B) {
			s := startTest(b, func(cfg *Config) {
				cfg.AuditRetention = 365 * 24 * time.Hour
				copyEventFill(b, c.name, c.recent, cfg.DataDir)
			})
			ac := dialAdmin(b, s)
			ctx := context.Background()
			var printed int
			b.ResetTimer()
			for range b.N {
				printed = 0
				q := admin.EventQuery{Since: time.Now().Add(-time.Hour), Limit: 5000}
				for {
					p, err := ac.Events(ctx, q)
					if err != nil {
						b.Fatal(err)
					}
					for _, line := range p.Events {
						io.Discard.Write(line)
					}
					printed += len(p.Events)
					q.Upto = p.End
					if len(p.Events) < q.Limit {
						break
					}
					var last audit.Event
					if err := json.Unmarshal(p.Events[len(p.Events)-1], &last); err != nil {
						b.Fatal(err)
					}
					q.AfterTime, q.AfterID = last.Time, last.ID
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(printed), "events")
		})
	}
}

// eventFills are states filled once per test binary (a million events
// take a while to write), copied into each benchmark's data directory.
var eventFills struct {
	sync.Mutex
	dirs map[string]string    // name: directory
	at   map[string]time.Time // name: the now of its fill
}

// copyEventFill copies the fill of name (made at its first use: a million
// events, recent of them in the hour before the fill) into dir.
func copyEventFill(b *testing.B, name string, recent int, dir string) {
	b.Helper()
	eventFills.Lock()
	defer eventFills.Unlock()
	src, ok := eventFills.dirs[name]
	if !ok {
		var err error
		if src, err = os.MkdirTemp("", "midfs-events-"+name); err != nil {
			b.Fatal(err)
		}
		if eventFills.dirs == nil {
			eventFills.dirs, eventFills.at = map[string]string{}, map[string]time.Time{}
		}
		eventFills.dirs[name], eventFills.at[name] = src, time.Now()
		fillEvents(b, src, eventFillSize, recent, eventFills.at[name])
	}
	if since := time.Since(eventFills.at[name]); since > 10*time.Minute {
		b.Logf("the fill is %s old: fewer of its recent events are in the last hour", since.Round(time.Second))
	}
	for _, f := range []string{sqlite.File, sqlite.File + "-wal"} {
		data, err := os.ReadFile(filepath.Join(src, f))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
			b.Fatal(err)
		}
	}
}

// eventFillSize is how many events a fill holds.
var eventFillSize = 1_000_000

func removeEventFills() {
	for _, d := range eventFills.dirs {
		os.RemoveAll(d)
	}
}

// fillEvents stores total events of every kind in the state in dir:
// recent of them between 50 and 10 minutes before now, the others spread
// over the 89 days before the last hour. Bots are named bot0 .. bot999.
func fillEvents(b *testing.B, dir string, total, recent int, now time.Time) {
	b.Helper()
	st, err := sqlite.Open(dir, store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	kinds := []audit.Event{
		{Type: audit.BotRenewed, Instance: "8d9f2c3a5b6e4f708192a3b4c5d6e7f8", Cert: "bot", Serial: "5f1c2a9be0d34c7a8b6f0e1d2c3b4a59", TTL: 3600, Addr: "10.1.2.3:51234"},
		{Type: audit.CertIssued, Instance: "8d9f2c3a5b6e4f708192a3b4c5d6e7f8", Cert: "user", Serial: "7a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d", SSHSerial: 8123456789012345678, Principals: []string{"root"}, TTL: 3600, Addr: "10.1.2.3:51236"},
		{Type: audit.JoinRefused, Method: "token", Code: audit.CodeTokenUsed, Detail: "token_used", Ref: "3f9a1c2e", Message: "token robot-0a1b2c3d4e5f for bot robot was already used", Addr: "10.9.8.7:40000"},
	}
	old := total - recent
	span := 89 * 24 * time.Hour
	const batch = 10_000
	for start := 0; start < total; start += batch {
		err := st.Update(ctx, func(tx store.Tx) error {
			for i := start; i < min(start+batch, total); i++ {
				e := kinds[i%len(kinds)]
				if i < old {
					e.Time = now.Add(-time.Hour - span + time.Duration(i)*(span/time.Duration(old)))
				} else { // between 50 and 10 minutes ago: all in the last hour for 10 minutes
					e.Time = now.Add(-50*time.Minute + time.Duration(i-old)*(40*time.Minute/time.Duration(recent)))
				}
				e.Time = e.Time.UTC().Truncate(time.Microsecond)
				e.Bot = fmt.Sprintf("bot%d", i%1000)
				e.Generation = uint64(i/1000 + 2)
				e.Expires = e.Time.Add(time.Hour)
				if err := tx.AddEvent(ctx, &e); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
