package auth

// CA rotation, in Teleport's phases (wire.Phase*). A kind of CA (user,
// host, db) rotates on its own:
//
//	standby ─▶ init ─▶ update_clients ─▶ update_servers ─▶ standby
//	             └──────────┴─────────────────┴─▶ rollback ─▶ standby
//
// init adds a new CA, trusted everywhere and signing nothing; at
// update_clients it signs what clients present (the user CA: bot, node and
// output identities), at update_servers what servers present (the host
// CA: host certificates, the authority's HTTPS certificate); standby drops
// the old one. rollback makes the old CA sign again and standby then drops
// the new one. Every step is one transaction on the store, which holds the
// whole state of a rotation, so that it survives a restart of the
// authority, or another replica takes it over, in any phase.
//
// An automatic rotation moves on by itself (run, below): each phase lasts
// a third of the grace period from when it was entered, so that a phase
// never shrinks when the authority was down as it fell due; a manual one
// moves when the administrator says. Clients learn of each change at their
// next node list poll (cas.go), nodes at their next heartbeat.

import (
	"context"
	"errors"
	"fmt"
	"github.com/midfs/midfs/auth/audit"
	"slices"
	"time"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// DefaultGracePeriod is what an automatic rotation is spread over when no
// --grace-period is given: Teleport's default, longer than any credential
// midfs issues (24 h at most), so that each phase outlasts the
// credentials issued before it began.
const DefaultGracePeriod = 30 * time.Hour

// Bounds of --grace-period: whole seconds, a phase of at least a second,
// and a rotation that ends within a year.
const (
	minGracePeriod = 3 * time.Second
	maxGracePeriod = 365 * 24 * time.Hour
)

// phaseOrder lists the phases of a rotation in order, for messages.
var phaseOrder = []string{wire.PhaseStandby, wire.PhaseInit, wire.PhaseUpdateClients, wire.PhaseUpdateServers, wire.PhaseRollback}

// nextPhases says where each phase may go.
var nextPhases = map[string][]string{
	wire.PhaseStandby:       {wire.PhaseInit},
	wire.PhaseInit:          {wire.PhaseUpdateClients, wire.PhaseRollback},
	wire.PhaseUpdateClients: {wire.PhaseUpdateServers, wire.PhaseRollback},
	wire.PhaseUpdateServers: {wire.PhaseStandby, wire.PhaseRollback},
	wire.PhaseRollback:      {wire.PhaseStandby},
}

// autoNext is where an automatic rotation goes from each phase.
var autoNext = map[string]string{
	wire.PhaseInit:          wire.PhaseUpdateClients,
	wire.PhaseUpdateClients: wire.PhaseUpdateServers,
	wire.PhaseUpdateServers: wire.PhaseStandby,
}

// nextAt is when an automatic rotation leaves its phase; zero if it does
// not by itself.
func nextAt(r store.Rotation) time.Time {
	if r.Mode != wire.RotationAuto || autoNext[r.Phase] == "" {
		return time.Time{}
	}
	return r.Changed.Add(r.GracePeriod / 3)
}

// rotationStep is one move of a rotation: what the store gets.
type rotationStep struct {
	rot    store.Rotation
	add    *store.CA // the new CA, at init
	remove string    // the CA dropped, at standby
}

// plan works out the move of a kind's rotation cur, whose CAs have IDs
// ids, to phase to, in mode, at now. fresh is the new CA for init. The
// errors are the administrator's: the phase is not one that follows.
func plan(cur store.Rotation, ids []string, to, mode string, now time.Time, grace time.Duration, fresh *store.CA) (*rotationStep, error) {
	if !slices.Contains(nextPhases[cur.Phase], to) {
		return nil, phaseError(cur, to)
	}
	other := ""
	for _, id := range ids {
		if id != cur.Active {
			other = id
		}
	}
	if (other == "") != (cur.Phase == wire.PhaseStandby) {
		return nil, fmt.Errorf("the stored %s CAs (%d) do not fit phase %s; restore the authority's state from a backup", cur.Kind, len(ids), cur.Phase)
	}
	next := cur
	next.Phase, next.Mode, next.Changed = to, mode, now
	st := &rotationStep{rot: next}
	switch to {
	case wire.PhaseInit:
		st.add = fresh
		st.rot.Started, st.rot.GracePeriod = now, grace
	case wire.PhaseUpdateClients:
		st.rot.Active = other // the new CA signs
	case wire.PhaseRollback:
		if cur.Phase != wire.PhaseInit {
			st.rot.Active = other // the old CA signs again
		}
		st.rot.Mode = wire.RotationManual // as in Teleport: a rollback is finished by hand
	case wire.PhaseStandby:
		st.remove = other
		st.rot = store.Rotation{Kind: cur.Kind, Active: cur.Active, Phase: wire.PhaseStandby, LastRotated: now}
	}
	return st, nil
}

// phaseError says why a kind cannot move to a phase, and what it can do.
func phaseError(cur store.Rotation, to string) error {
	if !slices.Contains(phaseOrder, to) {
		return admin.Errorf(admin.Invalid, "unknown phase %q: want one of %s", to, joinOr(phaseOrder[1:]))
	}
	if to == wire.PhaseInit {
		return admin.Errorf(admin.Conflict, "the %s CA is already rotating (phase %s, %s since %s); move it on with --manual --phase=%s, or back with --phase=rollback",
			cur.Kind, cur.Phase, cur.Mode, cur.Started.UTC().Format(time.RFC3339), nextPhases[cur.Phase][0])
	}
	if cur.Phase == wire.PhaseStandby {
		return admin.Errorf(admin.Conflict, "the %s CA is not rotating (phase standby): start a rotation with --phase=init, or without --manual", cur.Kind)
	}
	return admin.Errorf(admin.Conflict, "the %s CA is in phase %s, which goes on to %s, not %s",
		cur.Kind, cur.Phase, joinOr(nextPhases[cur.Phase]), to)
}

func joinOr(words []string) string {
	switch len(words) {
	case 0:
		return ""
	case 1:
		return words[0]
	}
	out := ""
	for i, w := range words {
		switch {
		case i == len(words)-1:
			out += " or " + w
		case i > 0:
			out += ", " + w
		default:
			out = w
		}
	}
	return out
}

// checkRotateRequest checks what an administrator asked for, before
// anything is read or made, and fills in the defaults. It returns the
// phase to move to and the mode.
func checkRotateRequest(req *admin.RotateRequest) (phase, mode string, err error) {
	if !slices.Contains(caKinds, req.Type) {
		return "", "", admin.Errorf(admin.Invalid, "unknown CA type %q: want --type=user, host or db", req.Type)
	}
	if req.Manual {
		if req.Phase == "" {
			return "", "", admin.Errorf(admin.Invalid, "--manual needs --phase: one of %s", joinOr(phaseOrder))
		}
		if !slices.Contains(phaseOrder, req.Phase) {
			return "", "", admin.Errorf(admin.Invalid, "unknown phase %q: want one of %s", req.Phase, joinOr(phaseOrder))
		}
		if req.GracePeriod != 0 && req.Phase != wire.PhaseInit {
			return "", "", admin.Errorf(admin.Invalid, "--grace-period only goes with a rotation's start (without --manual, or with --phase=init)")
		}
		return req.Phase, wire.RotationManual, nil
	}
	if req.Phase != "" {
		return "", "", admin.Errorf(admin.Invalid, "--phase=%s needs --manual; without it the authority moves through the phases by itself over --grace-period", req.Phase)
	}
	if req.GracePeriod == 0 {
		req.GracePeriod = DefaultGracePeriod
	}
	if req.GracePeriod < minGracePeriod || req.GracePeriod > maxGracePeriod || req.GracePeriod%time.Second != 0 {
		return "", "", admin.Errorf(admin.Invalid, "bad --grace-period %s: give whole seconds from %s to %s", req.GracePeriod, minGracePeriod, maxGracePeriod)
	}
	return wire.PhaseInit, wire.RotationAuto, nil
}

// Rotate moves the rotation of one kind of CA as an administrator asked
// (`midfs auth rotate`), and returns where it is now. A request that does
// not fit the rotation's phase changes nothing.
func (s *Server) Rotate(ctx context.Context, req admin.RotateRequest) (*policy.CAResource, error) {
	to, mode, err := checkRotateRequest(&req)
	if err != nil {
		return nil, err
	}
	var fresh *store.CA
	if to == wire.PhaseInit {
		if fresh, err = s.newCA(req.Type); err != nil {
			return nil, err
		}
		defer clear(fresh.KeyDER)
	}
	from, err := s.moveRotation(ctx, req.Type, func(cur store.Rotation) (string, bool) { return to, true }, mode, req.GracePeriod, fresh)
	if err != nil {
		return nil, err
	}
	s.log.Info("CA rotation moved by the administrator", "type", req.Type, "from", from, "to", to, "mode", mode)
	s.rotations.kick()
	res := s.caResource(s.caSet().kinds[req.Type])
	return &res, nil
}

// newCA makes a CA of a kind for a rotation's init, as it is stored.
func (s *Server) newCA(kind string) (*store.CA, error) {
	now := s.cfg.Clock.Now()
	a, keyDER, err := newAuthority(kind, s.cluster, now)
	if err != nil {
		return nil, fmt.Errorf("make a new %s CA: %w", kind, err)
	}
	stored, err := s.storedKey(s.cluster, kind, keyDER) // sealed, if the authority has a seal key
	if s.seal != nil {
		clear(keyDER)
	}
	if err != nil {
		return nil, err
	}
	return &store.CA{ID: newCAID(), Kind: kind, KeyDER: stored, CertDER: a.cert.Raw, Created: now}, nil
}

// moveRotation moves kind's rotation in one transaction to the phase that
// target picks from the stored state (false: stay, as when another
// replica moved it first), then switches this authority to the new CAs.
// It returns the phase it moved from.
func (s *Server) moveRotation(ctx context.Context, kind string, target func(store.Rotation) (string, bool), mode string, grace time.Duration, fresh *store.CA) (string, error) {
	var from string
	var moved bool
	err := s.st.Update(ctx, func(tx store.Tx) error {
		moved = false
		rots, err := tx.Rotations(ctx)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(rots, func(r store.Rotation) bool { return r.Kind == kind })
		if i < 0 {
			return fmt.Errorf("authority state holds no %s CA rotation; restore it from a backup", kind)
		}
		cur := rots[i]
		to, ok := target(cur)
		if !ok {
			return nil
		}
		cas, err := tx.CAs(ctx)
		if err != nil {
			return err
		}
		var ids []string
		for _, ca := range cas {
			clear(ca.KeyDER)
			if ca.Kind == kind {
				ids = append(ids, ca.ID)
			}
		}
		st, err := plan(cur, ids, to, mode, s.cfg.Clock.Now(), grace, fresh)
		if err != nil {
			return err
		}
		if st.add != nil {
			if err := tx.AddCA(ctx, *st.add); err != nil {
				return err
			}
		}
		if st.remove != "" {
			if _, err := tx.RemoveCA(ctx, st.remove); err != nil {
				return err
			}
		}
		if err := tx.PutRotation(ctx, st.rot); err != nil {
			return err
		}
		from, moved = cur.Phase, true
		how := st.rot.Mode
		if how == "" { // standby has no mode: the move's is the one it left
			how = cur.Mode
		}
		return s.record(ctx, tx, audit.Event{Type: audit.RotationPhase, CA: kind, Phase: st.rot.Phase,
			Message: fmt.Sprintf("from %s, %s", cur.Phase, how)})
	})
	if err != nil {
		return "", err
	}
	if !moved {
		return "", errNotMoved
	}
	// The change is committed: switch to it now rather than at the next
	// reload, so that what the caller is told is what is in use.
	if err := s.loadCAs(ctx); err != nil {
		return from, fmt.Errorf("the %s CA's rotation moved, but the authority could not load it (it retries): %w", kind, err)
	}
	return from, nil
}

// errNotMoved: the rotation was no longer where its move starts.
var errNotMoved = errors.New("the rotation moved meanwhile")

// caResource is a kind of CA as `get cas` and `status` show it.
func (s *Server) caResource(k *caKind) policy.CAResource {
	r := k.rot
	res := policy.CAResource{Kind: policy.KindCA, Version: policy.CAVersion, Metadata: policy.Metadata{Name: r.Kind},
		Spec: policy.CASpec{Type: r.Kind, ClusterName: s.cluster, Rotation: policy.CARotation{Phase: r.Phase, Mode: r.Mode}}}
	for _, a := range k.all {
		key := policy.CAKey{ID: a.id, Pin: identity.SPKIPin(a.cert), Signing: a == k.signing, Expires: a.cert.NotAfter.UTC()}
		if a.signer != nil {
			key.SSH = string(sshAuthorizedKey(a.signer.PublicKey()))
		}
		res.Spec.Keys = append(res.Spec.Keys, key)
	}
	utc := func(t time.Time) *time.Time {
		if t.IsZero() {
			return nil
		}
		t = t.UTC()
		return &t
	}
	res.Spec.Rotation.Started, res.Spec.Rotation.Changed, res.Spec.Rotation.LastRotated = utc(r.Started), utc(r.Changed), utc(r.LastRotated)
	if r.Phase != wire.PhaseStandby && r.GracePeriod > 0 {
		res.Spec.Rotation.GracePeriod = r.GracePeriod.String()
	}
	if at := nextAt(r); !at.IsZero() {
		res.Spec.Rotation.Next, res.Spec.Rotation.NextAt = autoNext[r.Phase], utc(at)
	}
	return res
}

// caResources is every kind of CA, in caKinds order.
func (s *Server) caResources() []policy.CAResource {
	set := s.caSet()
	out := make([]policy.CAResource, 0, len(caKinds))
	for _, kind := range caKinds {
		out = append(out, s.caResource(set.kinds[kind]))
	}
	return out
}

// rotationRecheck bounds how long the rotator sleeps with nothing due: a
// wall clock that jumps (a suspended machine) is noticed within it.
const rotationRecheck = time.Minute

// rotationRetry is how soon a failed automatic move is tried again.
const rotationRetry = 5 * time.Second

// rotator runs the automatic rotations (runRotations) until stopped.
type rotator struct {
	kickc  chan struct{} // an administrator moved a rotation: look again
	cancel context.CancelFunc
	done   chan struct{}
}

func newRotator() rotator { return rotator{kickc: make(chan struct{}, 1)} }

// kick wakes the rotator; it never blocks.
func (r *rotator) kick() {
	select {
	case r.kickc <- struct{}{}:
	default:
	}
}

// startRotations starts moving automatic rotations on, and following the
// changes other replicas make to the CAs.
func (s *Server) startRotations() {
	ctx, cancel := context.WithCancel(context.Background())
	s.rotations.cancel, s.rotations.done = cancel, make(chan struct{})
	changed := s.st.Changed(store.TopicCAs)
	go func() {
		defer close(s.rotations.done)
		s.runRotations(ctx, changed)
	}()
}

func (s *Server) stopRotations() {
	if s.rotations.cancel != nil {
		s.rotations.cancel()
		<-s.rotations.done
	}
}

// runRotations moves every automatic rotation on when its phase is due,
// and loads the CAs again when the store says they changed (another
// replica moved a rotation), until ctx ends.
func (s *Server) runRotations(ctx context.Context, changed <-chan struct{}) {
	for {
		wait := rotationRecheck
		if next := s.advanceRotations(ctx); !next.IsZero() {
			wait = min(wait, max(next.Sub(s.cfg.Clock.Now()), 0))
		}
		t := s.cfg.Clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		case <-s.rotations.kickc:
		case _, ok := <-changed:
			if !ok {
				t.Stop()
				return // the store is closing
			}
			if err := s.loadCAs(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("cannot load the CAs after they changed; serving the ones loaded before", "err", err)
			}
		}
		t.Stop()
	}
}

// advanceRotations moves on every automatic rotation whose phase is due
// and returns when the next one falls due (zero: none is automatic).
func (s *Server) advanceRotations(ctx context.Context) time.Time {
	var next time.Time
	earliest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	for _, kind := range caKinds {
		for ctx.Err() == nil {
			at := nextAt(s.caSet().kinds[kind].rot)
			if at.IsZero() {
				break
			}
			if s.cfg.Clock.Now().Before(at) {
				earliest(at)
				break
			}
			from, err := s.moveRotation(ctx, kind, func(cur store.Rotation) (string, bool) {
				// Read again in the transaction: another replica, or the
				// administrator, may have moved it first.
				due := nextAt(cur)
				return autoNext[cur.Phase], !due.IsZero() && !s.cfg.Clock.Now().Before(due)
			}, wire.RotationAuto, 0, nil)
			if errors.Is(err, errNotMoved) {
				if err := s.loadCAs(ctx); err != nil {
					earliest(s.cfg.Clock.Now().Add(rotationRetry))
					break
				}
				continue
			}
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("cannot move an automatic CA rotation on; trying again", "type", kind, "err", err, "retry_in", rotationRetry.String())
				}
				earliest(s.cfg.Clock.Now().Add(rotationRetry))
				break
			}
			s.log.Info("CA rotation moved on", "type", kind, "from", from, "to", s.caSet().kinds[kind].rot.Phase, "mode", wire.RotationAuto)
		}
	}
	return next
}
