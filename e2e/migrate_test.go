package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/internal/pgtest"
	"github.com/midfs/midfs/internal/testenv"
)

// renewedGenerations lists the generations an agent's JSON log says it
// renewed to, in order.
func renewedGenerations(logs string) []uint64 {
	var out []uint64
	for _, line := range strings.Split(logs, "\n") {
		var rec struct {
			Msg        string `json:"msg"`
			Generation uint64 `json:"generation"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "renewed" {
			out = append(out, rec.Generation)
		}
	}
	return out
}

func lastGeneration(ag *agent) uint64 {
	g := renewedGenerations(ag.logs.String())
	if len(g) == 0 {
		return 0
	}
	return g[len(g)-1]
}

// An authority moved from SQLite to PostgreSQL with `midfs auth migrate`,
// while an agent renews every second: the agent goes on renewing the
// identity it holds through the authority started on the database, and
// through a second replica beside it, without a new token, a lock, or a
// gap in what the mount serves.
func TestMigrateToPostgresWhileAnAgentRenews(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewURL(t)
	a := startAuthority(t)
	dir := filepath.Join(publicDir(t), "machine-id")
	os.Mkdir(dir, 0o755)
	ag := startMount(t, dir, append(a.mountArgs(a.addBot("robot", "access", "root")), "--storage=memory", "--renewal-interval=1s")...)
	waitFor(t, "the agent to renew twice", 30*time.Second, func() bool { return lastGeneration(ag) >= 3 })

	a.stop()
	before := lastGeneration(ag)
	keyFile := sealKeyFile(t)
	out := mustRun(t, "auth", "migrate", "--from=sqlite:"+a.dataDir, "--to="+url, "--ca-key-seal="+keyFile)
	if !strings.Contains(out, "1 bots") || strings.Contains(out, srv.Password) {
		t.Fatalf("auth migrate said:\n%s", out)
	}
	if r := run(t, "auth", "start", "--data-dir", a.dataDir, "--listen=127.0.0.1:0"); r.code == 0 || !strings.Contains(r.stderr, "moved") {
		t.Fatalf("an authority on the moved SQLite state: %s", r)
	}
	a.args = append(a.args, "--db="+url, "--ca-key-seal="+keyFile)
	a.start()
	waitFor(t, "the agent to renew through the authority on PostgreSQL", 60*time.Second, func() bool {
		return lastGeneration(ag) >= before+2
	})

	// A second replica on the same database serves the same cluster.
	b := &authority{t: t, dataDir: t.TempDir(), logs: &testenv.LogBuffer{}, addr: "127.0.0.1:" + strconv.Itoa(freePort(t))}
	b.args = []string{"auth", "start", "--data-dir", b.dataDir, "--listen", b.addr, "--db=" + url, "--ca-key-seal=" + keyFile, "--cluster-name", cluster}
	b.start()
	t.Cleanup(b.stop)
	if st := b.admin("status"); !strings.Contains(st, a.pin) {
		t.Fatalf("the second replica's status lacks the pin %s:\n%s", a.pin, st)
	}
	for _, bad := range []string{"is now locked", "generation mismatch"} {
		if strings.Contains(ag.logs.String(), bad) || strings.Contains(a.logs.String(), bad) || strings.Contains(b.logs.String(), bad) {
			t.Fatalf("%q in the logs after the move:\nagent:\n%s\nauthority:\n%s", bad, tail(ag.logs.String(), 20), tail(a.logs.String(), 20))
		}
	}
	if _, err := os.ReadFile(ag.file("key-cert.pub")); err != nil {
		t.Fatal(err)
	}
}
