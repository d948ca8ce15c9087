package sqlite

import (
	"database/sql"
	"fmt"
	"sync"

	"github.com/midfs/midfs/auth/store"
)

// maxBatch bounds how many changes share one commit.
const maxBatch = 128

// writer is the single SQLite writer with group commit. With
// synchronous=FULL each commit waits for an fsync of the WAL; requests that
// arrive while one commit is in flight are committed together in the next,
// each inside its own savepoint, so one request's failure never undoes
// another's change and each still sees the others' committed state.
type writer struct {
	db      *sql.DB
	ops     chan *writeOp
	stopped chan struct{} // closed when loop has returned

	// mu is held for reading while sending on ops, so that close can
	// close ops once no sender is left; closed says it has.
	mu     sync.RWMutex
	closed bool
}

type writeOp struct {
	fn  func(*sql.Tx) error
	err chan error
}

func newWriter(db *sql.DB) *writer {
	w := &writer{db: db, ops: make(chan *writeOp, maxBatch), stopped: make(chan struct{})}
	go w.loop()
	return w
}

func (w *writer) do(fn func(*sql.Tx) error) error {
	op := &writeOp{fn: fn, err: make(chan error, 1)}
	w.mu.RLock()
	if w.closed {
		w.mu.RUnlock()
		return store.ErrClosed
	}
	w.ops <- op
	w.mu.RUnlock()
	return <-op.err
}

// close refuses new changes, commits those already queued, and returns
// once the loop is done with the database.
func (w *writer) close() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.ops)
	}
	w.mu.Unlock()
	<-w.stopped
}

func (w *writer) loop() {
	defer close(w.stopped)
	for first := range w.ops {
		w.commit(store.Batch(first, w.ops, maxBatch))
	}
}

// commit runs a batch in one transaction and answers each op once the
// commit is durable. A failed commit fails every op of the batch.
func (w *writer) commit(batch []*writeOp) {
	errs := make([]error, len(batch))
	tx, err := w.db.Begin()
	if err == nil {
		for i, op := range batch {
			errs[i] = runSavepoint(tx, op.fn)
		}
		err = tx.Commit()
	}
	for i, op := range batch {
		if err != nil {
			op.err <- fmt.Errorf("store: %w", err)
		} else {
			op.err <- errs[i]
		}
	}
}

func runSavepoint(tx *sql.Tx, fn func(*sql.Tx) error) (err error) {
	if _, err := tx.Exec("SAVEPOINT op"); err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("internal error: %v", p)
		}
		if err != nil {
			tx.Exec("ROLLBACK TO op")
		}
		tx.Exec("RELEASE op")
	}()
	return fn(tx)
}
