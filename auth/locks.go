package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/wire"
)

// A lock refuses a bot everywhere, at once at the authority and within a
// poll at every enforcing node, whatever certificates the bot holds. The
// authority checks the store at every renewal, certificate and node list
// (checkBot), so a lock applies to the very next request; nodes fetch the
// locks in force from GET /v1/locks, served from lockSet.

// maxLockMessage bounds a lock's message, which shows in tables, logs
// and the refusal line a node logs at every refused login.
const maxLockMessage = 256

// removedBotLockTTL is how long `bots rm` locks the removed bot: no
// certificate it was issued outlives it (wire.MaxTTL caps them all).
const removedBotLockTTL = wire.MaxTTL + time.Minute

// lockGrace is how long `get locks` keeps showing an expired lock.
const lockGrace = 7 * 24 * time.Hour

func newLockID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// checkLockMessage: one line of printable text.
func checkLockMessage(m string) error {
	if utf8.RuneCountInString(m) > maxLockMessage || !utf8.ValidString(m) {
		return fmt.Errorf("bad --message: give at most %d characters of UTF-8 text", maxLockMessage)
	}
	for _, r := range m {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("bad --message %q: give one line of printable text", m)
		}
	}
	return nil
}

// AddLock locks a bot. An unknown bot, a bad TTL or message are errors,
// and then nothing is stored.
func (s *Server) AddLock(ctx context.Context, spec admin.LockSpec) (*wire.Lock, error) {
	if err := policy.CheckName("bot", spec.Bot); err != nil {
		return nil, admin.Mark(admin.Invalid, err)
	}
	if spec.TTL < 0 || (spec.TTL > 0 && spec.TTL < time.Second) {
		return nil, admin.Errorf(admin.Invalid, "bad --ttl %s: give a duration of at least 1s, like 30m or 24h, or none for a lock until removed", spec.TTL)
	}
	if err := checkLockMessage(spec.Message); err != nil {
		return nil, admin.Mark(admin.Invalid, err)
	}
	now := s.cfg.Clock.Now().Truncate(time.Second)
	l := wire.Lock{ID: newLockID(), Bot: spec.Bot, Message: spec.Message, Created: now}
	if spec.TTL > 0 {
		l.Expires = now.Add(spec.TTL.Round(time.Second))
	}
	err := s.st.Update(ctx, func(tx store.Tx) error {
		if _, err := tx.Bot(ctx, spec.Bot); errors.Is(err, store.ErrNotFound) {
			return admin.Errorf(admin.NotFound, "bot %q not found; see `midfs bots ls`", spec.Bot)
		} else if err != nil {
			return err
		}
		return s.putLock(ctx, tx, l)
	})
	if err != nil {
		return nil, err
	}
	s.locks.changed()
	s.log.Warn("bot locked", "bot", l.Bot, "lock", l.ID, "message", l.Message, "expires", l.Expires)
	return &l, nil
}

// putLock stores l and drops locks long expired, in tx.
func (s *Server) putLock(ctx context.Context, tx store.Tx, l wire.Lock) error {
	if _, err := tx.RemoveExpiredLocks(ctx, l.Created.Add(-lockGrace)); err != nil {
		return err
	}
	return tx.PutLock(ctx, l)
}

// lockOf returns a lock in force on bot at now, if any.
func lockOf(locks []wire.Lock, now time.Time) *wire.Lock {
	for i := range locks {
		if locks[i].InForce(now) {
			return &locks[i]
		}
	}
	return nil
}

// lockedRefusal is what a locked bot is told.
func lockedRefusal(l *wire.Lock) *refusal {
	msg := fmt.Sprintf("bot %s is locked (lock %s", l.Bot, l.ID)
	if l.Message != "" {
		msg += ": " + l.Message
	}
	msg += ")"
	if !l.Expires.IsZero() {
		msg += " until " + l.Expires.UTC().Format(time.RFC3339)
	}
	return &refusal{Code: "bot_locked", Reason: msg, Public: msg + "; an administrator may remove it with `midfs rm locks/" + l.ID + "`", Status: 403}
}

// checkLocks refuses a bot with a lock in force, read from q.
func (s *Server) checkLocks(ctx context.Context, q store.Reader, bot string) error {
	locks, err := q.Locks(ctx, bot)
	if err != nil {
		return err
	}
	if l := lockOf(locks, s.cfg.Clock.Now()); l != nil {
		return lockedRefusal(l)
	}
	return nil
}

// checkLockedNow is checkLocks for the cheap answers (an unchanged node
// list): it asks the store only about a bot the locks in memory name.
func (s *Server) checkLockedNow(ctx context.Context, bot string) error {
	sn, err := s.locks.current(ctx, s.st, s.cfg.Clock.Now())
	if err != nil {
		return err
	}
	if !sn.bots[bot] {
		return nil
	}
	return s.checkLocks(ctx, s.st, bot)
}

func lockResources(locks []wire.Lock, id string) []policy.LockResource {
	var out []policy.LockResource
	for _, l := range locks {
		if id == "" || l.ID == id {
			out = append(out, policy.LockResourceOf(l))
		}
	}
	return out
}

// lockSet is what GET /v1/locks serves, cheap at any number of nodes: the
// locks in force, encoded once, re-read from the store only after a
// change (this authority's, at once; another replica's, when the store
// tells, within its poll bound: watchLocks) or when one of them expires.
// The ETag is a hash of the answer, so it changes exactly when the answer
// does; an unchanged list costs a pointer load and a string comparison.
type lockSet struct {
	version atomic.Uint64 // moves after every committed change of locks
	mu      sync.Mutex    // serializes loads
	snap    atomic.Pointer[lockSnap]
}

type lockSnap struct {
	version uint64
	until   time.Time       // the first expiry among the locks; zero: none
	bots    map[string]bool // bots with a lock in force
	body    []byte          // wire.LockList
	etag    string
}

// changed is called once a change of the locks has committed.
func (ls *lockSet) changed() { ls.version.Add(1) }

func (sn *lockSnap) fresh(v uint64, now time.Time) bool {
	return sn.version >= v && (sn.until.IsZero() || now.Before(sn.until))
}

// follow moves the lock list on whenever changes says the locks changed
// (through this authority or another on the same state), until stop is
// closed or changes is.
func (ls *lockSet) follow(changes, stop <-chan struct{}) {
	for {
		select {
		case _, ok := <-changes:
			if !ok {
				return
			}
			ls.changed()
		case <-stop:
			return
		}
	}
}

// current returns the locks in force at now.
func (ls *lockSet) current(ctx context.Context, q store.Reader, now time.Time) (*lockSnap, error) {
	v := ls.version.Load()
	if sn := ls.snap.Load(); sn != nil && sn.fresh(v, now) {
		return sn, nil
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if sn := ls.snap.Load(); sn != nil && sn.fresh(v, now) {
		return sn, nil
	}
	// The version is read before the store (see inventory.at).
	v = ls.version.Load()
	all, err := q.Locks(ctx, "")
	if err != nil {
		return nil, err
	}
	sn := &lockSnap{version: v, bots: map[string]bool{}}
	list := wire.LockList{Locks: []wire.Lock{}}
	for _, l := range all {
		if !l.InForce(now) {
			continue
		}
		list.Locks = append(list.Locks, l)
		sn.bots[l.Bot] = true
		if !l.Expires.IsZero() && (sn.until.IsZero() || l.Expires.Before(sn.until)) {
			sn.until = l.Expires
		}
	}
	if sn.body, err = json.Marshal(list); err != nil {
		return nil, err
	}
	h := sha256.Sum256(sn.body)
	sn.etag = `"` + hex.EncodeToString(h[:12]) + `"`
	ls.snap.Store(sn)
	return sn, nil
}

// handleLocks answers with the locks in force, or 304 Not Modified when
// If-None-Match names them. Any client certificate the cluster issued
// will do (a node's or a bot's): the list tells nothing secret, and every
// enforcing node needs it.
func (s *Server) handleLocks(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		s.refuse(w, r, "locks", &refusal{Code: "no_client_cert", Reason: "no verified client certificate", Public: "this call needs a client certificate from this cluster (a node's or a bot's)", Status: 401})
		return
	}
	sn, err := s.locks.current(r.Context(), s.st, s.cfg.Clock.Now())
	if err != nil {
		s.refuse(w, r, "locks", err)
		return
	}
	w.Header().Set("ETag", sn.etag)
	if etagMatches(r.Header.Get("If-None-Match"), sn.etag) {
		s.metrics.lockList("not_modified")
		w.WriteHeader(http.StatusNotModified)
		return
	}
	s.metrics.lockList("full")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(sn.body)))
	w.Write(sn.body)
}
