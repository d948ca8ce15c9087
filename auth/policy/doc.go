// Package policy is the midfs policy model: the resources an administrator
// writes (roles, join tokens, nodes) and the authority shows (bots), their
// YAML and JSON forms and checks, and the rules that decide what a bot may
// do: which logins its certificates carry and which nodes it may see. Label
// and ARN patterns share one matcher, Match, with one syntax.
//
// It holds no state and does no I/O beyond reading YAML. The authority (auth
// and its sub-packages) imports it, and so will the node side, so that what
// a bot's ssh_config shows and what a node enforces cannot disagree. It
// imports only identity (the value checks) and wire (the join methods); it
// must never import auth.
package policy
