// Package joiner is the agent's side of the authority: it checks the
// authority's CA against a pin, joins (token or iam), keeps the renewable
// bot identity in a Store, and renews the output identity that the mount
// serves, on a loop that survives a missing authority and a suspended
// machine. It imports identity and wire, never auth or fs.
package joiner

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

// Agent holds a live identity and keeps it fresh. Join makes one; Run
// renews it until its context ends.
type Agent struct {
	cfg       Config
	log       *slog.Logger
	clock     clock.Clock
	pins      []string
	keys      *identity.KeySource
	tokenHash string
	auth      *authorities // the replicas, one of them current

	// Owned by the goroutine in Join and then Run.
	bot *bot
	api *apiClient // authenticates with bot
	// pending is the key of the join or renewal in flight, kept (in
	// memory and in the Store) until its answer arrives: a retry, here or
	// after a restart, sends the same request again.
	pending crypto.Signer
	botDue  bool        // the next renewal round starts with the bot identity
	nodeTag string      // ETag of the node list held, to ask only for a changed one
	caSet   *wire.CASet // the CAs the last node list carried (rotation.go)

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
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	servers, _ := ParseAuthServers(cfg.AuthServer) // checked by withDefaults
	log := cfg.Logger.With("component", "joiner")
	a := &Agent{
		cfg: cfg, log: log, clock: cfg.Clock,
		keys: identity.NewKeySource(cfg.Algorithm), tokenHash: tokenHash(cfg.Token),
		auth:     newAuthorities(servers, cfg.Resolver, log, cfg.Clock),
		renewNow: make(chan struct{}, 1),
	}
	if cfg.CAPin != "" {
		a.pins, _ = parsePins(cfg.CAPin) // checked by withDefaults
	}
	if cfg.CertTTL > wire.MaxTTL {
		a.log.Warn("certificate TTL above the authority's cap; it will issue shorter certificates", "ttl", cfg.CertTTL, "cap", wire.MaxTTL)
	}
	deadline := a.clock.Now().Add(cfg.JoinTimeout)
	if err := a.start(ctx, deadline); err != nil {
		a.api.close()
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
	if a.cfg.JoinMethod == wire.JoinToken {
		if err := a.restore(ctx, deadline); err != nil {
			return err
		}
	}
	if a.bot == nil {
		if err := a.join(ctx, deadline); err != nil {
			return err
		}
	}
	return a.retry(ctx, deadline, a.refreshOutput)
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
	a.mu.Lock()
	st := a.status
	a.mu.Unlock()
	st.AuthServer = a.auth.peek()
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
	defer func() { a.api.close() }() // a.api changes at every renewal
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
	a.mu.Lock()
	defer a.mu.Unlock()
	a.status.Renewals++
	a.status.Failing = false
	a.status.LastRenewal = now
	a.status.NextRenewal = next
	a.log.Info("renewed", "expires", a.status.Expires.Format(time.RFC3339), "generation", a.status.Generation, "next", next.Format(time.RFC3339))
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

// backoff is 1s, 2s, 4s... capped at a minute and at the renewal interval,
// each with jitter so that a fleet does not come back in lockstep.
func backoff(failures int, interval time.Duration) time.Duration {
	limit := min(time.Minute, interval)
	d := time.Second
	for i := 1; i < failures && d < limit; i++ {
		d *= 2
	}
	d = min(d, limit)
	return d/2 + rand.N(d/2+1)
}

// renew renews the bot identity (once per round, even when the output
// request of that round has to be retried) and then the output identity.
func (a *Agent) renew(ctx context.Context) error {
	if a.botDue {
		if err := a.renewBot(ctx); err != nil {
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

// restore takes the stored bot identity if it is usable and renews it,
// which also proves the authority still accepts it.
func (a *Agent) restore(ctx context.Context, deadline time.Time) error {
	store := a.cfg.Store
	blob, err := store.Load()
	if errors.Is(err, ErrNotStored) {
		return nil
	}
	if err != nil {
		a.log.Warn("cannot read the stored bot identity; joining with the token", "store", store.String(), "error", err)
		return nil
	}
	b, pending, s, err := unmarshalStored(blob)
	clear(blob)
	discard := func(msg string, args ...any) error {
		a.log.Info(msg, append(args, "store", store.String())...)
		if err := store.Delete(); err != nil {
			a.log.Warn("cannot delete the stored bot identity", "store", store.String(), "error", err)
		}
		return nil
	}
	switch {
	case err != nil:
		return discard("discarding an unreadable stored bot identity", "error", err)
	case !sameAuthority(s.AuthServer, a.cfg.AuthServer):
		return discard("discarding the stored bot identity of another authority", "stored", s.AuthServer)
	case a.cfg.Token != "" && s.TokenHash != a.tokenHash:
		return discard("a new join token was given: discarding the stored bot identity and joining again", "bot", s.BotName)
	case b == nil:
		// The last start was stopped during its join. join sends the
		// same request again, if it is given the same token.
		a.pending = pending
		a.log.Info("finishing a join that was cut short, with the key it sent", "store", store.String())
		return nil
	case !a.clock.Now().Before(b.expires()):
		return discard("the stored bot identity has expired; joining with the token", "bot", s.BotName, "expired", b.expires().Format(time.RFC3339))
	case len(a.pins) > 0 && !pinsVouch(a.pins, b):
		return discard("the stored bot identity trusts CAs that do not match the CA pin; joining again", "bot", s.BotName)
	}
	a.tokenHash = s.TokenHash
	if len(a.pins) > 0 && checkPins(a.cfg.AuthServer, a.pins, b.hostCAs) == nil {
		b.pinnedBy = strings.Join(a.pins, ",") // the pins given vouch for the CAs held: a chain starts here
	}
	a.pending = pending
	a.setBot(b)
	a.log.Info("restarting from the stored bot identity", "bot", b.name, "generation", b.generation, "renewal_in_flight", pending != nil, "store", store.String())
	err = a.retry(ctx, deadline, a.renewBot)
	if err != nil && errors.Is(err, ErrRefused) {
		return &kindError{kind: ErrRefused, cause: err, msg: fmt.Sprintf(
			"%v; if the bot was locked, run `midfs bots unlock %s` on the authority, otherwise join again with a new --token", err, b.name)}
	}
	return err
}

// join checks the pin and trades the token (or the AWS identity) for a
// bot identity.
func (a *Agent) join(ctx context.Context, deadline time.Time) error {
	if a.cfg.Token == "" && a.pending != nil {
		return &kindError{kind: ErrConfig, msg: fmt.Sprintf(
			"the last start was stopped during its join and %s keeps no token: give the same --token again to finish that join", a.cfg.Store)}
	}
	if a.cfg.Token == "" {
		return &kindError{kind: ErrConfig, msg: fmt.Sprintf(
			"no join token, and no stored bot identity for this mount in %s: give --token (printed by `midfs bots add`)", a.cfg.Store)}
	}
	if len(a.pins) == 0 {
		return &kindError{kind: ErrConfig, msg: "refusing to send the join token to an authority nobody vouched for: give --ca-pin=sha256:... as printed by `midfs bots add` and `midfs status`"}
	}
	cas, err := a.pinnedCAs(ctx, deadline)
	if err != nil {
		return err
	}
	api := newAPIClient(a.auth, certPool(cas), nil, nil)
	defer api.close()
	// Every retry sends the same public key, and so does a restart after a
	// crash (the key is stored before it is sent): the authority answers a
	// repeated join for the same key with the same bot, so an answer lost
	// on the way back does not burn the one-time token.
	key, err := a.pendingKey()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	var bi *wire.BotIdentity
	err = a.retry(ctx, deadline, func(ctx context.Context) (err error) {
		bi, err = a.joinOnce(ctx, api, pub)
		return err
	})
	if errors.Is(err, ErrRefused) && a.cfg.JoinMethod == wire.JoinToken {
		return &kindError{kind: ErrRefused, cause: err, msg: "join refused: " + err.Error() +
			"; ask the authority's admin for a new token (`midfs bots add NAME`); the ref finds the reason in the authority's log"}
	}
	if errors.Is(err, ErrRefused) {
		return &kindError{kind: ErrRefused, cause: err, msg: "join refused: " + err.Error()}
	}
	if err != nil {
		return err
	}
	b, err := newBot(bi, key, cas)
	if err != nil {
		return err
	}
	b.pinnedBy = strings.Join(a.pins, ",")
	a.pending = nil
	a.setBot(b)
	a.save()
	a.log.Info("joined the authority", "bot", b.name, "cluster", b.cluster, "method", a.cfg.JoinMethod, "generation", b.generation, "addr", a.auth.peek())
	return nil
}

// pinnedCAs fetches the host CAs from a replica and checks them against
// the pins, once: every later connection, to any replica, must present a
// server certificate of these CAs. A replica whose CAs do not match (a
// wrong entry in the list) is passed over while others are left to try.
func (a *Agent) pinnedCAs(ctx context.Context, deadline time.Time) ([]*x509.Certificate, error) {
	var cas []*x509.Certificate
	mismatches := 0
	err := a.retry(ctx, deadline, func(ctx context.Context) error {
		addr := a.auth.current(ctx)
		got, err := fetchCAs(ctx, a.auth)
		if err != nil {
			return err
		}
		if err := checkPins(addr, a.pins, got); err != nil {
			if mismatches++; mismatches < a.auth.count(ctx) {
				a.auth.fail(addr, err)
				return &retryable{err}
			}
			return err
		}
		cas = got
		return nil
	})
	return cas, err
}

func (a *Agent) joinOnce(ctx context.Context, api *apiClient, pub []byte) (*wire.BotIdentity, error) {
	if a.cfg.JoinMethod == wire.JoinIAM {
		return joinIAM(ctx, &a.cfg, api, pub)
	}
	var bi wire.BotIdentity
	if err := api.call(ctx, http.MethodPost, wire.PathJoin, wire.JoinRequest{Token: a.cfg.Token, PublicKey: pub}, &bi); err != nil {
		return nil, err
	}
	return &bi, nil
}

// renewBot trades the bot identity for the next one. An iam bot has no
// renewable identity: it joins again.
func (a *Agent) renewBot(ctx context.Context) error {
	b := a.bot
	if b.renewable && !a.clock.Now().Before(b.expires()) {
		return &kindError{kind: ErrRefused, msg: fmt.Sprintf(
			"the identity of bot %q expired at %s while it could not be renewed; on the authority run `midfs bots rm %s` and `midfs bots add %s --roles=...`, then mount with the new token",
			b.name, b.expires().Format(time.RFC3339), b.name, b.name)}
	}
	// A retry after a lost answer reuses the key, as join does, also after
	// a restart: the authority re-issues the renewal it already made for
	// that key, where a new key would find the generation moved on and
	// lock the bot.
	key, err := a.pendingKey()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	var bi *wire.BotIdentity
	if b.renewable {
		var r wire.BotIdentity
		err = a.api.call(ctx, http.MethodPost, wire.PathRenew, wire.RenewRequest{PublicKey: pub}, &r)
		bi = &r
	} else {
		api := newAPIClient(a.auth, certPool(b.hostCAs), nil, nil)
		bi, err = joinIAM(ctx, &a.cfg, api, pub)
		api.close()
	}
	if err != nil {
		// a.pending stays: even after a refusal (the bot is locked, say)
		// the authority may have certified it, and it is what the next
		// attempt must send once an administrator has looked.
		if errors.Is(err, ErrRefused) {
			return &kindError{kind: ErrRefused, cause: err, msg: fmt.Sprintf("the authority refused to renew bot %q: %v", b.name, err)}
		}
		return err
	}
	nb, err := newBot(bi, key, b.hostCAs)
	if err != nil {
		return err
	}
	nb.pinnedBy = b.pinnedBy
	a.pending = nil
	a.setBot(nb)
	a.save()
	a.log.Debug("bot identity renewed", "bot", nb.name, "generation", nb.generation, "expires", nb.expires().Format(time.RFC3339))
	return nil
}

// setBot switches to a new bot identity, and to a new client so that no
// kept-alive connection presents the previous certificate (whose
// generation the authority would see as stale).
func (a *Agent) setBot(b *bot) {
	a.api.close()
	a.bot = b
	a.api = newAPIClient(a.auth, certPool(b.hostCAs), b.key, b.cert)
	a.mu.Lock()
	a.status.BotName, a.status.ClusterName = b.name, b.cluster
	a.status.Generation, a.status.BotExpires = b.generation, b.expires()
	a.mu.Unlock()
}

// pendingKey returns the key of the join or renewal in flight, or makes
// one and stores it before the request that carries it is sent.
func (a *Agent) pendingKey() (crypto.Signer, error) {
	if a.pending != nil {
		return a.pending, nil
	}
	key, err := a.keys.Next()
	if err != nil {
		return nil, err
	}
	a.pending = key
	a.save()
	return key, nil
}

// save keeps the bot identity and the key in flight right after either
// changed. If that fails the stored copy is deleted: a stale copy would
// present an old generation with a new key at the next start and get the
// bot locked; no copy only costs a new token.
func (a *Agent) save() {
	if a.cfg.JoinMethod != wire.JoinToken {
		return // an iam bot joins again; nothing worth keeping
	}
	store := a.cfg.Store
	var expires time.Time // a join in flight: until it finishes or the machine reboots
	if a.bot != nil {
		expires = a.bot.expires()
	}
	blob, err := marshalStored(a.cfg.AuthServer, a.tokenHash, a.bot, a.pending)
	if err == nil {
		err = store.Save(blob, expires)
		clear(blob)
	}
	if err != nil {
		a.log.Warn("cannot save the bot identity; a restart will need a new join token", "store", store.String(), "error", err)
		if err := store.Delete(); err != nil {
			a.log.Warn("cannot delete the stale stored bot identity; a restart may lock the bot", "store", store.String(), "error", err)
		}
	}
}

// refreshOutput gets a new output identity, for a fresh key, and the
// node list.
func (a *Agent) refreshOutput(ctx context.Context) error {
	key, err := a.keys.Next()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	var certs wire.Certs
	req := wire.CertsRequest{PublicKey: pub, TTLSeconds: int64(a.cfg.CertTTL / time.Second)}
	if err := a.api.call(ctx, http.MethodPost, wire.PathCerts, req, &certs); err != nil {
		if errors.Is(err, ErrRefused) {
			return &kindError{kind: ErrRefused, cause: err, msg: fmt.Sprintf("the authority refused certificates to bot %q: %v", a.bot.name, err)}
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
	a.trustHostCAs(hostCerts(id.CAs.Host))
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
	nodes, cas, tag, err := a.api.nodes(ctx, a.nodeTag)
	if errors.Is(err, errNotModified) {
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

// retry runs op until it succeeds, fails for good, or deadline (on
// a.clock) passes; only *retryable failures are retried.
func (a *Agent) retry(ctx context.Context, deadline time.Time, op func(context.Context) error) error {
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil || !isRetryable(err) {
			return err
		}
		left := deadline.Sub(a.clock.Now())
		if left <= 0 {
			return &kindError{kind: ErrUnreachable, cause: err, msg: fmt.Sprintf(
				"%v; gave up after %v (--join-timeout): check the address and that the authority is running", err, a.cfg.JoinTimeout)}
		}
		d := min(delay/2+rand.N(delay/2+1), left)
		a.log.Warn("authority not reachable yet; retrying", "error", err, "attempt", attempt, "retry_in", d.Round(time.Millisecond).String())
		t := a.clock.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C():
		}
		delay = min(delay*2, 5*time.Second)
	}
}
