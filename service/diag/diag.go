// Package diag is the diagnostics server (--diag-addr) of a long-running
// command. It answers what operators' tools ask: /livez (the process
// answers), /readyz (JSON per component, 200 only when every component is
// healthy, as tbot does) and /metrics (Prometheus text). It serves plain
// HTTP and belongs on loopback.
//
// It imports the standard library and the Prometheus client, nothing of
// midfs; the service package and cmd/midfs's wiring use it.
package diag

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Health states of a component.
const (
	Healthy      = "healthy"
	Unhealthy    = "unhealthy"
	Initializing = "initializing"
)

// Health is one component's state as /readyz shows it.
type Health struct {
	Status    string    `json:"status"`
	Reason    string    `json:"reason,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Readyz is the body of /readyz.
type Readyz struct {
	Status   string            `json:"status"`
	Services map[string]Health `json:"services"`
}

// Server holds the metrics registry and the health checks; it exists
// whether or not it serves, so components register unconditionally.
type Server struct {
	reg    *prometheus.Registry
	now    func() time.Time
	mu     sync.Mutex
	checks map[string]func() Health
	opens  *prometheus.CounterVec
	signs  *prometheus.CounterVec
	srv    *http.Server
	addr   string
}

// New makes a Server with the Go runtime and process collectors registered.
func New() *Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opens := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "midfs_agent_opens_total", Help: "Opens of the served files by file and result.",
	}, []string{"file", "result"})
	signs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "midfs_agent_ssh_signatures_total", Help: "Signature requests to the ssh-agent socket by result.",
	}, []string{"result"})
	return &Server{reg: reg, now: time.Now, checks: map[string]func() Health{}, opens: opens, signs: signs}
}

// AddCheck makes name a component of /readyz; check is called per request.
func (d *Server) AddCheck(name string, check func() Health) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.checks[name] = check
}

// readiness evaluates every check. With no component registered yet the
// process is still starting: initializing, not ready.
func (d *Server) readiness() Readyz {
	d.mu.Lock()
	checks := maps.Clone(d.checks)
	d.mu.Unlock()
	r := Readyz{Status: Healthy, Services: map[string]Health{}}
	if len(checks) == 0 {
		r.Status = Initializing
	}
	for name, check := range checks {
		h := check()
		r.Services[name] = h
		r.Status = worse(r.Status, h.Status)
	}
	return r
}

// worse orders states: unhealthy beats initializing beats healthy.
func worse(a, b string) string {
	rank := map[string]int{Healthy: 0, Initializing: 1, Unhealthy: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func (d *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "OK")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		r := d.readiness()
		writeJSON(w, statusCode(r.Status), r)
	})
	mux.HandleFunc("GET /readyz/{service}", func(w http.ResponseWriter, req *http.Request) {
		r := d.readiness()
		h, ok := r.Services[req.PathValue("service")]
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such service; known: " + strings.Join(slices.Sorted(maps.Keys(r.Services)), ", ")})
			return
		}
		writeJSON(w, statusCode(h.Status), h)
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{Registry: d.reg}))
	return mux
}

func statusCode(status string) int {
	if status == Healthy {
		return http.StatusOK
	}
	return http.StatusServiceUnavailable
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// Metrics is where components register their collectors.
func (d *Server) Metrics() prometheus.Registerer { return d.reg }

// Serve listens on addr now, so a bad address fails the command at start,
// and serves in the background until Close. limit, when not nil, wraps the
// listener once the server exists (it may set the server's ConnState).
func (d *Server) Serve(addr string, limit func(*http.Server, net.Listener) net.Listener) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	d.addr = ln.Addr().String()
	// Any local user can connect: bound what idle connections can hold,
	// or a flood of them takes the descriptors the agent or authority
	// needs for its real work (limit caps their number).
	d.srv = &http.Server{
		Handler:           d.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       10 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
	if limit != nil {
		ln = limit(d.srv, ln)
	}
	go func() {
		if err := d.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Warn("diagnostics server stopped", "err", err)
		}
	}()
	slog.Info("diagnostics served", "addr", d.addr, "paths", "/livez /readyz /metrics")
	return nil
}

// Addr is the address Serve listens on.
func (d *Server) Addr() string { return d.addr }

// Close stops serving; it is a no-op when Serve was not called.
func (d *Server) Close() {
	if d.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = d.srv.Shutdown(ctx)
}

// AgentStatus is what the agent tells diagnostics about its identity; the
// mount command adapts the joiner's status to it.
type AgentStatus struct {
	Expires     time.Time // NotAfter of the served identity; zero before the first one
	LastRenewal time.Time // last successful renewal (or the join)
	LastAttempt time.Time // last renewal attempt, successful or not
	LastError   string    // error of the last attempt; "" when it succeeded
	Renewals    uint64    // renewal attempts
	Failures    uint64    // failed renewal attempts
	AuthServer  string    // the replica of the authority in use, if known
}

// WatchAgent registers the agent's metrics and its /readyz components:
// "identity" (unhealthy once expired) and "renewal" (unhealthy while the
// last attempt failed). status is called per scrape and per request.
func (d *Server) WatchAgent(status func() AgentStatus) {
	d.reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "midfs_agent_renewals_total", Help: "Renewal attempts of the served identity.",
		}, func() float64 { return float64(status().Renewals) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "midfs_agent_renewals_failed_total", Help: "Renewal attempts that failed.",
		}, func() float64 { return float64(status().Failures) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "midfs_agent_identity_expiry_timestamp_seconds", Help: "Unix time at which the served identity expires; 0 before the first.",
		}, func() float64 {
			if e := status().Expires; !e.IsZero() {
				return float64(e.UnixMilli()) / 1000
			}
			return 0
		}),
		d.opens,
		d.signs,
	)
	d.AddCheck("identity", func() Health { return identityHealth(status(), d.now()) })
	d.AddCheck("renewal", func() Health { return renewalHealth(status()) })
}

func identityHealth(s AgentStatus, now time.Time) Health {
	switch {
	case s.Expires.IsZero():
		return Health{Status: Initializing, Reason: "waiting for the first identity", UpdatedAt: now}
	case !now.Before(s.Expires):
		return Health{Status: Unhealthy, Reason: "identity expired at " + s.Expires.UTC().Format(time.RFC3339), UpdatedAt: s.LastRenewal}
	}
	return Health{Status: Healthy, Reason: "identity expires at " + s.Expires.UTC().Format(time.RFC3339), UpdatedAt: s.LastRenewal}
}

func renewalHealth(s AgentStatus) Health {
	if s.LastError != "" {
		return Health{Status: Unhealthy, Reason: "last renewal failed: " + s.LastError, UpdatedAt: s.LastAttempt}
	}
	if s.LastRenewal.IsZero() {
		return Health{Status: Initializing, Reason: "not joined yet", UpdatedAt: s.LastAttempt}
	}
	h := Health{Status: Healthy, UpdatedAt: s.LastRenewal}
	if s.AuthServer != "" {
		h.Reason = "renewing through the authority at " + s.AuthServer
	}
	return h
}

// OnOpen counts opens of the served files by file and result ("ok",
// "denied", "erofs"); it is the fs package's OnOpen hook, on the open path.
// Connections to the ssh-agent socket count here too, as file "ssh-agent":
// each one is a use of the key, as an open of key is.
func (d *Server) OnOpen(file, result string) {
	d.opens.WithLabelValues(file, result).Inc()
}

// OnSign counts signature requests to the ssh-agent socket by result
// ("ok", "expired", "unknown_key", "failed").
func (d *Server) OnSign(result string) {
	d.signs.WithLabelValues(result).Inc()
}
