package auth

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/midfs/midfs/wire"
)

// heldConn is a client connection kept open between requests.
type heldConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialHeld(t *testing.T, addr string) *heldConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &heldConn{t: t, c: c, br: bufio.NewReader(c)}
}

// send writes a GET for path without waiting for the answer.
func (h *heldConn) send(path string) {
	h.t.Helper()
	if _, err := fmt.Fprintf(h.c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		h.t.Fatal(err)
	}
}

// answer reads one response; err is set if the server closed the
// connection instead.
func (h *heldConn) answer() (string, error) {
	h.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := http.ReadResponse(h.br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func (h *heldConn) get(path string) (string, error) {
	h.send(path)
	return h.answer()
}

// closedByServer reports whether the server has closed the connection:
// a read of an idle connection ends at once with EOF or a reset.
func (h *heldConn) closedByServer() bool {
	h.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := h.br.ReadByte()
	return err != nil && !isTimeout(err)
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// TestLimitConnectionsDropsTheLongestWaiting: at the cap, a new connection
// closes the one idle longest, else one that has said nothing, never one
// whose request is being answered; with every connection busy, it waits
// for one to finish.
func TestLimitConnectionsDropsTheLongestWaiting(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/busy" {
			entered <- struct{}{}
			<-release
		}
		io.WriteString(w, "ok")
	})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var dropped, idled atomic.Int64
	limited := LimitConnections(srv, ln, 4, func() { dropped.Add(1) })
	// A client has its answer before the server reports the connection
	// idle; the test goes on only once the server has.
	track := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		track(c, s)
		if s == http.StateIdle {
			idled.Add(1)
		}
	}
	waitIdled := func(n int64) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); idled.Load() < n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the server reported %d connections idle, want %d", idled.Load(), n)
			}
		}
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(limited) }()
	addr := ln.Addr().String()

	busy := dialHeld(t, addr)
	busy.send("/busy")
	<-entered
	silent := dialHeld(t, addr)  // connected, nothing sent
	idle := make([]*heldConn, 2) // oldest first
	for i := range idle {
		idle[i] = dialHeld(t, addr)
		if _, err := idle[i].get("/"); err != nil {
			t.Fatal(err)
		}
		waitIdled(int64(i + 1))
	}
	// At the cap: each newcomer closes the connection idle longest, before
	// the one that has said nothing, and is served.
	for i := range idle {
		if _, err := dialHeld(t, addr).get("/"); err != nil {
			t.Fatalf("newcomer %d: %v", i, err)
		}
		if !idle[i].closedByServer() {
			t.Fatalf("idle connection %d was not closed for newcomer %d", i, i)
		}
		waitIdled(int64(len(idle) + i + 1))
	}
	if _, err := silent.get("/"); err != nil {
		t.Errorf("the connection that had said nothing was closed while idle ones were open: %v", err)
	}
	if n := dropped.Load(); n != 2 {
		t.Errorf("onDrop called %d times, want 2", n)
	}

	// Fill every place with a request in progress: a newcomer waits, and
	// no busy connection is closed for it.
	others := []*heldConn{busy}
	for range 3 {
		h := dialHeld(t, addr)
		h.send("/busy")
		<-entered
		others = append(others, h)
	}
	waiting := dialHeld(t, addr)
	waiting.send("/")
	close(release)
	for i, h := range others {
		if body, err := h.answer(); err != nil || body != "ok" {
			t.Errorf("busy connection %d: %q %v", i, body, err)
		}
	}
	if body, err := waiting.answer(); err != nil || body != "ok" {
		t.Errorf("the newcomer that waited: %q %v", body, err)
	}

	srv.Close()
	if err := <-served; err != http.ErrServerClosed {
		t.Errorf("Serve: %v", err)
	}
}

// TestLimitConnectionsSparesHandshakesInProgress: at the cap, a connection
// that has said nothing is closed before one that has begun its request,
// and that one keeps its place for connGrace, then is closed if nothing
// else can be.
func TestLimitConnectionsSparesHandshakesInProgress(t *testing.T) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	limited := LimitConnections(srv, ln, 2, nil)
	go srv.Serve(limited)
	defer srv.Close()
	addr := ln.Addr().String()
	// The test goes on once the server has read what a client sent.
	l := limited.(*connLimiter)
	waitLists := func(silent, started int) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
			l.mu.Lock()
			s, h := l.silent.Len(), l.started.Len()
			l.mu.Unlock()
			if s == silent && h == started {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d silent and %d started connections, want %d and %d", s, h, silent, started)
			}
		}
	}

	started := dialHeld(t, addr)
	fmt.Fprintf(started.c, "GET / HTTP/1.1\r\n") // the rest of the request is late
	waitLists(0, 1)
	silent := dialHeld(t, addr)
	waitLists(1, 1)
	newcomer := dialHeld(t, addr)
	if _, err := newcomer.get("/"); err != nil {
		t.Fatal(err)
	}
	if !silent.closedByServer() {
		t.Error("a silent connection was kept while a request was begun")
	}
	fmt.Fprintf(started.c, "Host: x\r\n\r\n")
	if body, err := started.answer(); err != nil || body != "ok" {
		t.Errorf("the connection that had begun its request: %q %v", body, err)
	}

	// With only begun requests to choose from, the oldest is closed
	// once its grace is over.
	started.c.Close()
	newcomer.c.Close()
	waitLists(0, 0)
	var slow []*heldConn
	for i := range 2 {
		h := dialHeld(t, addr)
		fmt.Fprintf(h.c, "GET / HTTP/1.1\r\n")
		waitLists(0, i+1)
		slow = append(slow, h)
	}
	if body, err := dialHeld(t, addr).get("/"); err != nil || body != "ok" {
		t.Errorf("newcomer among begun requests: %q %v", body, err)
	}
	if !slow[0].closedByServer() {
		t.Error("the oldest begun request was not closed for the newcomer")
	}
}

// TestLimitConnectionsSparesBytesNotYetRead: a connection whose first bytes
// wait for a busy server is a client at work, not a silent one; at the
// cap the truly silent one is closed.
func TestLimitConnectionsSparesBytesNotYetRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := LimitConnections(&http.Server{}, ln, 2, nil)
	defer l.Close()
	accept := func() net.Conn {
		t.Helper()
		c, err := l.Accept() // and never read: a server too busy to
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	talking := dialHeld(t, ln.Addr().String())
	fmt.Fprintf(talking.c, "GET / HTTP/1.1\r\n")
	waiting := accept().(*limitedConn)
	silent := dialHeld(t, ln.Addr().String())
	accept()
	for deadline := time.Now().Add(30 * time.Second); !waiting.pending(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the bytes sent never reached the server's socket")
		}
	}
	dialHeld(t, ln.Addr().String())
	accept()
	if !silent.closedByServer() {
		t.Error("the silent connection was kept")
	}
	// Still open: what the server writes on it arrives.
	waiting.Write([]byte("x"))
	talking.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if b, err := talking.br.ReadByte(); err != nil || b != 'x' {
		t.Errorf("the connection whose bytes waited to be read was closed: %v", err)
	}
}

// TestIdleConnectionsCannotCrowdOutAgents: connections anyone can open and
// leave idle, after one request or before the TLS handshake, cannot push
// the authority past its cap, and an agent still joins and renews among
// them.
func TestIdleConnectionsCannotCrowdOutAgents(t *testing.T) {
	const maxConns, idleTLS, idleTCP = 32, 100, 50
	reg := prometheus.NewRegistry()
	s := startTest(t, func(c *Config) { c.MaxConns, c.Metrics = maxConns, reg })
	pool := x509.NewCertPool()
	pool.AddCert(s.signer(caHost).cert)
	for range idleTLS {
		c, err := tls.Dial("tcp", s.Addr(), &tls.Config{ServerName: wire.ServerName, RootCAs: pool})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		h := &heldConn{t: t, c: c, br: bufio.NewReader(c)}
		if _, err := h.get("/v1/nodes"); err != nil { // 401 without a client certificate
			t.Fatal(err)
		}
	}
	for range idleTCP {
		dialHeld(t, s.Addr())
	}
	want := float64(idleTLS + idleTCP - maxConns)
	for deadline := time.Now().Add(30 * time.Second); droppedConns(t, reg) < want; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v idle connections closed to make room, want %v: the authority holds more than %d", droppedConns(t, reg), want, maxConns)
		}
	}
	bt := addBot(t, s, "robot", []string{"access"}, []string{"root"})
	join(t, s, bt.Token).renew(t, s)
}

func droppedConns(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == "midfs_auth_connections_dropped_total" {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}
