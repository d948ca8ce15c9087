package auth

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
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
// change, and a version that moves on after every committed change of what
// any bot may see (nodes, roles, a bot's roles). The version lives in this
// process, the only writer of its store; the epoch makes versions of an
// earlier run of the authority unequal to this run's.
//
// An agent polls with the ETag of its last list: while nothing changed it
// gets 304 Not Modified, which costs no database query and no encoding.
type inventory struct {
	epoch   string
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

func newInventory() *inventory {
	b := make([]byte, 8)
	rand.Read(b)
	return &inventory{epoch: hex.EncodeToString(b)}
}

// changed is called once a change of nodes, roles or a bot's roles has
// committed (never before: a load between the bump and the commit would
// keep the old state under the new version).
func (inv *inventory) changed() { inv.version.Add(1) }

// etag names what a bot sees at version v. Every change that could alter
// any bot's list moves the version, so the tag needs nothing of the bot.
func (inv *inventory) etag(v uint64) string {
	return fmt.Sprintf(`"%s-%d"`, inv.epoch, v)
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
