package joiner_test

import (
	"encoding/binary"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

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
	clock := joiner.NewFakeClock(time.Now())
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
