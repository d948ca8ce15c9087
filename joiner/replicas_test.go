package joiner_test

// Agents with several authorities: replicas that share one state, reached
// at several addresses or through one name with several addresses. Before
// a shared database, a "replica" here is the authority started again on
// the same data directory at another address: the agent cannot tell.

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/joiner"
)

// freeAddr is an address on ip with a port nothing listens on.
func freeAddr(t *testing.T, ip string) string {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// joinPumping joins on a fake clock, moving it on whenever the join sleeps
// (the retries of an address that does not answer).
func joinPumping(t *testing.T, cfg joiner.Config, clk *clock.Fake) *joiner.Agent {
	t.Helper()
	type result struct {
		ag  *joiner.Agent
		err error
	}
	done := make(chan result, 1)
	go func() {
		ag, err := joiner.Join(context.Background(), cfg)
		done <- result{ag, err}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case r := <-done:
			if r.err != nil {
				t.Fatalf("join: %v", r.err)
			}
			return r.ag
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("join did not finish within 30s")
		}
		if clk.Timers() > 0 {
			clk.Advance(250 * time.Millisecond)
		} else {
			time.Sleep(time.Millisecond)
		}
	}
}

// checkServing fails the test if the agent's served identity has expired
// on its clock.
func checkServing(t *testing.T, ag *joiner.Agent, clk *clock.Fake) {
	t.Helper()
	if id, _ := ag.Current(); !clk.Now().Before(id.Expires()) {
		t.Fatalf("the served identity expired at %v (now %v)", id.Expires(), clk.Now())
	}
}

func TestAgentMovesToAnotherReplicaWithoutANewToken(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a := startAuth(t, dir, "")
	spare := freeAddr(t, "127.0.0.1")
	log, logs := newLog(t)
	clk := clock.NewFake(time.Now())
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.AuthServer, cfg.Clock = a.Addr()+","+spare, clk
	ag := joinPumping(t, cfg, clk)
	if got := ag.Status().AuthServer; got != a.Addr() {
		t.Fatalf("joined through %q, want the live replica %s", got, a.Addr())
	}
	r := run(t, ag, clk)

	// The replica the agent uses goes away; another serves the same state
	// at the other address.
	a.Close()
	b := startAuth(t, dir, spare)
	r.advanceUntil(10*time.Second, 25*time.Minute, func() bool {
		checkServing(t, ag, clk)
		return r.published() >= 1
	})
	st := ag.Status()
	if st.AuthServer != b.Addr() || st.Generation != 2 {
		t.Errorf("after the replica went away: renewed through %q at generation %d; want %s, generation 2", st.AuthServer, st.Generation, b.Addr())
	}
	// At most one attempt on the dead replica (a node list poll may have
	// found it gone first), the next on the live one.
	if st.RenewalsFailed > 1 {
		t.Errorf("%d failed renewals, want at most the one that found the replica gone", st.RenewalsFailed)
	}
	if !strings.Contains(logs.String(), "moving to another") {
		t.Error("no log line says the agent moved to another replica")
	}
	// And it stays there: the next renewals need no failover.
	failed := st.RenewalsFailed
	ag.RenewNow()
	eventually(t, func() bool { return r.published() >= 2 })
	if st := ag.Status(); st.RenewalsFailed != failed || st.AuthServer != b.Addr() {
		t.Errorf("after moving: %d more failed renewals, through %q", st.RenewalsFailed-failed, st.AuthServer)
	}
}

func TestAgentUsesEveryAddressOfAName(t *testing.T) {
	first := freeAddr(t, "127.0.0.2")
	_, port, _ := net.SplitHostPort(first)
	second := net.JoinHostPort("127.0.0.3", port)
	resolver := testenv.DNS(t, map[string][]netip.Addr{
		"replicas.midfs.test": {netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")},
	})
	dir := filepath.Join(t.TempDir(), "auth")
	a := startAuth(t, dir, first)
	log, _ := newLog(t)
	clk := clock.NewFake(time.Now())
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.AuthServer, cfg.Resolver, cfg.Clock = "replicas.midfs.test:"+port, resolver, clk
	ag := joinPumping(t, cfg, clk)
	if got := ag.Status().AuthServer; got != first {
		t.Fatalf("joined through %q, want %s", got, first)
	}
	r := run(t, ag, clk)
	a.Close()
	startAuth(t, dir, second)
	ag.RenewNow()
	r.advanceUntil(time.Second, 5*time.Minute, func() bool {
		checkServing(t, ag, clk)
		return r.published() >= 1
	})
	if got := ag.Status().AuthServer; got != second {
		t.Errorf("renewed through %q, want the name's other address %s", got, second)
	}
}

// With every replica gone the agent keeps serving what it has, backs off
// (with jitter, up to a minute), and renews as soon as one is back.
func TestAgentBacksOffWhileNoReplicaAnswers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a := startAuth(t, dir, "")
	spare := freeAddr(t, "127.0.0.1")
	log, _ := newLog(t)
	clk := clock.NewFake(time.Now())
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.AuthServer, cfg.Clock = spare+","+a.Addr(), clk
	ag := joinPumping(t, cfg, clk)
	r := run(t, ag, clk)
	a.Close()

	ag.RenewNow()
	down := clk.Now()
	r.advanceUntil(time.Second, 30*time.Minute, func() bool { return clk.Now().Sub(down) >= 10*time.Minute })
	st := ag.Status()
	// 1s, 2s, 4s ... 64s capped at 60s, each between half and all of it:
	// at least 9 and at most about 30 attempts in 10 minutes.
	if st.RenewalsFailed < 9 || st.RenewalsFailed > 30 || !st.Failing {
		t.Errorf("%d failed renewals in 10 minutes without a replica (failing %v); want backoff to about one a minute", st.RenewalsFailed, st.Failing)
	}
	checkServing(t, ag, clk)

	b := startAuth(t, dir, spare)
	r.advanceUntil(time.Second, 2*time.Minute, func() bool { return r.published() >= 1 })
	checkServing(t, ag, clk)
	if got := ag.Status().AuthServer; got != b.Addr() {
		t.Errorf("renewed through %q, want %s", got, b.Addr())
	}
}

// A restart finds the stored identity when replicas were added to the
// list: no new token.
func TestStoredIdentitySurvivesAGrowingReplicaList(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a := startAuth(t, dir, "")
	log, logs := newLog(t)
	store, err := joiner.DirStore(t.TempDir(), joiner.StoreName(a.Addr(), "/opt/machine-id"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.Store = store
	join(t, cfg)

	more := a.Addr() + "," + freeAddr(t, "127.0.0.1")
	if joiner.StoreName(more, "/opt/machine-id") != joiner.StoreName(a.Addr(), "/opt/machine-id") {
		t.Fatal("adding a replica after the first changes where the identity is stored")
	}
	cfg.AuthServer, cfg.Token = more, ""
	ag := join(t, cfg)
	if g := ag.Status().Generation; g != 2 || !strings.Contains(logs.String(), "restarting from the stored bot identity") {
		t.Errorf("restart with a longer list: generation %d; want a restart from the stored identity at 2", g)
	}
}

// An entry of the list that is not a replica of the pinned authority is
// passed over, and never sees the token.
func TestForeignEntryInTheListIsPassedOver(t *testing.T) {
	a := startAuth(t, "", "")
	foreign := startAuth(t, "", "")
	passedOver := false
	for i := 0; i < 20 && !passedOver; i++ {
		log, logs := newLog(t)
		cfg := config(a, a.addBot(t, "robot"), log)
		cfg.AuthServer = foreign.Addr() + "," + a.Addr()
		ag := join(t, cfg)
		if got := ag.Status().AuthServer; got != a.Addr() {
			t.Fatalf("joined through %q, want %s", got, a.Addr())
		}
		passedOver = strings.Contains(logs.String(), "CA pin mismatch")
	}
	if !passedOver {
		t.Fatal("in 20 joins the agent never started at the foreign entry")
	}
	if n := foreign.counter(t, "midfs_auth_joins_total"); n != 0 {
		t.Errorf("the foreign authority saw %v joins", n)
	}
}

func TestBadAuthServerListIsOneLine(t *testing.T) {
	for _, list := range []string{"auth.example.com", "a:1,,b", "a:1, :2", ","} {
		err := joiner.Config{AuthServer: list, Token: "x", CAPin: "sha256:" + strings.Repeat("00", 32)}.Validate()
		if list == "a:1,,b" {
			if err == nil || !strings.Contains(err.Error(), `"b"`) {
				t.Errorf("%q: %v; want the bad entry named", list, err)
			}
			continue
		}
		if !errors.Is(err, joiner.ErrConfig) || !strings.Contains(err.Error(), "--auth-server") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v; want one line about --auth-server", list, err)
		}
	}
	if err := (joiner.Config{AuthServer: "a:1, b:2,a:1"}).Validate(); err != nil {
		t.Errorf("a list with spaces and a repeat: %v", err)
	}
}
