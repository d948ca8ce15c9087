package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/wire"
)

// joinRefusedMsg is all a client learns about a refused token: telling an
// unknown token from a used one would help whoever is guessing.
const joinRefusedMsg = "join token is invalid, expired or already used"

// refusal is a request the authority turns down: Reason is logged and
// counted (as Code) on the authority; Public is what the client reads.
type refusal struct {
	Code   string // short metric label, e.g. "token_used"
	Reason string // for the authority's log; never holds a secret
	Public string // the one line the client gets
	Status int

	ref, bot, token string // for the audit trail: the client's reference; the bot and token, when known
}

func (r *refusal) Error() string { return r.Public }

// refuseToken answers the generic line with a reference the log line
// carries too, as the IAM join does, so an operator can find the reason.
func refuseToken(code, reason string) *refusal {
	ref := newRefusalRef()
	return &refusal{Code: code, Reason: reason + " [ref " + ref + "]", Public: joinRefusedMsg + " (ref " + ref + ")", Status: 403, ref: ref}
}

// joinRefusal turns a lock's refusal into the generic one joins give (the
// reason goes to the log); other errors pass.
func joinRefusal(err error) error {
	var ref *refusal
	if errors.As(err, &ref) {
		return refuseToken(ref.Code, ref.Reason)
	}
	return err
}

func hashToken(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

func newInstanceID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// joinToken redeems a one-time token for a renewable bot identity at
// generation 1: a bot's, or with a node token the identity of the node
// the request names. The check and the redemption happen in one write
// transaction, so two racing joins with one token get one identity. A
// retry with the same token and the same public key (the client lost the
// answer) gets a fresh identity at the same generation, as long as the
// token has not expired and the bot has not moved on.
func (s *Server) joinToken(ctx context.Context, req *wire.JoinRequest) (*wire.BotIdentity, error) {
	pub, err := parsePublicKey(req.PublicKey)
	if err != nil {
		return nil, &refusal{Code: "bad_request", Reason: err.Error(), Public: err.Error(), Status: 400}
	}
	if req.Token == "" {
		return nil, &refusal{Code: "bad_request", Reason: "no token", Public: "token is missing", Status: 400}
	}
	secret := hashToken(req.Token)
	kh := keyHash(req.PublicKey)
	now := s.cfg.Clock.Now()
	serial := randomSerial()
	var bot *store.Bot
	var known refusal // the token and bot a refusal is about, once known
	err = s.st.Update(ctx, func(tx store.Tx) error {
		bot, known = nil, refusal{} // fn may run again (store.Store)
		t, err := tx.TokenBySecret(ctx, secret)
		if errors.Is(err, store.ErrNotFound) {
			return refuseToken("token_unknown", "no such token")
		}
		if err != nil {
			return err
		}
		known.token, known.bot = t.Name, t.BotName
		switch {
		case t.JoinMethod != wire.JoinToken:
			return refuseToken("token_method", fmt.Sprintf("token %s is for join method %s", t.Name, t.JoinMethod))
		case !t.Expires.IsZero() && !now.Before(t.Expires):
			return refuseToken("token_expired", fmt.Sprintf("token %s for bot %s expired at %s", t.Name, t.BotName, t.Expires.UTC().Format(time.RFC3339)))
		}
		name, err := tokenTarget(t, req.Node)
		if err != nil {
			return err
		}
		b, err := tx.Bot(ctx, name)
		switch {
		case errors.Is(err, store.ErrNotFound) && req.Node != nil:
			b = nil // a node's first join makes its identity
		case errors.Is(err, store.ErrNotFound):
			return refuseToken("bot_missing", fmt.Sprintf("token %s names bot %s, which does not exist (removed?)", t.Name, t.BotName))
		case err != nil:
			return err
		case b.Locked != "":
			return refuseToken("bot_locked", fmt.Sprintf("bot %s is locked: %s", b.Name, b.Locked))
		}
		if err := s.checkLocks(ctx, tx, name); err != nil {
			return joinRefusal(err)
		}
		if !t.Used.IsZero() {
			if b != nil && bytes.Equal(t.UsedKeyHash, kh) && t.UsedInstance == b.Instance && b.Generation == 1 {
				s.log.Info("token join retried with the same key: issuing the identity again", "bot", b.Name, "token", t.Name)
				bot = b
				return s.record(ctx, tx, s.joinEvent(b, t, req.Node, serial, now, true))
			}
			return refuseToken("token_used", fmt.Sprintf("token %s for bot %s was already used at %s", t.Name, name, t.Used.UTC().Format(time.RFC3339)))
		}
		if req.Node != nil {
			if b, err = s.claimNode(ctx, tx, b, name, now); err != nil {
				return err
			}
		}
		b.Instance = newInstanceID()
		b.Generation = 1
		used, err := tx.UseToken(ctx, t.Name, now, kh, b.Instance)
		if err != nil {
			return err
		}
		if !used {
			return refuseToken("token_used", fmt.Sprintf("token %s for bot %s was used concurrently", t.Name, name))
		}
		if err := tx.Rejoin(ctx, b.Name, b.Instance, kh); err != nil {
			return err
		}
		if req.Node != nil {
			if err := joinedNode(ctx, tx, req.Node, t.Labels); err != nil {
				return err
			}
		}
		bot = b
		return s.record(ctx, tx, s.joinEvent(b, t, req.Node, serial, now, false))
	})
	if err != nil {
		return nil, aboutToken(err, known)
	}
	return s.issueBotTLS(bot, pub, 1, true, now, serial)
}

// renew trades a renewable bot identity at the stored generation for the
// next one. A stale generation means two holders of one identity: the bot
// is locked until an administrator runs `midfs bots unlock`. The one
// exception is a retry of the last renewal with the same public key, which
// only re-issues what the legitimate holder already got.
func (s *Server) renew(ctx context.Context, bc *botCert, req *wire.RenewRequest) (*wire.BotIdentity, error) {
	if bc.Output {
		return nil, &refusal{Code: "output_identity", Reason: fmt.Sprintf("bot %s presented an output identity for renewal", bc.Bot), Public: "output identities cannot be renewed; use the bot identity", Status: 403}
	}
	if !bc.Renewable {
		return nil, &refusal{Code: "not_renewable", Reason: fmt.Sprintf("bot %s presented a non-renewable identity for renewal", bc.Bot), Public: "this bot identity is not renewable: join again", Status: 403}
	}
	pub, err := parsePublicKey(req.PublicKey)
	if err != nil {
		return nil, &refusal{Code: "bad_request", Reason: err.Error(), Public: err.Error(), Status: 400}
	}
	kh := keyHash(req.PublicKey)
	now := s.cfg.Clock.Now()
	serial := randomSerial()
	var bot *store.Bot
	var locked *refusal
	var gen uint64
	var retry bool
	err = s.st.Update(ctx, func(tx store.Tx) error {
		bot, locked, retry = nil, nil, false // fn may run again (store.Store)
		b, err := s.checkBot(ctx, tx, bc)
		if err != nil {
			return err
		}
		switch {
		case bc.Generation == b.Generation:
			gen = b.Generation + 1
			moved, err := tx.AdvanceGeneration(ctx, b.Name, b.Generation, kh)
			if err != nil {
				return err
			}
			if !moved { // cannot happen: read at b.Generation in this transaction
				return fmt.Errorf("bot %s: generation %d moved during its renewal", b.Name, b.Generation)
			}
		case bc.Generation+1 == b.Generation && bytes.Equal(kh, b.LastKeyHash):
			// The answer to this very request was lost (a network cut, or
			// the agent crashed before keeping it and sent the key it had
			// stored again): issue it again.
			gen = b.Generation
			s.log.Info("renewal retried with the same key: issuing it again", "bot", b.Name, "generation", gen)
			retry = true
		default:
			// Refused, yet the lock must be committed: an error from
			// here would undo it.
			locked, err = s.lockCopied(ctx, tx, b, bc.Generation, now)
			return err
		}
		bot = b
		return s.record(ctx, tx, s.botIdentityEvent(audit.BotRenewed, b, gen, serial, now, retry))
	})
	if err != nil {
		return nil, err
	}
	if locked != nil {
		return nil, locked
	}
	return s.issueBotTLS(bot, pub, gen, true, now, serial)
}

// lockCopied locks bot b, whose identity was presented at generation
// presented although the stored one is another: two holders of one
// identity. It returns the refusal to answer with; the caller commits tx.
func (s *Server) lockCopied(ctx context.Context, tx store.Tx, b *store.Bot, presented uint64, now time.Time) (*refusal, error) {
	reason := fmt.Sprintf("generation mismatch stored=%d presented=%d, possibly a copied identity", b.Generation, presented)
	if err := tx.SetLocked(ctx, b.Name, reason+" (locked "+now.UTC().Format(time.RFC3339)+")"); err != nil {
		return nil, err
	}
	if err := s.record(ctx, tx, audit.Event{Type: audit.GenerationLocked, Time: now, Bot: b.Name, Instance: b.Instance,
		Generation: presented, Code: "generation_mismatch", Message: reason}); err != nil {
		return nil, err
	}
	s.log.Warn(fmt.Sprintf("bot %s locked: %s", b.Name, reason), "bot", b.Name, "stored", b.Generation, "presented", presented)
	return &refusal{Code: "generation_mismatch", Reason: reason, Public: fmt.Sprintf("bot %s is now locked: %s; an administrator must run `midfs bots unlock %s`", b.Name, reason, b.Name), Status: 403}, nil
}

// checkCurrent is checkBot for the calls that use a bot identity without
// renewing it (certs, nodes). A renewable identity must also be at the
// stored generation. One behind is refused, not locked: it is what the
// rightful holder presents between a renewal whose answer it lost and the
// retry of that renewal. Any other generation can only be a copy, and locks
// the bot as renewal does.
func (s *Server) checkCurrent(ctx context.Context, bc *botCert) (*store.Bot, error) {
	b, err := s.checkBot(ctx, s.st, bc)
	if err != nil || !bc.Renewable || bc.Generation == b.Generation {
		return b, err
	}
	if bc.Generation+1 == b.Generation {
		return nil, &refusal{Code: "stale_generation", Reason: fmt.Sprintf("bot %s presented generation %d, stored %d", b.Name, bc.Generation, b.Generation), Public: "this bot identity was already renewed; use the newest one", Status: 403}
	}
	var locked *refusal
	err = s.st.Update(ctx, func(tx store.Tx) (err error) {
		locked, err = s.lockCopied(ctx, tx, b, bc.Generation, s.cfg.Clock.Now())
		return err
	})
	if err != nil {
		return nil, err
	}
	return nil, locked
}

// checkBot finds the bot a certificate names and checks that it still
// stands behind it: not removed, not re-joined since, not locked.
func (s *Server) checkBot(ctx context.Context, q store.Reader, bc *botCert) (*store.Bot, error) {
	b, err := q.Bot(ctx, bc.Bot)
	if errors.Is(err, store.ErrNotFound) {
		return nil, &refusal{Code: "bot_missing", Reason: fmt.Sprintf("bot %s does not exist (removed?)", bc.Bot), Public: fmt.Sprintf("bot %s no longer exists on this authority", bc.Bot), Status: 403}
	}
	if err != nil {
		return nil, err
	}
	if b.Instance != bc.Instance {
		return nil, &refusal{Code: "superseded", Reason: fmt.Sprintf("bot %s presented an identity of an earlier join", bc.Bot), Public: fmt.Sprintf("this identity of bot %s was replaced by a newer join", bc.Bot), Status: 403}
	}
	if b.Locked != "" {
		return nil, &refusal{Code: "bot_locked", Reason: fmt.Sprintf("bot %s is locked: %s", b.Name, b.Locked), Public: fmt.Sprintf("bot %s is locked (%s); an administrator must run `midfs bots unlock %s`", b.Name, b.Locked, b.Name), Status: 403}
	}
	if err := s.checkLocks(ctx, q, b.Name); err != nil {
		return nil, err
	}
	return b, nil
}

// certs issues an output identity to a bot identity at the current
// generation.
func (s *Server) certs(ctx context.Context, bc *botCert, req *wire.CertsRequest) (*wire.Certs, error) {
	if bc.Output {
		return nil, &refusal{Code: "output_identity", Reason: fmt.Sprintf("bot %s presented an output identity for certs", bc.Bot), Public: "output identities cannot get certificates; use the bot identity", Status: 403}
	}
	pub, err := parsePublicKey(req.PublicKey)
	if err != nil {
		return nil, &refusal{Code: "bad_request", Reason: err.Error(), Public: err.Error(), Status: 400}
	}
	if req.TTLSeconds < 0 {
		return nil, &refusal{Code: "bad_request", Reason: "negative ttl", Public: "ttl_seconds must not be negative", Status: 400}
	}
	ttl := s.cfg.DefaultTTL
	if req.TTLSeconds > 0 {
		ttl = min(time.Duration(min(req.TTLSeconds, int64(wire.MaxTTL/time.Second)))*time.Second, s.cfg.MaxTTL)
	}
	b, err := s.checkCurrent(ctx, bc)
	if err != nil {
		return nil, err
	}
	roles, err := s.st.Roles(ctx, b.Roles)
	if err != nil {
		return nil, err
	}
	certs, err := s.issueOutput(b, roles, pub, ttl, s.cfg.Clock.Now())
	if err != nil {
		return nil, err
	}
	ev, err := outputEvent(b, certs)
	if err != nil {
		return nil, err
	}
	if err := s.recordAlone(ctx, ev); err != nil {
		return nil, err
	}
	return certs, nil
}

// nodes lists, encoded, the nodes the bot's roles let it see in the
// inventory at version v or later.
func (s *Server) nodes(ctx context.Context, bc *botCert, v uint64) ([][]byte, error) {
	b, err := s.checkCurrent(ctx, bc)
	if err != nil {
		return nil, err
	}
	snap, err := s.inv.at(ctx, s.st, v)
	if err != nil {
		return nil, err
	}
	return snap.visible(b.Roles)
}

// lookupToken finds a token by name, for delegated join methods (IAM).
// The error wraps store.ErrNotFound when there is no such token.
func (s *Server) lookupToken(ctx context.Context, name string) (*store.Token, error) {
	return s.st.Token(ctx, name)
}

// issueBotIdentity issues a non-renewable bot identity for a join that the
// caller has already verified (IAM). It carries the bot's current instance
// and generation and changes nothing stored: many machines may join as one
// IAM bot. Refusals (bot removed or locked) are *refusal errors.
func (s *Server) issueBotIdentity(ctx context.Context, botName string, pub crypto.PublicKey, method string) (*wire.BotIdentity, error) {
	b, err := s.st.Bot(ctx, botName)
	if errors.Is(err, store.ErrNotFound) {
		return nil, refuseToken("bot_missing", fmt.Sprintf("%s join for bot %s, which does not exist (removed?)", method, botName))
	}
	if err != nil {
		return nil, err
	}
	if b.Locked != "" {
		return nil, refuseToken("bot_locked", fmt.Sprintf("bot %s is locked: %s", b.Name, b.Locked))
	}
	if err := s.checkLocks(ctx, s.st, b.Name); err != nil {
		return nil, joinRefusal(err)
	}
	return s.issueBotTLS(b, pub, b.Generation, false, s.cfg.Clock.Now(), randomSerial())
}
