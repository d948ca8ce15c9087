// Package joiner is the agent's side of the authority: it checks the
// authority's CA against a pin, joins (token or iam), keeps the renewable
// bot identity in a Store, and renews the output identity that the mount
// serves, on a loop that survives a missing authority and a suspended
// machine. It imports identity and wire, never auth or fs.
package joiner

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

// Agent holds a live identity and keeps it fresh. Join makes one; Run
// renews it until its context ends.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	clock clock.Clock

	// Owned by the goroutine in Join and then Run.
	sess    *Session
	botDue  bool   // the next renewal round starts with the bot identity
	nodeTag string // ETag of the node list held, to ask only for a changed one

	renewNow chan struct{}

	mu     sync.Mutex
	id     *identity.Identity
	nodes  []identity.Node
	status Status
}

// Status is what diagnostics show of the agent.
type Status struct {
	BotName      string
	ClusterName  string
	Generation   uint64    // of the bot identity
	Expires      time.Time // of the output identity the mount serves
	BotExpires   time.Time
	LastRenewal  time.Time // last successful renewal (or the join)
	NextRenewal  time.Time
	LastError    string // of the last failed attempt; kept after recovery
	LastErrorAt  time.Time
	Failing      bool // the last renewal attempt failed
	NodesUpdated time.Time
	Nodes        int
	// AuthServer is the replica of the authority the agent talks to now.
	AuthServer string
	// Renewals counts renewal attempts of the loop, successful or not;
	// RenewalsFailed the failed ones.
	Renewals       uint64
	RenewalsFailed uint64
}

// Join gets a first output identity and node list: from the bot identity
// in cfg.Store if there is a usable one (no token needed), otherwise by
// joining with cfg.Token after checking the CA pin. Network failures are
// retried until cfg.JoinTimeout; refusals are final. Errors are of the
// kinds in errors.go.
func Join(ctx context.Context, cfg Config) (*Agent, error) {
	sess, err := newSession(cfg)
	if err != nil {
		return nil, err
	}
	cfg = sess.cfg // with defaults
	a := &Agent{cfg: cfg, log: sess.log, clock: cfg.Clock, sess: sess, renewNow: make(chan struct{}, 1)}
	if cfg.CertTTL > wire.MaxTTL {
		a.log.Warn("certificate TTL above the authority's cap; it will issue shorter certificates", "ttl", cfg.CertTTL, "cap", wire.MaxTTL)
	}
	deadline := a.clock.Now().Add(cfg.JoinTimeout)
	if err := a.start(ctx, deadline); err != nil {
		sess.Close()
		return nil, err
	}
	now := a.clock.Now()
	a.mu.Lock()
	a.status.LastRenewal = now
	a.status.NextRenewal = now.Add(cfg.RenewInterval)
	a.mu.Unlock()
	a.botDue = true
	return a, nil
}

func (a *Agent) start(ctx context.Context, deadline time.Time) error {
	if err := a.sess.open(ctx, deadline); err != nil {
		return err
	}
	return a.sess.retry(ctx, deadline, a.refreshOutput)
}

// Current returns the identity to serve and the nodes it may reach. Both
// are shared: do not modify them.
func (a *Agent) Current() (*identity.Identity, []identity.Node) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id, a.nodes
}

// Status returns a copy of the agent's status.
func (a *Agent) Status() Status {
	info := a.sess.Info()
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.status
	st.BotName, st.ClusterName, st.Generation, st.BotExpires = info.BotName, info.ClusterName, info.Generation, info.Expires
	st.AuthServer = a.sess.auth.peek()
	return st
}

// RenewNow asks Run to renew at once (SIGHUP). It never blocks.
func (a *Agent) RenewNow() {
	select {
	case a.renewNow <- struct{}{}:
	default:
	}
}

// Start runs Run in the background until stop is called; stop returns once
// Run has, so publish is not called after it.
func (a *Agent) Start(publish func(*identity.Identity, []identity.Node)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Run(ctx, publish)
	}()
	return func() { cancel(); <-done }
}

// Run renews every RenewInterval and refreshes the node list every
// NodesInterval, calling publish with every new identity and every changed
// node list. On failure it keeps the current identity, retries with
// exponential backoff and jitter, and recovers by itself. It returns when
// ctx ends.
func (a *Agent) Run(ctx context.Context, publish func(*identity.Identity, []identity.Node)) error {
	defer a.sess.Close()
	interval, nodesEvery := a.cfg.RenewInterval, a.cfg.NodesInterval
	// Deadlines are compared on the wall clock (Round(0) drops Go's
	// monotonic reading, which stands still while the machine sleeps).
	now := a.clock.Now().Round(0)
	st := a.Status()
	nextRenew := st.NextRenewal.Round(0)
	nextNodes := st.NodesUpdated.Round(0).Add(nodesEvery)
	failures := 0
	for {
		wait := min(nextRenew.Sub(now), nextNodes.Sub(now), wallTick)
		t := a.clock.NewTimer(max(wait, 0))
		force := false
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-a.renewNow:
			t.Stop()
			force = true
		case <-t.C():
		}
		now = a.clock.Now().Round(0)
		switch {
		case force || !now.Before(nextRenew):
			err := a.renew(ctx)
			if ctx.Err() != nil {
				return nil
			}
			now = a.clock.Now().Round(0)
			if err != nil {
				failures++
				d := backoff(failures, interval)
				nextRenew = now.Add(d)
				a.renewFailed(err, now, nextRenew, d, failures)
				continue
			}
			failures = 0
			nextRenew, nextNodes = now.Add(interval), now.Add(nodesEvery)
			id, nodes := a.renewed(now, nextRenew)
			publish(id, nodes)
		case !now.Before(nextNodes):
			nextNodes = now.Add(nodesEvery)
			changed, err := a.refreshNodes(ctx)
			if err != nil {
				a.log.Warn("node list refresh failed; keeping the current list", "error", err)
				continue
			}
			if changed {
				id, nodes := a.Current()
				a.log.Info("node list changed", "nodes", len(nodes))
				publish(id, nodes)
			}
		}
	}
}

func (a *Agent) renewed(now, next time.Time) (*identity.Identity, []identity.Node) {
	gen := a.sess.Info().Generation // the session keeps the bot identity, and its generation
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.Renewals++
	a.status.Failing = false
	a.status.LastRenewal = now
	a.status.NextRenewal = next
	a.log.Info("renewed", "expires", a.status.Expires.Format(time.RFC3339), "generation", gen, "next", next.Format(time.RFC3339))
	return a.id, a.nodes
}

func (a *Agent) renewFailed(err error, now, next time.Time, d time.Duration, failures int) {
	a.mu.Lock()
	a.status.Renewals++
	a.status.RenewalsFailed++
	a.status.Failing = true
	a.status.LastError = err.Error()
	a.status.LastErrorAt = now
	a.status.NextRenewal = next
	exp := a.status.Expires
	a.mu.Unlock()
	if !now.Before(exp) {
		a.log.Error("renewal failed and the served identity has expired", "error", err, "expired", exp.Format(time.RFC3339), "retry_in", d.Round(time.Millisecond).String(), "failures", failures)
		return
	}
	a.log.Warn("renewal failed; still serving the current identity", "error", err, "expires", exp.Format(time.RFC3339), "retry_in", d.Round(time.Millisecond).String(), "failures", failures)
}

// renew renews the bot identity (once per round, even when the output
// request of that round has to be retried) and then the output identity.
func (a *Agent) renew(ctx context.Context) error {
	if a.botDue {
		if err := a.sess.renewBot(ctx); err != nil {
			return err
		}
		a.botDue = false
	}
	if err := a.refreshOutput(ctx); err != nil {
		return err
	}
	a.botDue = true
	return nil
}

// refreshOutput gets a new output identity, for a fresh key, and the
// node list.
func (a *Agent) refreshOutput(ctx context.Context) error {
	key, err := a.sess.keys.Next()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	var certs wire.Certs
	req := wire.CertsRequest{PublicKey: pub, TTLSeconds: int64(a.cfg.CertTTL / time.Second)}
	if err := a.sess.api.call(ctx, http.MethodPost, wire.PathCerts, req, &certs); err != nil {
		if errors.Is(err, ErrRefused) {
			return &kindError{kind: ErrRefused, cause: err, msg: fmt.Sprintf("the authority refused certificates to bot %q: %v", a.sess.bot.name, err)}
		}
		return err
	}
	id, err := buildIdentity(&certs, key)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.id = id
	a.status.Expires = id.Expires()
	a.mu.Unlock()
	a.sess.trustHostCAs(hostCerts(id.CAs.Host))
	// The identity must never be lost over the node list: without one, the
	// mount serves the last list (or none) and Run asks again.
	if _, err := a.refreshNodes(ctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err() // stopping
		}
		a.log.Warn("cannot get the node list; serving the last one and asking again", "error", err, "nodes", a.Status().Nodes, "retry_in", a.cfg.NodesInterval.String())
	}
	return nil
}

// refreshNodes fetches the node list unless it is unchanged since the
// last one, follows the CAs it carries (rotation.go), and says whether
// the list or the CAs served changed.
func (a *Agent) refreshNodes(ctx context.Context) (bool, error) {
	nodes, cas, tag, err := a.sess.api.nodes(ctx, a.nodeTag)
	if errors.Is(err, ErrNotModified) {
		a.mu.Lock()
		a.status.NodesUpdated = a.clock.Now()
		a.mu.Unlock()
		return false, nil
	}
	if err != nil {
		return false, err
	}
	a.nodeTag = tag
	casChanged := a.followCAs(cas)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.NodesUpdated = a.clock.Now()
	if sameNodes(nodes, a.nodes) {
		return casChanged, nil
	}
	a.nodes, a.status.Nodes = nodes, len(nodes)
	return true, nil
}
