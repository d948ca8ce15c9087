package auth

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
)

// AdminSocket is the path of the admin socket of a data directory.
func AdminSocket(dataDir string) string { return filepath.Join(dataDir, "admin.sock") }

// maxAdminBody caps admin requests: resource files are small.
const maxAdminBody = 4 << 20

type peerKey struct{}

// serveAdmin listens on DATA_DIR/admin.sock (0600) and serves the admin API
// to root, or to the uid the authority runs as, checked by SO_PEERCRED on
// every connection.
func (s *Server) serveAdmin() error {
	path := AdminSocket(s.cfg.DataDir)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another authority is serving %s; stop it or use another --data-dir", path)
	}
	os.Remove(path) // stale, from a killed authority
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("admin socket %s: %w", path, err)
	}
	s.adminLn = ln
	s.admin = &http.Server{
		Handler:           s.adminRoutes(),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerUID(c))
		},
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.admin.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin socket stopped", "err", err)
		}
	}()
	return nil
}

// peerUID is the uid of the process at the other end, or -1.
func peerUID(c net.Conn) int {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return -1
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return -1
	}
	uid := -1
	raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			uid = int(cred.Uid)
		}
	})
	return uid
}

type adminHandler func(w http.ResponseWriter, r *http.Request) (any, error)

func (s *Server) adminRoutes() http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern string, h adminHandler) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			uid, _ := r.Context().Value(peerKey{}).(int)
			if uid != 0 && uid != os.Getuid() {
				s.log.Warn("admin request refused", "uid", uid, "path", r.URL.Path)
				writeError(w, http.StatusForbidden, fmt.Sprintf("the admin socket is for root; uid %d may not use it", uid))
				return
			}
			r.Body = http.MaxBytesReader(w, r.Body, maxAdminBody)
			v, err := h(w, r)
			if err != nil {
				// Root's own authority answers root: the text of an
				// internal error is shown too, and logged for the record.
				kind := admin.KindOf(err)
				if kind == admin.Internal {
					s.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
				}
				writeError(w, kind.Status(), err.Error())
				return
			}
			writeJSON(w, v)
		})
	}
	handle("GET /v1/status", func(w http.ResponseWriter, r *http.Request) (any, error) { return s.Status(r.Context()) })
	handle("POST /v1/bots", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var spec BotSpec
		if err := decodeStrict(r.Body, &spec); err != nil {
			return nil, admin.Mark(admin.Invalid, err)
		}
		return s.AddBot(r.Context(), spec)
	})
	handle("DELETE /v1/bots/{name}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return struct{}{}, s.RemoveBot(r.Context(), r.PathValue("name"))
	})
	handle("POST /v1/bots/{name}/unlock", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return struct{}{}, s.UnlockBot(r.Context(), r.PathValue("name"))
	})
	handle("POST /v1/resources", func(w http.ResponseWriter, r *http.Request) (any, error) {
		data, err := policy.ReadResourceYAML(r.Body)
		if err != nil {
			return nil, admin.Mark(admin.Invalid, err)
		}
		return s.CreateYAML(r.Context(), data, r.URL.Query().Get("force") == "true")
	})
	handle("GET /v1/resources/{kind}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return s.Get(r.Context(), r.PathValue("kind"), "")
	})
	handle("GET /v1/resources/{kind}/{name}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return s.Get(r.Context(), r.PathValue("kind"), r.PathValue("name"))
	})
	handle("DELETE /v1/resources/{kind}/{name}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		return struct{}{}, s.Remove(r.Context(), r.PathValue("kind"), r.PathValue("name"))
	})
	handle("POST /v1/nodes", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var n nodeRequest
		if err := decodeStrict(r.Body, &n); err != nil {
			return nil, admin.Mark(admin.Invalid, err)
		}
		return struct{}{}, s.AddNode(r.Context(), n.Node)
	})
	handle("GET /v1/export/{type}", func(w http.ResponseWriter, r *http.Request) (any, error) {
		text, err := s.Export(r.Context(), r.PathValue("type"))
		return textResponse{Text: text}, err
	})
	handle("POST /v1/sign/host", func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req signHostRequest
		if err := decodeStrict(r.Body, &req); err != nil {
			return nil, admin.Mark(admin.Invalid, err)
		}
		cert, err := s.SignHost(r.Context(), req.PublicKey, req.Hosts, req.TTL)
		return textResponse{Text: cert}, err
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// %q: the path is decoded, so it may hold a line break.
		writeError(w, http.StatusNotFound, fmt.Sprintf("no admin API at %s %q; is the CLI newer than the authority?", r.Method, r.URL.Path))
	})
	return recoverer(s, mux)
}

type textResponse struct {
	Text string `json:"text"`
}

type signHostRequest struct {
	PublicKey string        `json:"public_key"` // authorized_keys form
	Hosts     []string      `json:"hosts"`
	TTL       time.Duration `json:"ttl"`
}

type nodeRequest struct {
	Node identity.Node `json:"node"`
}
