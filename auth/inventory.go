package auth

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/midfs/midfs/auth/audit"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
)

// inventory is what GET /v1/nodes serves, kept cheap at any size: every
// node (encoded once) and every role, read from the store only after a
// change, and the stored version of the inventory (store.TopicInventory),
// which every committed change of what any bot may see (nodes, roles, a
// bot's roles) moves on, whichever replica commits it.
//
// The version is kept in memory: after this replica's own changes it is
// read at once (changed), after another replica's when the store says so
// (follow: at once with PostgreSQL's notifications, within
// store.DefaultPollInterval without them). Since the version and the
// cluster ID are the same on every replica, so is the ETag: an agent that
// polls one replica and then another gets 304 Not Modified from both.
//
// An agent polls with the ETag of its last list: while nothing changed it
// gets 304 Not Modified, which costs no database query and no encoding.
//
// Nodes that joined (`midfs node start`) are in it only while they
// heartbeat: live holds, in memory, until when each stays, learnt from
// this replica's heartbeats and from the store (where every replica
// writes them, within a second). A heartbeat that brings a node (back)
// in writes its row, which moves the version; the first replica to see a
// node's stay run out (expire) rewrites it, for the same effect. A
// heartbeat that only extends a stay changes nothing bots see and moves
// nothing.
type inventory struct {
	st store.Reader
	w  store.Store // to record that a node left (recordLeft)
	// record writes an event in a transaction (the Server's record).
	record  func(context.Context, store.Tx, audit.Event) error
	log     *slog.Logger
	cluster string // cluster ID: tags of another state never match
	version atomic.Uint64

	mu   sync.Mutex // serializes loads
	snap atomic.Pointer[invSnapshot]

	now      func() time.Time // the authority's clock
	liveMu   sync.Mutex
	live     map[string]time.Time // joined node -> when it leaves unless it heartbeats
	extended map[string]time.Time // stays extended since they were last written to the store
	expireMu sync.Mutex           // one expire reads the store at a time
	// nextExpiry (unix ns) is no later than the earliest time in live, so
	// that expire costs one atomic load until a stay may have run out.
	nextExpiry atomic.Int64
}

// invSnapshot is every node and role as read at (or after) a version.
type invSnapshot struct {
	version uint64
	nodes   []identity.Node // sorted by name
	encoded [][]byte        // nodes[i] as JSON
	roles   map[string]policy.Role
}

func newInventory(ctx context.Context, st store.Store, clusterID string, log *slog.Logger, now func() time.Time,
	record func(context.Context, store.Tx, audit.Event) error) *inventory {
	inv := &inventory{st: st, w: st, cluster: clusterID, log: log, now: now, record: record,
		live: map[string]time.Time{}, extended: map[string]time.Time{}}
	inv.nextExpiry.Store(math.MaxInt64)
	inv.refresh(ctx)
	return inv
}

// changed is called once a change of nodes, roles or a bot's roles has
// committed here: the new version is read before the client is answered,
// so its next poll sees a new ETag.
func (inv *inventory) changed() { inv.refresh(context.Background()) }

// follow refreshes the version whenever the store says the inventory
// changed, until the store closes the channel or stop is closed.
func (inv *inventory) follow(changes <-chan struct{}, stop <-chan struct{}) {
	for {
		select {
		case _, ok := <-changes:
			if !ok {
				return
			}
			inv.refresh(context.Background())
		case <-stop:
			return
		}
	}
}

// refresh reads the stored version; it never moves the one in memory
// back. If the store cannot be read, the version stays until the store's
// next signal (it polls on through an outage).
func (inv *inventory) refresh(ctx context.Context) {
	vs, err := inv.st.Versions(ctx)
	if err != nil {
		inv.log.Warn("cannot read the inventory version; node lists may show the last one read until the state is readable", "err", err)
		return
	}
	v := vs[store.TopicInventory]
	for {
		cur := inv.version.Load()
		if v <= cur || inv.version.CompareAndSwap(cur, v) {
			return
		}
	}
}

// learn takes the stays of joined nodes from stored rows (at start, at
// every load, before dropping any): a heartbeat that reached another
// replica is in the store, not in this one's memory. A stay only grows.
func (inv *inventory) learn(nodes []store.Node, now time.Time) {
	inv.liveMu.Lock()
	defer inv.liveMu.Unlock()
	for _, n := range nodes {
		if !n.Agent || !n.Expires.After(now) {
			continue
		}
		if until, ok := inv.live[n.Name]; !ok || n.Expires.After(until) {
			inv.live[n.Name] = n.Expires
			if ns := n.Expires.UnixNano(); !ok && ns < inv.nextExpiry.Load() {
				inv.nextExpiry.Store(ns)
			}
		}
	}
}

// heartbeat keeps a joined node in the inventory until expires, a stay
// just written to the store, and says whether it was out of it.
func (inv *inventory) heartbeat(node string, expires time.Time) (cameIn bool) {
	inv.liveMu.Lock()
	defer inv.liveMu.Unlock()
	_, was := inv.live[node]
	inv.live[node] = expires
	delete(inv.extended, node) // written with the heartbeat
	if ns := expires.UnixNano(); ns < inv.nextExpiry.Load() {
		inv.nextExpiry.Store(ns)
	}
	return !was
}

// extend extends the stay of a joined node that is in the inventory and
// stays as it is, and keeps it for the store (takeExtended).
func (inv *inventory) extend(node string, expires time.Time) {
	inv.liveMu.Lock()
	defer inv.liveMu.Unlock()
	inv.live[node] = expires
	inv.extended[node] = expires
}

// takeExtended hands over the stays extended since the last call.
func (inv *inventory) takeExtended() map[string]time.Time {
	inv.liveMu.Lock()
	defer inv.liveMu.Unlock()
	if len(inv.extended) == 0 {
		return nil
	}
	out := inv.extended
	inv.extended = map[string]time.Time{}
	return out
}

// requeue gives back stays that could not be written, unless newer ones
// came meanwhile.
func (inv *inventory) requeue(stays map[string]time.Time) {
	inv.liveMu.Lock()
	defer inv.liveMu.Unlock()
	for n, t := range stays {
		if cur, ok := inv.extended[n]; !ok || t.After(cur) {
			inv.extended[n] = t
		}
	}
}

// forget drops a removed node from the joined nodes.
func (inv *inventory) forget(node string) {
	inv.liveMu.Lock()
	delete(inv.live, node)
	delete(inv.extended, node)
	inv.liveMu.Unlock()
}

// expire drops the joined nodes whose stay ran out by now, and moves the
// version if any did. Called before every answer that depends on the
// inventory, it needs no timer: no one notices a node leave before asking.
// Until a stay may have run out it costs one atomic load; then the stays
// are read again from q first (learn), once at a time.
func (inv *inventory) expire(ctx context.Context, now time.Time) {
	if now.UnixNano() < inv.nextExpiry.Load() {
		return
	}
	inv.expireMu.Lock()
	defer inv.expireMu.Unlock()
	if now.UnixNano() < inv.nextExpiry.Load() {
		return // done while this one waited
	}
	if stored, err := inv.st.Nodes(ctx); err == nil {
		inv.learn(stored, now)
	} // else decide from what this replica knows
	inv.liveMu.Lock()
	var left []string
	next := int64(math.MaxInt64)
	for name, until := range inv.live {
		if !now.Before(until) {
			delete(inv.live, name)
			delete(inv.extended, name)
			left = append(left, name)
			continue
		}
		next = min(next, until.UnixNano())
	}
	inv.nextExpiry.Store(next)
	inv.liveMu.Unlock()
	for _, name := range left {
		inv.recordLeft(ctx, name)
	}
}

// recordLeft moves the stored inventory version for a node that left by
// its stay running out, which no write recorded: every replica, and every
// agent's If-None-Match, must see the change. Rewriting the node's row as
// it is moves the version (store.TopicInventory); two replicas noticing
// the same node only cost agents a second fetch of their list.
func (inv *inventory) recordLeft(ctx context.Context, name string) {
	err := inv.w.Update(ctx, func(tx store.Tx) error {
		n, err := tx.Node(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			return nil // removed: that moved the version already
		}
		if err != nil {
			return err
		}
		if err := tx.PutNode(ctx, *n); err != nil {
			return err
		}
		// Each replica that notices records it: with several, a
		// departure may be recorded more than once. Not ctx: whoever
		// asked and made this replica notice is not who acted.
		return inv.record(context.Background(), tx, audit.Event{Type: audit.NodeGone, Name: name, NodeAddr: n.Addr})
	})
	if err != nil {
		inv.log.Warn("cannot record that a node left the inventory; node lists may show it until the next change", "node", name, "err", err)
	}
	inv.log.Info("node left the inventory: its heartbeats stopped", "node", name)
	inv.changed()
}

// stay says until when a joined node stays in the inventory, and whether
// it is in it.
func (inv *inventory) stay(node string) (time.Time, bool) {
	inv.liveMu.Lock()
	defer inv.liveMu.Unlock()
	t, ok := inv.live[node]
	return t, ok
}

// inInventory says which stored nodes bots may see at now: every node
// typed by an administrator, and the joined nodes that heartbeat.
func (inv *inventory) inInventory(nodes []store.Node, now time.Time) []identity.Node {
	inv.liveMu.Lock()
	defer inv.liveMu.Unlock()
	out := make([]identity.Node, 0, len(nodes))
	for _, n := range nodes {
		if until, live := inv.live[n.Name]; !n.Agent || (live && until.After(now)) {
			out = append(out, n.Node)
		}
	}
	return out
}

// etag names what a bot sees at inventory version v with the CAs at
// version cas (store.TopicCAs). Every change that could alter any bot's
// list moves one of them, so the tag needs nothing of the bot.
func (inv *inventory) etag(v, cas uint64) string {
	return fmt.Sprintf(`"%s-%d-%d"`, inv.cluster, v, cas)
}

// at returns a snapshot at least as new as version v, reading the store if
// the last one is older.
func (inv *inventory) at(ctx context.Context, q store.Reader, v uint64) (*invSnapshot, error) {
	if s := inv.snap.Load(); s != nil && s.version >= v {
		return s, nil
	}
	inv.mu.Lock()
	defer inv.mu.Unlock()
	if s := inv.snap.Load(); s != nil && s.version >= v {
		return s, nil // loaded while we waited
	}
	// Read the version before the store: the snapshot then holds at least
	// what that version names, and a change committing meanwhile moves the
	// version past it, so the next request loads again.
	cur := inv.version.Load()
	stored, err := q.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	now := inv.now()
	inv.learn(stored, now)
	nodes := inv.inInventory(stored, now)
	roles, err := q.AllRoles(ctx)
	if err != nil {
		return nil, err
	}
	s := &invSnapshot{version: cur, nodes: nodes, encoded: make([][]byte, len(nodes)), roles: make(map[string]policy.Role, len(roles))}
	for i, n := range nodes {
		if s.encoded[i], err = json.Marshal(n); err != nil {
			return nil, err
		}
	}
	for _, r := range roles {
		s.roles[r.Metadata.Name] = r
	}
	inv.snap.Store(s)
	return s, nil
}

// visible returns the encoded nodes that a bot with the named roles may
// see, in name order.
func (s *invSnapshot) visible(roleNames []string) ([][]byte, error) {
	roles := make([]policy.Role, 0, len(roleNames))
	for _, n := range roleNames {
		r, ok := s.roles[n]
		if !ok {
			return nil, fmt.Errorf("role %q: %w", n, store.ErrNotFound)
		}
		roles = append(roles, r)
	}
	var out [][]byte
	for i, n := range s.nodes {
		if policy.NodeVisible(roles, n) {
			out = append(out, s.encoded[i])
		}
	}
	return out, nil
}

// etagMatches reports whether an If-None-Match header names tag (weak
// tags compare equal too, as RFC 9110 says for If-None-Match).
func etagMatches(header, tag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == tag || t == "*" {
			return true
		}
	}
	return false
}

// Writing a node list may take longer than other answers: WriteTimeout
// plus one second per listWriteRate bytes (100,000 nodes are about 8 MB).
const listWriteRate = 64 << 10

// writeNodeList streams {"cas":...,"nodes":[...]} (a wire.NodeList) from
// the pre-encoded CA set and nodes, with a Content-Length, so no answer is
// ever built whole in memory.
func writeNodeList(w http.ResponseWriter, cas []byte, encoded [][]byte, writeTimeout time.Duration) error {
	size := len(`{"cas":,"nodes":[]}`) + len(cas) + max(len(encoded)-1, 0)
	for _, b := range encoded {
		size += len(b)
	}
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout + time.Duration(size/listWriteRate)*time.Second))
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(size))
	bw := bufio.NewWriterSize(w, 32<<10)
	bw.WriteString(`{"cas":`)
	bw.Write(cas)
	bw.WriteString(`,"nodes":[`)
	for i, b := range encoded {
		if i > 0 {
			bw.WriteByte(',')
		}
		bw.Write(b)
	}
	bw.WriteString(`]}`)
	return bw.Flush()
}
