package auth

// Replicas on a real PostgreSQL server (internal/pgtest): what the seal
// key keeps out of the database, and what a replica does without it.

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/midfs/midfs/internal/pgtest"
	"github.com/midfs/midfs/wire"
)

// startReplica starts a replica on the database at url with the seal key
// in keyFile, its admin socket in a data dir of its own.
func startReplica(t testing.TB, url, keyFile string, mod ...func(*Config)) *Server {
	t.Helper()
	return startTest(t, append([]func(*Config){func(c *Config) { c.DB, c.CAKeySeal = url, keyFile }}, mod...)...)
}

func TestPostgresNeedsASealKeyAndTheRightOne(t *testing.T) {
	srv := pgtest.Shared(t)
	db := srv.NewDB(t)
	url := srv.URL(db)
	empty := stateDump(t, srv, db)
	_, err := Start(context.Background(), Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: testLogger(t), DB: url})
	if err == nil || !strings.Contains(err.Error(), "--ca-key-seal") || strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), srv.Password) {
		t.Fatalf("a replica on PostgreSQL without a seal key: %v; want one line naming --ca-key-seal", err)
	}
	if !bytes.Equal(stateDump(t, srv, db), empty) {
		t.Fatal("the refused start wrote to the database")
	}

	s := startReplica(t, url, sealKeyFile(t))
	s.Close()
	before := stateDump(t, srv, db)
	_, err = Start(context.Background(), Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: testLogger(t), DB: url, CAKeySeal: sealKeyFile(t)})
	if err == nil || !strings.Contains(err.Error(), "is not the key the CA keys of cluster") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("a replica with another seal key: %v; want one line", err)
	}
	if !bytes.Equal(stateDump(t, srv, db), before) {
		t.Fatal("the start with a wrong seal key wrote to the database")
	}
}

// What a backup of the database holds: pg_dump finds no CA private key in
// any form, while the replica signs with them.
func TestPgDumpHoldsNoCAPrivateKey(t *testing.T) {
	srv := pgtest.Shared(t)
	db := srv.NewDB(t)
	s := startReplica(t, srv.URL(db), sealKeyFile(t))
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	id.renew(t, s)
	dump := srv.Dump(t, db)
	if !bytes.Contains(dump, []byte("cas")) || !bytes.Contains(dump, []byte("robot")) {
		t.Fatalf("the dump does not look like the authority's state:\n%s", dump)
	}
	for name, b := range caKeyForms(t, s) {
		if bytes.Contains(dump, b) {
			t.Errorf("pg_dump holds the %s", name)
		}
	}
}

// A replica that loses its database answers 503 for everything it would
// issue, keeps giving its CAs, says so in DBHealth, and comes back by
// itself when the database does.
func TestReplicaWithoutItsDatabaseAnswers503AndRecovers(t *testing.T) {
	srv := pgtest.Start(t)
	reg := prometheus.NewRegistry()
	s := startReplica(t, srv.URL(srv.NewDB(t)), sealKeyFile(t), func(c *Config) { c.Metrics = reg })
	dbUp := func() float64 {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "midfs_auth_database_up" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no midfs_auth_database_up")
		return -1
	}
	if dbUp() != 1 {
		t.Fatal("midfs_auth_database_up is not 1 with the database up")
	}
	bt := addBot(t, s, "robot", []string{"access"}, []string{"root"})
	id := join(t, s, bt.Token)

	srv.Stop(t)
	var status int
	var msg string
	waitUntil(t, "the replica to answer 503 without its database", 30*time.Second, func() bool {
		_, status, msg = id.tryRenew(t, s)
		return status == http.StatusServiceUnavailable
	})
	if !strings.Contains(msg, "cannot reach its database; try another replica") {
		t.Errorf("503 answer %q", msg)
	}
	if h := s.DBHealth(); h.Up || !strings.Contains(h.Reason, "database unreachable since") || dbUp() != 0 {
		t.Errorf("DBHealth without the database: %+v, midfs_auth_database_up %v", h, dbUp())
	}
	c := newClient(t, s, nil, nil)
	defer c.close()
	if status, msg, err := c.do("GET", wire.PathCA, nil, &wire.CAResponse{}); err != nil || status != 200 {
		t.Errorf("GET /v1/ca without the database: %d %s %v", status, msg, err)
	}
	if _, status, _ := tryJoin(t, s, "another-token"); status != http.StatusServiceUnavailable {
		t.Errorf("a join without the database: %d, want 503", status)
	}

	srv.Restart(t)
	var next *botID
	waitUntil(t, "the replica to issue again once the database is back", 60*time.Second, func() bool {
		next, status, _ = id.tryRenew(t, s)
		return status == http.StatusOK
	})
	if next.gen != 2 || !s.DBHealth().Up || dbUp() != 1 {
		t.Errorf("after recovery: generation %d, health %+v", next.gen, s.DBHealth())
	}
}

// An agent may fetch its IAM challenge from one replica and join through
// another; the challenge is then spent on both.
func TestIAMChallengeOfOneReplicaJoinsThroughAnother(t *testing.T) {
	srv := pgtest.Shared(t)
	url, keyFile := srv.URL(srv.NewDB(t)), sealKeyFile(t)
	e := startIAM(t, func(c *Config) { c.DB, c.CAKeySeal = url, keyFile })
	other := startReplica(t, url, keyFile, func(c *Config) {
		c.STSEndpoint, c.InsecureTestMode, c.Clock = e.sts.URL, true, e.clock
	})
	first := e.s
	e.s = other
	ch := e.challenge(t)
	e.s = first
	if _, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch)); status != 200 {
		t.Fatalf("join with the other replica's challenge: %d %s", status, msg)
	}
	e.s = other
	if _, status, _ := e.join(t, "iam-token", ch, signed(t, iamBot, ch)); status == 200 {
		t.Fatal("the challenge was taken again on the replica that issued it")
	}
}

// stateDump is pg_dump of db without the random \restrict key that
// pg_dump writes anew each time.
func stateDump(t testing.TB, srv *pgtest.Server, db string) []byte {
	var out [][]byte
	for _, l := range bytes.Split(srv.Dump(t, db), []byte("\n")) {
		if !bytes.HasPrefix(l, []byte(`\restrict `)) && !bytes.HasPrefix(l, []byte(`\unrestrict `)) {
			out = append(out, l)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

func waitUntil(t testing.TB, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
