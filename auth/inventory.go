package auth

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
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
type inventory struct {
	st      store.Reader
	log     *slog.Logger
	cluster string // cluster ID: tags of another state never match
	version atomic.Uint64

	mu   sync.Mutex // serializes loads
	snap atomic.Pointer[invSnapshot]
}

// invSnapshot is every node and role as read at (or after) a version.
type invSnapshot struct {
	version uint64
	nodes   []identity.Node // sorted by name
	encoded [][]byte        // nodes[i] as JSON
	roles   map[string]policy.Role
}

func newInventory(ctx context.Context, st store.Reader, clusterID string, log *slog.Logger) *inventory {
	inv := &inventory{st: st, cluster: clusterID, log: log}
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
	nodes, err := q.Nodes(ctx)
	if err != nil {
		return nil, err
	}
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
