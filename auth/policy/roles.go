package policy

import (
	"maps"
	"slices"

	"github.com/midfs/midfs/identity"
)

// BuiltinRoles are made on first start, like Teleport's presets.
func BuiltinRoles() []Role {
	role := func(name, desc string, allow Conditions) Role {
		return Role{Kind: KindRole, Version: RoleVersion, Metadata: Metadata{Name: name, Description: desc}, Spec: RoleSpec{Allow: allow}}
	}
	crud := []string{"list", "create", "read", "update", "delete"}
	return []Role{
		role("access", "SSH access to every node as the bot's logins", Conditions{
			Logins:     []string{loginsTemplate},
			NodeLabels: Labels{"*": {"*"}},
			Rules: []Rule{
				{Resources: []string{"event"}, Verbs: []string{"list", "read"}},
				{Resources: []string{"session"}, Verbs: []string{"read", "list"}},
			},
		}),
		role("editor", "edit cluster configuration", Conditions{
			Rules: []Rule{
				{Resources: []string{"user"}, Verbs: crud},
				{Resources: []string{"role"}, Verbs: crud},
				{Resources: []string{"bot"}, Verbs: crud},
				{Resources: []string{"token"}, Verbs: crud},
				{Resources: []string{"node"}, Verbs: crud},
			},
		}),
		role("auditor", "review audit events and sessions", Conditions{
			Rules: []Rule{
				{Resources: []string{"session"}, Verbs: []string{"list", "read"}},
				{Resources: []string{"event"}, Verbs: []string{"list", "read"}},
			},
		}),
	}
}

// AllowedLogins are the logins the roles allow (the bot's own logins fill
// {{internal.logins}}) minus those any role denies, sorted.
func AllowedLogins(roles []Role, botLogins []string) []string {
	expand := func(list []string) []string {
		var out []string
		for _, l := range list {
			if l == loginsTemplate {
				out = append(out, botLogins...)
			} else {
				out = append(out, l)
			}
		}
		return out
	}
	allowed := map[string]bool{}
	for _, r := range roles {
		for _, l := range expand(r.Spec.Allow.Logins) {
			allowed[l] = true
		}
	}
	for _, r := range roles {
		for _, l := range expand(r.Spec.Deny.Logins) {
			if l == "*" {
				return nil
			}
			delete(allowed, l)
		}
	}
	return slices.Sorted(maps.Keys(allowed))
}

// NodeVisible says whether some role allows the node and none denies it:
// NodeAllowed over the rules the roles give a bot's certificate, so that
// the nodes a bot's ssh_config lists and those that let it in are decided
// by one function on one input.
func NodeVisible(roles []Role, n identity.Node) bool {
	return NodeAllowed(RulesOf(roles), n.Labels)
}
