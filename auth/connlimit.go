package auth

import (
	"container/list"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LimitConnections makes srv hold at most max connections from ln: pass
// the listener it returns to srv.Serve (or to tls.NewListener first). It
// sets srv.ConnState. Anyone who can reach the port can open connections,
// so without a cap a flood of idle ones exhausts file descriptors and
// memory (about 40 KB each over TLS).
//
// At the cap, a new connection closes another that is not being answered,
// in this order: the one idle longest between requests (its client has its
// answer; an agent's next poll, a GET, is retried on a new connection);
// the oldest that has sent nothing at all, not even bytes still unread in
// the kernel (a flood of bare connects); the oldest that has begun its
// handshake or request but not finished it within connGrace. An agent's
// connection is then served at once, where blocking Accept (as
// netutil.LimitListener does) would leave it in the kernel's backlog
// behind a flood until the flood's connections time out. The grace keeps
// legitimate clients, when more of them connect at once than the cap
// allows, from closing each other's handshakes before any completes. A
// connection whose request is being answered is never closed; when no
// connection may be closed, Accept waits, holding the connection it just
// accepted. onDrop, if set, is called for every connection closed to make
// room.
func LimitConnections(srv *http.Server, ln net.Listener, max int, onDrop func()) net.Listener {
	l := &connLimiter{Listener: ln, max: max, onDrop: onDrop, idle: list.New(), silent: list.New(), started: list.New()}
	l.cond = sync.NewCond(&l.mu)
	srv.ConnState = l.track
	return l
}

// connGrace is how long a connection that has begun its TLS handshake or
// its first request keeps its place at the cap: a handshake and a request
// take a few round trips.
const connGrace = time.Second

type connLimiter struct {
	net.Listener
	max    int
	onDrop func()

	mu   sync.Mutex
	cond *sync.Cond // signalled when a connection closes or may be closed
	open int
	// Connections that may be closed to make room, oldest first: idle
	// between requests; accepted and silent; accepted and heard from.
	idle, silent, started *list.List
	closed                bool
}

// limitedConn is one connection; its fields but heard are guarded by
// connLimiter.mu.
type limitedConn struct {
	net.Conn
	l        *connLimiter
	accepted time.Time
	heard    atomic.Bool   // it has sent something
	in       *list.List    // the list it is in; nil while a request is answered
	wait     *list.Element // in in
	gone     bool          // closed, or dropped to make room
}

// Accept is called by one goroutine at a time (the server's accept loop).
func (l *connLimiter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	for l.open >= l.max && !l.closed {
		victim, wait := l.victim()
		if victim == nil {
			l.waitFor(wait)
			continue
		}
		l.forget(victim)
		l.mu.Unlock()
		victim.Conn.Close() // the server's read fails and it cleans up
		if l.onDrop != nil {
			l.onDrop()
		}
		l.mu.Lock()
	}
	if l.closed {
		l.mu.Unlock()
		c.Close()
		return nil, net.ErrClosed
	}
	lc := &limitedConn{Conn: c, l: l, accepted: time.Now()}
	lc.park(l.silent)
	l.open++
	l.mu.Unlock()
	return lc, nil
}

// victim picks the connection to close to make room, or says how long
// until the oldest one heard from may be closed (0: until one changes
// state); l.mu is held.
func (l *connLimiter) victim() (*limitedConn, time.Duration) {
	if e := l.idle.Front(); e != nil {
		return e.Value.(*limitedConn), 0
	}
	for e := l.silent.Front(); e != nil; e = l.silent.Front() {
		c := e.Value.(*limitedConn)
		if !c.pending() {
			return c, 0
		}
		// Its first bytes wait for a server busier than the client.
		c.unpark()
		c.park(l.started)
	}
	e := l.started.Front()
	if e == nil {
		return nil, 0
	}
	c := e.Value.(*limitedConn)
	if wait := connGrace - time.Since(c.accepted); wait > 0 {
		return nil, wait
	}
	return c, 0
}

// waitFor waits until a connection changes state, or d passes if d > 0;
// l.mu is held.
func (l *connLimiter) waitFor(d time.Duration) {
	if d > 0 {
		t := time.AfterFunc(d, func() {
			l.mu.Lock()
			l.cond.Broadcast()
			l.mu.Unlock()
		})
		defer t.Stop()
	}
	l.cond.Wait()
}

func (l *connLimiter) Close() error {
	l.mu.Lock()
	l.closed = true
	l.cond.Broadcast()
	l.mu.Unlock()
	return l.Listener.Close()
}

// track is srv.ConnState: a connection may be closed to make room only
// while no request is being answered on it.
func (l *connLimiter) track(c net.Conn, state http.ConnState) {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	lc, ok := c.(*limitedConn)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case lc.gone:
	case state == http.StateActive:
		lc.unpark()
	case state == http.StateIdle:
		lc.unpark()
		lc.park(l.idle)
		l.cond.Signal()
	}
}

// forget stops counting c; l.mu is held.
func (l *connLimiter) forget(c *limitedConn) {
	if c.gone {
		return
	}
	c.gone = true
	l.open--
	c.unpark()
	l.cond.Signal()
}

// park and unpark put c in a list of connections that may be closed to
// make room, and take it out; l.mu is held.
func (c *limitedConn) park(in *list.List) {
	c.in, c.wait = in, in.PushBack(c)
}

func (c *limitedConn) unpark() {
	if c.in != nil {
		c.in.Remove(c.wait)
		c.in, c.wait = nil, nil
	}
}

// pending reports whether bytes the server has not read yet wait in the
// kernel for c.
func (c *limitedConn) pending() bool {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n > 0
}

// Read notes the first bytes a connection sends: from then on it is a
// client at work, not one of a flood of connections that say nothing.
func (c *limitedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && !c.heard.Load() {
		c.heard.Store(true)
		c.l.mu.Lock()
		if c.in == c.l.silent {
			c.unpark()
			c.park(c.l.started)
		}
		c.l.mu.Unlock()
	}
	return n, err
}

func (c *limitedConn) Close() error {
	c.l.mu.Lock()
	c.l.forget(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}
