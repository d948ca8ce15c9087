package policy

import (
	"reflect"
	"testing"

	"github.com/midfs/midfs/identity"
)

func TestDenyLoginsWin(t *testing.T) {
	roles := []Role{
		{Spec: RoleSpec{Allow: Conditions{Logins: []string{loginsTemplate, "extra"}}}},
		{Spec: RoleSpec{Deny: Conditions{Logins: []string{"root"}}}},
	}
	if got := AllowedLogins(roles, []string{"root", "ubuntu"}); !reflect.DeepEqual(got, []string{"extra", "ubuntu"}) {
		t.Errorf("allowed logins %v", got)
	}
}

// A role's node_labels use the same glob syntax as aws_arn: ? is one
// character there too.
func TestNodeLabelsUseTheOneGlobSyntax(t *testing.T) {
	roles := []Role{{Spec: RoleSpec{Allow: Conditions{NodeLabels: Labels{"host": {"web-?", "db-*"}}}}}}
	for host, want := range map[string]bool{"web-1": true, "web-12": false, "db-": true, "db-main": true, "api-1": false} {
		if got := NodeVisible(roles, identity.Node{Name: "n", Labels: map[string]string{"host": host}}); got != want {
			t.Errorf("host=%s visible: %v, want %v", host, got, want)
		}
	}
}
