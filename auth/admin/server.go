package admin

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/user"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// Authority is what the admin socket serves (package auth's Server). Its
// errors carry a Kind (see Mark); an unmarked error is Internal.
type Authority interface {
	Status(ctx context.Context) (*Status, error)
	AddBot(ctx context.Context, spec BotSpec) (*BotToken, error)
	RemoveBot(ctx context.Context, name string) error
	UnlockBot(ctx context.Context, name string) error
	AddLock(ctx context.Context, spec LockSpec) (*wire.Lock, error)
	CreateYAML(ctx context.Context, data []byte, force bool) ([]string, error)
	Get(ctx context.Context, kind, name string) (*policy.Resources, error)
	Remove(ctx context.Context, kind, name string) error
	AddNode(ctx context.Context, n identity.Node) error
	AddNodeToken(ctx context.Context, spec NodeTokenSpec) (*NodeToken, error)
	Export(ctx context.Context, typ string) (string, error)
	SignHost(ctx context.Context, publicKey string, hosts []string, ttl time.Duration) (string, error)
	Events(ctx context.Context, q EventQuery) (*EventPage, error) // events.go
	Rotate(ctx context.Context, req RotateRequest) (*policy.CAResource, error)
}

// Listen makes the admin socket at path, mode 0600. It refuses when another
// authority serves it, and replaces a stale one left by a killed authority.
func Listen(path string) (net.Listener, error) {
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another authority is serving %s; stop it or use another --data-dir", path)
	}
	os.Remove(path) // stale, from a killed authority
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	return ln, nil
}

// NewServer serves a's admin API to root, or to the uid the authority runs
// as, checked by SO_PEERCRED on every connection; the peer is the actor of
// what its requests change (ActorOf).
func NewServer(a Authority, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           routes(a, log),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, actorKey{}, peerActor(c))
		},
	}
}

type actorKey struct{}

// ActorOf is the admin-socket peer a request came from, for the audit
// trail; nil for calls that did not come through the socket.
func ActorOf(ctx context.Context) *audit.Actor {
	a, _ := ctx.Value(actorKey{}).(*audit.Actor)
	return a
}

// peerActor asks the kernel who is at the other end of c (SO_PEERCRED):
// uid and pid as they were when it connected. UID is -1 if it cannot say.
func peerActor(c net.Conn) *audit.Actor {
	a := &audit.Actor{UID: -1, Socket: c.LocalAddr().String()}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return a
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return a
	}
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			a.UID, a.PID = int(cred.Uid), int(cred.Pid)
		}
	})
	if a.UID >= 0 {
		if u, err := user.LookupId(strconv.Itoa(a.UID)); err == nil {
			a.User = u.Username
		}
	}
	return a
}

type handler func(r *http.Request) (any, error)

// selfWriter is an answer that is not one JSON object (EventPage).
type selfWriter interface{ writeHTTP(w http.ResponseWriter) }

func routes(a Authority, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, h handler) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			uid := -1
			if a := ActorOf(r.Context()); a != nil {
				uid = a.UID
			}
			if uid != 0 && uid != os.Getuid() {
				log.Warn("admin request refused", "uid", uid, "path", r.URL.Path)
				wire.WriteError(w, http.StatusForbidden, fmt.Sprintf("the admin socket is for root; uid %d may not use it", uid))
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
			v, err := h(r)
			if err != nil {
				// Root's own authority answers root: the text of an
				// internal error is shown too, and logged for the record.
				kind := KindOf(err)
				if kind == Internal {
					log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				}
				wire.WriteError(w, kind.Status(), err.Error())
				return
			}
			if sw, ok := v.(selfWriter); ok {
				sw.writeHTTP(w)
				return
			}
			wire.WriteJSON(w, v)
		})
	}
	handle("GET /v1/status", func(r *http.Request) (any, error) { return a.Status(r.Context()) })
	handle("POST /v1/bots", func(r *http.Request) (any, error) {
		var spec BotSpec
		if err := wire.DecodeStrict(r.Body, &spec); err != nil {
			return nil, Mark(Invalid, err)
		}
		return a.AddBot(r.Context(), spec)
	})
	handle("DELETE /v1/bots/{name}", func(r *http.Request) (any, error) {
		return struct{}{}, a.RemoveBot(r.Context(), r.PathValue("name"))
	})
	handle("POST /v1/bots/{name}/unlock", func(r *http.Request) (any, error) {
		return struct{}{}, a.UnlockBot(r.Context(), r.PathValue("name"))
	})
	handle("POST /v1/locks", func(r *http.Request) (any, error) {
		var spec LockSpec
		if err := wire.DecodeStrict(r.Body, &spec); err != nil {
			return nil, Mark(Invalid, err)
		}
		return a.AddLock(r.Context(), spec)
	})
	handle("POST /v1/resources", func(r *http.Request) (any, error) {
		data, err := policy.ReadResourceYAML(r.Body)
		if err != nil {
			return nil, Mark(Invalid, err)
		}
		return a.CreateYAML(r.Context(), data, r.URL.Query().Get("force") == "true")
	})
	handle("GET /v1/resources/{kind}", func(r *http.Request) (any, error) {
		return a.Get(r.Context(), r.PathValue("kind"), "")
	})
	handle("GET /v1/resources/{kind}/{name}", func(r *http.Request) (any, error) {
		return a.Get(r.Context(), r.PathValue("kind"), r.PathValue("name"))
	})
	handle("DELETE /v1/resources/{kind}/{name}", func(r *http.Request) (any, error) {
		return struct{}{}, a.Remove(r.Context(), r.PathValue("kind"), r.PathValue("name"))
	})
	handle("POST /v1/nodes", func(r *http.Request) (any, error) {
		var n nodeRequest
		if err := wire.DecodeStrict(r.Body, &n); err != nil {
			return nil, Mark(Invalid, err)
		}
		return struct{}{}, a.AddNode(r.Context(), n.Node)
	})
	handle("POST /v1/tokens/node", func(r *http.Request) (any, error) {
		var spec NodeTokenSpec
		if err := wire.DecodeStrict(r.Body, &spec); err != nil {
			return nil, Mark(Invalid, err)
		}
		return a.AddNodeToken(r.Context(), spec)
	})
	handle("GET /v1/export/{type}", func(r *http.Request) (any, error) {
		text, err := a.Export(r.Context(), r.PathValue("type"))
		return textResponse{Text: text}, err
	})
	handle("POST /v1/sign/host", func(r *http.Request) (any, error) {
		var req signHostRequest
		if err := wire.DecodeStrict(r.Body, &req); err != nil {
			return nil, Mark(Invalid, err)
		}
		cert, err := a.SignHost(r.Context(), req.PublicKey, req.Hosts, req.TTL)
		return textResponse{Text: cert}, err
	})
	handle("GET /v1/events", handleEvents(a))
	handle("POST /v1/rotate", func(r *http.Request) (any, error) {
		var req RotateRequest
		if err := wire.DecodeStrict(r.Body, &req); err != nil {
			return nil, Mark(Invalid, err)
		}
		return a.Rotate(r.Context(), req)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// %q: the path is decoded, so it may hold a line break.
		wire.WriteError(w, http.StatusNotFound, fmt.Sprintf("no admin API at %s %q; is the CLI newer than the authority?", r.Method, r.URL.Path))
	})
	return wire.Recover(log, mux)
}
