package sqlite

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/store"
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
