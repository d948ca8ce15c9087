package enforce

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/midfs/midfs/internal/peercred"
)

// The hook's socket. sshd runs midfs-node-hook (cmd/midfs-node-hook, its
// AuthorizedPrincipalsCommand) as HookUser at every certificate login;
// the hook sends "USER\nCERT_BASE64\n" here and prints the answer: the
// login, or nothing. The decision is made in the node agent, from the
// state it holds, because a process started per login must start fast,
// and deciding takes code (SSH certificates, the policy matcher) that only
// a large binary carries.

// HookSocket is the hook's socket in the run directory.
const HookSocket = "authorize.sock"

// HookUser is the user sshd runs the hook as (AuthorizedPrincipalsCommandUser).
const HookUser = "nobody"

// Bounds of one request: what midfs-node-hook sends at most, and how long
// a hook may take to send it.
const (
	maxRequest     = 64<<10 + 256 + 2
	requestTimeout = 5 * time.Second
	maxConcurrent  = 64
)

// Hook answers the hook's requests from the state last Set.
type Hook struct {
	ln    *net.UnixListener
	log   *slog.Logger
	now   func() time.Time
	allow func(uid uint32) bool
	state atomic.Pointer[State]
	slots chan struct{}
	wg    sync.WaitGroup
}

// ListenHook serves the hook's socket in runDir, replacing one a previous
// process left. Only root and the users allow admits may ask (the socket
// is open to all; SO_PEERCRED is checked). Until Set, every login is
// refused.
func ListenHook(runDir string, allow func(uid uint32) bool, now func() time.Time, log *slog.Logger) (*Hook, error) {
	path := filepath.Join(runDir, HookSocket)
	// Bound under a temporary name and renamed into place: sshd's hook
	// finds the old socket or the new one, never none.
	staged := filepath.Join(runDir, "."+HookSocket+".new")
	os.Remove(staged)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: staged, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("hook socket: %w", err)
	}
	ln.SetUnlinkOnClose(false)
	err = os.Chmod(staged, 0o666)
	if err == nil {
		err = os.Rename(staged, path)
	}
	if err != nil {
		ln.Close()
		os.Remove(staged)
		return nil, fmt.Errorf("hook socket: %w", err)
	}
	h := &Hook{ln: ln, log: log, now: now, allow: allow, slots: make(chan struct{}, maxConcurrent)}
	h.wg.Add(1)
	go h.serve()
	return h, nil
}

// Set makes st the state logins are decided from.
func (h *Hook) Set(st *State) { h.state.Store(st) }

// Close stops answering and waits for the requests being answered. The
// socket file stays, for the next process to replace: a hook that finds
// nobody listening refuses the login.
func (h *Hook) Close() {
	h.ln.Close()
	h.wg.Wait()
}

func (h *Hook) serve() {
	defer h.wg.Done()
	for {
		h.slots <- struct{}{} // a flood waits in the listen queue
		c, err := h.ln.AcceptUnix()
		if err != nil {
			<-h.slots
			if errors.Is(err, net.ErrClosed) {
				return
			}
			h.log.Warn("hook socket: accept failed", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		h.wg.Add(1)
		go func() {
			defer func() { c.Close(); <-h.slots; h.wg.Done() }()
			h.answer(c)
		}()
	}
}

// answer reads one request and writes the logins allowed, or nothing. A
// refusal is logged with its reason (sshd says only "Permission denied").
func (h *Hook) answer(c *net.UnixConn) {
	p, err := peercred.Of(c)
	if err != nil || (p.UID != 0 && !h.allow(p.UID)) {
		h.log.Warn("hook socket: a process that is not sshd's hook asked; not answered", "uid", p.UID, "err", err)
		return
	}
	c.SetDeadline(time.Now().Add(requestTimeout))
	user, certB64, err := readRequest(c)
	if err != nil {
		h.log.Warn("hook socket: bad request", "err", err)
		return
	}
	st := h.state.Load()
	if st == nil {
		h.log.Warn("refused login: the node has no state yet (it has not joined)", "login", user)
		return
	}
	logins, reason := Decide(st, user, certB64, h.now())
	if reason != "" {
		h.log.Warn("refused login", "login", user, "reason", reason)
		return
	}
	var b strings.Builder
	for _, l := range logins {
		b.WriteString(l + "\n")
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		h.log.Warn("hook socket: cannot answer", "err", err)
	}
}

// readRequest reads "USER\nCERT\n" and nothing more.
func readRequest(r io.Reader) (user, certB64 string, err error) {
	data, err := io.ReadAll(io.LimitReader(r, maxRequest+1))
	if err != nil {
		return "", "", err
	}
	if len(data) > maxRequest {
		return "", "", errors.New("request too long")
	}
	text, ok := strings.CutSuffix(string(data), "\n")
	user, certB64, two := strings.Cut(text, "\n")
	if !ok || !two || user == "" || certB64 == "" || strings.Contains(certB64, "\n") {
		return "", "", errors.New(`not "USER\nCERT_BASE64\n"`)
	}
	return user, certB64, nil
}
