package auth

import (
	"container/list"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
)

// LimitConnections makes srv hold at most max connections from ln: pass
// the listener it returns to srv.Serve (or to tls.NewListener first). It
// sets srv.ConnState. Anyone who can reach the port can open connections,
// so without a cap a flood of idle ones exhausts file descriptors and
// memory (about 40 KB each over TLS).
//
// At the cap, a new connection closes the one that has been idle longest
// (served, waiting for another request), or with none idle, the oldest one
// that has not yet sent a request: an agent's request then waits for
// nothing, where blocking Accept, as netutil.LimitListener does, would
// leave it in the kernel's backlog behind a flood of idle connections
// until they time out. A connection whose request is being answered is not
// closed; when every connection has one, Accept waits for one to end (the
// server's timeouts bound how long), holding the connection it just
// accepted. onDrop, if set, is called for every connection closed to make
// room.
func LimitConnections(srv *http.Server, ln net.Listener, max int, onDrop func()) net.Listener {
	l := &connLimiter{Listener: ln, max: max, onDrop: onDrop, idle: list.New(), fresh: list.New()}
	l.cond = sync.NewCond(&l.mu)
	srv.ConnState = l.track
	return l
}

type connLimiter struct {
	net.Listener
	max    int
	onDrop func()

	mu   sync.Mutex
	cond *sync.Cond // signalled when a connection closes or turns idle
	open int
	// Connections that may be closed to make room, longest waiting first:
	// idle between requests, and fresh ones that have sent none yet.
	idle, fresh *list.List
	closed      bool
}

// limitedConn is one connection; its fields are guarded by connLimiter.mu.
type limitedConn struct {
	net.Conn
	l    *connLimiter
	in   *list.List    // l.idle or l.fresh; nil while a request is in progress
	wait *list.Element // in in
	gone bool          // closed, or dropped to make room
}

// Accept is called by one goroutine at a time (the server's accept loop).
func (l *connLimiter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	for l.open >= l.max && !l.closed {
		victim := l.idle.Front()
		if victim == nil {
			victim = l.fresh.Front()
		}
		if victim == nil {
			l.cond.Wait()
			continue
		}
		vc := victim.Value.(*limitedConn)
		l.forget(vc)
		l.mu.Unlock()
		vc.Conn.Close() // the server's read fails and it cleans up
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
	lc := &limitedConn{Conn: c, l: l}
	lc.park(l.fresh)
	l.open++
	l.mu.Unlock()
	return lc, nil
}

func (l *connLimiter) Close() error {
	l.mu.Lock()
	l.closed = true
	l.cond.Broadcast()
	l.mu.Unlock()
	return l.Listener.Close()
}

// track is srv.ConnState: a connection may be dropped to make room only
// while no request is in progress on it.
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

func (c *limitedConn) Close() error {
	c.l.mu.Lock()
	c.l.forget(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}
