package postgres

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/store"
)

// inBatch runs fns as Updates of one batch, as Update does with their
// outcomes (those the batch gave up run alone), and returns their errors.
func inBatch(st *Store, fns ...func(store.Tx) error) []error {
	us := make([]*update, len(fns))
	for i, fn := range fns {
		us[i] = &update{fn: fn, done: make(chan outcome, 1)}
	}
	st.runBatch(us)
	errs := make([]error, len(fns))
	for i, u := range us {
		o := <-u.done
		errs[i] = o.err
		if o.alone {
			errs[i] = st.updateAlone(fns[i])
		}
	}
	return errs
}

// counted counts the runs of fn.
func counted(n *int, fn func(store.Tx) error) func(store.Tx) error {
	return func(tx store.Tx) error { *n++; return fn(tx) }
}

func addBot(name string) func(store.Tx) error {
	return func(tx store.Tx) error {
		return tx.AddBot(bg, &store.Bot{Name: name, Roles: []string{"access"}, Created: time.Unix(1_800_000_000, 0)})
	}
}

// wantBots checks which of names are stored.
func wantBots(t *testing.T, st *Store, want map[string]bool) {
	t.Helper()
	for name, stored := range want {
		_, err := st.Bot(bg, name)
		if got := err == nil; got != stored {
			t.Errorf("bot %s stored: %v, want %v (%v)", name, got, stored, err)
		}
	}
}

// One transaction, four Updates: the one that fails by itself and the one
// whose write sent later fails (in the next one's round trip) are undone,
// and only they; the next one, whose round trip carried the failing
// write, runs again and commits.
func TestABatchUndoesOnlyTheUpdatesThatFail(t *testing.T) {
	for name, miss := range map[string]func(tx *txn){
		"a write that had to change a row and changed none": func(tx *txn) {
			tx.q.known.unused = map[string]bool{"ghost": true}
			tx.UseToken(bg, "ghost", time.Unix(1_800_000_100, 0), nil, "i")
		},
		"a write that failed": func(tx *txn) { tx.q.later(`UPDATE bots SET name = NULL WHERE name = 'b'`) },
	} {
		t.Run(strings.ReplaceAll(name, " ", "_"), func(t *testing.T) {
			st := joinState(t)
			own := errors.New("refused by itself")
			var runsD int
			errs := inBatch(st,
				addBot("a"),
				func(tx store.Tx) error {
					if err := addBot("x")(tx); err != nil {
						return err
					}
					return own
				},
				func(tx store.Tx) error {
					if err := addBot("y")(tx); err != nil {
						return err
					}
					miss(tx.(*txn))
					return nil
				},
				counted(&runsD, func(tx store.Tx) error {
					if _, err := tx.Bot(bg, "a"); err != nil {
						return err
					}
					return addBot("d")(tx)
				}),
			)
			if errs[0] != nil || errs[1] != own || errs[2] == nil || errs[3] != nil {
				t.Fatalf("errors %v, want nil, %v, the write's failure, nil", errs, own)
			}
			if runsD != 2 {
				t.Errorf("the Update after the failing write ran %d times, want 2", runsD)
			}
			wantBots(t, st, map[string]bool{"a": true, "x": false, "y": false, "d": true, "b": true})
		})
	}
}

// A write sent later by the batch's last Update fails in the commit's
// round trip: that Update fails, and the commit, sent again, keeps the
// others.
func TestABatchWhoseLastWriteFailsCommitsTheRest(t *testing.T) {
	st := joinState(t)
	errs := inBatch(st,
		addBot("a"),
		func(tx store.Tx) error {
			if _, err := tx.Bot(bg, "a"); err != nil {
				return err
			}
			tx.(*txn).q.later(`UPDATE bots SET name = NULL WHERE name = 'a'`)
			return nil
		},
	)
	if errs[0] != nil || errs[1] == nil {
		t.Fatalf("errors %v, want nil and the write's failure", errs)
	}
	wantBots(t, st, map[string]bool{"a": true})
}

// An Update that panics fails with an internal error; the batch is given
// up and the others run again, alone, and commit.
func TestABatchWithAPanicRunsTheOthersAlone(t *testing.T) {
	st := joinState(t)
	errs := inBatch(st,
		addBot("a"),
		func(tx store.Tx) error {
			if err := addBot("x")(tx); err != nil {
				return err
			}
			panic("a bug")
		},
		addBot("c"),
	)
	if errs[0] != nil || errs[1] == nil || !strings.Contains(errs[1].Error(), "internal error: a bug") || errs[2] != nil {
		t.Fatalf("errors %v, want nil, the panic, nil", errs)
	}
	wantBots(t, st, map[string]bool{"a": true, "x": false, "c": true})
}

// Two batches that each read what the other writes cannot both commit
// (SERIALIZABLE): the one that loses is given up, and its Updates run
// again alone and commit, each once.
func TestBatchesThatConflictRunTheirUpdatesAgain(t *testing.T) {
	st := joinState(t)
	for _, b := range []string{"p", "q"} {
		if err := st.Update(bg, addBot(b)); err != nil {
			t.Fatal(err)
		}
	}
	var read sync.WaitGroup // both have read
	read.Add(2)
	var once [2]sync.Once
	// readThenLock reads bot mine, waits until the other batch has read
	// its own (the first run only), then locks the other's.
	readThenLock := func(i int, mine, other string) func(store.Tx) error {
		return func(tx store.Tx) error {
			if _, err := tx.Bot(bg, mine); err != nil {
				return err
			}
			once[i].Do(func() { read.Done(); read.Wait() })
			return tx.SetLocked(bg, other, "by "+mine)
		}
	}
	var errs [2][]error
	var done sync.WaitGroup
	for i, pair := range [2][2]string{{"p", "q"}, {"q", "p"}} {
		done.Go(func() { errs[i] = inBatch(st, readThenLock(i, pair[0], pair[1]), addBot("new"+pair[0])) })
	}
	done.Wait()
	for i := range errs {
		for j, err := range errs[i] {
			if err != nil {
				t.Errorf("batch %d, Update %d: %v", i, j, err)
			}
		}
	}
	if st.Retries() == 0 {
		t.Error("neither batch lost a conflict; the test did not test it")
	}
	for _, b := range []string{"p", "q"} {
		if bot, err := st.Bot(bg, b); err != nil || bot.Locked == "" {
			t.Errorf("bot %s not locked: %+v %v", b, bot, err)
		}
	}
	wantBots(t, st, map[string]bool{"newp": true, "newq": true})
}
