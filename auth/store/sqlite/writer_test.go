package sqlite

import (
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/store"
)

// Closing the store while requests are still writing (an authority
// stopping under load) answers every one of them, and exactly the changes
// reported done are stored.
func TestStoreCloseAnswersEveryWriter(t *testing.T) {
	for round := 0; round < 20; round++ {
		dir := t.TempDir()
		st, err := Open(dir, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var done atomic.Int64
		var writers, started sync.WaitGroup
		for i := range 8 {
			writers.Add(1)
			started.Add(1)
			go func() {
				defer writers.Done()
				var once sync.Once
				defer once.Do(started.Done)
				for j := 0; ; j++ {
					err := st.w.do(func(tx *sql.Tx) error {
						_, err := tx.Exec(`INSERT INTO meta(key, value) VALUES (?, '')`, fmt.Sprintf("w%d-%d", i, j))
						return err
					})
					if errors.Is(err, store.ErrClosed) {
						return
					}
					if err != nil {
						t.Errorf("round %d: a change failed while closing: %v", round, err)
						return
					}
					done.Add(1)
					once.Do(started.Done)
				}
			}()
		}
		started.Wait()
		st.Close()
		answered := make(chan struct{})
		go func() { writers.Wait(); close(answered) }()
		select {
		case <-answered:
		case <-time.After(time.Minute):
			t.Fatalf("round %d: a writer was never answered after the store closed", round)
		}
		st, err = Open(dir, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var stored int64
		if err := st.db.QueryRow(`SELECT count(*) FROM meta`).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		st.Close()
		if stored != done.Load() {
			t.Fatalf("round %d: %d changes reported done, %d stored", round, done.Load(), stored)
		}
	}
}
