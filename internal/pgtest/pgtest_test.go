package pgtest

import (
	"bytes"
	"context"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

// A test database is reachable by URL, with the password, as User; the
// server stops and starts again with its data; and it is gone after.
func TestServerServesStopsAndRestarts(t *testing.T) {
	s := Start(t)
	db := s.NewDB(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, s.URL(db))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, `CREATE TABLE k (v text); INSERT INTO k VALUES ('kept')`); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	s.Stop(t)
	if c, err := pgx.Connect(ctx, s.URL(db)); err == nil {
		c.Close(ctx)
		t.Fatal("connected to a stopped server")
	}
	s.Restart(t)
	if dump := s.Dump(t, db); !bytes.Contains(dump, []byte("kept")) {
		t.Fatalf("pg_dump after restart lacks the row:\n%s", dump)
	}
	bad := s.URL(db)
	bad = bad[:len("postgres://midfs:")] + "wrong" + bad[len("postgres://midfs:")+len(s.Password):]
	if c, err := pgx.Connect(ctx, bad); err == nil {
		c.Close(ctx)
		t.Fatal("a wrong password was let in")
	}
}

// Tests sharing the package's server get databases of their own.
func TestSharedGivesEachTestItsDatabase(t *testing.T) {
	s := Shared(t)
	if a, b := s.NewDB(t), s.NewDB(t); a == b {
		t.Fatalf("two tests got database %s", a)
	}
}
