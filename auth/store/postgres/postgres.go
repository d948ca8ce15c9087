// Package postgres is the PostgreSQL backend of auth/store: the state that
// several authority replicas share. It is reached with a URL
// (postgres://USER@HOST:PORT/DB?OPTIONS, as libpq reads it; a password is
// better kept in a ~/.pgpass or PGPASSFILE than in the URL) through
// jackc/pgx.
//
// Isolation: every Update is one SERIALIZABLE transaction, retried from
// the start when PostgreSQL reports a serialization failure (SQLSTATE 40001)
// or a deadlock (40P01). Serializable isolation is what gives each promise
// of store.Store across replicas without knowing what fn will do: two
// joins with one token both read it unused and both try to mark it used;
// two renewals read one generation and both advance it; a role check and
// an insert race with a removal. Each such pair is a read-write conflict,
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
	// defaultMaxConns is the pool size without pool_max_conns in the URL:
	// PostgreSQL serves a connection with a process, and more than a few
	// per core only queue in the kernel instead of in the pool.
	defaultMaxConns = 16
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
}

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
	cfg.AfterConnect = durableCommits
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("database %s: %s", where, oneLine(err))
	}
	st := &Store{reader: reader{q: pool}, pool: pool, where: where, log: log}
	if err := st.migrate(ctx, opts.Cluster); err != nil {
		pool.Close()
		return nil, err
	}
	v, err := st.Versions(ctx)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("database %s: %s", where, oneLine(err))
	}
	st.Seen(v)
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
		return fmt.Errorf("database %s: %s", st.where, oneLine(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := migrate(ctx, tx, st.where, cluster); err != nil {
		if errors.Is(err, store.ErrSchemaNewer) || errors.Is(err, store.ErrOtherCluster) {
			return err
		}
		return fmt.Errorf("database %s: %s", st.where, oneLine(err))
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("database %s: %s", st.where, oneLine(err))
	}
	return nil
}

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
	st.stop()
	st.bg.Wait()
	st.Watchers.Close()
	st.pool.Close()
	return nil
}

// Update runs fn in a SERIALIZABLE transaction, again from the start after
// a serialization failure (see the package doc and store.Store). The
// caller's cancellation does not reach the transaction: once started, a
// change runs to its commit or rollback.
func (st *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	st.mu.RLock()
	defer st.mu.RUnlock()
	if st.closed {
		return store.ErrClosed
	}
	ctx = context.WithoutCancel(ctx)
	for attempt := 1; ; attempt++ {
		t, err, retry := st.attempt(ctx, fn)
		if err == nil {
			for topic, v := range t.bumped {
				st.Fire(topic, v)
			}
			return nil
		}
		if !retry {
			return err
		}
		if attempt == maxAttempts {
			return fmt.Errorf("store: gave up after %d serialization conflicts: %w", attempt, err)
		}
		time.Sleep(backoff(attempt))
	}
}

// backoff spreads the retries of transactions that conflicted, so they do
// not meet again at once: up to 1 ms after the first conflict, doubling
// to at most 64 ms, with full jitter.
func backoff(attempt int) time.Duration {
	ceiling := time.Millisecond << min(attempt-1, 6)
	return rand.N(ceiling) + 1
}

// attempt runs fn once. retry says the attempt lost a serialization
// conflict: in any statement of fn (whether or not fn passed the error
// on) or at commit.
func (st *Store) attempt(ctx context.Context, fn func(store.Tx) error) (t *txn, err error, retry bool) {
	ctx, cancel := context.WithTimeout(ctx, updateTimeout)
	defer cancel()
	tx, err := st.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable})
	if err != nil {
		return nil, fmt.Errorf("store: %w", err), false
	}
	w := &watched{tx: tx}
	t = &txn{reader: reader{q: w}, q: w}
	defer func() {
		if p := recover(); p != nil {
			tx.Rollback(ctx)
			t, err, retry = nil, fmt.Errorf("internal error: %v", p), false
		}
	}()
	if err = fn(t); err != nil {
		tx.Rollback(ctx)
		return t, err, w.conflict || isConflict(err)
	}
	if tx.Conn().PgConn().TxStatus() == 'E' {
		// fn went on after a failed statement (which ends a PostgreSQL
		// transaction) and returned nil: nothing it did can commit.
		tx.Rollback(ctx)
		return t, errors.New("store: a statement failed inside the transaction"), w.conflict
	}
	if err = tx.Commit(ctx); err != nil {
		return t, fmt.Errorf("store: %w", err), isConflict(err)
	}
	return t, nil, false
}

// watched is a transaction that remembers whether any statement lost a
// serialization conflict.
type watched struct {
	tx       pgx.Tx
	conflict bool
}

func (w *watched) note(err error) error {
	if isConflict(err) {
		w.conflict = true
	}
	return err
}

func (w *watched) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := w.tx.Exec(ctx, sql, args...)
	return tag, w.note(err)
}

func (w *watched) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, err := w.tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, w.note(err)
	}
	return watchedRows{rows, w}, nil
}

func (w *watched) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return watchedRow{w.tx.QueryRow(ctx, sql, args...), w}
}

func (w *watched) SendBatch(ctx context.Context, b *pgx.Batch) error {
	return w.note(w.tx.SendBatch(ctx, b).Close())
}

type watchedRows struct {
	pgx.Rows
	w *watched
}

func (r watchedRows) Err() error { return r.w.note(r.Rows.Err()) }

type watchedRow struct {
	pgx.Row
	w *watched
}

func (r watchedRow) Scan(dest ...any) error { return r.w.note(r.Row.Scan(dest...)) }

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
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := st.listenOnce(ctx, cfg)
		if ctx.Err() != nil {
			return
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

func (st *Store) listenOnce(ctx context.Context, cfg *pgx.ConnConfig) error {
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, `LISTEN `+notifyChannel); err != nil {
		return err
	}
	if v, err := st.Versions(ctx); err == nil {
		st.Seen(v)
	}
	for {
		n, err := c.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		topic, v, ok := strings.Cut(n.Payload, " ")
		if !ok {
			continue
		}
		version, _ := strconv.ParseUint(v, 10, 64)
		st.Fire(topic, version)
	}
}
