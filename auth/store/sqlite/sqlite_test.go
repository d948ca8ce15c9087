package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
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

// A database made before nodes joined gets the new columns when opened,
// with defaults that keep the meaning of its rows: its tokens join bots,
// its nodes were typed by an administrator.
func TestOpenAddsColumnsToAnOlderDatabase(t *testing.T) {
	dir := t.TempDir()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, File))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`CREATE TABLE tokens (name TEXT PRIMARY KEY, secret_hash BLOB UNIQUE, bot_name TEXT NOT NULL, join_method TEXT NOT NULL,
			allow TEXT NOT NULL DEFAULT '[]', expires INTEGER NOT NULL DEFAULT 0, created INTEGER NOT NULL,
			used INTEGER NOT NULL DEFAULT 0, used_key_hash BLOB, used_instance TEXT NOT NULL DEFAULT '')`,
		`CREATE TABLE nodes (name TEXT PRIMARY KEY, addr TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '{}')`,
		`INSERT INTO tokens(name, bot_name, join_method, created) VALUES ('aws', 'robot', 'iam', 1)`,
		`INSERT INTO nodes(name, addr, labels) VALUES ('web', '10.0.0.1:22', '{"env":"prod"}')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	st, err := Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	tok, err := st.Token(ctx, "aws")
	if err != nil || tok.Role != "Bot" || tok.BotName != "robot" {
		t.Fatalf("old token: %+v %v", tok, err)
	}
	n, err := st.Node(ctx, "web")
	if err != nil || n.Agent || n.Addr != "10.0.0.1:22" || n.Labels["env"] != "prod" || !n.Expires.IsZero() {
		t.Fatalf("old node: %+v %v", n, err)
	}
}
