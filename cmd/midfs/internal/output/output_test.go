package output

import (
	"bytes"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
)

// TestNodeTablesAgree: `midfs get nodes` and `midfs ls` print the same
// nodes the same way.
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
	if get.String() != ls.String() {
		t.Errorf("get nodes prints\n%s\nls prints\n%s", get.String(), ls.String())
	}
	lines := strings.Split(ls.String(), "\n")
	if addr := strings.Index(lines[0], "Address"); addr < 0 || strings.Index(lines[3], "[2001") != addr {
		t.Errorf("columns do not line up:\n%s", ls.String())
	}
}
