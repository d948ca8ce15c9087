package joiner_test

// These tests run the real authority (auth.Start) over TLS on loopback,
// with SQLite in a temporary directory. Only the agent's clock is fake.

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/joiner"
)

func newLog(t *testing.T) (*slog.Logger, *testenv.LogBuffer) {
	lb := &testenv.LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("logs:\n" + lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

type authority struct {
	*auth.Server
	dir string
	reg *prometheus.Registry
}

// startAuth starts an authority on dir (a new one if dir is ""), on
// listen (an ephemeral port if "").
func startAuth(t *testing.T, dir, listen string) *authority {
	t.Helper()
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "auth")
	}
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	reg := prometheus.NewRegistry()
	s, err := auth.Start(context.Background(), auth.Config{
		DataDir: dir, Listen: listen, ClusterName: "test.example",
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Metrics: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &authority{Server: s, dir: dir, reg: reg}
}

// addBot makes a bot with logins root and alice and returns its token.
func (a *authority) addBot(t *testing.T, name string) string {
	t.Helper()
	tok, err := a.AddBot(context.Background(), admin.BotSpec{Name: name, Roles: []string{"access"}, Logins: []string{"root", "alice"}, Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

// counter sums a counter family of the authority's metrics.
func (a *authority) counter(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func config(a *authority, token string, log *slog.Logger) joiner.Config {
	return joiner.Config{
		AuthServer: a.Addr(), Token: token, CAPin: a.CAPin(),
		Logger: log, JoinTimeout: 5 * time.Second,
	}
}

func join(t *testing.T, cfg joiner.Config) *joiner.Agent {
	t.Helper()
	ag, err := joiner.Join(context.Background(), cfg)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	return ag
}

// runner runs an agent's loop on a fake clock and collects what it publishes.
type runner struct {
	t     *testing.T
	clock *clock.Fake
	ag    *joiner.Agent
	mu    sync.Mutex
	pubs  []*identity.Identity
	nodes [][]identity.Node
	stop  func()
}

func run(t *testing.T, ag *joiner.Agent, clock *clock.Fake) *runner {
	r := &runner{t: t, clock: clock, ag: ag}
	r.stop = ag.Start(func(id *identity.Identity, nodes []identity.Node) {
		r.mu.Lock()
		r.pubs = append(r.pubs, id)
		r.nodes = append(r.nodes, nodes)
		r.mu.Unlock()
	})
	t.Cleanup(r.stop)
	return r
}

func (r *runner) published() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pubs)
}

// advanceUntil moves the fake clock in steps of the loop's own sleeps
// until cond holds; it gives up after max of fake time.
func (r *runner) advanceUntil(step, max time.Duration, cond func() bool) {
	r.t.Helper()
	for waited := time.Duration(0); !cond(); waited += step {
		if waited > max {
			r.t.Fatalf("condition not met after %v of fake time; status %+v", max, r.ag.Status())
		}
		r.clock.BlockUntil(1)
		r.clock.Advance(step)
	}
}

// eventually waits in real time for what RenewNow starts: no fake time
// has to pass for it.
func eventually(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestJoinRenewOutputIdentity(t *testing.T) {
	a := startAuth(t, "", "")
	if err := a.AddNode(context.Background(), identity.Node{Name: "web", Addr: "127.0.0.1:3022", Labels: map[string]string{"env": "prod"}}); err != nil {
		t.Fatal(err)
	}
	token := a.addBot(t, "robot")
	log, logs := newLog(t)
	clock := clock.NewFake(time.Now())
	cfg := config(a, token, log)
	cfg.Clock = clock
	ag := join(t, cfg)

	id, nodes := ag.Current()
	if err := id.Check(); err != nil {
		t.Fatal(err)
	}
	if id.ClusterName != "test.example" {
		t.Errorf("cluster %q", id.ClusterName)
	}
	if got := id.SSHCert.ValidPrincipals; !slices.Contains(got, "root") || !slices.Contains(got, "alice") {
		t.Errorf("SSH principals %v, want root and alice", got)
	}
	if id.SSHCert.KeyId != "bot-robot" || id.TLSCert.Subject.CommonName != "bot-robot" {
		t.Errorf("key id %q, CN %q; want bot-robot", id.SSHCert.KeyId, id.TLSCert.Subject.CommonName)
	}
	sshPub, _ := ssh.NewPublicKey(id.Key.Public())
	if !bytes.Equal(sshPub.Marshal(), id.SSHCert.Key.Marshal()) {
		t.Error("SSH certificate is not for the identity's key")
	}
	if len(nodes) != 1 || nodes[0].Name != "web" || nodes[0].Addr != "127.0.0.1:3022" {
		t.Errorf("nodes %+v", nodes)
	}
	if got := time.Until(id.Expires()); got < 50*time.Minute || got > 61*time.Minute {
		t.Errorf("identity expires in %v, want about the default 1h", got)
	}
	st := ag.Status()
	if st.BotName != "robot" || st.Generation != 1 {
		t.Errorf("status after join %+v", st)
	}

	r := run(t, ag, clock)
	r.advanceUntil(10*time.Second, 25*time.Minute, func() bool { return r.published() >= 1 })
	id2, _ := ag.Current()
	if r.pubs[0] != id2 {
		t.Error("published identity is not the current one")
	}
	if bytes.Equal(mustPKIX(t, id.Key), mustPKIX(t, id2.Key)) {
		t.Error("renewal kept the old key; want a fresh key every renewal")
	}
	if err := id2.Check(); err != nil {
		t.Fatal(err)
	}
	st = ag.Status()
	if st.Generation != 2 || st.Renewals != 1 || st.RenewalsFailed != 0 || st.Failing {
		t.Errorf("status after one renewal %+v", st)
	}

	// SIGHUP path: RenewNow renews without waiting for the clock.
	ag.RenewNow()
	eventually(t, func() bool { return r.published() >= 2 })
	if g := ag.Status().Generation; g != 3 {
		t.Errorf("generation after RenewNow %d, want 3", g)
	}

	r.stop()
	for _, secret := range []string{token, "PRIVATE KEY"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("logs contain %q", secret[:8])
		}
	}
}

func TestRenewalIntervalIsRespected(t *testing.T) {
	a := startAuth(t, "", "")
	ag, clock := joinOnFakeClock(t, a)
	r := run(t, ag, clock)
	for i := 0; i < 19*6; i++ { // 19 minutes in the loop's own 10s sleeps
		clock.BlockUntil(1)
		clock.Advance(10 * time.Second)
	}
	clock.BlockUntil(1)
	if n := r.published(); n != 0 {
		t.Fatalf("%d renewals within 19 minutes, want none before the 20m interval", n)
	}
	r.advanceUntil(10*time.Second, 2*time.Minute, func() bool { return r.published() == 1 })
}

func mustPKIX(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	pub, _ := ssh.NewPublicKey(k.Public())
	return pub.Marshal()
}

func TestSecondJoinWithSameTokenRefused(t *testing.T) {
	a := startAuth(t, "", "")
	log, _ := newLog(t)
	cfg := config(a, a.addBot(t, "robot"), log)
	join(t, cfg)
	_, err := joiner.Join(context.Background(), cfg)
	if !errors.Is(err, joiner.ErrRefused) {
		t.Fatalf("second join: %v, want ErrRefused", err)
	}
	want := regexp.MustCompile("^join refused: join token is invalid, expired or already used \\(ref [0-9a-f]{8}\\); " +
		"ask the authority's admin for a new token \\(`midfs bots add NAME`\\)")
	if !want.MatchString(err.Error()) {
		t.Errorf("message %q, want %q", err, want)
	}
}

func TestWrongPinSendsNothing(t *testing.T) {
	a := startAuth(t, "", "")
	other := startAuth(t, "", "")
	log, logs := newLog(t)
	token := a.addBot(t, "robot")
	cfg := config(a, token, log)
	cfg.CAPin = other.CAPin()
	_, err := joiner.Join(context.Background(), cfg)
	if !errors.Is(err, joiner.ErrPinMismatch) {
		t.Fatalf("join with another authority's pin: %v, want ErrPinMismatch", err)
	}
	for _, want := range []string{"CA pin mismatch", a.CAPin(), other.CAPin(), a.Addr(), "midfs status"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
	if n := a.counter(t, "midfs_auth_joins_total"); n != 0 {
		t.Errorf("the authority counted %v join requests; want none before the pin matched", n)
	}
	// The token was never sent, so it still works.
	cfg.CAPin = a.CAPin()
	join(t, cfg)
	if strings.Contains(logs.String(), token) {
		t.Error("the token appears in the logs")
	}
}

func TestJoinWithoutPinRefusedLocally(t *testing.T) {
	a := startAuth(t, "", "")
	log, _ := newLog(t)
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.CAPin = ""
	_, err := joiner.Join(context.Background(), cfg)
	if !errors.Is(err, joiner.ErrConfig) || !strings.Contains(err.Error(), "--ca-pin") {
		t.Fatalf("join without pin: %v, want a config error naming --ca-pin", err)
	}
	if n := a.counter(t, "midfs_auth_joins_total"); n != 0 {
		t.Errorf("the authority saw %v joins", n)
	}
}

func TestUnreachableAuthorityGivesUpAfterJoinTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	log, _ := newLog(t)
	_, err = joiner.Join(context.Background(), joiner.Config{
		AuthServer: addr, Token: "secret", CAPin: "sha256:" + strings.Repeat("00", 32),
		JoinTimeout: time.Second, Logger: log,
	})
	if !errors.Is(err, joiner.ErrUnreachable) {
		t.Fatalf("join of a closed port: %v, want ErrUnreachable", err)
	}
	if !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "--join-timeout") {
		t.Errorf("message %q should name the address and --join-timeout", err)
	}
}

func TestRenewalFailureKeepsIdentityAndRecovers(t *testing.T) {
	a := startAuth(t, "", "")
	ag, clock := joinOnFakeClock(t, a)
	before, _ := ag.Current()
	r := run(t, ag, clock)

	addr, dir := a.Addr(), a.dir
	a.Close()
	r.advanceUntil(10*time.Second, 30*time.Minute, func() bool { return ag.Status().RenewalsFailed >= 3 })
	st := ag.Status()
	if !st.Failing || st.LastError == "" || !strings.Contains(st.LastError, addr) {
		t.Errorf("status while the authority is down: %+v; want failing, naming the authority", st)
	}
	if cur, _ := ag.Current(); cur != before || r.published() != 0 {
		t.Error("the identity changed while the authority was down; want the old one kept")
	}

	startAuth(t, dir, addr) // same state, same port
	r.advanceUntil(10*time.Second, 5*time.Minute, func() bool { return r.published() >= 1 })
	st = ag.Status()
	if st.Failing || !time.Now().Before(st.Expires) {
		t.Errorf("status after recovery: %+v", st)
	}
	if cur, _ := ag.Current(); cur == before {
		t.Error("no new identity after recovery")
	}
	if st.RenewalsFailed < 3 || st.Renewals != st.RenewalsFailed+1 {
		t.Errorf("counters renewals=%d failed=%d", st.Renewals, st.RenewalsFailed)
	}
}

func TestNodeListRefreshedBetweenRenewals(t *testing.T) {
	a := startAuth(t, "", "")
	ag, clock := joinOnFakeClock(t, a)
	r := run(t, ag, clock)
	if _, nodes := ag.Current(); len(nodes) != 0 {
		t.Fatalf("nodes %+v, want none", nodes)
	}
	if err := a.AddNode(context.Background(), identity.Node{Name: "db", Addr: "10.0.0.5:22"}); err != nil {
		t.Fatal(err)
	}
	r.advanceUntil(5*time.Second, joiner.DefaultNodesInterval+10*time.Second, func() bool { return r.published() >= 1 })
	r.mu.Lock()
	got := r.nodes[0]
	r.mu.Unlock()
	if len(got) != 1 || got[0].Name != "db" {
		t.Errorf("published nodes %+v", got)
	}
	if st := ag.Status(); st.Generation != 1 {
		t.Errorf("a node list change renewed the identity (generation %d)", st.Generation)
	}
}

func keyringStore(t *testing.T, a *authority) joiner.Store {
	t.Helper()
	s, err := joiner.OpenStore("keyring", joiner.StoreName(a.Addr(), t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Delete() })
	return s
}

func TestKeyringRestartWithoutToken(t *testing.T) {
	a := startAuth(t, "", "")
	log, _ := newLog(t)
	store := keyringStore(t, a)
	token := a.addBot(t, "robot")
	cfg := config(a, token, log)
	cfg.Store = store
	join(t, cfg)
	blob, err := store.Load()
	if err != nil {
		t.Fatalf("nothing stored after join: %v", err)
	}
	if bytes.Contains(blob, []byte(token)) {
		t.Error("the stored blob holds the token itself")
	}

	// Restart: no token, no pin; the stored identity (and its CAs) suffice.
	cfg.Token, cfg.CAPin = "", ""
	ag := join(t, cfg)
	if st := ag.Status(); st.BotName != "robot" || st.Generation != 2 {
		t.Errorf("restart from the keyring: %+v, want bot robot at generation 2", st)
	}
	if id, _ := ag.Current(); id.Check() != nil {
		t.Error("restart gave a bad identity")
	}

	// The same token again also restarts from the store (it was used).
	cfg.Token = token
	if st := join(t, cfg).Status(); st.Generation != 3 {
		t.Errorf("restart with the old token: generation %d, want 3", st.Generation)
	}

	// A new token discards the stored identity and joins afresh.
	cfg.Token, cfg.CAPin = a.addBot(t, "robot"), a.CAPin()
	if st := join(t, cfg).Status(); st.Generation != 1 {
		t.Errorf("join with a new token: generation %d, want a fresh join at 1", st.Generation)
	}
}

func TestNoTokenAndNothingStored(t *testing.T) {
	a := startAuth(t, "", "")
	log, _ := newLog(t)
	cfg := config(a, "", log)
	cfg.Store = keyringStore(t, a)
	_, err := joiner.Join(context.Background(), cfg)
	if !errors.Is(err, joiner.ErrConfig) || !strings.Contains(err.Error(), "--token") {
		t.Fatalf("join with nothing: %v", err)
	}
}

func TestCopiedIdentityLocksBot(t *testing.T) {
	a := startAuth(t, "", "")
	log, _ := newLog(t)
	dir := t.TempDir()
	store, err := joiner.OpenStore("dir:"+dir, "robot")
	if err != nil {
		t.Fatal(err)
	}
	clock := clock.NewFake(time.Now())
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.Store, cfg.Clock = store, clock
	ag := join(t, cfg)
	copied, err := os.ReadFile(filepath.Join(dir, "bot-robot"))
	if err != nil {
		t.Fatal(err)
	}

	r := run(t, ag, clock)
	ag.RenewNow()
	eventually(t, func() bool { return r.published() >= 1 })

	// Someone starts a second agent from the copy taken before the renewal.
	if err := os.WriteFile(filepath.Join(dir, "bot-robot"), copied, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg2 := cfg
	cfg2.Token, cfg2.Clock = "", nil
	_, err = joiner.Join(context.Background(), cfg2)
	if !errors.Is(err, joiner.ErrRefused) || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("join from a stale copy: %v, want a refusal saying the bot is locked", err)
	}
	// And the legitimate agent is locked out too, until an administrator
	// looks: its renewals now fail while it keeps serving.
	ag.RenewNow()
	eventually(t, func() bool { return ag.Status().RenewalsFailed >= 1 })
	if st := ag.Status(); !strings.Contains(st.LastError, "locked") {
		t.Errorf("renewal of the locked bot: %q", st.LastError)
	}
}

func TestExpiredBotIdentityNeedsNewToken(t *testing.T) {
	a := startAuth(t, "", "")
	ag, clock := joinOnFakeClock(t, a)
	r := run(t, ag, clock)
	addr, dir := a.Addr(), a.dir
	a.Close()
	// Down for longer than the bot identity lives (1h): it cannot come back.
	r.advanceUntil(10*time.Second, 3*time.Hour, func() bool { return clock.Now().After(ag.Status().BotExpires) })
	startAuth(t, dir, addr)
	r.advanceUntil(10*time.Second, 5*time.Minute, func() bool {
		return strings.Contains(ag.Status().LastError, "expired")
	})
	st := ag.Status()
	if !st.Failing || !strings.Contains(st.LastError, "midfs bots add robot") {
		t.Errorf("status with an expired bot identity: %+v", st)
	}
}

// joinOnFakeClock joins a fresh bot "robot" of a with a fake clock, for
// tests that drive the renewal loop's timers by hand.
func joinOnFakeClock(t *testing.T, a *authority) (*joiner.Agent, *clock.Fake) {
	t.Helper()
	log, _ := newLog(t)
	clock := clock.NewFake(time.Now())
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.Clock = clock
	return join(t, cfg), clock
}
