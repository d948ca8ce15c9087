package auth

// IAM join, the authority's endpoints: hand out challenges, and trade a
// signed sts:GetCallerIdentity request for a non-renewable bot (or node)
// identity once AWS has said who signed it and the token's allow rules
// admit that identity. The checks themselves are in package auth/iam.

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/iam"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/wire"
)

// iamJoin serves the IAM join endpoints of one authority.
type iamJoin struct {
	s          *Server
	challenges *iam.Challenges
	sts        *iam.Forwarder
}

// iamRoutes registers wire.PathIAMChallenge and wire.PathIAMJoin.
func (s *Server) iamRoutes(mux *http.ServeMux) {
	j := &iamJoin{s: s, challenges: s.iamChallenges(), sts: iam.NewForwarder(s.cfg.STSEndpoint, s.cfg.InsecureTestMode)}
	if s.cfg.STSEndpoint != "" {
		s.log.Warn("TEST MODE: IAM joins are verified by the STS endpoint given with --sts-endpoint, whose TLS certificate is NOT checked; never run an authority like this in production",
			"sts_endpoint", s.cfg.STSEndpoint)
	}
	mux.HandleFunc("POST "+wire.PathIAMChallenge, s.needsDB(j.handleChallenge))
	mux.HandleFunc("POST "+wire.PathIAMJoin, s.needsDB(j.handleJoin))
}

// iamChallenges are this process's own, unless the authority has a seal
// key: replicas share one (they all have the same seal key), derive the
// same challenge key from it, and record taken challenges in the database,
// so that an agent may fetch its challenge from one replica and join
// through another, and a challenge is taken once across all of them.
func (s *Server) iamChallenges() *iam.Challenges {
	if s.seal == nil {
		return iam.NewChallenges(s.cfg.Clock)
	}
	return iam.NewSharedChallenges(s.cfg.Clock, s.seal.Derive("iam-challenge", s.cluster), &spentChallenges{s: s})
}

// spentChallenges records taken IAM challenges in the store, and about
// once a minute (per replica) forgets those whose record has expired.
type spentChallenges struct {
	s         *Server
	lastSweep atomic.Int64 // Unix seconds
}

// spentSweepEvery is how often a replica removes expired records.
const spentSweepEvery = time.Minute

func (sc *spentChallenges) Spend(ctx context.Context, id []byte, expires time.Time) (bool, error) {
	now := sc.s.cfg.Clock.Now()
	last := sc.lastSweep.Load()
	sweep := now.Unix()-last >= int64(spentSweepEvery/time.Second) && sc.lastSweep.CompareAndSwap(last, now.Unix())
	var fresh bool
	err := sc.s.st.Update(ctx, func(tx store.Tx) error {
		var err error
		if fresh, err = tx.SpendChallenge(ctx, id, expires); err != nil || !sweep {
			return err
		}
		_, err = tx.RemoveSpentChallenges(ctx, now)
		return err
	})
	return fresh, err
}

func (j *iamJoin) handleChallenge(w http.ResponseWriter, r *http.Request) {
	wire.WriteJSON(w, wire.IAMChallenge{Challenge: j.challenges.Issue()})
}

func (j *iamJoin) handleJoin(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ref := newRefusalRef()
	var req wire.IAMJoinRequest
	if err := decodeRequest(w, r, &req); err != nil {
		j.s.refuseJoin(w, r, wire.JoinIAM, err) // 400 or 413 with what is wrong
		return
	}
	tok, id, f := j.verify(r, &req)
	if f != nil {
		j.refuse(w, r, ref, f)
		return
	}
	name, err := tokenTarget(tok, req.Node)
	if err != nil { // the identity is allowed: it may learn what the token joins
		j.s.refuseJoin(w, r, wire.JoinIAM, aboutToken(err, refusal{token: tok.Name, bot: tok.BotName}))
		return
	}
	pub, _ := parsePublicKey(req.PublicKey) // checked in verify
	var bi *wire.BotIdentity
	if req.Node != nil {
		presented, _ := j.s.clientBot(r) // nil unless it joins again
		bi, err = j.s.joinNodeIAM(r.Context(), tok, name, &req, pub, presented, id)
	} else {
		bi, err = j.s.issueBotIdentity(r.Context(), name, pub, wire.JoinIAM)
		if err == nil {
			err = j.s.recordIAMJoin(r.Context(), bi, req.Token, id)
		}
	}
	var botRef *refusal
	if errors.As(err, &botRef) && botRef.Status == http.StatusForbidden { // bot removed or locked
		j.refuse(w, r, ref, iam.Refuse(iam.Reason(botRef.Code), "%s", botRef.Reason))
		return
	}
	if err != nil { // a node's name taken, or an internal error
		j.s.refuseJoin(w, r, wire.JoinIAM, aboutToken(err, refusal{token: tok.Name}))
		return
	}
	j.s.metrics.join(wire.JoinIAM, "ok")
	j.s.metrics.issued("join", time.Since(start))
	msg, who := "bot joined", []any{"bot", bi.BotName}
	if req.Node != nil {
		msg, who = "node joined", []any{"node", req.Node.Name, "addr", req.Node.Addr}
	}
	j.s.log.Info(msg, append(who, "method", wire.JoinIAM, "token", req.Token,
		"aws_account", id.Account, "aws_arn", id.Arn, "remote", r.RemoteAddr)...)
	wire.WriteJSON(w, bi)
}

// joinNodeIAM issues the identity of the node req names (its bot row is
// name, with public key pub),
// for an IAM join that verify admitted with t, a node token. Like an IAM
// bot's it is not renewable: the node joins again before it expires. A
// node that presents its current identity joins again as itself: same
// instance, its name kept, nothing changed but the token's labels, which
// an administrator may have changed. Any other join is a first join and
// claims the name, as a token join does; an earlier holder's identity is
// then refused (superseded).
func (s *Server) joinNodeIAM(ctx context.Context, t *store.Token, name string, req *wire.IAMJoinRequest, pub crypto.PublicKey, presented *botCert, id iam.CallerIdentity) (*wire.BotIdentity, error) {
	now := s.cfg.Clock.Now()
	serial := randomSerial()
	var bot *store.Bot
	err := s.st.Update(ctx, func(tx store.Tx) error {
		bot = nil // fn may run again (store.Store)
		b, err := tx.Bot(ctx, name)
		switch {
		case errors.Is(err, store.ErrNotFound):
			b = nil
		case err != nil:
			return err
		case b.Locked != "":
			return refuseToken("bot_locked", fmt.Sprintf("node %s is locked: %s", req.Node.Name, b.Locked))
		}
		if err := s.checkLocks(ctx, tx, name); err != nil {
			return joinRefusal(err)
		}
		again, err := s.joinsAgain(ctx, tx, b, presented, t.Labels)
		if err != nil {
			return err
		}
		if !again {
			if b, err = s.claimNode(ctx, tx, b, name, now); err != nil {
				return err
			}
			b.Instance, b.Generation = newInstanceID(), 1
			if err := tx.Rejoin(ctx, b.Name, b.Instance, keyHash(req.PublicKey)); err != nil {
				return err
			}
			if err := joinedNode(ctx, tx, req.Node, t.Labels); err != nil {
				return err
			}
		}
		bot = b
		e := s.joinEvent(b, t, req.Node, serial, now, false)
		e.Generation, e.AWSAccount, e.AWSARN = b.Generation, id.Account, id.Arn
		return s.record(ctx, tx, e)
	})
	if err != nil {
		return nil, err
	}
	return s.issueBotTLS(bot, pub, bot.Generation, false, now, serial)
}

// joinsAgain says whether presented is the current identity of the
// joined node whose identity row is b (nil: none), and then gives the
// node the token's labels as they are now.
func (s *Server) joinsAgain(ctx context.Context, tx store.Tx, b *store.Bot, presented *botCert, tokenLabels map[string]string) (bool, error) {
	if b == nil || presented == nil || presented.Output || presented.Bot != b.Name || presented.Instance != b.Instance ||
		(presented.Renewable && presented.Generation != b.Generation) {
		return false, nil
	}
	row, err := tx.Node(ctx, presented.Node)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !row.Agent) {
		return false, nil // no longer a joined node: a first join claims the name
	}
	if err != nil || maps.Equal(row.TokenLabels, tokenLabels) {
		return err == nil, err
	}
	row.TokenLabels = tokenLabels // the next heartbeat applies them
	return true, tx.PutNode(ctx, *row)
}

// verify runs every check of an IAM join in order and returns the token
// and the AWS identity that signed the request.
func (j *iamJoin) verify(r *http.Request, req *wire.IAMJoinRequest) (*store.Token, iam.CallerIdentity, *iam.Refusal) {
	// The challenge is spent first, whatever happens next: a request that
	// fails a later check can never be tried again.
	if f := j.challenges.Take(r.Context(), req.Challenge); f != nil {
		return nil, iam.CallerIdentity{}, f
	}
	tok, err := j.s.lookupToken(r.Context(), req.Token)
	switch {
	case errors.Is(err, store.ErrNotFound):
		// No name in the log: an agent that passed a one-time secret by
		// mistake must not get it written down.
		return nil, iam.CallerIdentity{}, iam.Refuse(iam.ReasonTokenUnknown, "no token of that name")
	case err != nil:
		return nil, iam.CallerIdentity{}, iam.Refuse(iam.ReasonInternal, "token lookup: %v", err)
	case tok.JoinMethod != wire.JoinIAM:
		return nil, iam.CallerIdentity{}, iam.Refuse(iam.ReasonTokenNotIAM, "token %s is for join method %s", tok.Name, tok.JoinMethod)
	case !tok.Expires.IsZero() && !j.s.cfg.Clock.Now().Before(tok.Expires):
		return nil, iam.CallerIdentity{}, iam.Refuse(iam.ReasonTokenExpired, "token %s expired at %s", tok.Name, tok.Expires.UTC().Format(time.RFC3339))
	}
	if _, err := parsePublicKey(req.PublicKey); err != nil {
		return nil, iam.CallerIdentity{}, iam.Refuse(iam.ReasonBadJoinRequest, "%v", err)
	}
	sr, f := iam.ParseSTSRequest(req.STSRequest, req.Challenge)
	if f != nil {
		return nil, iam.CallerIdentity{}, f
	}
	id, f := j.sts.Send(r.Context(), sr)
	if f != nil {
		return nil, iam.CallerIdentity{}, f
	}
	if f := iam.MatchRules(tok.Allow, id); f != nil {
		f.Detail = fmt.Sprintf("token %s: %s", tok.Name, f.Detail)
		return nil, iam.CallerIdentity{}, f
	}
	return tok, id, nil
}

// refuse logs the real reason with a reference, counts it, and gives the
// client one line with the same reference, so that an operator can find
// the reason without the client learning anything about AWS or the rules.
func (j *iamJoin) refuse(w http.ResponseWriter, r *http.Request, ref string, f *iam.Refusal) {
	public := fmt.Sprintf("IAM join refused (ref %s): the request does not prove an AWS identity that this iam token allows; the authority's log has the reason", ref)
	status := http.StatusForbidden
	switch f.Reason {
	case iam.ReasonBadJoinRequest:
		public = fmt.Sprintf("bad IAM join request (ref %s): %s", ref, iam.Truncate(f.Detail, 200))
		status = http.StatusBadRequest
	case iam.ReasonInternal:
		if j.s.dbw.check(context.WithoutCancel(r.Context())) != nil {
			j.s.log.Warn("iam join failed: no database", "reason", f.Detail, "ref", ref)
			j.s.answerNoDB(w)
			return
		}
		public = fmt.Sprintf("internal error (ref %s); see the authority's log", ref)
		status = http.StatusInternalServerError
	case iam.ReasonSTSUnreachable:
		public = fmt.Sprintf("the authority could not reach AWS STS to verify this join (ref %s); try again later", ref)
		status = http.StatusServiceUnavailable
	}
	j.s.metrics.join(wire.JoinIAM, "refused")
	rf := &refusal{
		Code:   "iam_" + string(f.Reason),
		Reason: fmt.Sprintf("%s [ref %s]", f.Detail, ref),
		Public: public,
		Status: status,
		ref:    ref,
	}
	j.s.recordRefusal(r.Context(), audit.JoinRefused, wire.JoinIAM, rf)
	j.s.refuse(w, r, "iam join", rf)
}

// newRefusalRef is a short random reference joining a client's error line
// to the authority's log line.
func newRefusalRef() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
