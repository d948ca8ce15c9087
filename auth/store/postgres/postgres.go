// Package postgres is the PostgreSQL backend of auth/store: the state that
// several authority replicas share. It is reached with a URL
// (postgres://USER@HOST:PORT/DB?OPTIONS, as libpq reads it; a password is
// better kept in a ~/.pgpass or PGPASSFILE than in the URL) through
// jackc/pgx.
//
// Isolation: every Update runs in a SERIALIZABLE transaction (its own,
// or one it shares with other Updates, each in a savepoint: batch.go),
// retried from the start when PostgreSQL reports a serialization failure
// (SQLSTATE 40001) or a deadlock (40P01). Serializable isolation is what
// gives each promise of store.Store across replicas without knowing what
// fn will do: two joins with one token both read it unused and both try
// to mark it used; two renewals read one generation and both advance it;
// a role check and an insert race with a removal. Each such pair is a read-write conflict,
// and PostgreSQL lets only one of them commit. The other runs again and
// then reads the committed result (the token used, the generation moved).
// Read committed with row locks would need every read that guards a write
// to know it, and would still let two transactions that read the absence
// of a row (no token yet for this bot) both write.
//
// Reads outside Update (the authority's checks of a presented identity,
// listings) each see the state as last committed (read committed), which
// is what store.Reader promises.
//
// Replicas learn of each other's changes of cached state by LISTEN/NOTIFY
// on one channel (a notification is sent with the commit, and only then),
// and by polling the versions every Options.PollInterval in case a
// notification was lost (a connection cut, a pooler between that does not
// pass them).
package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/midfs/midfs/auth/store"
)

// notifyChannel is the LISTEN/NOTIFY channel; payloads are "TOPIC VERSION".
const notifyChannel = "midfs_changes"

const (
	// maxAttempts bounds how often one Update runs after losing a
	// serialization conflict. Each loss means another transaction
	// committed, so the state moves on; only a storm of writers to one
	// row (a thousand joins with one token) needs more than a few.
	maxAttempts = 64
	// updateTimeout bounds one attempt: a database that stops answering
	// fails the request instead of holding it (and its connection) forever.
	updateTimeout = 30 * time.Second
	// connectTimeout is the default of connect_timeout.
	connectTimeout = 5 * time.Second
	// defaultMaxConns is the pool size without pool_max_conns in the URL,
	// and so the number of transactions of batched Updates at once:
	// PostgreSQL serves a connection with a process, and more than a few
	// per core only queue in the kernel instead of in the pool. They are
	// all opened at start and kept (unless pool_min_conns says otherwise):
	// opening one costs a password exchange, which under a burst of
	// requests is when the machine has the least time for it.
	defaultMaxConns = 8
)

// Store is the PostgreSQL state.
type Store struct {
	reader // over the pool
	pool   *pgxpool.Pool
	where  string
	log    *slog.Logger
	store.Watchers

	// mu guards closed; it is held for reading by every Update, so Close
	// waits for those in flight.
	mu     sync.RWMutex
	closed bool
	stop   context.CancelFunc
	bg     sync.WaitGroup // listener and poller

	listening     chan struct{} // closed once the listener first listens
	listeningOnce sync.Once

	pinger *pinger // Ping's own connection

	queue      chan *update // Updates waiting for a batch (see batch.go)
	committers sync.WaitGroup

	retries atomic.Uint64 // attempts run again after a serialization conflict
	trips   atomic.Uint64 // round trips of Updates to the server
}

// Retries says how many Update attempts were run again after losing a
// serialization conflict: a few are the price of SERIALIZABLE; many mean
// transactions that read more than they need, or a row that everyone
// writes.
func (st *Store) Retries() uint64 { return st.retries.Load() }

// RoundTrips says how many round trips to the server Updates have taken:
// what a change costs, beside its statements, on both sides.
func (st *Store) RoundTrips() uint64 { return st.trips.Load() }

var _ store.Store = (*Store)(nil)

// IsURL says whether s names a PostgreSQL database (rather than a file).
func IsURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// Open connects to the database at url, creates or migrates its tables
// (see migrate), and starts following other replicas' changes.
func Open(ctx context.Context, url string, opts store.Options) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message quotes the URL, which may hold a password.
		return nil, errors.New("bad database URL: want postgres://USER@HOST:PORT/DATABASE?OPTIONS (the URL is not repeated here: it may hold a password)")
	}
	where := describe(cfg.ConnConfig)
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = defaultMaxConns
	}
	if !strings.Contains(url, "pool_min_conns") {
		cfg.MinConns = cfg.MaxConns
	}
	cfg.AfterConnect = durableCommits
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	st := &Store{reader: reader{q: pool}, pool: pool, where: where, log: log, listening: make(chan struct{}), pinger: newPinger(cfg.ConnConfig)}
	if err != nil {
		return nil, st.fail(err)
	}
	if err := st.migrate(ctx, opts.Cluster); err != nil {
		pool.Close()
		return nil, err
	}
	v, err := st.Versions(ctx)
	if err != nil {
		pool.Close()
		return nil, st.fail(err)
	}
	st.Seen(v)
	st.queue = make(chan *update, maxBatch)
	for range cfg.MaxConns {
		st.committers.Go(st.commit)
	}
	interval := opts.PollInterval
	if interval <= 0 {
		interval = store.DefaultPollInterval
	}
	bgCtx, stop := context.WithCancel(context.Background())
	st.stop = stop
	st.bg.Add(2)
	go func() { defer st.bg.Done(); st.listen(bgCtx, cfg.ConnConfig) }()
	go func() { defer st.bg.Done(); st.Poll(bgCtx, st.reader, interval, log) }()
	return st, nil
}

// describe names a database for messages, without its password.
func describe(c *pgx.ConnConfig) string {
	return fmt.Sprintf("%s/%s as %s", net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port))), c.Database, c.User)
}

// oneLine flattens pgx's multi-line connection errors.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

// durableCommits makes sure a commit waits for the WAL flush (the store's
// durability promise), whatever the server's default: a server set to
// synchronous_commit=off could lose a used token's commit in a crash
// after the client was told.
func durableCommits(ctx context.Context, c *pgx.Conn) error {
	var mode string
	if err := c.QueryRow(ctx, `SHOW synchronous_commit`).Scan(&mode); err != nil {
		return err
	}
	if mode == "off" {
		_, err := c.Exec(ctx, `SET synchronous_commit = on`)
		return err
	}
	return nil
}

func (st *Store) migrate(ctx context.Context, cluster string) error {
	tx, err := st.pool.Begin(ctx)
	if err != nil {
		return st.fail(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := migrate(ctx, tx, cluster); err != nil {
		return st.fail(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return st.fail(err)
	}
	return nil
}

// fail names the database in err, on one line, keeping what errors.Is
// finds in it.
func (st *Store) fail(err error) error {
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) {
		// pgx's own line repeats user and database; keep the cause.
		err = fmt.Errorf("cannot connect: %s", errors.Unwrap(ce))
	}
	return &openError{msg: "database " + st.where + ": " + oneLine(err), err: err}
}

type openError struct {
	msg string
	err error
}

func (e *openError) Error() string { return e.msg }
func (e *openError) Unwrap() error { return e.err }

// Close waits for the Updates in flight, refuses new ones, and closes the
// connections.
func (st *Store) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	st.mu.Unlock()
	close(st.queue)
	st.committers.Wait()
	st.stop()
	st.bg.Wait()
	st.Watchers.Close()
	st.pinger.close()
	st.pool.Close()
	return nil
}

// Update runs fn in a SERIALIZABLE transaction, again from the start after
// a serialization failure (see the package doc and store.Store); fn may
// share the transaction with other Updates (see batch.go). The caller's
// cancellation does not reach the transaction: once started, a change
// runs to its commit or rollback.
func (st *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.closed {
		return store.ErrClosed
	}
	u := &update{fn: fn, done: make(chan outcome, 1)}
	st.queue <- u
	o := <-u.done
	if o.alone {
		return st.updateAlone(fn)
	}
	if o.err == nil {
		st.fire(o.bumped)
	}
	return o.err
}

// fire tells the watchers of the topics a committed Update moved.
func (st *Store) fire(bumped map[string]uint64) {
	for topic, v := range bumped {
		st.Fire(topic, v)
	}
}

// updateAlone runs fn in a transaction of its own, after it lost a
// serialization conflict in one shared with others: again after each
// conflict, with backoff.
func (st *Store) updateAlone(fn func(store.Tx) error) error {
	for attempt := 1; ; attempt++ {
		time.Sleep(backoff(attempt))
		t, err, retry := st.attempt(context.Background(), fn)
		if err == nil {
			st.fire(t.bumped)
			return nil
		}
		if !retry {
			return err
		}
		st.retries.Add(1)
		if attempt == maxAttempts {
			return fmt.Errorf("store: gave up after %d serialization conflicts: %w", attempt, err)
		}
	}
}

// backoff spreads the retries of transactions that conflicted, so they do
// not meet again at once: up to 1 ms after the first conflict, doubling
// to at most 64 ms, with full jitter.
func backoff(attempt int) time.Duration {
	ceiling := time.Millisecond << min(attempt-1, 6)
	return rand.N(ceiling) + 1
}

// beginSQL begins every Update's transaction.
const beginSQL = `BEGIN ISOLATION LEVEL SERIALIZABLE`

// attempt runs fn once. retry says the attempt lost a serialization
// conflict: in any statement of fn (whether or not fn passed the error
// on) or at commit.
func (st *Store) attempt(ctx context.Context, fn func(store.Tx) error) (t *txn, err error, retry bool) {
	ctx, cancel := context.WithTimeout(ctx, updateTimeout)
	defer cancel()
	conn, err := st.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err), false
	}
	// A connection left inside a transaction (an attempt cut short) is
	// closed, not pooled.
	defer conn.Release()
	w := &watched{ctx: ctx, conn: conn, trips: &st.trips}
	t = &txn{reader: reader{q: w}, q: w}
	if err = call(fn, t); err != nil {
		w.rollback()
		if errors.As(err, new(panicked)) {
			return nil, err, false
		}
		return t, err, w.conflict || isConflict(err)
	}
	if w.begun && conn.Conn().PgConn().TxStatus() == 'E' {
		// fn went on after a failed statement (which ends a PostgreSQL
		// transaction) and returned nil: nothing it did can commit.
		w.rollback()
		return t, errStatementFailed, w.conflict
	}
	if err = w.commit(); err != nil {
		w.rollback()
		return t, err, w.conflict
	}
	return t, nil, false
}

// watched is one attempt's transaction, sent in as few round trips as the
// results fn needs allow: BEGIN goes with the first statement; a write
// whose caller needs no result from it (see later) waits and goes with the
// next statement or with COMMIT. The server runs the statements in the
// order fn made them, so every read still sees the writes before it, and
// a write that fails still fails the transaction before it can commit.
// watched also remembers whether any statement lost a serialization
// conflict.
//
// In a batch (see batch.go) several Updates share the transaction, one
// after the other: op says whose statements are being made, and lost
// says that a write queued by an earlier one failed.
type watched struct {
	// ctx is every statement's: the caller's cancellation does not reach
	// a transaction, which may be other callers' too.
	ctx      context.Context
	conn     *pgxpool.Conn
	begun    bool   // BEGIN has been sent
	pending  []stmt // writes not sent yet, in order
	known    known  // what the transaction read and has not written since
	conflict bool
	trips    *atomic.Uint64 // the Store's count of round trips
	op       int            // the batch's Update whose fn is running
	lost     *lostWrite
}

// stmt is a statement to send, made by the batch's Update op (or by the
// batch itself: control).
type stmt struct {
	sql  string
	args []any
	op   int
}

// control owns the statements that a batch adds around its Updates'
// (SAVEPOINT, RELEASE, ROLLBACK TO).
const control = -1

// lostWrite is a write queued by an earlier Update of the batch that
// failed in a round trip of a later one: op is the earlier one's.
type lostWrite struct {
	op  int
	err error
}

// errLost is what the Update that was running when a lostWrite was found
// meets; the batch then runs it again (see batch.run).
var errLost = errors.New("store: an earlier change of this batch failed")

func (w *watched) note(err error) error {
	if isConflict(err) {
		w.conflict = true
	}
	return err
}

// later queues a write whose caller needs no result from it: only its
// error, which then comes from the next statement or from the commit, and
// fails the transaction all the same (the server skips the rest of a
// round trip after a failed statement, COMMIT included).
func (w *watched) later(sql string, args ...any) {
	w.known = known{}
	w.pending = append(w.pending, stmt{sql: sql, args: args, op: w.op})
}

// changesOne makes an UPDATE fail, on the server, unless it changes
// exactly one row: a write sent later with the commit must not let the
// commit through if it missed (see txn.UseToken). The check divides by
// zero on a miss, which the server cannot do ahead of time.
func changesOne(update string) string {
	return `WITH changed AS (` + update + ` RETURNING 1) SELECT 1 / (count(*) = 1)::int FROM changed`
}

// errMissed is what a changesOne write that changed no row fails with.
var errMissed = errors.New("store: a write that had to change one row changed none; nothing was committed")

// send sends in one round trip BEGIN (before the transaction's first
// statement), the writes waiting, and qs. It reads the results of all but
// qs; the caller reads qs's from br, in order, then closes br. Anything
// the transaction knew is forgotten: qs may write.
func (w *watched) send(qs ...stmt) (pgx.BatchResults, error) {
	if w.lost != nil {
		return nil, errLost
	}
	w.known = known{}
	var sent []stmt
	if !w.begun {
		sent = append(sent, stmt{sql: beginSQL, op: control})
		w.begun = true
	}
	sent = append(sent, w.pending...)
	w.pending = nil
	var b pgx.Batch
	for _, s := range append(sent, qs...) {
		b.Queue(s.sql, s.args...)
	}
	w.trips.Add(1)
	br := w.conn.SendBatch(w.ctx, &b)
	for _, s := range sent {
		if _, err := br.Exec(); err != nil {
			br.Close()
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "22012" { // division_by_zero: see changesOne
				err = errMissed
			}
			err = w.note(err)
			if s.op != control && s.op != w.op {
				w.lost = &lostWrite{op: s.op, err: err}
				return nil, errLost
			}
			return nil, err
		}
	}
	return br, nil
}

// commit sends the writes waiting and COMMIT, in one round trip (with
// BEGIN if fn wrote without reading). A transaction that neither read nor
// wrote has nothing to commit.
func (w *watched) commit() error {
	if !w.begun && len(w.pending) == 0 {
		return nil
	}
	br, err := w.send(stmt{sql: `COMMIT`})
	if err != nil {
		return err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("store: %w", w.note(err))
	}
	if tag.String() == "ROLLBACK" { // the transaction had failed
		return fmt.Errorf("store: %w", pgx.ErrTxCommitRollback)
	}
	return nil
}

// rollback ends a transaction that will not commit; the writes waiting
// are dropped unsent.
func (w *watched) rollback() {
	w.pending = nil
	if w.begun && !w.conn.Conn().PgConn().IsClosed() && w.conn.Conn().PgConn().TxStatus() != 'I' {
		w.conn.Exec(w.ctx, `ROLLBACK`)
	}
}

// one sends a single statement (after the writes waiting).
func (w *watched) one(sql string, args []any) (pgx.BatchResults, error) {
	return w.send(stmt{sql: sql, args: args})
}

func (w *watched) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	br, err := w.one(sql, args)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, w.note(err)
}

func (w *watched) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	br, err := w.one(sql, args)
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		return nil, w.note(err)
	}
	return watchedRows{Rows: rows, w: w, br: br}, nil
}

func (w *watched) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	br, err := w.one(sql, args)
	if err != nil {
		return errRow{err}
	}
	return watchedRow{row: br.QueryRow(), w: w, br: br}
}

// SendBatch sends b's statements in one round trip and reads their
// results.
func (w *watched) SendBatch(ctx context.Context, b *pgx.Batch) error {
	qs := make([]stmt, len(b.QueuedQueries))
	for i, q := range b.QueuedQueries {
		qs[i] = stmt{sql: q.SQL, args: q.Arguments}
	}
	br, err := w.send(qs...)
	if err != nil {
		return err
	}
	return w.note(br.Close())
}

// watchedRows notes a conflict met while reading, and closes the batch
// the rows came in.
type watchedRows struct {
	pgx.Rows
	w  *watched
	br pgx.BatchResults
}

func (r watchedRows) Err() error { return r.w.note(r.Rows.Err()) }

func (r watchedRows) Close() {
	r.Rows.Close()
	r.w.note(r.br.Close())
}

type watchedRow struct {
	row pgx.Row
	w   *watched
	br  pgx.BatchResults
}

func (r watchedRow) Scan(dest ...any) error {
	err := r.row.Scan(dest...)
	if cerr := r.br.Close(); err == nil {
		err = cerr
	}
	return r.w.note(err)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// isConflict says whether err is PostgreSQL telling one of two
// conflicting transactions to run again.
func isConflict(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// listen follows other replicas' changes on a connection of its own,
// connecting again (with backoff) after it is lost; after each connect it
// reads the versions, so a change made while it was away is not missed.
func (st *Store) listen(ctx context.Context, cfg *pgx.ConnConfig) {
	const first = 100 * time.Millisecond
	wait := first
	for ctx.Err() == nil {
		listened, err := st.listenOnce(ctx, cfg)
		if ctx.Err() != nil {
			return
		}
		if listened {
			wait = first // an outage is timed from its start, not from the first one
		}
		st.log.Warn("lost the database's change notifications; connecting again (changes are polled meanwhile)", "database", st.where, "err", oneLine(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

// listenOnce says whether it got as far as listening. The versions are
// read on the listening connection itself: a pool connection may still be
// a dead one from before an outage, and a change missed here would wait
// for the next poll.
func (st *Store) listenOnce(ctx context.Context, cfg *pgx.ConnConfig) (bool, error) {
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return false, err
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, `LISTEN `+notifyChannel); err != nil {
		return false, err
	}
	v, err := (reader{q: c}).Versions(ctx)
	if err != nil {
		return false, err
	}
	st.Seen(v)
	st.listeningOnce.Do(func() { close(st.listening) })
	for {
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			return true, err
		}
		topic, v, ok := strings.Cut(n.Payload, " ")
		if !ok {
			continue
		}
		version, _ := strconv.ParseUint(v, 10, 64)
		st.Fire(topic, version)
	}
}
