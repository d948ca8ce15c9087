package postgres

import (
	"errors"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/internal/pgtest"
)

// joinState is a cluster with bot "b" and its unused token "t" (secret
// "secret").
func joinState(t *testing.T) *Store {
	t.Helper()
	st, err := Open(bg, pgtest.Shared(t).NewURL(t), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	initCluster(t, st)
	at := time.Unix(1_800_000_000, 0)
	err = st.Update(bg, func(tx store.Tx) error {
		if err := tx.AddBot(bg, &store.Bot{Name: "b", Roles: []string{"access"}, Created: at}); err != nil {
			return err
		}
		return tx.PutToken(bg, &store.Token{Name: "t", BotName: "b", JoinMethod: "token", SecretHash: []byte("secret"), Created: at}, false)
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// trips runs fn as one Update and returns how many round trips it took.
func trips(t *testing.T, st *Store, fn func(store.Tx) error) uint64 {
	t.Helper()
	before := st.RoundTrips()
	if err := st.Update(bg, fn); err != nil {
		t.Fatal(err)
	}
	return st.RoundTrips() - before
}

// The authority's join (token by secret, its bot, the bot's locks, use
// the token, rejoin, an event) and renewal (bot, locks, advance, an
// event) each take two round trips, and commit all they did.
func TestJoinAndRenewalTakeTwoRoundTrips(t *testing.T) {
	st := joinState(t)
	at := time.Unix(1_800_000_100, 0)
	event := func(tx store.Tx, typ string) error {
		return tx.AddEvent(bg, &audit.Event{Type: typ, Time: at, Bot: "b"})
	}
	n := trips(t, st, func(tx store.Tx) error {
		tok, err := tx.TokenBySecret(bg, []byte("secret"))
		if err != nil {
			return err
		}
		if _, err := tx.Bot(bg, tok.BotName); err != nil {
			return err
		}
		if _, err := tx.Locks(bg, tok.BotName); err != nil {
			return err
		}
		if used, err := tx.UseToken(bg, tok.Name, at, []byte("k1"), "i1"); !used || err != nil {
			return errors.Join(errors.New("token not used"), err)
		}
		if err := tx.Rejoin(bg, "b", "i1", []byte("k1")); err != nil {
			return err
		}
		return event(tx, audit.BotJoined)
	})
	if n != 2 {
		t.Errorf("a join took %d round trips, want 2", n)
	}
	if tok, err := st.Token(bg, "t"); err != nil || tok.Used.IsZero() || string(tok.UsedKeyHash) != "k1" {
		t.Fatalf("after the join, the token: %+v, %v", tok, err)
	}
	n = trips(t, st, func(tx store.Tx) error {
		b, err := tx.Bot(bg, "b")
		if err != nil {
			return err
		}
		if _, err := tx.Locks(bg, "b"); err != nil {
			return err
		}
		if moved, err := tx.AdvanceGeneration(bg, "b", b.Generation, []byte("k2")); !moved || err != nil {
			return errors.Join(errors.New("generation not moved"), err)
		}
		return event(tx, audit.BotRenewed)
	})
	if n != 2 {
		t.Errorf("a renewal took %d round trips, want 2", n)
	}
	b, err := st.Bot(bg, "b")
	if err != nil || b.Instance != "i1" || b.Generation != 2 || string(b.LastKeyHash) != "k2" {
		t.Fatalf("after join and renewal, the bot: %+v, %v", b, err)
	}
	evs, err := st.Events(bg, store.EventQuery{Bot: "b"})
	if err != nil || len(evs) != 2 {
		t.Fatalf("events: %d, %v; want the join's and the renewal's", len(evs), err)
	}
}

// A read after a write that waits to be sent sees the write: the write
// goes first, in the read's round trip.
func TestReadsSeeWritesNotSentYet(t *testing.T) {
	st := joinState(t)
	err := st.Update(bg, func(tx store.Tx) error {
		if _, err := tx.Bot(bg, "b"); err != nil { // known to the transaction
			return err
		}
		if err := tx.SetLocked(bg, "b", "copied"); err != nil {
			return err
		}
		b, err := tx.Bot(bg, "b")
		if err != nil {
			return err
		}
		if b.Locked != "copied" {
			t.Errorf("a read after SetLocked in one transaction: locked %q", b.Locked)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A write sent with the commit that fails, or that had to change one row
// and changed none, fails the Update and nothing of it commits. (Neither
// can happen with the store's own writes, read at the snapshot; here the
// transaction is told it knows a token that does not exist.)
func TestAWriteSentLaterThatMissesCommitsNothing(t *testing.T) {
	at := time.Unix(1_800_000_100, 0)
	for name, miss := range map[string]func(tx *txn) (bool, error){
		"changed no row": func(tx *txn) (bool, error) {
			tx.q.known.unused = map[string]bool{"ghost": true}
			return tx.UseToken(bg, "ghost", at, nil, "i")
		},
		"failed": func(tx *txn) (bool, error) {
			tx.q.later(`UPDATE bots SET name = NULL`)
			return true, nil
		},
	} {
		st := joinState(t)
		err := st.Update(bg, func(stx store.Tx) error {
			tx := stx.(*txn)
			if _, err := tx.TokenBySecret(bg, []byte("secret")); err != nil {
				return err
			}
			if used, err := tx.UseToken(bg, "t", at, []byte("k"), "i"); !used || err != nil {
				return errors.Join(errors.New("token not used"), err)
			}
			if ok, err := miss(tx); !ok || err != nil {
				return errors.Join(errors.New("the write was not taken"), err)
			}
			return nil
		})
		if err == nil {
			t.Errorf("%s: the Update committed", name)
		}
		if missed := errors.Is(err, errMissed); missed != (name == "changed no row") {
			t.Errorf("%s: the Update failed with %v", name, err)
		}
		if tok, err := st.Token(bg, "t"); err != nil || !tok.Used.IsZero() {
			t.Errorf("%s: the token was used by an Update that failed: %+v, %v", name, tok, err)
		}
	}
}
