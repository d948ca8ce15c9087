package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
)

// RulesExtension names the SSH certificate extension that carries the
// bot's NodeRules (JSON, see EncodeRules) to the nodes, which decide from
// it alone whether the bot may log in: no call to the authority per login.
// The CA signs it with the rest of the certificate.
const RulesExtension = "node-rules@midfs"

// NodeRule is what one role says about nodes: the labels it allows and
// those it denies (each a selector as in a role's node_labels).
type NodeRule struct {
	Allow Labels `json:"allow,omitempty"`
	Deny  Labels `json:"deny,omitempty"`
}

// RulesOf gives one NodeRule per role, in the roles' order.
func RulesOf(roles []Role) []NodeRule {
	out := make([]NodeRule, len(roles))
	for i, r := range roles {
		out[i] = NodeRule{Allow: r.Spec.Allow.NodeLabels, Deny: r.Spec.Deny.NodeLabels}
	}
	return out
}

// NodeAllowed decides, in Teleport's order, whether a node with these
// labels is open to a bot with these rules: a rule whose deny matches
// refuses it whatever the others allow; otherwise some rule must allow it.
// It is the one matcher: the authority filters node lists with it
// (NodeVisible) and nodes enforce logins with it.
func NodeAllowed(rules []NodeRule, labels map[string]string) bool {
	for _, r := range rules {
		if labelsMatch(r.Deny, labels) {
			return false
		}
	}
	return slices.ContainsFunc(rules, func(r NodeRule) bool { return labelsMatch(r.Allow, labels) })
}

// maxRulesLen bounds the extension a node reads; OpenSSH bounds the whole
// certificate, this bounds the work of one login.
const maxRulesLen = 64 << 10

// EncodeRules is the value of RulesExtension for rules: JSON with sorted
// keys, so the same roles always give the same bytes. Nil rules encode as
// [] (a bot allowed no node), never as null.
func EncodeRules(rules []NodeRule) (string, error) {
	if rules == nil {
		rules = []NodeRule{}
	}
	b, err := json.Marshal(rules)
	if err != nil {
		return "", err
	}
	if len(b) > maxRulesLen {
		return "", fmt.Errorf("the node rules of the bot's roles take %d bytes; at most %d fit a certificate", len(b), maxRulesLen)
	}
	return string(b), nil
}

// DecodeRules reads a RulesExtension value. Anything but a JSON list of
// rules with known fields is an error: a node refuses what it cannot read.
func DecodeRules(v string) ([]NodeRule, error) {
	if len(v) > maxRulesLen {
		return nil, fmt.Errorf("node rules of %d bytes; at most %d are read", len(v), maxRulesLen)
	}
	dec := json.NewDecoder(bytes.NewReader([]byte(v)))
	dec.DisallowUnknownFields()
	var rules []NodeRule
	if err := dec.Decode(&rules); err != nil {
		return nil, fmt.Errorf("bad node rules: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("bad node rules: data after the list")
	}
	if rules == nil {
		return nil, fmt.Errorf("bad node rules: null instead of a list")
	}
	return rules, nil
}

// labelsMatch: an empty selector matches nothing; '*': '*' matches every
// node; otherwise every key of the selector must be a label of the node
// with a value the selector accepts (a pattern, see Match).
func labelsMatch(sel Labels, labels map[string]string) bool {
	if len(sel) == 0 {
		return false
	}
	for key, vals := range sel {
		if key == "*" {
			if !slices.Contains(vals, "*") {
				return false
			}
			continue
		}
		v, ok := labels[key]
		if !ok {
			return false
		}
		if !slices.ContainsFunc(vals, func(want string) bool { return Match(want, v) }) {
			return false
		}
	}
	return true
}
