package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/storetest"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// Every promise of store.Store, against a real PostgreSQL server, several
// handles on one database standing for several replicas.
func TestConformance(t *testing.T) {
	srv := pgtest.Shared(t)
	storetest.Run(t, storetest.Backend{New: func(t testing.TB) storetest.Opener {
		url := srv.NewURL(t)
		return func(o store.Options) (store.Store, error) { return Open(context.Background(), url, o) }
	}})
}

var bg = context.Background()

// snapshot is everything in a database a refused open must leave as it
// was: every table and row, as pg_dump writes them (less the random key
// of its \restrict lines).
func snapshot(t *testing.T, srv *pgtest.Server, db string) string {
	t.Helper()
	var keep []string
	for _, l := range strings.Split(string(srv.Dump(t, db)), "\n") {
		if !strings.HasPrefix(l, `\restrict `) && !strings.HasPrefix(l, `\unrestrict `) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// A database whose schema is newer than this binary is refused with one
// line that says what to do, and nothing in it changes.
func TestNewerSchemaIsRefused(t *testing.T) {
	srv := pgtest.Shared(t)
	db := srv.NewDB(t)
	st, err := Open(bg, srv.URL(db), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	srv.Exec(t, db, fmt.Sprintf(`UPDATE meta SET value = '%d' WHERE key = 'schema_version'`, len(migrations)+1))
	before := snapshot(t, srv, db)
	_, err = Open(bg, srv.URL(db), store.Options{})
	if !errors.Is(err, store.ErrSchemaNewer) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "newer midfs") {
		t.Fatalf("open of a newer schema: %v", err)
	}
	if after := snapshot(t, srv, db); after != before {
		t.Fatal("a refused open changed the database")
	}
}

// Another cluster's database, a database that is not midfs's, a server
// that does not answer, a wrong password, a URL that does not parse: one
// line each, naming the database but never the password, and nothing
// written.
func TestBadDatabasesAreRefusedInOneLine(t *testing.T) {
	srv := pgtest.Shared(t)
	ours := srv.NewDB(t)
	st, err := Open(bg, srv.URL(ours), store.Options{Cluster: "ours.example"})
	if err != nil {
		t.Fatal(err)
	}
	st.Update(bg, func(tx store.Tx) error { _, err := tx.Init(bg, "ours.example", nil, nil); return err })
	st.Close()
	foreign := srv.NewDB(t)
	srv.Exec(t, foreign, `CREATE TABLE meta (key text, value text); INSERT INTO meta VALUES ('app', 'billing'); ALTER TABLE meta OWNER TO `+pgtest.User)
	closed := strings.Replace(srv.URL(ours), fmt.Sprint(srv.Port), fmt.Sprint(freePort(t)), 1)
	wrongPW := strings.Replace(srv.URL(ours), srv.Password, "not-"+srv.Password, 1)
	for _, c := range []struct {
		what, url, want string
		db              string
	}{
		{"another cluster", srv.URL(ours), `holds another cluster, "ours.example", not "theirs.example"`, ours},
		{"not a midfs database", srv.URL(foreign), "not a midfs database", foreign},
		{"nothing listening", closed, "database 127.0.0.1:", ""},
		{"a wrong password", wrongPW, "password authentication failed", ""},
		{"an unparsable URL", "postgres://midfs:" + srv.Password + "@127.0.0.1:port/x", "bad database URL", ""},
	} {
		var before string
		if c.db != "" {
			before = snapshot(t, srv, c.db)
		}
		_, err := Open(bg, c.url, store.Options{Cluster: "theirs.example"})
		t.Logf("%s: %v", c.what, err)
		switch {
		case err == nil:
			t.Fatalf("%s: opened", c.what)
		case strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), c.want):
			t.Fatalf("%s: %q, want one line with %q", c.what, err, c.want)
		case strings.Contains(err.Error(), srv.Password):
			t.Fatalf("%s: the error shows the password: %s", c.what, err)
		}
		if c.db != "" && snapshot(t, srv, c.db) != before {
			t.Fatalf("%s: the refused open changed the database", c.what)
		}
	}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// Replicas that start at once on an empty database make its tables once
// (an advisory lock queues them) and all open it.
func TestReplicasStartingAtOnceMigrateOnce(t *testing.T) {
	srv := pgtest.Shared(t)
	db := srv.NewDB(t)
	const n = 6
	errs := make(chan error, n)
	start := make(chan struct{})
	for range n {
		go func() {
			<-start
			st, err := Open(bg, srv.URL(db), store.Options{})
			if err == nil {
				err = st.Ping(bg)
				st.Close()
			}
			errs <- err
		}()
	}
	close(start)
	for range n {
		if err := <-errs; err != nil {
			t.Fatalf("a replica starting beside others: %v", err)
		}
	}
	st, err := Open(bg, srv.URL(db), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var v string
	if err := st.pool.QueryRow(bg, `SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&v); err != nil || v != fmt.Sprint(len(migrations)) {
		t.Fatalf("schema version %q, %v", v, err)
	}
}

func waitChanged(t *testing.T, ch <-chan struct{}, within time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(within):
		t.Fatalf("%s: not within %v", what, within)
	}
}

func initCluster(t *testing.T, st store.Store) {
	t.Helper()
	err := st.Update(bg, func(tx store.Tx) error {
		_, err := tx.Init(bg, "test.example.com", nil, nil)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A change that sends no notification (a pooler that drops them) is still
// noticed, by the poll, within Options.PollInterval.
func TestChangesWithoutNotificationArePolled(t *testing.T) {
	srv := pgtest.Shared(t)
	db := srv.NewDB(t)
	const poll = 300 * time.Millisecond
	st, err := Open(bg, srv.URL(db), store.Options{PollInterval: poll})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	initCluster(t, st)
	<-st.listening // else its first read of the versions may see the change
	ch := st.Changed(store.TopicInventory)
	srv.Exec(t, db, `INSERT INTO versions VALUES ('inventory', 1) ON CONFLICT (topic) DO UPDATE SET version = versions.version + 1`)
	waitChanged(t, ch, 10*poll, "a change without a notification")
}

// After the database server restarts, replicas follow each other's
// changes again: the listener connects again, reads where things are, and
// gets notifications (the poll is kept out of it here).
func TestNotificationsResumeAfterTheServerRestarts(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewURL(t)
	opts := store.Options{PollInterval: time.Hour}
	a, err := Open(bg, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(bg, url, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	initCluster(t, a)
	ch := b.Changed(store.TopicInventory)
	putNode := func(name string) error {
		return a.Update(bg, func(tx store.Tx) error {
			return tx.PutNode(bg, store.Node{Node: identity.Node{Name: name, Addr: "10.0.0.1:22"}})
		})
	}
	if err := putNode("before"); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, ch, 10*time.Second, "a notification")
	srv.Stop(t)
	if err := putNode("during"); err == nil {
		t.Fatal("a change committed while the server was down")
	}
	srv.Restart(t)
	// The pool connects again by itself; the listener after its backoff.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := putNode("after"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("changes still fail 30 s after the server came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
	waitChanged(t, ch, 30*time.Second, "the change after the restart") // the listener is back: it fired
	if err := putNode("later"); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, ch, 10*time.Second, "a notification after the restart")
}

func BenchmarkRenewal(b *testing.B) {
	srv := pgtest.Start(b, pgtest.Options{Durable: true})
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			storetest.BenchmarkRenewal(b, storetest.Backend{New: func(t testing.TB) storetest.Opener {
				url := srv.NewURL(t)
				return func(o store.Options) (store.Store, error) { return Open(bg, url, o) }
			}}, n)
		})
	}
}
