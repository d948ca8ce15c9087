package joiner_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
)

// addNodes stores n nodes named prefix-00000... in one `create` (the path
// of `midfs create -f` with many nodes), each with two labels, so the list
// a bot gets is far larger than one small response.
func (a *authority) addNodes(t *testing.T, prefix string, n int) {
	t.Helper()
	res := &policy.Resources{}
	for i := range n {
		res.Nodes = append(res.Nodes, policy.NodeResource{
			Kind: policy.KindNode, Version: "v2",
			Metadata: policy.Metadata{Name: fmt.Sprintf("%s-%05d", prefix, i), Labels: policy.LabelMap{"env": "prod", "rack": fmt.Sprintf("r%03d", i%500)}},
			Spec:     policy.NodeSpec{Addr: fmt.Sprintf("10.%d.%d.%d:22", i>>16&255, i>>8&255, i&255)},
		})
	}
	if _, err := a.Create(context.Background(), res, false); err != nil {
		t.Fatal(err)
	}
}

// A bot that may reach 5,000 nodes (about 400 KB of node list) joins, gets
// every node, renews and gets them again. Until the node list was
// streamed, a list above 64 KiB failed the join after the token was spent.
func TestLargeInventoryJoinsAndRenews(t *testing.T) {
	const n = 5000
	a := startAuth(t, "", "")
	a.addNodes(t, "node", n)
	ag, clock := joinOnFakeClock(t, a)
	if _, nodes := ag.Current(); len(nodes) != n {
		t.Fatalf("joined with %d nodes, want %d", len(nodes), n)
	}
	r := run(t, ag, clock)
	ag.RenewNow()
	eventually(t, func() bool { return r.published() >= 1 })
	if st := ag.Status(); st.Generation != 2 || st.Failing || st.Nodes != n {
		t.Fatalf("after a renewal: %+v; want generation 2, not failing, %d nodes", st, n)
	}
	r.mu.Lock()
	got := r.nodes[0]
	r.mu.Unlock()
	if len(got) != n || got[0].Name != "node-00000" || got[n-1].Name != fmt.Sprintf("node-%05d", n-1) || got[7].Labels["rack"] != "r007" {
		t.Errorf("published %d nodes, first %+v; want all %d, sorted, with labels", len(got), got[0], n)
	}
}

// breakNode writes a node row the authority cannot read (as a damaged
// database would have), so that every node list fails with an internal
// error while joins, renewals and certificates still work.
func breakNode(t *testing.T, a *authority, name string) {
	t.Helper()
	if err := a.AddNode(context.Background(), identity.Node{Name: name, Addr: "10.9.9.9:22"}); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(a.dir, "midfs.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE nodes SET labels = 'not json' WHERE name = ?`, name); err != nil {
		t.Fatal(err)
	}
}

// A node list the authority cannot give never costs the identity: the
// join keeps the bot (the token is spent once), the mount starts with no
// nodes, renewals go on, and the list arrives once the authority can give
// it again.
func TestNodeListFailureKeepsIdentity(t *testing.T) {
	a := startAuth(t, "", "")
	breakNode(t, a, "broken")
	log, _ := newLog(t)
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.NodesInterval = 50 * time.Millisecond // real time: the retries of the list are what this test waits for
	ag := join(t, cfg)
	if id, nodes := ag.Current(); id == nil || len(nodes) != 0 {
		t.Fatalf("joined with identity %v and nodes %+v; want an identity and no nodes", id != nil, nodes)
	}
	r := run(t, ag, nil)
	ag.RenewNow()
	eventually(t, func() bool { return r.published() >= 1 })
	if st := ag.Status(); st.Generation != 2 || st.Failing {
		t.Fatalf("renewal while the node list fails: %+v", st)
	}

	// Repaired on the authority: the list reaches the agent by itself.
	if err := a.Remove(context.Background(), policy.KindNode, "broken"); err != nil {
		t.Fatal(err)
	}
	if err := a.AddNode(context.Background(), identity.Node{Name: "web", Addr: "10.0.0.1:22"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() bool {
		_, nodes := ag.Current()
		return len(nodes) == 1 && nodes[0].Name == "web"
	})
}

// An agent whose node list has not changed asks and gets a 304: the
// authority counts not-modified answers, the agent keeps its list and
// publishes nothing.
func TestUnchangedNodeListIsNotSentAgain(t *testing.T) {
	a := startAuth(t, "", "")
	a.addNodes(t, "node", 10)
	ag, clock := joinOnFakeClock(t, a)
	r := run(t, ag, clock)
	r.advanceUntil(10*time.Second, 5*time.Minute, func() bool {
		return a.nodeLists(t, "not_modified") >= 3
	})
	if n := r.published(); n != 0 {
		t.Errorf("published %d times with nothing changed", n)
	}
	if full := a.nodeLists(t, "full"); full != 1 {
		t.Errorf("the authority sent the full list %v times; want once (at the join)", full)
	}
	if st := ag.Status(); st.Nodes != 10 {
		t.Errorf("status %+v, want 10 nodes", st)
	}
	// A change is sent in full, once.
	if err := a.AddNode(context.Background(), identity.Node{Name: "extra", Addr: "10.0.0.99:22"}); err != nil {
		t.Fatal(err)
	}
	r.advanceUntil(10*time.Second, 5*time.Minute, func() bool { return r.published() >= 1 })
	if st := ag.Status(); st.Nodes != 11 {
		t.Errorf("status %+v after a node was added, want 11 nodes", st)
	}
	if full := a.nodeLists(t, "full"); full != 2 {
		t.Errorf("the authority sent the full list %v times; want twice", full)
	}
}

// nodeLists is the authority's count of node list answers of a kind.
func (a *authority) nodeLists(t *testing.T, result string) float64 {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "midfs_auth_node_lists_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// The inventory midfs is made for: 100,000 nodes (about 8 MB of list)
// reach a joining agent whole.
func TestInventoryOf100000Nodes(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 100,000 nodes")
	}
	const n = 100000
	a := startAuth(t, "", "")
	a.addNodes(t, "node", n)
	ag, _ := joinOnFakeClock(t, a)
	if _, nodes := ag.Current(); len(nodes) != n || nodes[n-1].Name != fmt.Sprintf("node-%05d", n-1) {
		t.Fatalf("joined with %d nodes, want %d", len(nodes), n)
	}
}
