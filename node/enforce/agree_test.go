package enforce

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
)

// The authority shows a bot the nodes policy.NodeVisible allows; a node
// lets the bot in if Allowed says so for a certificate carrying the rules
// of the same roles. Over random roles and labels, the two never disagree.
// (auth tests the same with certificates from the authority's issuance.)
func TestAllowedAgreesWithNodeVisible(t *testing.T) {
	ca := newSigner(t)
	r := rand.New(rand.NewPCG(1, 2))
	checked := map[bool]int{}
	for i := range 3000 {
		roles := randomRoles(r)
		labels := randomLabels(r)
		rules := policy.RulesOf(roles)
		cert := issue(t, ca, certOpts{rules: &rules})
		visible := policy.NodeVisible(roles, identity.Node{Name: "n", Labels: labels})
		logins, reason := Allowed(cert, "root", stateFor(ca, labels), t0)
		if visible != (len(logins) > 0) {
			t.Fatalf("case %d: roles %+v, labels %v: visible=%v, node says %v (%s)", i, rules, labels, visible, logins, reason)
		}
		checked[visible]++
	}
	if checked[true] < 300 || checked[false] < 300 {
		t.Fatalf("too few cases of each outcome: %v", checked)
	}
}

var (
	keys   = []string{"env", "team", "arch"}
	values = []string{"dev", "prod", "a", "ab", "x86_64"}
	pats   = []string{"*", "dev", "prod", "a?", "a*", "*6*", "p?od"}
)

func randomSelector(r *rand.Rand) policy.Labels {
	if r.IntN(3) == 0 {
		return nil
	}
	sel := policy.Labels{}
	if r.IntN(6) == 0 {
		sel["*"] = []string{"*"}
	}
	for range r.IntN(3) {
		var vals []string
		for range 1 + r.IntN(2) {
			vals = append(vals, pats[r.IntN(len(pats))])
		}
		sel[keys[r.IntN(len(keys))]] = vals
	}
	return sel
}

func randomRoles(r *rand.Rand) []policy.Role {
	roles := make([]policy.Role, r.IntN(4))
	for i := range roles {
		roles[i] = policy.Role{Metadata: policy.Metadata{Name: fmt.Sprint("r", i)}, Spec: policy.RoleSpec{
			Allow: policy.Conditions{NodeLabels: randomSelector(r)},
			Deny:  policy.Conditions{NodeLabels: randomSelector(r)},
		}}
		if r.IntN(4) > 0 {
			roles[i].Spec.Deny.NodeLabels = nil
		}
	}
	return roles
}

func randomLabels(r *rand.Rand) map[string]string {
	labels := map[string]string{}
	for _, k := range keys {
		if r.IntN(2) == 0 {
			labels[k] = values[r.IntN(len(values))]
		}
	}
	return labels
}
