package auth

// The database connection of a replica. A replica that cannot reach its
// database must not go on answering from what it holds in memory (the
// node list, the CAs) while the other replicas move on: it stops serving
// the API (503, which agents take as "try another replica") and starts
// again by itself once the database answers.

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

// dbCheckEvery is how often a replica asks its database whether it
// answers: a replica that lost it stops issuing within about this time
// (at once if a request fails on it), and starts again within it after
// the database is back.
const dbCheckEvery = 2 * time.Second

// dbCheckTimeout bounds one check: a database that takes longer to say
// SELECT 1 cannot serve renewals either.
const dbCheckTimeout = 2 * time.Second

// dbWatch keeps the state of the database connection.
type dbWatch struct {
	st        store.Reader
	clock     clock.Clock
	log       *slog.Logger
	onRecover func() // after an outage: whatever was cached may be stale

	mu    sync.Mutex
	up    bool
	err   error     // of the last failed check
	since time.Time // of the current state

	stop chan struct{}
	done chan struct{}
}

// DBHealth is the state of a replica's database connection.
type DBHealth struct {
	Up     bool
	Reason string    // why it is down; "" when up
	Since  time.Time // when it went up or down
}

func newDBWatch(st store.Reader, clk clock.Clock, log *slog.Logger, onRecover func()) *dbWatch {
	return &dbWatch{st: st, clock: clk, log: log, onRecover: onRecover, up: true, since: clk.Now(),
		stop: make(chan struct{}), done: make(chan struct{})}
}

// run checks every dbCheckEvery until close.
func (w *dbWatch) run() {
	defer close(w.done)
	for {
		t := w.clock.NewTimer(dbCheckEvery)
		select {
		case <-w.stop:
			t.Stop()
			return
		case <-t.C():
		}
		w.check(context.Background())
	}
}

func (w *dbWatch) close() {
	close(w.stop)
	<-w.done
}

// check asks the database now and records the answer; nil if it answered.
func (w *dbWatch) check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, dbCheckTimeout)
	defer cancel()
	err := w.st.Ping(ctx)
	w.set(err)
	return err
}

func (w *dbWatch) set(err error) {
	w.mu.Lock()
	was := w.up
	w.up, w.err = err == nil, err
	if was != w.up {
		w.since = w.clock.Now()
	}
	w.mu.Unlock()
	switch {
	case was && err != nil:
		w.log.Error("database unreachable: refusing to issue until it answers", "err", err)
	case !was && err == nil:
		w.log.Info("database answers again: issuing")
		if w.onRecover != nil {
			w.onRecover()
		}
	}
}

func (w *dbWatch) health() DBHealth {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := DBHealth{Up: w.up, Since: w.since}
	if !w.up {
		h.Reason = fmt.Sprintf("database unreachable since %s: %v", w.since.UTC().Format(time.RFC3339), w.err)
	}
	return h
}

// DBHealth says whether this replica reaches its database (/readyz).
func (s *Server) DBHealth() DBHealth { return s.dbw.health() }

// registerDBMetric exports the database state for alerts.
func (s *Server) registerDBMetric(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "midfs_auth_database_up", Help: "1 while this replica reaches its database, 0 while it answers 503 for want of it.",
	}, func() float64 {
		if s.dbw.health().Up {
			return 1
		}
		return 0
	}))
}

// dbUnavailableMsg is what a client reads while its replica has no
// database. Agents move to another replica by themselves.
const dbUnavailableMsg = "this authority replica cannot reach its database; try another replica"

// needsDB answers 503 instead of calling h while the database is down.
func (s *Server) needsDB(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.dbw.health().Up {
			s.answerNoDB(w)
			return
		}
		h(w, r)
	}
}

func (s *Server) answerNoDB(w http.ResponseWriter) {
	s.metrics.refused("database_unavailable")
	w.Header().Set("Retry-After", "2")
	wire.WriteError(w, http.StatusServiceUnavailable, dbUnavailableMsg)
}

// internalError answers a failed request. A failure that came with the
// database going away is a 503, as the requests after it get; anything
// else a 500.
func (s *Server) internalError(w http.ResponseWriter, r *http.Request, what string, err error) {
	if s.dbw.check(context.WithoutCancel(r.Context())) != nil {
		s.log.Warn(what+" failed: no database", "err", err, "remote", r.RemoteAddr)
		s.answerNoDB(w)
		return
	}
	s.log.Error(what+" failed", "err", err, "remote", r.RemoteAddr)
	s.metrics.refused("internal")
	wire.WriteError(w, http.StatusInternalServerError, "internal error; see the authority's log")
}
