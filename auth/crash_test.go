package auth

import (
	"bufio"
	"context"
	"crypto"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/store/sqlite"
	"github.com/midfs/midfs/internal/pgtest"
	"github.com/midfs/midfs/wire"
)

// childEnv makes the test binary run an authority instead of the tests, so
// that a test can SIGKILL a real authority process.
const childEnv = "MIDFS_AUTH_TEST_CHILD"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		runChild(dir)
		return
	}
	if os.Getenv(herdEnv) != "" {
		runHerd()
		return
	}
	code := pgtest.Main(m)
	removeEventFills() // events_bench_test.go
	os.Exit(code)
}

// childInfo is what a child authority prints once it serves.
type childInfo struct {
	Addr   string `json:"addr"`
	Pin    string `json:"pin"`
	HostCA []byte `json:"host_ca"`
}

func runChild(dir string) {
	s, err := Start(context.Background(), Config{DataDir: dir, Listen: "127.0.0.1:0", ClusterName: "crash.example",
		Logger: testLogger(nil)})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(childInfo{Addr: s.Addr(), Pin: s.CAPin(), HostCA: s.signer(caHost).cert.Raw})
	select {} // until killed
}

type child struct {
	cmd  *exec.Cmd
	info childInfo
	ca   *x509.Certificate
}

func startChild(t *testing.T, dir string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadBytes('\n')
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child authority did not start: %v", err)
	}
	c := &child{cmd: cmd}
	if err := json.Unmarshal(line, &c.info); err != nil {
		t.Fatal(err)
	}
	c.ca = mustParseCert(t, c.info.HostCA)
	go io.Copy(io.Discard, out)
	return c
}

func (c *child) kill() {
	c.cmd.Process.Signal(syscall.SIGKILL)
	c.cmd.Wait()
}

// heldBot is what a client of one bot knows.
type heldBot struct {
	name    string
	token   string
	joinKey crypto.Signer // key of a join whose answer may have been lost
	joinPub []byte
	id      *botID // current identity, nil before a join answered
	pending *botID // key of a renewal whose answer may have been lost
	gotGen  uint64 // highest generation an answer carried
}

// TestSIGKILLKeepsState kills a real authority process at random moments
// while bots join, renew and get added, restarts it, and checks what the
// clients were told against what the state holds, and the audit trail
// against the state (checkEvents): same CAs; a token whose
// join was answered is used and its bot is at generation >= 1; a token is
// either used with a joined bot or still valid; no answered renewal is
// lost; a bot whose addition was answered exists; the database is intact;
// and clients that lost an answer recover by retrying with the same key,
// without the bot ever being locked.
func TestSIGKILLKeepsState(t *testing.T) {
	if testing.Short() {
		t.Skip("kills processes; skipped with -short")
	}
	dir := t.TempDir()
	c := startChild(t, dir)
	pin := c.info.Pin
	ac, err := admin.Dial(dir)
	if err != nil {
		t.Fatal(err)
	}
	var bots []*heldBot
	for i := range 24 {
		bt, err := ac.AddBot(context.Background(), admin.BotSpec{Name: fmt.Sprintf("bot%02d", i), Roles: []string{"access"}, Logins: []string{"root"}})
		if err != nil {
			t.Fatal(err)
		}
		bots = append(bots, &heldBot{name: bt.Bot, token: bt.Token})
	}
	ac.Close()
	var added []string // bots whose AddBot was answered during the storm
	rounds := 30
	for round := range rounds {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, b := range bots {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for step(t, c, b) == nil {
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ac, err := admin.Dial(dir)
			if err != nil {
				return
			}
			defer ac.Close()
			for i := 0; ; i++ {
				name := fmt.Sprintf("added-%d-%d", round, i)
				if _, err := ac.AddBot(context.Background(), admin.BotSpec{Name: name, Roles: []string{"access"}}); err != nil {
					return
				}
				mu.Lock()
				added = append(added, name)
				mu.Unlock()
			}
		}()
		time.Sleep(time.Duration(5+rand.IntN(80)) * time.Millisecond)
		c.kill()
		wg.Wait()

		c = startChild(t, dir)
		if c.info.Pin != pin {
			t.Fatalf("round %d: CA pin changed from %s to %s", round, pin, c.info.Pin)
		}
		checkState(t, dir, bots, added)
	}
	// Whoever lost an answer recovers: finish every join and renew once.
	for _, b := range bots {
		for range 3 {
			if err := step(t, c, b); err != nil {
				t.Errorf("%s: %v", b.name, err)
			}
		}
		if b.id == nil || b.pending != nil || b.joinKey != nil {
			t.Errorf("%s did not recover after the crashes: joined=%v pending renewal=%v", b.name, b.id != nil, b.pending != nil)
		}
	}
	checkState(t, dir, bots, added)
	c.kill()
	t.Logf("%d kill rounds; %d bots added during them; %d joins and %d renewals answered, %d requests cut short by a kill and retried with the same key",
		rounds, len(added), stats.joins.Load(), stats.renewals.Load(), stats.lost.Load())
	if stats.lost.Load() == 0 {
		t.Error("no kill landed during a request: the test did not test anything")
	}
}

var stats struct{ joins, renewals, lost atomic.Int64 }

// step moves one bot forward: join if it has no identity (retrying with
// the same key after a lost answer), else renew (likewise). It returns the
// transport error when the authority went away.
func step(t *testing.T, c *child, b *heldBot) error {
	cl := newClientAt(t, c.info.Addr, c.ca, nil, nil)
	defer cl.close()
	if b.id == nil {
		if b.joinKey == nil {
			b.joinKey, b.joinPub = newKey(t)
		}
		var bi wire.BotIdentity
		status, msg, err := cl.do("POST", wire.PathJoin, wire.JoinRequest{Token: b.token, PublicKey: b.joinPub}, &bi)
		switch {
		case err != nil: // killed: the answer is lost, keep the key for a retry
			stats.lost.Add(1)
			return err
		case status == 200:
			b.id = &botID{key: b.joinKey, pub: b.joinPub, cert: bi.TLSCert, gen: bi.Generation}
			b.joinKey, b.joinPub = nil, nil
			b.gotGen = max(b.gotGen, bi.Generation)
			stats.joins.Add(1)
		default:
			t.Errorf("%s: join refused: %d %s", b.name, status, msg)
			return fmt.Errorf("refused")
		}
		return nil
	}
	next := b.pending
	if next == nil {
		key, pub := newKey(t)
		next = &botID{key: key, pub: pub}
		b.pending = next
	}
	rc := newClientAt(t, c.info.Addr, c.ca, b.id.key, b.id.cert)
	defer rc.close()
	var bi wire.BotIdentity
	status, msg, err := rc.do("POST", wire.PathRenew, wire.RenewRequest{PublicKey: next.pub}, &bi)
	switch {
	case err != nil:
		stats.lost.Add(1)
		return err
	case status == 200:
		next.cert, next.gen = bi.TLSCert, bi.Generation
		b.id, b.pending = next, nil
		b.gotGen = max(b.gotGen, bi.Generation)
		stats.renewals.Add(1)
	default:
		t.Errorf("%s: renewal refused: %d %s", b.name, status, msg)
		return fmt.Errorf("refused")
	}
	return nil
}

// checkState opens the state file beside the running authority and checks
// it against what the clients were told.
func checkState(t *testing.T, dir string, bots []*heldBot, added []string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, sqlite.File)+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var ok string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
		t.Fatalf("integrity_check: %q %v", ok, err)
	}
	var cas int
	db.QueryRow(`SELECT count(*) FROM cas`).Scan(&cas)
	if cas != 3 {
		t.Fatalf("%d CAs stored, want 3", cas)
	}
	for _, b := range bots {
		var gen uint64
		var locked string
		if err := db.QueryRow(`SELECT generation, locked FROM bots WHERE name = ?`, b.name).Scan(&gen, &locked); err != nil {
			t.Fatalf("bot %s: %v", b.name, err)
		}
		var usedAt int64
		if err := db.QueryRow(`SELECT used FROM tokens WHERE secret_hash = ?`, hashToken(b.token)).Scan(&usedAt); err != nil {
			t.Fatalf("token of %s: %v", b.name, err)
		}
		if locked != "" {
			t.Errorf("bot %s got locked: %s", b.name, locked)
		}
		if gen < b.gotGen {
			t.Errorf("bot %s: stored generation %d, but a client was answered generation %d", b.name, gen, b.gotGen)
		}
		used := usedAt != 0
		if b.id != nil && !used {
			t.Errorf("bot %s: its join was answered but the token is unused", b.name)
		}
		if used != (gen >= 1) {
			t.Errorf("bot %s: token used=%v but generation %d", b.name, used, gen)
		}
	}
	for _, name := range added {
		var n int
		if db.QueryRow(`SELECT count(*) FROM bots WHERE name = ?`, name).Scan(&n); n != 1 {
			t.Errorf("bot %s was reported added but is gone", name)
		}
		db.QueryRow(`SELECT count(*) FROM tokens WHERE bot_name = ?`, name).Scan(&n)
		if n != 1 {
			t.Errorf("bot %s has %d tokens, want 1", name, n)
		}
	}
	checkEvents(t, db)
}

// checkEvents checks the audit trail against the state beside it: every
// committed change has its event (a join per used token, a renewal per
// generation past the first, a bot.created per bot) and no event tells of
// a change that is not there.
func checkEvents(t *testing.T, db *sql.DB) {
	t.Helper()
	count := func(q string, args ...any) int {
		t.Helper()
		var n int
		if err := db.QueryRow(q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	rows, err := db.Query(`SELECT name, generation FROM bots`)
	if err != nil {
		t.Fatal(err)
	}
	gens := map[string]int{}
	for rows.Next() {
		var name string
		var gen int
		rows.Scan(&name, &gen)
		gens[name] = gen
	}
	rows.Close()
	const changes = `SELECT count(*) FROM events WHERE type = ? AND bot = ? AND json_extract(data, '$.retry') IS NULL`
	for name, gen := range gens {
		joins, renewals := count(changes, audit.BotJoined, name), count(changes, audit.BotRenewed, name)
		if wantJoins := min(gen, 1); joins != wantJoins || renewals != max(gen-1, 0) {
			t.Errorf("bot %s at generation %d: %d joins and %d renewals in the trail, want %d and %d", name, gen, joins, renewals, wantJoins, max(gen-1, 0))
		}
		if n := count(`SELECT count(*) FROM events WHERE type = ? AND bot = ?`, audit.BotCreated, name); n != 1 {
			t.Errorf("bot %s: %d bot.created events, want 1", name, n)
		}
		if top := count(`SELECT coalesce(max(json_extract(data, '$.generation')), 0) FROM events WHERE type = ? AND bot = ?`, audit.BotRenewed, name); gen > 1 && top != gen {
			t.Errorf("bot %s at generation %d: the newest renewal in the trail is to %d", name, gen, top)
		}
	}
	if n := count(`SELECT count(*) FROM events WHERE type = ? AND bot NOT IN (SELECT name FROM bots)`, audit.BotCreated); n != 0 {
		t.Errorf("%d bot.created events of bots that are not stored", n)
	}
	if n := count(`SELECT count(*) FROM events WHERE type = ? AND json_extract(data, '$.name') NOT IN (SELECT name FROM tokens)`, audit.TokenCreated); n != 0 {
		t.Errorf("%d token.created events of tokens that are not stored", n)
	}
}
