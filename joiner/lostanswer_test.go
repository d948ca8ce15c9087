package joiner_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/joiner"
)

// lossyProxy forwards TCP to the authority and, when armed, loses the
// authority's answer: once done() says the authority has processed the
// request, the next TLS record it sends back is dropped and the connection
// closed. The client sees its request vanish after the authority acted on
// it, the case a retry must survive.
type lossyProxy struct {
	ln      net.Listener
	target  string
	armed   atomic.Pointer[func() bool]
	dropped atomic.Int32
}

func newLossyProxy(t *testing.T, target string) *lossyProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lossyProxy{ln: ln, target: target}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.handle(c)
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return p
}

func (p *lossyProxy) addr() string { return p.ln.Addr().String() }

// loseNextAnswer arms the proxy; done tells when the authority has acted.
func (p *lossyProxy) loseNextAnswer(done func() bool) { p.armed.Store(&done) }

func (p *lossyProxy) handle(c net.Conn) {
	defer c.Close()
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer s.Close()
	go func() {
		io.Copy(s, c)
		s.(*net.TCPConn).CloseWrite()
	}()
	hdr := make([]byte, 5)
	for {
		if _, err := io.ReadFull(s, hdr); err != nil {
			return
		}
		body := make([]byte, binary.BigEndian.Uint16(hdr[3:5]))
		if _, err := io.ReadFull(s, body); err != nil {
			return
		}
		if done := p.armed.Load(); done != nil && (*done)() && p.armed.CompareAndSwap(done, nil) {
			p.dropped.Add(1)
			return // the answer is lost with the connection
		}
		if _, err := c.Write(append(hdr, body...)); err != nil {
			return
		}
	}
}

func TestJoinSurvivesLostAnswer(t *testing.T) {
	a := startAuth(t, "", "")
	proxy := newLossyProxy(t, a.Addr())
	log, _ := newLog(t)
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.AuthServer = proxy.addr()
	proxy.loseNextAnswer(func() bool { return a.counter(t, "midfs_auth_joins_total") >= 1 })
	ag := join(t, cfg)
	if proxy.dropped.Load() != 1 {
		t.Fatalf("the proxy lost %d answers, want 1", proxy.dropped.Load())
	}
	if st := ag.Status(); st.Generation != 1 {
		t.Errorf("generation %d after a retried join, want 1", st.Generation)
	}
	if n := a.counter(t, "midfs_auth_joins_total"); n != 2 {
		t.Errorf("authority counted %v joins, want 2 (the lost one and its retry)", n)
	}
}

func TestRenewalSurvivesLostAnswer(t *testing.T) {
	a := startAuth(t, "", "")
	proxy := newLossyProxy(t, a.Addr())
	log, _ := newLog(t)
	clock := clock.NewFake(time.Now())
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.AuthServer, cfg.Clock = proxy.addr(), clock
	ag := join(t, cfg)
	r := run(t, ag, clock)

	proxy.loseNextAnswer(func() bool { return a.counter(t, "midfs_auth_renewals_total") >= 1 })
	ag.RenewNow()
	eventually(t, func() bool { return ag.Status().RenewalsFailed == 1 })
	// The authority moved to generation 2 but the agent never heard. Its
	// retry (same key) must get generation 2 again, not lock the bot.
	r.advanceUntil(time.Second, 5*time.Minute, func() bool { return r.published() == 1 })
	if st := ag.Status(); st.Generation != 2 || st.Failing {
		t.Fatalf("after the retry: %+v", st)
	}
	ag.RenewNow()
	eventually(t, func() bool { return r.published() == 2 })
	if st := ag.Status(); st.Generation != 3 || st.Failing {
		t.Errorf("next renewal: generation %d, failing %v (%s); want 3 and a healthy bot", st.Generation, st.Failing, st.LastError)
	}
}

// loseRenewalAndStop makes the authority renew bot "robot" of a fresh agent
// (storing in store) while the agent never hears of it, then stops the
// agent before it retries, as a crash would. It returns the agent's config.
// If copyTo is not nil, it gets a copy of store taken before the renewal.
func loseRenewalAndStop(t *testing.T, a *authority, store, copyTo joiner.Store) joiner.Config {
	t.Helper()
	proxy := newLossyProxy(t, a.Addr())
	log, _ := newLog(t)
	clock := clock.NewFake(time.Now())
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.AuthServer, cfg.Clock, cfg.Store = proxy.addr(), clock, store
	ag := join(t, cfg)
	if copyTo != nil {
		blob, err := store.Load()
		if err != nil {
			t.Fatal(err)
		}
		if err := copyTo.Save(blob, time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	r := run(t, ag, clock)
	proxy.loseNextAnswer(func() bool { return a.counter(t, "midfs_auth_renewals_total") >= 1 })
	ag.RenewNow()
	eventually(t, func() bool { return ag.Status().RenewalsFailed == 1 })
	r.stop()
	cfg.Token, cfg.Clock = "", nil // a restart from the store needs no token
	return cfg
}

// The authority renewed, the answer was lost, and the agent died before it
// could retry: the restart from the store sends the key it had sent and
// gets that generation, where a new key would lock the bot.
func TestRestartAfterLostRenewalAnswer(t *testing.T) {
	a := startAuth(t, "", "")
	cfg := loseRenewalAndStop(t, a, keyringStore(t, a), nil)
	ag, err := joiner.Join(context.Background(), cfg)
	if err != nil {
		t.Fatalf("restart after a renewal whose answer was lost: %v", err)
	}
	if st := ag.Status(); st.Generation != 2 {
		t.Errorf("restart: generation %d, want 2 (the lost renewal, issued again)", st.Generation)
	}
	if bots, _ := a.Bots(context.Background()); bots[0].Status.Locked != "" {
		t.Errorf("bot locked: %s", bots[0].Status.Locked)
	}
}

// A copy of the store taken before a renewal whose answer was lost locks
// the bot (another key at the old generation). Once an administrator
// unlocks it, the rightful agent restarts from its store; the copy locks
// the bot again.
func TestUnlockThenRestartFromStore(t *testing.T) {
	a := startAuth(t, "", "")
	ctx := context.Background()
	store, copied := keyringStore(t, a), keyringStore(t, a)
	cfg := loseRenewalAndStop(t, a, store, copied)
	cfgCopy := cfg
	cfgCopy.Store = copied
	if _, err := joiner.Join(ctx, cfgCopy); !errors.Is(err, joiner.ErrRefused) || !strings.Contains(err.Error(), "locked") {
		t.Fatalf("start from the copy: %v, want a refusal saying the bot is locked", err)
	}
	if err := a.UnlockBot(ctx, "robot"); err != nil {
		t.Fatal(err)
	}
	ag, err := joiner.Join(ctx, cfg)
	if err != nil {
		t.Fatalf("restart of the rightful agent after unlock: %v", err)
	}
	if st := ag.Status(); st.Generation != 2 {
		t.Errorf("restart after unlock: generation %d, want 2", st.Generation)
	}
	if _, err := joiner.Join(ctx, cfgCopy); !errors.Is(err, joiner.ErrRefused) {
		t.Errorf("the copy after unlock: %v, want refused", err)
	}
	if bots, _ := a.Bots(ctx); !strings.Contains(bots[0].Status.Locked, "generation mismatch") {
		t.Errorf("the copy after unlock did not lock the bot again: %+v", bots[0].Status)
	}
}

// The authority used the token, the answer was lost, and the agent died
// before it could retry: the restart, given the same token, sends the key
// it had stored and gets the bot, where a new key would find the token
// used. The store keeps the key, not the token.
func TestRestartAfterLostJoinAnswer(t *testing.T) {
	a := startAuth(t, "", "")
	proxy := newLossyProxy(t, a.Addr())
	log, logs := newLog(t)
	token := a.addBot(t, "robot")
	cfg := config(a, token, log)
	cfg.AuthServer, cfg.Store = proxy.addr(), keyringStore(t, a)
	ctx, crash := context.WithCancel(context.Background())
	proxy.loseNextAnswer(func() bool {
		if a.counter(t, "midfs_auth_joins_total") < 1 {
			return false
		}
		crash() // the agent dies with the answer
		return true
	})
	if _, err := joiner.Join(ctx, cfg); err == nil {
		t.Fatal("join succeeded although its answer was lost")
	}
	blob, err := cfg.Store.Load()
	if err != nil {
		t.Errorf("nothing stored for the join in flight: %v", err)
	}
	if bytes.Contains(blob, []byte(token)) {
		t.Error("the store holds the token itself")
	}

	cfg.Token = ""
	if _, err := joiner.Join(context.Background(), cfg); !errors.Is(err, joiner.ErrConfig) || !strings.Contains(err.Error(), "same --token") {
		t.Errorf("restart without the token: %v, want a config error asking for the same --token", err)
	}
	cfg.Token = token
	ag := join(t, cfg)
	if st := ag.Status(); st.BotName != "robot" || st.Generation != 1 {
		t.Errorf("restart after the lost join: %+v, want bot robot at generation 1", st)
	}
	if n := a.counter(t, "midfs_auth_joins_total"); n != 2 {
		t.Errorf("authority counted %v joins, want 2 (the lost one and the restart's)", n)
	}
	if strings.Contains(logs.String(), token) {
		t.Error("the token appears in the logs")
	}
}
