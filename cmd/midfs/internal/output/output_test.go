package output

import (
	"bytes"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
)

// TestNodeTablesAgree: `midfs get nodes` and `midfs ls` print the same
// nodes the same way; get nodes adds whether each enforces, and its state.
func TestNodeTablesAgree(t *testing.T) {
	nodes := []identity.Node{
		{Name: "web", Addr: "10.0.0.7:22", Labels: map[string]string{"env": "prod"}},
		{Name: "database-primary", Addr: "[2001:db8::1]:2222", Labels: map[string]string{"env": "prod", "role": "db"}},
	}
	res := &policy.Resources{}
	for _, n := range nodes {
		var r policy.NodeResource
		r.Metadata.Name, r.Spec.Addr, r.Metadata.Labels = n.Name, n.Addr, n.Labels
		res.Nodes = append(res.Nodes, r)
	}
	var get, ls bytes.Buffer
	if err := Resources(&get, policy.KindNode, res, "text"); err != nil {
		t.Fatal(err)
	}
	if err := Nodes(&ls, nodes); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(ls.String(), "\n")
	got := strings.Split(get.String(), "\n")
	for i, l := range lines {
		if i >= len(got) || !strings.HasPrefix(got[i], strings.TrimRight(l, " ")) {
			t.Fatalf("get nodes prints\n%s\nls prints\n%s", get.String(), ls.String())
		}
	}
	if !strings.Contains(got[0], "Enforcing") || !strings.Contains(got[2], "typed by an admin") {
		t.Errorf("get nodes does not say which nodes enforce:\n%s", get.String())
	}
	if addr := strings.Index(lines[0], "Address"); addr < 0 || strings.Index(lines[3], "[2001") != addr {
		t.Errorf("columns do not line up:\n%s", ls.String())
	}
}
