package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// Resource kinds and the versions midfs reads, as in Teleport's YAML.
const (
	KindRole  = "role"
	KindToken = "token"
	KindBot   = "bot"
	KindNode  = "node"
	KindLock  = "lock"

	RoleVersion  = "v7"
	TokenVersion = "v2"
	BotVersion   = "v1"
	NodeVersion  = "v2"
	LockVersion  = "v2"
)

// Token roles: what a token joins, in Teleport's words. Tokens made from
// YAML join bots, or nodes with join_method iam; one-time node tokens are
// made by `midfs tokens add --type=node`.
const (
	TokenRoleBot  = "Bot"
	TokenRoleNode = "Node"
)

// loginsTemplate is filled from the bot's --logins.
const loginsTemplate = "{{internal.logins}}"

// Metadata names a resource.
type Metadata struct {
	Name        string     `json:"name" yaml:"name"`
	Description string     `json:"description,omitempty" yaml:"description,omitempty"`
	Labels      LabelMap   `json:"labels,omitempty" yaml:"labels,omitempty"`
	Expires     *time.Time `json:"expires,omitempty" yaml:"expires,omitempty"`
}

// LabelMap is a plain label map (one value per key), as nodes carry them.
type LabelMap map[string]string

// Role is a role resource (kind: role, version: v7).
type Role struct {
	Kind     string   `json:"kind" yaml:"kind"`
	Version  string   `json:"version" yaml:"version"`
	Metadata Metadata `json:"metadata" yaml:"metadata"`
	Spec     RoleSpec `json:"spec" yaml:"spec"`
}

// RoleSpec is what a role allows and denies; deny wins.
type RoleSpec struct {
	Allow   Conditions     `json:"allow" yaml:"allow"`
	Deny    Conditions     `json:"deny" yaml:"deny"`
	Options map[string]any `json:"options,omitempty" yaml:"options,omitempty"` // accepted for Teleport compatibility; unused
}

// Conditions are one side (allow or deny) of a role.
type Conditions struct {
	Logins     []string `json:"logins,omitempty" yaml:"logins,omitempty"`
	NodeLabels Labels   `json:"node_labels,omitempty" yaml:"node_labels,omitempty"`
	Rules      []Rule   `json:"rules,omitempty" yaml:"rules,omitempty"`
}

// Rule grants verbs on resource kinds, e.g. {resources: [token], verbs: [list, read]}.
type Rule struct {
	Resources []string `json:"resources" yaml:"resources"`
	Verbs     []string `json:"verbs" yaml:"verbs"`
}

// Labels is a label selector: each key maps to the values it accepts. In
// YAML and JSON a value may be one string or a list; '*': '*' matches all;
// other values are patterns in the one glob syntax of Match.
type Labels map[string][]string

// UnmarshalYAML accepts a string or a list of strings per key.
func (l *Labels) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: node_labels must be a map of label to value(s)", n.Line)
	}
	out := Labels{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		var vals []string
		switch v.Kind {
		case yaml.ScalarNode:
			vals = []string{v.Value}
		case yaml.SequenceNode:
			if err := v.Decode(&vals); err != nil {
				return fmt.Errorf("line %d: label %q: %v", v.Line, k.Value, err)
			}
		default:
			return fmt.Errorf("line %d: label %q: value must be a string or a list of strings", v.Line, k.Value)
		}
		out[k.Value] = vals
	}
	*l = out
	return nil
}

// MarshalYAML writes a single value as a string, as people write it.
func (l Labels) MarshalYAML() (any, error) {
	out := make(map[string]any, len(l))
	for k, v := range l {
		if len(v) == 1 {
			out[k] = v[0]
		} else {
			out[k] = v
		}
	}
	return out, nil
}

// UnmarshalJSON accepts a string or a list of strings per key.
func (l *Labels) UnmarshalJSON(b []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	out := Labels{}
	for k, v := range raw {
		var one string
		if err := json.Unmarshal(v, &one); err == nil {
			out[k] = []string{one}
			continue
		}
		var many []string
		if err := json.Unmarshal(v, &many); err != nil {
			return fmt.Errorf("label %q: value must be a string or a list of strings", k)
		}
		out[k] = many
	}
	*l = out
	return nil
}

// TokenResource is a join token as YAML shows it (kind: token, version: v2).
// For join_method token the metadata name given to `create` is the secret
// itself; it is stored only as a hash, under a derived name.
type TokenResource struct {
	Kind     string      `json:"kind" yaml:"kind"`
	Version  string      `json:"version" yaml:"version"`
	Metadata Metadata    `json:"metadata" yaml:"metadata"`
	Spec     TokenSpec   `json:"spec" yaml:"spec"`
	Status   *TokenState `json:"status,omitempty" yaml:"status,omitempty"`
}

// TokenSpec is the body of a token resource.
type TokenSpec struct {
	Roles   []string `json:"roles" yaml:"roles"`
	BotName string   `json:"bot_name,omitempty" yaml:"bot_name,omitempty"`
	// Labels are what a node token (roles: [Node]) gives every node that
	// joins with it, over the node's own labels of the same keys.
	Labels     LabelMap    `json:"labels,omitempty" yaml:"labels,omitempty"`
	JoinMethod string      `json:"join_method" yaml:"join_method"`
	Allow      []AllowRule `json:"allow,omitempty" yaml:"allow,omitempty"`
}

// TokenState is what `get tokens` adds: whether a one-time token was used.
type TokenState struct {
	Used   bool       `json:"used" yaml:"used"`
	UsedAt *time.Time `json:"used_at,omitempty" yaml:"used_at,omitempty"`
}

// AllowRule is one IAM allow rule: every field that is set must match.
// AWSARN is a pattern in the one glob syntax of Match.
type AllowRule struct {
	AWSAccount string `json:"aws_account,omitempty" yaml:"aws_account,omitempty"`
	AWSARN     string `json:"aws_arn,omitempty" yaml:"aws_arn,omitempty"`
}

// BotResource is a bot as `get bots` shows it (kind: bot, version: v1).
type BotResource struct {
	Kind     string    `json:"kind" yaml:"kind"`
	Version  string    `json:"version" yaml:"version"`
	Metadata Metadata  `json:"metadata" yaml:"metadata"`
	Spec     BotSpecV1 `json:"spec" yaml:"spec"`
	Status   BotStatus `json:"status" yaml:"status"`
}

// BotSpecV1 is Teleport's bot spec: roles and traits (logins).
type BotSpecV1 struct {
	Roles  []string `json:"roles" yaml:"roles"`
	Traits []Trait  `json:"traits,omitempty" yaml:"traits,omitempty"`
}

// Trait is a named list of values; midfs uses "logins".
type Trait struct {
	Name   string   `json:"name" yaml:"name"`
	Values []string `json:"values" yaml:"values"`
}

// BotStatus is the authority's view of a bot.
type BotStatus struct {
	Generation uint64    `json:"generation" yaml:"generation"`
	Locked     string    `json:"locked,omitempty" yaml:"locked,omitempty"` // why it is locked; empty if not
	Token      string    `json:"token,omitempty" yaml:"token,omitempty"`   // delegated token it joins with
	Created    time.Time `json:"created" yaml:"created"`
}

// NodeResource is a node as `get nodes` shows it (kind: node, version: v2).
type NodeResource struct {
	Kind     string      `json:"kind" yaml:"kind"`
	Version  string      `json:"version" yaml:"version"`
	Metadata Metadata    `json:"metadata" yaml:"metadata"`
	Spec     NodeSpec    `json:"spec" yaml:"spec"`
	Status   *NodeStatus `json:"status,omitempty" yaml:"status,omitempty"`
}

// NodeStatus is what `get nodes` adds: whether the node enforces access
// (it joined with `midfs node start`) or was typed by an administrator
// (`midfs nodes add`, YAML), and for the former whether it heartbeats.
type NodeStatus struct {
	Enforcing bool `json:"enforcing" yaml:"enforcing"`
	// Online: an enforcing node that heartbeats, and so is in what bots
	// see. Nodes typed by an administrator are always in it.
	Online bool `json:"online" yaml:"online"`
	// Expires is when an enforcing node leaves what bots see unless it
	// heartbeats again (when it left, if it is offline).
	Expires *time.Time `json:"expires,omitempty" yaml:"expires,omitempty"`
}

// NodeSpec is where a node listens for SSH.
type NodeSpec struct {
	Addr string `json:"addr" yaml:"addr"`
}

// LockResource is a lock as `get locks` shows it (kind: lock, version: v2,
// as Teleport's, named by its ID; the target is a bot).
type LockResource struct {
	Kind     string   `json:"kind" yaml:"kind"`
	Version  string   `json:"version" yaml:"version"`
	Metadata Metadata `json:"metadata" yaml:"metadata"`
	Spec     LockSpec `json:"spec" yaml:"spec"`
}

// LockSpec is what a lock refuses, why, and until when.
type LockSpec struct {
	Target    LockTarget `json:"target" yaml:"target"`
	Message   string     `json:"message,omitempty" yaml:"message,omitempty"`
	Expires   *time.Time `json:"expires,omitempty" yaml:"expires,omitempty"` // nil: until removed
	CreatedAt time.Time  `json:"created_at" yaml:"created_at"`
}

// LockTarget names what a lock refuses: a bot.
type LockTarget struct {
	Bot string `json:"bot" yaml:"bot"`
}

// LockResourceOf shows a lock as a resource.
func LockResourceOf(l wire.Lock) LockResource {
	r := LockResource{Kind: KindLock, Version: LockVersion, Metadata: Metadata{Name: l.ID},
		Spec: LockSpec{Target: LockTarget{Bot: l.Bot}, Message: l.Message, CreatedAt: l.Created.UTC()}}
	if !l.Expires.IsZero() {
		e := l.Expires.UTC()
		r.Spec.Expires = &e
	}
	return r
}

// Resources is a set of resources of any kind, as `create` reads them and
// `get` returns them.
type Resources struct {
	Roles  []Role          `json:"roles,omitempty"`
	Tokens []TokenResource `json:"tokens,omitempty"`
	Bots   []BotResource   `json:"bots,omitempty"`
	Nodes  []NodeResource  `json:"nodes,omitempty"`
	Locks  []LockResource  `json:"locks,omitempty"`
	CAs    []CAResource    `json:"cas,omitempty"`
}

// Len counts the resources of every kind.
func (r *Resources) Len() int {
	return len(r.Roles) + len(r.Tokens) + len(r.Bots) + len(r.Nodes) + len(r.Locks) + len(r.CAs)
}

// Items lists every resource in order: roles, tokens, bots, nodes, locks, CAs.
func (r *Resources) Items() []any {
	var out []any
	for _, x := range r.Roles {
		out = append(out, x)
	}
	for _, x := range r.Tokens {
		out = append(out, x)
	}
	for _, x := range r.Bots {
		out = append(out, x)
	}
	for _, x := range r.Nodes {
		out = append(out, x)
	}
	for _, x := range r.Locks {
		out = append(out, x)
	}
	for _, x := range r.CAs {
		out = append(out, x)
	}
	return out
}

// CheckName says what is wrong with a resource name, or nil. A loop, not
// a regular expression: ^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$ compiles to a
// program of 128 copies, 2 ms at the start of every process of this binary,
// sshd's enforcement hook among them.
func CheckName(kind, name string) error {
	ok := len(name) >= 1 && len(name) <= 128 && isAlnum(name[0])
	for i := 1; ok && i < len(name); i++ {
		c := name[i]
		ok = isAlnum(c) || c == '.' || c == '_' || c == '@' || c == '-'
	}
	if !ok {
		return fmt.Errorf("bad %s name %q: use 1-128 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", kind, name)
	}
	return nil
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// MaxResourceYAML caps resource YAML (create -f and the admin request that
// carries it): parsing YAML takes tens of times its size in memory, and
// 1 MiB holds thousands of resources.
const MaxResourceYAML = 1 << 20

// ErrResourcesTooLarge is the error for resource YAML over MaxResourceYAML.
var ErrResourcesTooLarge = errors.New("resource YAML larger than 1 MiB; split it into several files and create each")

// ReadResourceYAML reads resource YAML from r, refusing more than
// MaxResourceYAML bytes without reading the rest.
func ReadResourceYAML(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxResourceYAML+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxResourceYAML {
		return nil, ErrResourcesTooLarge
	}
	return data, nil
}

// ParseResources reads one or more YAML documents (role, token or node
// resources). Unknown fields and malformed YAML are errors naming the line;
// either every document parses and validates, or the error says why not.
func ParseResources(data []byte) (*Resources, error) {
	if len(data) > MaxResourceYAML {
		return nil, ErrResourcesTooLarge
	}
	kinds, lines, err := documentKinds(data)
	if err != nil {
		return nil, err
	}
	if len(kinds) == 0 {
		return nil, errors.New("no resources found: expected YAML with kind: role, token or node")
	}
	// Decode again, strictly, document by document, so that line numbers
	// in errors refer to the whole file.
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	res := &Resources{}
	for i, kind := range kinds {
		var err error
		switch kind {
		case KindRole:
			var r Role
			if err = dec.Decode(&r); err == nil {
				err = r.check()
				res.Roles = append(res.Roles, r)
			}
		case KindToken:
			var t TokenResource
			if err = dec.Decode(&t); err == nil {
				t.Status = nil
				err = t.check()
				res.Tokens = append(res.Tokens, t)
			}
		case KindNode:
			var n NodeResource
			if err = dec.Decode(&n); err == nil {
				n.Status = nil
				err = n.check()
				res.Nodes = append(res.Nodes, n)
			}
		default:
			err = fmt.Errorf("line %d: kind %q cannot be created from YAML; want role, token or node (bots: midfs bots add; locks: midfs lock)", lines[i], kind)
		}
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
	}
	return res, nil
}

// documentKinds reads every document's kind and starting line.
func documentKinds(data []byte) (kinds []string, lines []int, err error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var n yaml.Node
		err := dec.Decode(&n)
		if errors.Is(err, io.EOF) {
			return kinds, lines, nil
		}
		if err != nil {
			return nil, nil, err
		}
		var head struct {
			Kind string `yaml:"kind"`
		}
		if len(n.Content) == 0 || n.Content[0].Kind != yaml.MappingNode {
			return nil, nil, fmt.Errorf("line %d: expected a mapping with kind, version, metadata and spec", n.Line)
		}
		if err := n.Decode(&head); err != nil {
			return nil, nil, err
		}
		if head.Kind == "" {
			return nil, nil, fmt.Errorf("line %d: missing kind (role, token or node)", n.Content[0].Line)
		}
		kinds = append(kinds, head.Kind)
		lines = append(lines, n.Content[0].Line)
	}
}

func (r *Role) check() error {
	if r.Version == "" {
		r.Version = RoleVersion
	}
	if r.Version != "v5" && r.Version != "v6" && r.Version != "v7" {
		return fmt.Errorf("role %q: version %q not supported; use %s", r.Metadata.Name, r.Version, RoleVersion)
	}
	if err := CheckName("role", r.Metadata.Name); err != nil {
		return err
	}
	if err := checkLabels(r.Metadata.Labels); err != nil {
		return fmt.Errorf("role %s: metadata.labels: %w", r.Metadata.Name, err)
	}
	for _, side := range []*Conditions{&r.Spec.Allow, &r.Spec.Deny} {
		deny := side == &r.Spec.Deny
		for _, l := range side.Logins {
			switch {
			case l == loginsTemplate, deny && l == "*":
				continue
			case strings.Contains(l, "{{"):
				return fmt.Errorf("role %s: login %q: the only template midfs fills is %s", r.Metadata.Name, l, loginsTemplate)
			case l == "*":
				return fmt.Errorf("role %s: login \"*\" only works in deny (it denies every login); list the logins to allow", r.Metadata.Name)
			}
			if err := identity.CheckLogin(l); err != nil {
				return fmt.Errorf("role %s: %w", r.Metadata.Name, err)
			}
		}
		for k, vals := range side.NodeLabels {
			for _, v := range vals {
				if err := identity.CheckLabel(k, v); err != nil {
					return fmt.Errorf("role %s: node_labels: %w", r.Metadata.Name, err)
				}
			}
		}
		for _, rule := range side.Rules {
			if len(rule.Resources) == 0 || len(rule.Verbs) == 0 {
				return fmt.Errorf("role %q: every rule needs resources and verbs", r.Metadata.Name)
			}
		}
	}
	return nil
}

func (t *TokenResource) check() error {
	if t.Version == "" {
		t.Version = TokenVersion
	}
	if t.Version != TokenVersion {
		return fmt.Errorf("token: version %q not supported; use %s", t.Version, TokenVersion)
	}
	if t.Metadata.Name == "" {
		return errors.New("token: metadata.name is required")
	}
	if err := checkLabels(t.Metadata.Labels); err != nil {
		return fmt.Errorf("token %s: metadata.labels: %w", t.DisplayName(), err)
	}
	if err := t.checkRole(); err != nil {
		return err
	}
	switch t.Spec.JoinMethod {
	case wire.JoinToken:
		if len(t.Metadata.Name) < 32 {
			return errors.New("token: for join_method token, metadata.name is the secret and needs at least 32 random characters (for example: openssl rand -hex 32)")
		}
		if len(t.Spec.Allow) > 0 {
			return errors.New("token: allow rules only apply to join_method iam")
		}
	case wire.JoinIAM:
		if err := CheckName("token", t.Metadata.Name); err != nil {
			return err
		}
		if len(t.Spec.Allow) == 0 {
			return fmt.Errorf("token %s: join_method iam needs at least one allow rule with aws_account and/or aws_arn", t.Metadata.Name)
		}
		for i, a := range t.Spec.Allow {
			if a.AWSAccount == "" && a.AWSARN == "" {
				return fmt.Errorf("token %s: allow rule %d sets neither aws_account nor aws_arn, so it would allow any AWS identity", t.Metadata.Name, i+1)
			}
		}
	default:
		return fmt.Errorf("token %s: join_method %q not supported; use token or iam", t.DisplayName(), t.Spec.JoinMethod)
	}
	return nil
}

// checkRole checks what the token joins, and the fields of that role:
// a bot token names its bot (bot_name) and gives no labels; a node token
// names no bot (each node names itself when it joins) and may give labels.
// Node tokens from YAML are iam tokens: a one-time node token's name is
// its secret, made by `midfs tokens add --type=node`.
func (t *TokenResource) checkRole() error {
	if len(t.Spec.Roles) == 0 {
		t.Spec.Roles = []string{TokenRoleBot}
	}
	if len(t.Spec.Roles) != 1 {
		return fmt.Errorf("token %s: spec.roles must be [Bot] or [Node], one of them", t.DisplayName())
	}
	switch {
	case strings.EqualFold(t.Spec.Roles[0], TokenRoleBot):
		t.Spec.Roles[0] = TokenRoleBot
		if err := CheckName("bot", t.Spec.BotName); err != nil {
			return fmt.Errorf("token %s: spec.bot_name: %w", t.DisplayName(), err)
		}
		if len(t.Spec.Labels) > 0 {
			return fmt.Errorf("token %s: spec.labels are for node tokens (spec.roles: [Node]), not for a bot's", t.DisplayName())
		}
	case strings.EqualFold(t.Spec.Roles[0], TokenRoleNode):
		t.Spec.Roles[0] = TokenRoleNode
		if t.Spec.JoinMethod != wire.JoinIAM {
			return fmt.Errorf("token %s: a node token from YAML needs join_method: iam; one-time node tokens are made with `midfs tokens add --type=node`", t.DisplayName())
		}
		if t.Spec.BotName != "" {
			return fmt.Errorf("token %s: spec.bot_name is for bot tokens; a node token joins whichever node names itself (midfs node start --name)", t.DisplayName())
		}
		for k, v := range t.Spec.Labels {
			if err := identity.CheckLabel(k, v); err != nil {
				return fmt.Errorf("token %s: spec.labels: %w", t.DisplayName(), err)
			}
		}
	default:
		return fmt.Errorf("token %s: spec.roles must be [Bot] or [Node], not %v", t.DisplayName(), t.Spec.Roles)
	}
	return nil
}

// DisplayName never shows a secret: one-time token names are secrets.
func (t *TokenResource) DisplayName() string {
	if t.Spec.JoinMethod == wire.JoinToken {
		return "(secret)"
	}
	return t.Metadata.Name
}

func (n *NodeResource) check() error {
	if n.Version == "" {
		n.Version = NodeVersion
	}
	if err := identity.CheckNodeName(n.Metadata.Name); err != nil {
		return err
	}
	if n.Spec.Addr == "" {
		return fmt.Errorf("node %s: spec.addr (HOST:PORT) is required", n.Metadata.Name)
	}
	return identity.CheckNode(identity.Node{Name: n.Metadata.Name, Addr: n.Spec.Addr, Labels: n.Metadata.Labels})
}

// checkLabels checks the labels of a resource's metadata.
func checkLabels(labels LabelMap) error {
	for k, v := range labels {
		if err := identity.CheckLabel(k, v); err != nil {
			return err
		}
	}
	return nil
}

// NormalizeKind maps "roles", "Role" and the like to a Kind* constant.
func NormalizeKind(kind string) (string, error) {
	k := strings.TrimSuffix(strings.ToLower(kind), "s")
	switch k {
	case KindRole, KindToken, KindBot, KindNode, KindLock:
		return k, nil
	case "ca", KindCA, "cert_authoritie":
		return KindCA, nil
	}
	return "", fmt.Errorf("unknown resource kind %q: want roles, tokens, bots, nodes, locks or cas", kind)
}
