package joiner

import (
	"testing"

	"github.com/midfs/midfs/identity"
)

// A node list that did not change must compare equal, or every refresh
// would republish the tree; any change must not.
func TestSameNodes(t *testing.T) {
	web := identity.Node{Name: "web", Addr: "10.0.0.1:22", Labels: map[string]string{"env": "prod"}}
	db := identity.Node{Name: "db", Addr: "10.0.0.2:22"}
	same := [][2][]identity.Node{
		{nil, {}},
		{{web, db}, {web, db}},
		{{db}, {{Name: "db", Addr: "10.0.0.2:22", Labels: map[string]string{}}}},
	}
	for _, c := range same {
		if !sameNodes(c[0], c[1]) {
			t.Errorf("sameNodes(%v, %v) = false", c[0], c[1])
		}
	}
	relabelled := web
	relabelled.Labels = map[string]string{"env": "dev"}
	moved := web
	moved.Addr = "10.0.0.9:22"
	differ := [][2][]identity.Node{
		{{web}, {web, db}},
		{{web, db}, {db, web}},
		{{web}, {relabelled}},
		{{web}, {moved}},
		{{web}, {{Name: "web", Addr: web.Addr}}},
	}
	for _, c := range differ {
		if sameNodes(c[0], c[1]) {
			t.Errorf("sameNodes(%v, %v) = true", c[0], c[1])
		}
	}
}
