package sqlite

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/wire"
)

// A second token with a secret already in use is a conflict the authority
// can name, told apart by SQLite's result code, and is not stored.
func TestPutTokenWithASecretInUseIsAConflict(t *testing.T) {
	st, err := Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	put := func(name string) error {
		return st.Update(ctx, func(tx store.Tx) error {
			return tx.PutToken(ctx, &store.Token{Name: name, BotName: "b", JoinMethod: "token", SecretHash: []byte("same"), Created: time.Now()}, false)
		})
	}
	if err := put("first"); err != nil {
		t.Fatal(err)
	}
	if err := put("second"); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("same secret again: %v, want ErrConflict", err)
	}
	if _, err := st.Token(ctx, "second"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the conflicting token was stored: %v", err)
	}
}

// Locks: stored with whole-second times, listed oldest first (all, or one
// bot's), an ID taken once, expired ones swept, removed by ID.
func TestLocks(t *testing.T) {
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	t0 := time.Unix(1_800_000_000, 0)
	locks := []wire.Lock{
		{ID: "b", Bot: "robot", Message: "m", Created: t0.Add(time.Second)},
		{ID: "a", Bot: "other", Created: t0, Expires: t0.Add(time.Hour)},
		{ID: "c", Bot: "robot", Created: t0.Add(time.Second), Expires: t0.Add(time.Minute)},
	}
	err = st.Update(ctx, func(tx store.Tx) error {
		for _, l := range locks {
			if err := tx.PutLock(ctx, l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ids := func(bot string) string {
		t.Helper()
		got, err := st.Locks(ctx, bot)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, l := range got {
			s = append(s, l.ID)
		}
		return strings.Join(s, ",")
	}
	if got := ids(""); got != "a,b,c" {
		t.Errorf("all locks: %s, want a,b,c (oldest first, then by ID)", got)
	}
	if got := ids("robot"); got != "b,c" {
		t.Errorf("robot's locks: %s", got)
	}
	all, _ := st.Locks(ctx, "")
	if !reflect.DeepEqual(all[1], locks[0]) || !all[0].Expires.Equal(locks[1].Expires) || !all[1].Expires.IsZero() {
		t.Errorf("stored %+v, read %+v", locks, all)
	}
	err = st.Update(ctx, func(tx store.Tx) error { return tx.PutLock(ctx, wire.Lock{ID: "a", Bot: "x", Created: t0}) })
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("a second lock a: %v, want ErrConflict", err)
	}
	err = st.Update(ctx, func(tx store.Tx) error {
		n, err := tx.RemoveExpiredLocks(ctx, t0.Add(30*time.Minute))
		if n != 1 {
			t.Errorf("swept %d locks, want 1 (c)", n)
		}
		return err
	})
	if err != nil || ids("") != "a,b" {
		t.Fatalf("after the sweep: %s %v", ids(""), err)
	}
	if ok, _ := st.Exists(ctx, policy.KindLock, "a"); !ok {
		t.Error("lock a does not exist")
	}
	err = st.Update(ctx, func(tx store.Tx) error {
		if found, err := tx.Remove(ctx, policy.KindLock, "a"); !found || err != nil {
			t.Errorf("remove a: %v %v", found, err)
		}
		found, err := tx.Remove(ctx, policy.KindLock, "a")
		if found {
			t.Error("removed a twice")
		}
		return err
	})
	if err != nil || ids("") != "b" {
		t.Fatalf("after removing a: %s %v", ids(""), err)
	}
}
