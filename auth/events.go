package auth

// The audit trail, the authority's side: events are written in the store
// transaction of the change they describe (record), alone just before
// certificates that change nothing are handed out (recordAlone), or, for
// refusals, which change nothing either, by a writer of their own that can
// never hold up issuance (refusalWriter). Old events are pruned in small
// batches (pruneLoop). What events say is in package auth/audit.

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/iam"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// DefaultAuditRetention is how long events are kept unless
// Config.AuditRetention says otherwise.
const DefaultAuditRetention = 90 * 24 * time.Hour

// minAuditRetention keeps a typo (1m for 1 month) from emptying the trail.
const minAuditRetention = time.Hour

// Refusals are queued for their writer, which writes what has queued in
// one transaction of at most refusalBatch events and has at most one in
// the store's queue at a time. So however fast refusals come, issuance
// shares each commit with at most one small batch of inserts (a few ms at
// most), and a refusal never waits for the store. What does not fit in
// the queue is counted and recorded as one audit.refusals_dropped event.
const (
	refusalQueue = 4096
	refusalBatch = 256
)

// Pruning: every pruneEvery, events older than the retention go, at most
// pruneBatch per transaction; the pruner waits for each commit before it
// sends the next, so it too holds at most one small change in the
// store's queue.
const (
	pruneEvery = 10 * time.Minute
	pruneBatch = 500
)

// followPoll is how often a follower's wait (`midfs events --follow`)
// looks for new events. A poll is one indexed read of the newest IDs;
// polling, rather than a signal from this process's commits, also sees
// events that other authorities sharing the store wrote.
const followPoll = 500 * time.Millisecond

// trail is the state of the audit trail's writers.
type trail struct {
	off       bool // tests only: the baseline of the "audit off" benchmark
	refusals  chan audit.Event
	dropped   atomic.Int64
	closing   chan struct{} // closed when the authority begins to stop
	closeOnce sync.Once
	wg        sync.WaitGroup
	waiting   atomic.Int64 // followers waiting for an event
	dropCount prometheus.Counter
}

func newTrail(cfg *Config) *trail {
	t := &trail{off: cfg.auditOff, refusals: make(chan audit.Event, refusalQueue), closing: make(chan struct{})}
	if cfg.Metrics != nil {
		t.dropCount = prometheus.NewCounter(prometheus.CounterOpts{
			Name: "midfs_auth_audit_refusals_dropped_total",
			Help: "Refused joins and renewals counted but not recorded one by one in the audit trail: they came faster than it could take them.",
		})
		cfg.Metrics.MustRegister(t.dropCount)
	}
	return t
}

// startTrail starts the refusal writer and the pruner.
func (s *Server) startTrail() {
	if s.trail.off {
		return
	}
	// A follower waiting for events lets the admin socket stop at once.
	s.adminSrv.RegisterOnShutdown(s.trail.close)
	s.trail.wg.Add(2)
	go s.refusalWriter()
	go s.pruneLoop()
}

func (t *trail) close() { t.closeOnce.Do(func() { close(t.closing) }) }

// stopTrail writes the refusals still queued and stops the writers; call
// it once no request is being answered, before the store closes.
func (s *Server) stopTrail() {
	s.trail.close()
	s.trail.wg.Wait()
}

// record writes e in tx, the transaction of the change it describes. It
// fills in what the context knows: the time, the admin-socket peer, the
// API request's source address.
func (s *Server) record(ctx context.Context, tx store.Tx, e audit.Event) error {
	if s.trail.off {
		return nil
	}
	if !audit.KnownType(e.Type) { // a bug: fail the change rather than record nonsense
		return fmt.Errorf("audit event of unknown type %q", e.Type)
	}
	s.complete(ctx, &e)
	return tx.AddEvent(ctx, &e)
}

// recordAlone commits e on its own: for certificates issued without a
// change of state. Call it before handing them out, and hand them out
// only if it succeeds: no certificate leaves without its event.
func (s *Server) recordAlone(ctx context.Context, e audit.Event) error {
	if s.trail.off {
		return nil
	}
	return s.st.Update(ctx, func(tx store.Tx) error { return s.record(ctx, tx, e) })
}

func (s *Server) complete(ctx context.Context, e *audit.Event) {
	if e.Time.IsZero() {
		e.Time = s.cfg.Clock.Now()
	}
	e.Time = e.Time.UTC().Truncate(time.Microsecond) // what every backend keeps
	if e.Actor == nil {
		e.Actor = admin.ActorOf(ctx)
	}
	if e.Addr == "" && e.Actor == nil {
		e.Addr = sourceAddr(ctx)
	}
}

// recordRefusal queues the event of a refused join or renewal, without
// waiting: see refusalQueue.
func (s *Server) recordRefusal(ctx context.Context, typ, method string, err error) {
	if s.trail.off {
		return
	}
	e := audit.Event{Type: typ, Method: method, Detail: "internal", Code: audit.CodeUnavailable}
	var ref *refusal
	if errors.As(err, &ref) {
		e.Detail, e.Code, e.Message, e.Ref = ref.Code, audit.RefusalCode(ref.Code), ref.Reason, ref.ref
		e.Bot, e.Token = ref.bot, ref.token
	}
	s.complete(ctx, &e)
	select {
	case s.trail.refusals <- e:
	default:
		s.trail.dropped.Add(1)
		if s.trail.dropCount != nil {
			s.trail.dropCount.Inc()
		}
	}
}

// refusalWriter writes queued refusals, a batch per transaction, until
// the authority stops; then it writes what is left.
func (s *Server) refusalWriter() {
	defer s.trail.wg.Done()
	for {
		select {
		case e := <-s.trail.refusals:
			s.writeRefusals(e)
		case <-s.trail.closing:
			for {
				select {
				case e := <-s.trail.refusals:
					s.writeRefusals(e)
				default:
					return
				}
			}
		}
	}
}

// writeRefusals writes first and what else is queued, up to refusalBatch.
func (s *Server) writeRefusals(first audit.Event) {
	batch := []audit.Event{first}
	for len(batch) < refusalBatch {
		select {
		case e := <-s.trail.refusals:
			batch = append(batch, e)
			continue
		default:
		}
		break
	}
	if n := s.trail.dropped.Swap(0); n > 0 {
		batch = append(batch, audit.Event{Type: audit.RefusalsDropped, Count: n, Time: s.cfg.Clock.Now().UTC().Truncate(time.Microsecond)})
	}
	ctx := context.Background()
	err := s.st.Update(ctx, func(tx store.Tx) error {
		for i := range batch {
			if err := tx.AddEvent(ctx, &batch[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.Warn("refusals not recorded in the audit trail", "count", len(batch), "err", err)
	}
}

// pruneLoop removes events older than the retention, now and then every
// pruneEvery, until the authority stops.
func (s *Server) pruneLoop() {
	defer s.trail.wg.Done()
	for {
		s.pruneEvents()
		t := s.cfg.Clock.NewTimer(pruneEvery)
		select {
		case <-t.C():
		case <-s.trail.closing:
			t.Stop()
			return
		}
	}
}

// pruneEvents removes the events older than the retention, pruneBatch per
// transaction.
func (s *Server) pruneEvents() {
	cutoff := s.cfg.Clock.Now().Add(-s.cfg.AuditRetention)
	ctx := context.Background()
	var total int64
	defer func() {
		if total > 0 {
			s.log.Info("pruned old audit events", "count", total, "before", cutoff.UTC().Format(time.RFC3339))
		}
	}()
	for {
		var n int64
		err := s.st.Update(ctx, func(tx store.Tx) (err error) {
			n, err = tx.PruneEvents(ctx, cutoff, pruneBatch)
			return err
		})
		if err != nil {
			s.log.Warn("pruning old audit events failed; will try again", "err", err)
			return
		}
		total += n
		if n < pruneBatch {
			return
		}
		select {
		case <-s.trail.closing:
			return
		default:
		}
	}
}

// Events serves a page of the audit trail (`midfs events`): of a listing
// by time, or of following the trail, which waits up to q.Wait for an
// event to come.
func (s *Server) Events(ctx context.Context, q admin.EventQuery) (*admin.EventPage, error) {
	if !q.Since.IsZero() && !q.Until.IsZero() && !q.Since.Before(q.Until) {
		return nil, admin.Errorf(admin.Invalid, "--since %s is not before --until %s", q.Since.UTC().Format(time.RFC3339), q.Until.UTC().Format(time.RFC3339))
	}
	sq := store.EventQuery{Since: q.Since, Until: q.Until, Types: q.Types, Bot: q.Bot,
		After: store.EventKey{Time: q.AfterTime, ID: q.AfterID}, Upto: store.EventPos(q.Upto), Limit: q.Limit}
	if !q.Follow {
		if sq.Upto == "" {
			// Pages of one listing show the trail as it was at its first.
			end, err := s.st.EventEnd(ctx)
			if err != nil {
				return nil, err
			}
			sq.Upto = end
		}
		evs, err := s.st.Events(ctx, sq)
		if errors.Is(err, store.ErrBadEventPos) {
			return nil, admin.Mark(admin.Invalid, err)
		}
		if err != nil {
			return nil, err
		}
		return &admin.EventPage{Events: eventJSON(evs), End: string(sq.Upto)}, nil
	}
	deadline := time.Now().Add(q.Wait)
	for {
		evs, next, err := s.st.EventsAfter(ctx, store.EventPos(q.From), sq)
		if errors.Is(err, store.ErrBadEventPos) {
			return nil, admin.Mark(admin.Invalid, err)
		}
		if err != nil {
			return nil, err
		}
		if len(evs) > 0 || !time.Now().Before(deadline) || !s.waitForEvents(ctx, deadline) {
			return &admin.EventPage{Events: eventJSON(evs), Next: string(next)}, nil
		}
	}
}

// waitForEvents sleeps until the next poll of a follower; false if the
// request or the authority ends first.
func (s *Server) waitForEvents(ctx context.Context, deadline time.Time) bool {
	s.trail.waiting.Add(1)
	defer s.trail.waiting.Add(-1)
	t := time.NewTimer(min(followPoll, time.Until(deadline)))
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-s.trail.closing:
	}
	return false
}

// eventJSON hands stored events on as they were stored.
func eventJSON(evs []store.StoredEvent) []json.RawMessage {
	out := make([]json.RawMessage, len(evs))
	for i, e := range evs {
		out[i] = e.JSON
	}
	return out
}

type sourceKey struct{}

// withSourceAddr puts each API request's source address in its context,
// for the events it causes.
func withSourceAddr(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sourceKey{}, r.RemoteAddr)))
	})
}

func sourceAddr(ctx context.Context) string {
	a, _ := ctx.Value(sourceKey{}).(string)
	return a
}

// The events of issuance. A bot identity's serial is chosen before the
// transaction that records it, so that the event and the generation it
// describes commit together; the certificate is signed after the commit.

func (s *Server) botIdentityEvent(typ string, b *store.Bot, gen uint64, serial *big.Int, now time.Time, retry bool) audit.Event {
	return audit.Event{Type: typ, Time: now, Bot: b.Name, Instance: b.Instance, Generation: gen, Cert: "bot",
		Serial: serial.Text(16), TTL: int64(s.cfg.BotTTL / time.Second), Expires: now.Add(s.cfg.BotTTL).UTC(), Retry: retry}
}

// outputEvent describes an output identity just issued.
func outputEvent(b *store.Bot, c *wire.Certs) (audit.Event, error) {
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(c.SSHCert))
	if err != nil {
		return audit.Event{}, fmt.Errorf("read back the SSH certificate: %w", err)
	}
	sc, ok := pub.(*ssh.Certificate)
	if !ok {
		return audit.Event{}, fmt.Errorf("read back the SSH certificate: not a certificate")
	}
	tc, err := x509.ParseCertificate(c.TLSCert)
	if err != nil {
		return audit.Event{}, fmt.Errorf("read back the TLS certificate: %w", err)
	}
	return audit.Event{Type: audit.CertIssued, Bot: b.Name, Instance: b.Instance, Cert: "user",
		Serial: tc.SerialNumber.Text(16), SSHSerial: sc.Serial, Principals: sc.ValidPrincipals,
		TTL: int64(tc.NotAfter.Sub(tc.NotBefore.Add(time.Minute)) / time.Second), Expires: tc.NotAfter.UTC()}, nil
}

// joinEvent describes a token join: of a bot, or of a node (node, as it
// asked) whose identity is the bot row nodeBot(name).
func (s *Server) joinEvent(b *store.Bot, t *store.Token, node *wire.NodeInfo, serial *big.Int, now time.Time, retry bool) audit.Event {
	e := s.botIdentityEvent(audit.BotJoined, b, 1, serial, now, retry)
	e.Method, e.Token = t.JoinMethod, t.Name
	if node != nil {
		n := nodeOf(node, t.Labels)
		e.Type, e.Bot, e.Name, e.NodeAddr, e.Labels = audit.NodeJoined, "", n.Name, n.Addr, n.Labels
	}
	return e
}

// aboutToken adds to a refusal the token and bot known lets it name.
func aboutToken(err error, known refusal) error {
	var ref *refusal
	if errors.As(err, &ref) {
		ref.token, ref.bot = known.token, known.bot
	}
	return err
}

// recordIAMJoin records an IAM join about to be answered with bi. token
// is the name of the stored token the join matched (verify found it), so
// it is never a secret an agent sent by mistake.
func (s *Server) recordIAMJoin(ctx context.Context, bi *wire.BotIdentity, token string, id iam.CallerIdentity) error {
	c, err := x509.ParseCertificate(bi.TLSCert)
	if err != nil {
		return fmt.Errorf("read back the bot identity: %w", err)
	}
	inst, _ := subjectValue(c.Subject, oidBotInstance)
	return s.recordAlone(ctx, audit.Event{Type: audit.BotJoined, Bot: bi.BotName, Instance: inst, Generation: bi.Generation,
		Method: wire.JoinIAM, Token: token, AWSAccount: id.Account, AWSARN: id.Arn, Cert: "bot",
		Serial: c.SerialNumber.Text(16), TTL: int64(c.NotAfter.Sub(c.NotBefore.Add(time.Minute)) / time.Second),
		Expires: c.NotAfter.UTC()})
}

// The events of administration.

func botEvent(created bool, spec admin.BotSpec) audit.Event {
	typ := audit.BotUpdated
	if created {
		typ = audit.BotCreated
	}
	return audit.Event{Type: typ, Bot: spec.Name, Roles: spec.Roles, Logins: spec.Logins, Token: spec.TokenName}
}

func nodeEvent(existed bool, n identity.Node) audit.Event {
	typ := audit.NodeCreated
	if existed {
		typ = audit.NodeUpdated
	}
	return audit.Event{Type: typ, Name: n.Name, NodeAddr: n.Addr, Labels: n.Labels}
}

func hostCertEvent(c *ssh.Certificate) audit.Event {
	return audit.Event{Type: audit.CertIssued, Cert: "host", SSHSerial: c.Serial, Principals: c.ValidPrincipals,
		TTL: int64(c.ValidBefore-c.ValidAfter) - 60, Expires: time.Unix(int64(c.ValidBefore), 0).UTC()}
}

func lockEvent(l wire.Lock) audit.Event {
	return audit.Event{Type: audit.LockCreated, Name: l.ID, Bot: l.Bot, Message: l.Message, Expires: l.Expires.UTC()}
}
