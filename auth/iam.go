package auth

// IAM join, the authority's endpoints: hand out challenges, and trade a
// signed sts:GetCallerIdentity request for a non-renewable bot identity
// once AWS has said who signed it and the token's allow rules admit that
// identity. The checks themselves are in package auth/iam.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

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
	bot, id, f := j.verify(r, &req)
	if f != nil {
		j.refuse(w, r, ref, f)
		return
	}
	pub, _ := parsePublicKey(req.PublicKey) // checked in verify
	bi, err := j.s.issueBotIdentity(r.Context(), bot, pub, wire.JoinIAM)
	var botRef *refusal
	if errors.As(err, &botRef) { // bot removed or locked
		j.refuse(w, r, ref, iam.Refuse(iam.Reason(botRef.Code), "%s", botRef.Reason))
		return
	}
	if err != nil {
		j.s.refuseJoin(w, r, wire.JoinIAM, err)
		return
	}
	j.s.metrics.join(wire.JoinIAM, "ok")
	j.s.metrics.issued("join", time.Since(start))
	j.s.log.Info("bot joined", "bot", bi.BotName, "method", wire.JoinIAM, "token", req.Token,
		"aws_account", id.Account, "aws_arn", id.Arn, "remote", r.RemoteAddr)
	wire.WriteJSON(w, bi)
}

// verify runs every check of an IAM join in order and returns the bot the
// token names and the AWS identity that signed the request.
func (j *iamJoin) verify(r *http.Request, req *wire.IAMJoinRequest) (string, iam.CallerIdentity, *iam.Refusal) {
	// The challenge is spent first, whatever happens next: a request that
	// fails a later check can never be tried again.
	if f := j.challenges.Take(r.Context(), req.Challenge); f != nil {
		return "", iam.CallerIdentity{}, f
	}
	tok, err := j.s.lookupToken(r.Context(), req.Token)
	switch {
	case errors.Is(err, store.ErrNotFound):
		// No name in the log: an agent that passed a one-time secret by
		// mistake must not get it written down.
		return "", iam.CallerIdentity{}, iam.Refuse(iam.ReasonTokenUnknown, "no token of that name")
	case err != nil:
		return "", iam.CallerIdentity{}, iam.Refuse(iam.ReasonInternal, "token lookup: %v", err)
	case tok.JoinMethod != wire.JoinIAM:
		return "", iam.CallerIdentity{}, iam.Refuse(iam.ReasonTokenNotIAM, "token %s is for join method %s", tok.Name, tok.JoinMethod)
	case !tok.Expires.IsZero() && !j.s.cfg.Clock.Now().Before(tok.Expires):
		return "", iam.CallerIdentity{}, iam.Refuse(iam.ReasonTokenExpired, "token %s expired at %s", tok.Name, tok.Expires.UTC().Format(time.RFC3339))
	}
	if _, err := parsePublicKey(req.PublicKey); err != nil {
		return "", iam.CallerIdentity{}, iam.Refuse(iam.ReasonBadJoinRequest, "%v", err)
	}
	sr, f := iam.ParseSTSRequest(req.STSRequest, req.Challenge)
	if f != nil {
		return "", iam.CallerIdentity{}, f
	}
	id, f := j.sts.Send(r.Context(), sr)
	if f != nil {
		return "", iam.CallerIdentity{}, f
	}
	if f := iam.MatchRules(tok.Allow, id); f != nil {
		f.Detail = fmt.Sprintf("token %s: %s", tok.Name, f.Detail)
		return "", iam.CallerIdentity{}, f
	}
	return tok.BotName, id, nil
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
	j.s.refuse(w, r, "iam join", &refusal{
		Code:   "iam_" + string(f.Reason),
		Reason: fmt.Sprintf("%s [ref %s]", f.Detail, ref),
		Public: public,
		Status: status,
	})
}

// newRefusalRef is a short random reference joining a client's error line
// to the authority's log line.
func newRefusalRef() string {
	var b [4]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
