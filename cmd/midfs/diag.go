package main

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

	"github.com/midfs/midfs/auth"
)

// The diagnostics server (--diag-addr) answers what operators' tools ask:
// /livez (the process answers), /readyz (JSON per component, 200 only when
// every component is healthy, as tbot does) and /metrics (Prometheus text).
// It serves plain HTTP and belongs on loopback.

// Health states of a component.
const (
	healthy      = "healthy"
	unhealthy    = "unhealthy"
	initializing = "initializing"
)

// health is one component's state as /readyz shows it.
type health struct {
	Status    string    `json:"status"`
	Reason    string    `json:"reason,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// readyz is the body of /readyz.
type readyz struct {
	Status   string            `json:"status"`
	Services map[string]health `json:"services"`
}

// diag holds the metrics registry and the health checks; it exists whether
// or not --diag-addr is given, so components register unconditionally.
type diag struct {
	reg    *prometheus.Registry
	now    func() time.Time
	mu     sync.Mutex
	checks map[string]func() health
	opens  *prometheus.CounterVec
	srv    *http.Server
	addr   string
}

func newDiag() *diag {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opens := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "midfs_agent_opens_total", Help: "Opens of the served files by file and result.",
	}, []string{"file", "result"})
	return &diag{reg: reg, now: time.Now, checks: map[string]func() health{}, opens: opens}
}

// addCheck makes name a component of /readyz; check is called per request.
func (d *diag) addCheck(name string, check func() health) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.checks[name] = check
}

// readiness evaluates every check. With no component registered yet the
// process is still starting: initializing, not ready.
func (d *diag) readiness() readyz {
	d.mu.Lock()
	checks := maps.Clone(d.checks)
	d.mu.Unlock()
	r := readyz{Status: healthy, Services: map[string]health{}}
	if len(checks) == 0 {
		r.Status = initializing
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
	rank := map[string]int{healthy: 0, initializing: 1, unhealthy: 2}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func (d *diag) handler() http.Handler {
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
	if status == healthy {
		return http.StatusOK
	}
	return http.StatusServiceUnavailable
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// diagMaxConns caps the diagnostics server's connections: a few health
// checkers and scrapers at a time.
const diagMaxConns = 64

// serve listens on addr now, so a bad address fails the command at start,
// and serves in the background until close.
func (d *diag) serve(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return failf(exitUsage, "cannot serve diagnostics on --diag-addr=%s: %v", addr, err)
	}
	d.addr = ln.Addr().String()
	// Any local user can connect: bound what idle connections can hold,
	// or a flood of them takes the descriptors the agent or authority
	// needs for its real work.
	d.srv = &http.Server{
		Handler:           d.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       10 * time.Second,
		MaxHeaderBytes:    8 << 10,
	}
	limited := auth.LimitConnections(d.srv, ln, diagMaxConns, nil)
	go func() {
		if err := d.srv.Serve(limited); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Warn("diagnostics server stopped", "err", err)
		}
	}()
	slog.Info("diagnostics served", "addr", d.addr, "paths", "/livez /readyz /metrics")
	return nil
}

func (d *diag) close() {
	if d.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = d.srv.Shutdown(ctx)
}

// agentStatus is what the agent tells diagnostics about its identity; the
// mount command adapts the joiner's status to it.
type agentStatus struct {
	Expires     time.Time // NotAfter of the served identity; zero before the first one
	LastRenewal time.Time // last successful renewal (or the join)
	LastAttempt time.Time // last renewal attempt, successful or not
	LastError   string    // error of the last attempt; "" when it succeeded
	Renewals    uint64    // renewal attempts
	Failures    uint64    // failed renewal attempts
}

// watchAgent registers the agent's metrics and its /readyz components:
// "identity" (unhealthy once expired) and "renewal" (unhealthy while the
// last attempt failed). status is called per scrape and per request.
func (d *diag) watchAgent(status func() agentStatus) {
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
	)
	d.addCheck("identity", func() health { return identityHealth(status(), d.now()) })
	d.addCheck("renewal", func() health { return renewalHealth(status()) })
}

func identityHealth(s agentStatus, now time.Time) health {
	switch {
	case s.Expires.IsZero():
		return health{Status: initializing, Reason: "waiting for the first identity", UpdatedAt: now}
	case !now.Before(s.Expires):
		return health{Status: unhealthy, Reason: "identity expired at " + s.Expires.UTC().Format(time.RFC3339), UpdatedAt: s.LastRenewal}
	}
	return health{Status: healthy, Reason: "identity expires at " + s.Expires.UTC().Format(time.RFC3339), UpdatedAt: s.LastRenewal}
}

func renewalHealth(s agentStatus) health {
	if s.LastError != "" {
		return health{Status: unhealthy, Reason: "last renewal failed: " + s.LastError, UpdatedAt: s.LastAttempt}
	}
	if s.LastRenewal.IsZero() {
		return health{Status: initializing, Reason: "not joined yet", UpdatedAt: s.LastAttempt}
	}
	return health{Status: healthy, UpdatedAt: s.LastRenewal}
}

// onOpen counts opens of the served files by file and result ("ok",
// "denied", "erofs"); it is the fs package's OnOpen hook, on the open path.
func (d *diag) onOpen(file, result string) {
	d.opens.WithLabelValues(file, result).Inc()
}
