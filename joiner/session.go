package joiner

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

// Session is the renewable bot identity of an agent, and the client of
// the authority that presents it: joined with the token (or restored from
// the Store, with no token), renewed so that neither a lost answer nor a
// crash at any moment burns the token or locks the bot (the key of a join
// or renewal in flight is stored before the request is sent, and sent
// again). The mount's Agent and the node side (package node) each hold
// one; what they fetch with it differs.
//
// A Session is not safe for concurrent use: one goroutine joins, renews
// and calls through it.
type Session struct {
	cfg       Config
	log       *slog.Logger
	clock     clock.Clock
	pins      []string
	keys      *identity.KeySource
	tokenHash string
	auth      *authorities // the replicas, one of them current

	bot *bot
	api *apiClient // authenticates with bot
	// pending is the key of the join or renewal in flight, kept (in
	// memory and in the Store) until its answer arrives: a retry, here or
	// after a restart, sends the same request again.
	pending crypto.Signer
	cas     *wire.CASet // the CAs the authority last sent (rotation.go)

	mu   sync.Mutex
	info SessionInfo
}

// SessionInfo describes the bot identity a Session holds.
type SessionInfo struct {
	BotName     string
	ClusterName string
	Generation  uint64
	Expires     time.Time
}

// newSession checks cfg (errors of kind ErrConfig) and contacts nobody.
func newSession(cfg Config) (*Session, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	servers, _ := ParseAuthServers(cfg.AuthServer) // checked by withDefaults
	log := cfg.Logger.With("component", "joiner")
	s := &Session{
		cfg: cfg, log: log, clock: cfg.Clock,
		keys: identity.NewKeySource(cfg.Algorithm), tokenHash: tokenHash(cfg.Token),
		auth: newAuthorities(servers, cfg.Resolver, log, cfg.Clock),
	}
	if cfg.CAPin != "" {
		s.pins, _ = parsePins(cfg.CAPin) // checked by withDefaults
	}
	return s, nil
}

// OpenSession gets a bot identity: the one in cfg.Store if it is usable
// (no token needed), otherwise by joining with cfg.Token after checking
// the CA pin. Network failures are retried until cfg.JoinTimeout;
// refusals are final. Errors are of the kinds in errors.go.
func OpenSession(ctx context.Context, cfg Config) (*Session, error) {
	s, err := newSession(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.open(ctx, s.clock.Now().Add(s.cfg.JoinTimeout)); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// open restores or joins, retrying network failures until deadline.
func (s *Session) open(ctx context.Context, deadline time.Time) error {
	if s.keeps() {
		if err := s.restore(ctx, deadline); err != nil {
			return err
		}
	}
	if s.bot == nil {
		return s.join(ctx, deadline)
	}
	return nil
}

// keeps says whether the identity is worth keeping in the Store: a
// renewable one, or a node's, which it presents when it joins again (by
// IAM) after a restart to keep its name. An iam bot just joins again.
func (s *Session) keeps() bool { return s.cfg.JoinMethod == wire.JoinToken || s.cfg.Node != nil }

// Renew trades the bot identity for the next one (an iam bot or node joins
// again). A refusal is of kind ErrRefused; other failures may pass.
func (s *Session) Renew(ctx context.Context) error { return s.renewBot(ctx) }

// Info describes the bot identity held now.
func (s *Session) Info() SessionInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

// Call sends in (as JSON, unless nil) to path with the bot identity and
// decodes the answer into out. A refusal is of kind ErrRefused.
func (s *Session) Call(ctx context.Context, method, path string, in, out any) error {
	return s.api.call(ctx, method, path, in, out)
}

// ErrNotModified is Get's answer when what etag names is still current.
var ErrNotModified = errors.New("not modified")

// Get asks path with If-None-Match etag (unless empty): ErrNotModified if
// the answer would be what etag names, otherwise the answer, decoded into
// out, and its ETag. A refusal is of kind ErrRefused.
func (s *Session) Get(ctx context.Context, path, etag string, out any) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var header http.Header
	if etag != "" {
		header = http.Header{"If-None-Match": {etag}}
	}
	resp, err := s.api.send(ctx, http.MethodGet, path, nil, header)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified {
		return etag, ErrNotModified
	}
	// Not strict: a later authority may add fields.
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxGetBytes)).Decode(out); err != nil {
		return "", fmt.Errorf("the authority at %s answered %s with bad JSON: %v", resp.Request.URL.Host, path, err)
	}
	return resp.Header.Get("ETag"), nil
}

// maxGetBytes bounds an answer to Get: far above a list of locks a fleet
// holds, low enough that a broken authority cannot exhaust the agent.
const maxGetBytes = 16 << 20

// Retry runs op until it succeeds, fails for good (anything not
// Retryable), or deadline passes (then an error of kind ErrUnreachable).
func (s *Session) Retry(ctx context.Context, deadline time.Time, op func(context.Context) error) error {
	return s.retry(ctx, deadline, op)
}

// Close drops kept-alive connections.
func (s *Session) Close() { s.api.close() }

// Retryable says whether err may pass by itself (the network, the
// authority answering 5xx): the caller keeps what it has and tries again.
func Retryable(err error) bool { return isRetryable(err) }

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

// Backoff is the wait after failures failed attempts in a row of something
// done every interval: exponential from a second, capped at a minute and
// at interval, with jitter.
func Backoff(failures int, interval time.Duration) time.Duration { return backoff(failures, interval) }

// restore takes the stored bot identity if it is usable and renews it,
// which also proves the authority still accepts it.
func (s *Session) restore(ctx context.Context, deadline time.Time) error {
	store := s.cfg.Store
	blob, err := store.Load()
	if errors.Is(err, ErrNotStored) {
		return nil
	}
	if err != nil {
		s.log.Warn("cannot read the stored bot identity; joining with the token", "store", store.String(), "error", err)
		return nil
	}
	b, pending, st, err := unmarshalStored(blob)
	clear(blob)
	discard := func(msg string, args ...any) error {
		s.log.Info(msg, append(args, "store", store.String())...)
		if err := store.Delete(); err != nil {
			s.log.Warn("cannot delete the stored bot identity", "store", store.String(), "error", err)
		}
		return nil
	}
	switch {
	case err != nil:
		return discard("discarding an unreadable stored bot identity", "error", err)
	case !sameAuthority(st.AuthServer, s.cfg.AuthServer):
		return discard("discarding the stored bot identity of another authority", "stored", st.AuthServer)
	case s.cfg.Token != "" && st.TokenHash != s.tokenHash:
		return discard("a new join token was given: discarding the stored bot identity and joining again", "bot", st.BotName)
	case b == nil:
		// The last start was stopped during its join. join sends the
		// same request again, if it is given the same token.
		s.pending = pending
		s.log.Info("finishing a join that was cut short, with the key it sent", "store", store.String())
		return nil
	case !s.clock.Now().Before(b.expires()):
		return discard("the stored bot identity has expired; joining with the token", "bot", st.BotName, "expired", b.expires().Format(time.RFC3339))
	case len(s.pins) > 0 && !pinsVouch(s.pins, b):
		return discard("the stored bot identity trusts CAs that do not match the CA pin; joining again", "bot", st.BotName)
	}
	if len(s.pins) > 0 && checkPins(s.cfg.AuthServer, s.pins, b.hostCAs) == nil {
		b.pinnedBy = strings.Join(s.pins, ",") // the pins given vouch for the CAs held: a chain starts here
	}
	s.tokenHash = st.TokenHash
	s.pending = pending
	s.setBot(b)
	s.log.Info("restarting from the stored bot identity", "bot", b.name, "generation", b.generation, "renewal_in_flight", pending != nil, "store", store.String())
	err = s.retry(ctx, deadline, s.renewBot)
	if err != nil && errors.Is(err, ErrRefused) && !b.renewable { // an iam node: no token to replace
		return err
	}
	if err != nil && errors.Is(err, ErrRefused) {
		return &kindError{kind: ErrRefused, cause: err, msg: fmt.Sprintf(
			"%v; if the bot was locked, run `midfs bots unlock %s` on the authority, otherwise join again with a new --token", err, b.name)}
	}
	return err
}

// join checks the pin and trades the token (or the AWS identity) for a
// bot identity.
func (s *Session) join(ctx context.Context, deadline time.Time) error {
	if s.cfg.Token == "" && s.pending != nil {
		return &kindError{kind: ErrConfig, msg: fmt.Sprintf(
			"the last start was stopped during its join and %s keeps no token: give the same --token again to finish that join", s.cfg.Store)}
	}
	if s.cfg.Token == "" && s.cfg.Node != nil {
		return &kindError{kind: ErrConfig, msg: fmt.Sprintf(
			"no join token, and no stored identity of node %s in %s: give --token-file or --token=- (printed by `midfs tokens add --type=node`)", s.cfg.Node.Name, s.cfg.Store)}
	}
	if s.cfg.Token == "" {
		return &kindError{kind: ErrConfig, msg: fmt.Sprintf(
			"no join token, and no stored bot identity for this mount in %s: give --token (printed by `midfs bots add`)", s.cfg.Store)}
	}
	if len(s.pins) == 0 {
		return &kindError{kind: ErrConfig, msg: "refusing to send the join token to an authority nobody vouched for: give --ca-pin=sha256:... as printed by `midfs bots add` and `midfs status`"}
	}
	cas, err := s.pinnedCAs(ctx, deadline)
	if err != nil {
		return err
	}
	api := newAPIClient(s.auth, certPool(cas), nil, nil)
	defer api.close()
	// Every retry sends the same public key, and so does a restart after a
	// crash (the key is stored before it is sent): the authority answers a
	// repeated join for the same key with the same bot, so an answer lost
	// on the way back does not burn the one-time token.
	key, err := s.pendingKey()
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return err
	}
	var bi *wire.BotIdentity
	err = s.retry(ctx, deadline, func(ctx context.Context) (err error) {
		bi, err = s.joinOnce(ctx, api, pub)
		return err
	})
	if errors.Is(err, ErrRefused) && s.cfg.JoinMethod == wire.JoinToken {
		newToken := "`midfs bots add NAME`"
		if s.cfg.Node != nil {
			newToken = "`midfs tokens add --type=node`"
		}
		return &kindError{kind: ErrRefused, cause: err, msg: "join refused: " + err.Error() +
			"; ask the authority's admin for a new token (" + newToken + "); the ref finds the reason in the authority's log"}
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
	b.pinnedBy = strings.Join(s.pins, ",")
	s.pending = nil
	s.setBot(b)
	s.save()
	s.log.Info("joined the authority", "bot", b.name, "cluster", b.cluster, "method", s.cfg.JoinMethod, "generation", b.generation, "addr", s.auth.peek())
	return nil
}

// pinnedCAs fetches the host CAs from a replica and checks them against
// the pins, once: every later connection, to any replica, must present a
// server certificate of these CAs. A replica whose CAs do not match (a
// wrong entry in the list) is passed over while others are left to try.
func (s *Session) pinnedCAs(ctx context.Context, deadline time.Time) ([]*x509.Certificate, error) {
	var cas []*x509.Certificate
	mismatches := 0
	err := s.retry(ctx, deadline, func(ctx context.Context) error {
		addr := s.auth.current(ctx)
		got, err := fetchCAs(ctx, s.auth)
		if err != nil {
			return err
		}
		if err := checkPins(addr, s.pins, got); err != nil {
			if mismatches++; mismatches < s.auth.count(ctx) {
				s.auth.fail(addr, err)
				return &retryable{err}
			}
			return err
		}
		cas = got
		return nil
	})
	return cas, err
}

func (s *Session) joinOnce(ctx context.Context, api *apiClient, pub []byte) (*wire.BotIdentity, error) {
	if s.cfg.JoinMethod == wire.JoinIAM {
		return joinIAM(ctx, &s.cfg, api, pub)
	}
	var bi wire.BotIdentity
	if err := api.call(ctx, http.MethodPost, wire.PathJoin, wire.JoinRequest{Token: s.cfg.Token, PublicKey: pub, Node: s.cfg.Node}, &bi); err != nil {
		return nil, err
	}
	return &bi, nil
}

// presentMargin: a node joining again presents its identity only if it
// is valid for longer than this, so that it has not expired by the time
// the authority checks it (clock skew, a slow handshake).
const presentMargin = time.Minute

// renewBot trades the bot identity for the next one. An iam bot or node
// has no renewable identity: it joins again.
func (s *Session) renewBot(ctx context.Context) error {
	b := s.bot
	if b.renewable && !s.clock.Now().Before(b.expires()) {
		return &kindError{kind: ErrRefused, msg: fmt.Sprintf(
			"the identity of bot %q expired at %s while it could not be renewed; on the authority run `midfs bots rm %s` and `midfs bots add %s --roles=...`, then mount with the new token",
			b.name, b.expires().Format(time.RFC3339), b.name, b.name)}
	}
	// A retry after a lost answer reuses the key, as join does, also after
	// a restart: the authority re-issues the renewal it already made for
	// that key, where a new key would find the generation moved on and
	// lock the bot.
	key, err := s.pendingKey()
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
		err = s.api.call(ctx, http.MethodPost, wire.PathRenew, wire.RenewRequest{PublicKey: pub}, &r)
		bi = &r
	} else {
		api := newAPIClient(s.auth, certPool(b.hostCAs), nil, nil)
		if s.cfg.Node != nil && s.clock.Now().Add(presentMargin).Before(b.expires()) {
			// The node's current identity lets it keep its name while
			// it is online; an expired one would fail the handshake.
			api = newAPIClient(s.auth, certPool(b.hostCAs), b.key, b.cert)
		}
		bi, err = joinIAM(ctx, &s.cfg, api, pub)
		api.close()
	}
	if err != nil {
		// s.pending stays: even after a refusal (the bot is locked, say)
		// the authority may have certified it, and it is what the next
		// attempt must send once an administrator has looked.
		if errors.Is(err, ErrRefused) && !b.renewable {
			return &kindError{kind: ErrRefused, cause: err, msg: fmt.Sprintf("the authority refused to let %q join again: %v", b.name, err)}
		}
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
	s.pending = nil
	s.setBot(nb)
	s.save()
	s.log.Debug("bot identity renewed", "bot", nb.name, "generation", nb.generation, "expires", nb.expires().Format(time.RFC3339))
	return nil
}

// setBot switches to a new bot identity, and to a new client so that no
// kept-alive connection presents the previous certificate (whose
// generation the authority would see as stale).
func (s *Session) setBot(b *bot) {
	s.api.close()
	s.bot = b
	s.api = newAPIClient(s.auth, certPool(b.hostCAs), b.key, b.cert)
	s.mu.Lock()
	s.info = SessionInfo{BotName: b.name, ClusterName: b.cluster, Generation: b.generation, Expires: b.expires()}
	s.mu.Unlock()
}

// pendingKey returns the key of the join or renewal in flight, or makes
// one and stores it before the request that carries it is sent.
func (s *Session) pendingKey() (crypto.Signer, error) {
	if s.pending != nil {
		return s.pending, nil
	}
	key, err := s.keys.Next()
	if err != nil {
		return nil, err
	}
	s.pending = key
	s.save()
	return key, nil
}

// save keeps the bot identity and the key in flight right after either
// changed. If that fails the stored copy is deleted: a stale copy would
// present an old generation with a new key at the next start and get the
// bot locked; no copy only costs a new token.
func (s *Session) save() {
	if !s.keeps() {
		return // an iam bot joins again; nothing worth keeping
	}
	store := s.cfg.Store
	var expires time.Time // a join in flight: until it finishes or the machine reboots
	if s.bot != nil {
		expires = s.bot.expires()
	}
	blob, err := marshalStored(s.cfg.AuthServer, s.tokenHash, s.bot, s.pending)
	if err == nil {
		err = store.Save(blob, expires)
		clear(blob)
	}
	if err != nil {
		s.log.Warn("cannot save the bot identity; a restart will need a new join token", "store", store.String(), "error", err)
		if err := store.Delete(); err != nil {
			s.log.Warn("cannot delete the stale stored bot identity; a restart may lock the bot", "store", store.String(), "error", err)
		}
	}
}

// retry runs op until it succeeds, fails for good, or deadline (on
// s.clock) passes; only *retryable failures are retried.
func (s *Session) retry(ctx context.Context, deadline time.Time, op func(context.Context) error) error {
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil || !isRetryable(err) {
			return err
		}
		left := deadline.Sub(s.clock.Now())
		if left <= 0 {
			return &kindError{kind: ErrUnreachable, cause: err, msg: fmt.Sprintf(
				"%v; gave up after %v (--join-timeout): check the address and that the authority is running", err, s.cfg.JoinTimeout)}
		}
		d := min(delay/2+rand.N(delay/2+1), left)
		s.log.Warn("authority not reachable yet; retrying", "error", err, "attempt", attempt, "retry_in", d.Round(time.Millisecond).String())
		t := s.clock.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C():
		}
		delay = min(delay*2, 5*time.Second)
	}
}
