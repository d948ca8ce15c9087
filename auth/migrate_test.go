package auth

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/store/sqlite"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/pgtest"
)

// An authority moved from SQLite to PostgreSQL issues nothing anew: its
// bots renew through the replicas at the generation they were at, with the
// CA pin they pinned, keep their node lists' ETags; a spent token stays
// spent and an unused one still joins. The SQLite state refuses to serve
// again, and is not moved twice.
func TestMigrateKeepsBotsRenewing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", ClusterName: "test.example.com", Logger: testLogger(t)}
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	spent := addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token
	id := join(t, s, spent).renew(t, s).renew(t, s)
	unused := addBot(t, s, "later", []string{"access"}, nil).Token
	if err := s.AddNode(ctx, identity.Node{Name: "web", Addr: "10.0.0.1:22"}); err != nil {
		t.Fatal(err)
	}
	pin, list := s.CAPin(), pollNodes(t, s, id.key, id.cert, "")
	forms := caKeyForms(t, s)

	srv := pgtest.Shared(t)
	db := srv.NewDB(t)
	url, keyFile := srv.URL(db), sealKeyFile(t)
	if _, err := Migrate(ctx, "sqlite:"+dir, url, keyFile); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("migrate while the authority serves: %v", err)
	}
	s.Close()
	empty := stateDump(t, srv, db)
	if _, err := Migrate(ctx, "sqlite:"+dir, url, ""); err == nil || !strings.Contains(err.Error(), "--ca-key-seal") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("migrate without a seal key: %v; want one line naming --ca-key-seal", err)
	}
	if !bytes.Equal(stateDump(t, srv, db), empty) {
		t.Fatal("a move refused for want of a seal key wrote to the database")
	}
	moved, err := Migrate(ctx, "sqlite:"+dir+"/"+sqlite.File, url, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	dump := srv.Dump(t, db)
	for name, b := range forms {
		if bytes.Contains(dump, b) {
			t.Errorf("pg_dump after the move holds the %s", name)
		}
	}
	if moved.Bots != 2 || moved.Tokens != 2 || moved.Nodes != 1 || moved.CAs != 3 || strings.Contains(moved.To, pgtest.Shared(t).Password) {
		t.Fatalf("moved: %+v", moved)
	}

	rs := startReplicasOn(t, url, 2, func(c *Config) { c.CAKeySeal = keyFile })
	if rs[0].CAPin() != pin {
		t.Fatalf("the replicas serve pin %s, the bots pinned %s", rs[0].CAPin(), pin)
	}
	if next := id.renew(t, rs[1]); next.gen != id.gen+1 {
		t.Fatalf("renewal after the move: generation %d, want %d", next.gen, id.gen+1)
	}
	if _, status, _ := tryJoin(t, rs[0], spent); status != 403 {
		t.Fatalf("a token spent before the move joined after it: %d", status)
	}
	join(t, rs[1], unused)
	other := join(t, rs[0], addBot(t, rs[0], "third", []string{"access"}, nil).Token)
	if a := pollNodes(t, rs[0], other.key, other.cert, list.etag); a.status != http.StatusNotModified {
		t.Fatalf("the node list ETag from before the move: %d, want 304", a.status)
	}

	if _, err := Start(ctx, cfg); !errors.Is(err, sqlite.ErrMoved) || !strings.Contains(err.Error(), "--db") {
		t.Fatalf("an authority on the moved SQLite state: %v", err)
	}
	if _, err := Migrate(ctx, "sqlite:"+dir, pgtest.Shared(t).NewURL(t), keyFile); !errors.Is(err, sqlite.ErrMoved) {
		t.Fatalf("a second move of the state: %v", err)
	}
}

// A database that already holds a cluster takes no second one; bad
// sources and targets are one line each.
func TestMigrateRefusals(t *testing.T) {
	ctx := context.Background()
	url := pgtest.Shared(t).NewURL(t)
	startReplicasOn(t, url, 1)[0].Close()
	dir := t.TempDir()
	s, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", ClusterName: "test.example.com", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	for _, c := range []struct{ from, to, want string }{
		{"sqlite:" + dir, url, "already holds cluster"},
		{dir, url, "bad --from"},
		{"sqlite:" + t.TempDir(), url, "no midfs state"},
		{"sqlite:" + dir, "mysql://db/x", "bad --to"},
	} {
		_, err := Migrate(ctx, c.from, c.to, sealKeyFile(t))
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("migrate %s -> %s: %v; want one line with %q", c.from, c.to, err, c.want)
		}
	}
	s, err = Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("a refused move marked the SQLite state moved: %v", err)
	}
	s.Close()
}
