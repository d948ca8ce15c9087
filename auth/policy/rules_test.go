package policy

import (
	"reflect"
	"strings"
	"testing"

	"github.com/midfs/midfs/identity"
)

// Teleport's order: a deny in any role refuses the node, whatever another
// role allows, and whichever order the roles come in.
func TestNodeAllowedDenyWins(t *testing.T) {
	all := NodeRule{Allow: Labels{"*": {"*"}}}
	denyProd := NodeRule{Deny: Labels{"env": {"prod"}}}
	prod, dev := map[string]string{"env": "prod"}, map[string]string{"env": "dev"}
	for _, rules := range [][]NodeRule{{all, denyProd}, {denyProd, all}} {
		if NodeAllowed(rules, prod) {
			t.Errorf("%+v allowed env=prod", rules)
		}
		if !NodeAllowed(rules, dev) {
			t.Errorf("%+v refused env=dev", rules)
		}
	}
	if NodeAllowed([]NodeRule{denyProd}, dev) {
		t.Error("a deny alone allowed a node it does not deny")
	}
	if NodeAllowed(nil, dev) || NodeAllowed([]NodeRule{{}}, nil) {
		t.Error("no allow rule allowed a node")
	}
	if !NodeAllowed([]NodeRule{all}, nil) {
		t.Error("'*': '*' refused a node without labels")
	}
}

func TestRulesRoundTrip(t *testing.T) {
	roles := BuiltinRoles()
	roles = append(roles, Role{Spec: RoleSpec{Allow: Conditions{NodeLabels: Labels{"env": {"dev", "stage-*"}, "arch": {"x86_64"}}}, Deny: Conditions{NodeLabels: Labels{"tier": {"db"}}}}})
	rules := RulesOf(roles)
	if len(rules) != len(roles) {
		t.Fatalf("%d rules for %d roles", len(rules), len(roles))
	}
	v, err := EncodeRules(rules)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := EncodeRules(RulesOf(roles))
	if v != again {
		t.Fatalf("the same roles encode differently:\n%s\n%s", v, again)
	}
	got, err := DecodeRules(v)
	if err != nil {
		t.Fatal(err)
	}
	// An empty selector decodes as nil: both match nothing.
	for i := range rules {
		if len(rules[i].Allow) == 0 {
			rules[i].Allow = nil
		}
		if len(rules[i].Deny) == 0 {
			rules[i].Deny = nil
		}
	}
	if !reflect.DeepEqual(got, rules) {
		t.Fatalf("decoded %+v, encoded %+v", got, rules)
	}
	if v, _ := EncodeRules(nil); v != "[]" {
		t.Fatalf("no rules encode as %q, want []", v)
	}
}

func TestDecodeRulesRefuses(t *testing.T) {
	for _, v := range []string{"", "null", "{}", `[{"allow":{"*":"*"},"x":1}]`, "[] 1", `[{"allow":{"k":1}}]`, "[" + strings.Repeat(" ", maxRulesLen) + "]"} {
		if _, err := DecodeRules(v); err == nil {
			t.Errorf("DecodeRules(%.40q) took it", v)
		}
	}
}

// NodeVisible is NodeAllowed over RulesOf, whatever the roles.
func TestNodeVisibleIsNodeAllowed(t *testing.T) {
	roles := []Role{
		{Spec: RoleSpec{Allow: Conditions{NodeLabels: Labels{"env": {"*"}}}, Deny: Conditions{NodeLabels: Labels{"env": {"prod"}}}}},
		{Spec: RoleSpec{Allow: Conditions{NodeLabels: Labels{"team": {"a?"}}}}},
	}
	for _, labels := range []map[string]string{nil, {"env": "prod"}, {"env": "dev"}, {"team": "ab"}, {"team": "abc"}, {"env": "prod", "team": "ab"}} {
		if NodeVisible(roles, identity.Node{Name: "n", Labels: labels}) != NodeAllowed(RulesOf(roles), labels) {
			t.Errorf("labels %v: NodeVisible and NodeAllowed disagree", labels)
		}
	}
}

// A node reads whatever a certificate carries: DecodeRules never panics,
// and what it accepts encodes back to rules that decode the same and
// decide every node the same.
func FuzzDecodeRules(f *testing.F) {
	f.Add(`[{"allow":{"*":"*"}}]`)
	f.Add(`[{"allow":{"env":["dev","stage-*"]},"deny":{"tier":"db"}},{}]`)
	f.Add(`[]`)
	f.Fuzz(func(t *testing.T, v string) {
		rules, err := DecodeRules(v)
		if err != nil {
			return
		}
		again, err := EncodeRules(rules)
		if err != nil {
			if len(v) > maxRulesLen/2 {
				return // one string per value encodes as a list: larger
			}
			t.Fatalf("decoded %q but cannot encode it: %v", v, err)
		}
		back, err := DecodeRules(again)
		if err != nil {
			t.Fatalf("re-encoded %q does not decode: %v", again, err)
		}
		for _, labels := range []map[string]string{nil, {"env": "dev"}, {"env": "prod", "tier": "db"}, {"a": ""}} {
			if NodeAllowed(rules, labels) != NodeAllowed(back, labels) {
				t.Fatalf("%q and %q decide %v differently", v, again, labels)
			}
		}
	})
}
