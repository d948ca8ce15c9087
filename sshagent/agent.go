// Package sshagent serves a private key and its SSH certificate through the
// ssh-agent protocol on a Unix socket, so that ssh signs with the key
// without any process ever reading it. The agent is read-only: it lists and
// signs, and refuses to add, remove or lock keys.
//
// Each connection is admitted or refused by the credentials of the process
// that made it (Options.Allow, given the kernel's SO_PEERCRED), logged and
// counted. Publish swaps key and certificate for the next request; a key
// whose certificate has expired never signs.
//
// It imports identity/clock, internal/peercred, x/crypto/ssh and x/sys; the caller supplies the
// access rule (fs.Access for a mount's key), so a node's host key can be
// served the same way.
package sshagent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/internal/peercred"
)

// Peer is the process at the other end of a connection (peercred.Peer).
type Peer = peercred.Peer

// Options configure a Server.
type Options struct {
	Path     string      // absolute path of the socket
	UID, GID uint32      // its owner
	Mode     os.FileMode // its permission bits: who may connect at all (fs.Access.SocketMode)
	// Allow decides each connection from its peer (fs.Access.Allows).
	Allow  func(Peer) bool
	Logger *slog.Logger // nil: slog.Default()
	Clock  clock.Clock  // tells when a certificate has expired; nil: clock.Real()
	// OnConnect, if set, is told of every connection with ResultOK or
	// ResultDenied; OnSign of every signature request with a Sign* result.
	OnConnect func(result string)
	OnSign    func(result string)
	// Replace lets Listen replace a socket that another process listens on,
	// for a successor taking over from the agent it replaces (an upgrade):
	// new connections come here at once, the predecessor finishes those it
	// has, and its Close leaves the socket alone, as it is no longer its.
	Replace bool
}

// Connection and signature results reported to OnConnect and OnSign.
const (
	ResultOK       = "ok"
	ResultDenied   = "denied"
	SignOK         = "ok"
	SignExpired    = "expired"     // the key's certificate has expired: refused
	SignUnknownKey = "unknown_key" // not a key this agent holds (or no longer)
	SignFailed     = "failed"
)

const (
	maxConns        = 64               // connections served at once; more wait to be accepted
	retiredKeyGrace = 30 * time.Second // see Publish
	maxRetiredKeys  = 8
)

var errReadOnly = errors.New("midfs's agent is read-only: it serves the identity midfs renews, and adds, removes or locks nothing")

// Server is a listening agent.
type Server struct {
	opts  Options
	log   *slog.Logger
	ln    *net.UnixListener
	file  fileID // the socket placed at opts.Path
	slots chan struct{}

	mu   sync.RWMutex
	keys []*heldKey // current first, then retired ones

	connMu  sync.Mutex
	conns   map[*net.UnixConn]struct{}
	closing bool
	wg      sync.WaitGroup
}

// heldKey is one key and its certificate: one issuance.
type heldKey struct {
	signer  ssh.AlgorithmSigner
	cert    *ssh.Certificate
	blobs   [2][]byte // the certificate's and the plain key's wire form
	retired time.Time // zero while current
}

func newHeldKey(key crypto.Signer, cert *ssh.Certificate) (*heldKey, error) {
	if key == nil || cert == nil {
		return nil, errors.New("no key or no certificate")
	}
	s, err := ssh.NewSignerFromSigner(key)
	if err != nil {
		return nil, err
	}
	as, ok := s.(ssh.AlgorithmSigner)
	if !ok {
		return nil, fmt.Errorf("cannot sign with a %T", key)
	}
	if !bytes.Equal(cert.Key.Marshal(), s.PublicKey().Marshal()) {
		return nil, errors.New("the certificate is not for the key")
	}
	return &heldKey{signer: as, cert: cert, blobs: [2][]byte{cert.Marshal(), s.PublicKey().Marshal()}}, nil
}

// expires is when the certificate stops being valid.
func (h *heldKey) expires() time.Time { return time.Unix(int64(h.cert.ValidBefore), 0) }

func (h *heldKey) usable(now time.Time, grace time.Duration) bool {
	return now.Before(h.expires()) && (h.retired.IsZero() || now.Sub(h.retired) < grace)
}

// Listen makes the socket at opts.Path and serves key and cert on it until
// Close.
func Listen(opts Options, key crypto.Signer, cert *ssh.Certificate) (*Server, error) {
	return serveOn(opts, key, cert, func(s *Server) (err error) {
		s.ln, s.file, err = listen(opts.Path, opts.UID, opts.GID, opts.Mode, opts.Replace)
		return err
	})
}

// Adopt serves key and cert on the listening socket f that a predecessor
// kept (Listener) and left at opts.Path: clients that connected while no
// process accepted waited in its queue, and are served now. The socket at
// the path is removed at Close as if this Server had placed it. f stays the
// caller's.
func Adopt(opts Options, f *os.File, key crypto.Signer, cert *ssh.Certificate) (*Server, error) {
	return serveOn(opts, key, cert, func(s *Server) error {
		l, err := net.FileListener(f)
		if err != nil {
			return fmt.Errorf("adopt the ssh-agent socket: %w", err)
		}
		ln, ok := l.(*net.UnixListener)
		if !ok {
			l.Close()
			return fmt.Errorf("adopt the ssh-agent socket: a %T is no Unix socket", l)
		}
		ln.SetUnlinkOnClose(false)
		if s.file, _, err = lstatID(opts.Path); err != nil {
			ln.Close()
			return fmt.Errorf("adopt the ssh-agent socket: %w", err)
		}
		s.ln = ln
		return nil
	})
}

// Listener is a copy of the listening socket's descriptor, to keep while no
// agent runs (a restart, an upgrade) and Adopt in the next one.
func (s *Server) Listener() (*os.File, error) {
	raw, err := s.ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	var dup int
	var derr error
	if err := raw.Control(func(fd uintptr) { dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, derr
	}
	return os.NewFile(uintptr(dup), "ssh-agent"), nil
}

// Retire stops accepting connections, for a successor that adopts the
// socket (Listener, taken before): clients that connect from now on wait
// in its queue. It returns once the connections in progress have ended
// (an ssh's lasts through its authentication), or after timeout. The
// socket stays at its path.
func (s *Server) Retire(timeout time.Duration) {
	s.ln.Close() // this descriptor only: the socket lives on in the successor's
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		s.log.Warn("ssh-agent socket: connections still open after retiring; they end with this process", "after", timeout)
	}
}

// Reopen accepts again on f (Listener) after a Retire whose successor did
// not take over.
func (s *Server) Reopen(f *os.File) error {
	l, err := net.FileListener(f)
	if err != nil {
		return err
	}
	ln, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return fmt.Errorf("a %T is no Unix socket", l)
	}
	ln.SetUnlinkOnClose(false)
	s.ln = ln
	s.wg.Add(1)
	go s.serve()
	return nil
}

// serveOn makes a Server for key and cert, gets its socket from open, and
// serves.
func serveOn(opts Options, key crypto.Signer, cert *ssh.Certificate, open func(*Server) error) (*Server, error) {
	if !filepath.IsAbs(opts.Path) {
		return nil, fmt.Errorf("socket path %q is not absolute", opts.Path)
	}
	if opts.Allow == nil {
		return nil, errors.New("no access rule for the socket")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Clock == nil {
		opts.Clock = clock.Real()
	}
	first, err := newHeldKey(key, cert)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: opts, log: opts.Logger, slots: make(chan struct{}, maxConns),
		keys: []*heldKey{first}, conns: map[*net.UnixConn]struct{}{}}
	if err := open(s); err != nil {
		return nil, err
	}
	s.wg.Add(1)
	go s.serve()
	s.log.Info("ssh-agent socket listening", "path", opts.Path, "mode", fmt.Sprintf("%04o", opts.Mode),
		"owner", fmt.Sprintf("%d:%d", opts.UID, opts.GID))
	return s, nil
}

// Publish makes key and cert the ones listed and used from the next
// request on. The previous key still signs for a client that asks for it by
// name, for retiredKeyGrace, and never past its certificate's expiry: ssh
// lists the agent's keys (or reads key.pub, which the mount keeps on one
// issuance per process for as long, fs/pins.go) and asks for a signature
// a moment later, and a renewal in between must not fail the login.
func (s *Server) Publish(key crypto.Signer, cert *ssh.Certificate) {
	h, err := newHeldKey(key, cert)
	if err != nil {
		s.log.Error("new key not served by the ssh-agent socket, keeping the previous one", "err", err)
		return
	}
	now := s.opts.Clock.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := []*heldKey{h}
	for _, k := range s.keys {
		if k.retired.IsZero() {
			k.retired = now
		}
		if k.usable(now, retiredKeyGrace) && len(keys) <= maxRetiredKeys {
			keys = append(keys, k)
		}
	}
	s.keys = keys
}

// Close stops listening, ends every connection, and removes the socket if
// it is still the one Listen placed.
func (s *Server) Close() error {
	s.connMu.Lock()
	s.closing = true
	for c := range s.conns {
		c.Close()
	}
	s.connMu.Unlock()
	err := s.ln.Close()
	s.wg.Wait()
	if rerr := removeIfOurs(s.opts.Path, s.file); rerr != nil {
		return rerr
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		s.slots <- struct{}{}
		c, err := s.ln.AcceptUnix()
		if err != nil {
			<-s.slots
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, most likely: wait for some to free up.
			s.log.Warn("ssh-agent socket: accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !s.track(c) {
			c.Close()
			<-s.slots
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { s.untrack(c); c.Close(); <-s.slots }()
			s.handle(c)
		}()
	}
}

func (s *Server) track(c *net.UnixConn) bool {
	s.connMu.Lock()
	defer s.connMu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *net.UnixConn) {
	s.connMu.Lock()
	delete(s.conns, c)
	s.connMu.Unlock()
}

// handle admits or refuses one connection, then serves it until the client
// hangs up.
func (s *Server) handle(c *net.UnixConn) {
	p, err := peercred.Of(c)
	allowed := err == nil && s.opts.Allow(p)
	result := ResultOK
	if !allowed {
		result = ResultDenied
	}
	if s.opts.OnConnect != nil {
		s.opts.OnConnect(result)
	}
	// Like an open of key: every connection is worth an audit line, with
	// who made it.
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.Debug("ssh-agent connection", "path", s.opts.Path, "uid", p.UID, "pid", p.PID, "comm", comm(p.PID), "result", result)
	}
	if err != nil {
		s.log.Warn("ssh-agent connection refused: no peer credentials", "err", err)
	}
	if !allowed {
		return
	}
	agent.ServeAgent(&session{s: s, peer: p}, c)
}

// comm is a process's command name, for the log.
func comm(pid uint32) string {
	if pid == 0 {
		return ""
	}
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/comm")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// list is what a client sees: each usable issuance, newest first, as its
// certificate and its plain key (what ssh-add shows for a key and its
// certificate; ssh pairs the plain key with key.pub from ssh_config).
func (s *Server) list() []*agent.Key {
	now := s.opts.Clock.Now()
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*agent.Key
	for _, h := range s.keys {
		if !h.usable(now, retiredKeyGrace) {
			continue
		}
		out = append(out,
			&agent.Key{Format: h.cert.Type(), Blob: h.blobs[0], Comment: h.cert.KeyId},
			&agent.Key{Format: h.cert.Key.Type(), Blob: h.blobs[1], Comment: h.cert.KeyId})
	}
	return out
}

// find returns the held key named by blob (its certificate or plain key),
// unless it was retired longer than retiredKeyGrace ago. Only the
// certificate of what it returns may be read outside the lock.
func (s *Server) find(blob []byte, now time.Time) *heldKey {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, h := range s.keys {
		if bytes.Equal(blob, h.blobs[0]) || bytes.Equal(blob, h.blobs[1]) {
			if !h.retired.IsZero() && now.Sub(h.retired) >= retiredKeyGrace {
				return nil
			}
			return h
		}
	}
	return nil
}

func (s *Server) sign(p Peer, key ssh.PublicKey, data []byte, flags agent.SignatureFlags) (*ssh.Signature, error) {
	now := s.opts.Clock.Now()
	h := s.find(key.Marshal(), now)
	var sig *ssh.Signature
	var err error
	result := SignOK
	switch {
	case h == nil:
		result, err = SignUnknownKey, errors.New("no such key in midfs's agent (renewed since it was listed?)")
	case !now.Before(h.expires()):
		result, err = SignExpired, fmt.Errorf("the certificate of this key expired at %s", h.expires().UTC().Format(time.RFC3339))
		s.log.Warn("ssh-agent refused to sign: the certificate has expired (are renewals failing?)",
			"expired", h.expires().UTC().Format(time.RFC3339), "uid", p.UID, "pid", p.PID)
	default:
		if sig, err = signWith(h.signer, data, flags); err != nil {
			result = SignFailed
		}
	}
	if s.opts.OnSign != nil {
		s.opts.OnSign(result)
	}
	s.log.Debug("ssh-agent signature", "uid", p.UID, "pid", p.PID, "result", result)
	return sig, err
}

// signWith signs as x/crypto's keyring does: the key's own algorithm, or
// for RSA the SHA-2 one the client asks for in flags.
func signWith(s ssh.AlgorithmSigner, data []byte, flags agent.SignatureFlags) (*ssh.Signature, error) {
	switch flags {
	case 0:
		return s.Sign(rand.Reader, data)
	case agent.SignatureFlagRsaSha256:
		return s.SignWithAlgorithm(rand.Reader, data, ssh.KeyAlgoRSASHA256)
	case agent.SignatureFlagRsaSha512:
		return s.SignWithAlgorithm(rand.Reader, data, ssh.KeyAlgoRSASHA512)
	}
	return nil, fmt.Errorf("unsupported signature flags %d", flags)
}

// session is one admitted connection: the agent as its peer sees it.
type session struct {
	s    *Server
	peer Peer
}

var _ agent.ExtendedAgent = (*session)(nil)

func (a *session) List() ([]*agent.Key, error) { return a.s.list(), nil }

func (a *session) Sign(key ssh.PublicKey, data []byte) (*ssh.Signature, error) {
	return a.s.sign(a.peer, key, data, 0)
}

func (a *session) SignWithFlags(key ssh.PublicKey, data []byte, flags agent.SignatureFlags) (*ssh.Signature, error) {
	return a.s.sign(a.peer, key, data, flags)
}

func (a *session) refuse(op string) error {
	a.s.log.Info("ssh-agent request refused: the agent is read-only", "request", op, "uid", a.peer.UID, "pid", a.peer.PID)
	return errReadOnly
}

func (a *session) Add(agent.AddedKey) error       { return a.refuse("add") }
func (a *session) Remove(ssh.PublicKey) error     { return a.refuse("remove") }
func (a *session) RemoveAll() error               { return a.refuse("remove all") }
func (a *session) Lock([]byte) error              { return a.refuse("lock") }
func (a *session) Unlock([]byte) error            { return a.refuse("unlock") }
func (a *session) Signers() ([]ssh.Signer, error) { return nil, errReadOnly }

// Extension answers none: OpenSSH's session-bind and query are optional.
func (a *session) Extension(string, []byte) ([]byte, error) {
	return nil, agent.ErrExtensionUnsupported
}
