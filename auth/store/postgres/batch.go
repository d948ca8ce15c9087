package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/midfs/midfs/auth/store"
)

// Group commit. Every commit waits for PostgreSQL to flush its WAL, and
// every transaction costs a BEGIN, a COMMIT and the round trip that
// carries them. Under many concurrent changes (a fleet joining at once)
// that is a good part of what each costs, on both sides. So Updates wait
// in a queue, and each committer (one per pooled connection) takes
// whatever is waiting, up to maxBatch, and runs it in one transaction:
// each Update's fn in a savepoint of its own, one after the other, their
// answers given once the commit is durable. The batch is still one
// SERIALIZABLE transaction, and its Updates run in a serial order inside
// it, so every promise of an Update alone holds; one whose fn fails is
// rolled back to its savepoint, and the others keep theirs.
//
// A batch that loses a serialization conflict, or whose fn panics, is
// rolled back whole, and its Updates run again each in a transaction of
// its own (Update's old way, with its retries): one conflict must not
// send a batch back into the same race together.
//
// Under light load a batch holds one Update, which runs exactly as alone.

// maxBatch bounds a batch. A savepoint that writes takes a
// subtransaction ID, and PostgreSQL keeps at most 64 of them per
// transaction in shared memory before every snapshot elsewhere must look
// them up on disk (pg_subtrans). And the more one transaction reads, the
// likelier it conflicts with another (SERIALIZABLE tracks reads by index
// page): in the herd benchmark about 40 % of batches of 32 were given up,
// 15 % of batches of 16 (5-8 % of joins once tokens had room for their
// next versions: schema.go, 8).
const maxBatch = 16

const (
	savepointSQL  = `SAVEPOINT op`
	releaseSQL    = `RELEASE SAVEPOINT op`
	rollbackToSQL = `ROLLBACK TO SAVEPOINT op`
)

// update is one Update waiting for its batch.
type update struct {
	fn   func(store.Tx) error
	done chan outcome
}

// outcome is an Update's answer from its batch.
type outcome struct {
	err    error
	bumped map[string]uint64 // of an Update that committed
	alone  bool              // run it again, alone: the batch was given up
}

// errStatementFailed is the answer to an fn that went on after a failed
// statement (which ends a PostgreSQL transaction, or savepoint) and
// returned nil: nothing it did can commit.
var errStatementFailed = errors.New("store: a statement failed inside the transaction")

// commit runs batches from the queue until it is closed.
func (st *Store) commit() {
	for first := range st.queue {
		us := store.Batch(first, st.queue, maxBatch)
		if len(us) == 1 {
			st.runOne(us[0])
		} else {
			st.runBatch(us)
		}
	}
}

// runOne runs a batch of one, without savepoints.
func (st *Store) runOne(u *update) {
	t, err, retry := st.attempt(context.Background(), u.fn)
	switch {
	case retry:
		st.retries.Add(1)
		u.done <- outcome{alone: true}
	case err != nil:
		u.done <- outcome{err: err}
	default:
		u.done <- outcome{bumped: t.bumped}
	}
}

// runBatch runs us in one transaction and answers each.
func (st *Store) runBatch(us []*update) {
	ctx, cancel := context.WithTimeout(context.Background(), updateTimeout)
	defer cancel()
	conn, err := st.pool.Acquire(ctx)
	if err != nil {
		for _, u := range us {
			u.done <- outcome{err: fmt.Errorf("store: %w", err)}
		}
		return
	}
	// A connection left inside a transaction (a panic in fn) is closed,
	// not pooled.
	defer conn.Release()
	b := &batch{us: us, outs: make([]outcome, len(us)), w: &watched{ctx: ctx, conn: conn, trips: &st.trips}}
	if b.run() {
		for i, u := range us {
			u.done <- b.outs[i]
		}
		return
	}
	b.w.rollback()
	for i, u := range us {
		if i == b.panicked {
			u.done <- b.outs[i]
		} else {
			st.retries.Add(1)
			u.done <- outcome{alone: true}
		}
	}
}

// batch is one transaction's Updates.
type batch struct {
	us       []*update
	outs     []outcome
	w        *watched
	panicked int   // the Update whose fn panicked, if run gave up for it
	err      error // a rollback to a savepoint failed
}

// run runs the batch to its commit and says whether it got there: false
// when it was given up (a serialization conflict, a panic), its
// Updates unanswered but b.panicked's.
func (b *batch) run() bool {
	b.panicked = -1
	w := b.w
	i := 0
	for {
		for ; i < len(b.us); i++ {
			if !b.runOp(i) {
				return false
			}
			if b.err != nil {
				return b.failAll(b.err)
			}
			if w.lost != nil {
				j, err := b.undoLost()
				if err != nil {
					return b.failAll(err)
				}
				i = j // and the loop moves on to the one after it
			}
		}
		w.op = len(b.us)
		err := w.commit()
		if w.conflict {
			return false
		}
		if w.lost == nil {
			if err != nil {
				b.failAll(err)
			}
			return true
		}
		j, err := b.undoLost()
		if err != nil {
			return b.failAll(err)
		}
		i = j + 1
	}
}

// failAll answers every Update of the batch with err: a round trip that
// failed other than by a statement (a connection lost, a timeout), after
// which nothing of the batch can commit, or it is not known whether it
// did. It returns true: the batch is answered.
func (b *batch) failAll(err error) bool {
	b.w.rollback()
	for j := range b.outs {
		b.outs[j] = outcome{err: err}
	}
	return true
}

// runOp runs Update i's fn in a savepoint, and says whether the batch can
// go on.
func (b *batch) runOp(i int) bool {
	w := b.w
	w.op = i
	if i > 0 {
		w.pending = append(w.pending, stmt{sql: releaseSQL, op: control})
	}
	w.pending = append(w.pending, stmt{sql: savepointSQL, op: control})
	w.known = known{}
	t := &txn{reader: reader{q: w}, q: w}
	err := call(b.us[i].fn, t)
	switch {
	case errors.As(err, new(panicked)):
		b.panicked, b.outs[i] = i, outcome{err: err}
		return false
	case w.conflict || isConflict(err):
		return false
	case w.lost != nil:
		return true // to run again: see undoLost
	case err == nil && w.begun && w.conn.Conn().PgConn().TxStatus() == 'E':
		err = errStatementFailed
	}
	if err == nil {
		b.outs[i] = outcome{bumped: t.bumped}
		return true
	}
	b.outs[i] = outcome{err: err}
	w.pending = slices.DeleteFunc(w.pending, func(s stmt) bool { return s.op == i })
	if err := b.rollbackTo(); err != nil {
		b.err = fmt.Errorf("store: %w", err)
	}
	return true
}

// undoLost answers the Update whose write failed in a later round trip
// (w.lost) with that failure, and rolls back to its savepoint, which was
// the last one made: the round trip stopped at its write, before its
// RELEASE. Nothing of the Updates after it is left; it returns the
// index of the one that failed, to run those after it again.
func (b *batch) undoLost() (int, error) {
	w := b.w
	j := w.lost.op
	b.outs[j] = outcome{err: w.lost.err}
	w.lost = nil
	w.pending = nil
	if err := b.rollbackTo(); err != nil {
		return j, fmt.Errorf("store: %w", err)
	}
	return j, nil
}

// rollbackTo rolls back to the last savepoint. A transaction that a
// failed statement ended is rolled back at once, alone, in the simple
// protocol: pgx prepares a batch's new statements before sending it, and
// PostgreSQL refuses to prepare them in such a transaction. Otherwise the
// rollback goes with the next round trip.
func (b *batch) rollbackTo() error {
	w := b.w
	if w.conn.Conn().PgConn().TxStatus() != 'E' {
		w.pending = append(w.pending, stmt{sql: rollbackToSQL, op: control})
		return nil
	}
	w.trips.Add(1)
	_, err := w.conn.Exec(w.ctx, rollbackToSQL)
	return w.note(err)
}

// call runs fn, and turns a panic into an error, a panicked.
func call(fn func(store.Tx) error, t *txn) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = panicked{p}
		}
	}()
	return fn(t)
}

// panicked is what call returns when fn panicked.
type panicked struct{ value any }

func (p panicked) Error() string { return fmt.Sprintf("internal error: %v", p.value) }
