package policy

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzParseResources: resource YAML either parses into resources that
// pass their checks and survive a round trip through YAML, or is an error;
// it never panics. Seeds: testdata/fuzz/FuzzParseResources.
func FuzzParseResources(f *testing.F) {
	for _, seed := range []string{
		"kind: role\nversion: v7\nmetadata:\n  name: dev\nspec:\n  allow:\n    logins: ['{{internal.logins}}', ubuntu]\n    node_labels:\n      '*': '*'\n  deny:\n    node_labels:\n      env: [prod, stage]\n",
		"kind: token\nversion: v2\nmetadata:\n  name: example-bot\nspec:\n  roles: [Bot]\n  bot_name: example\n  join_method: iam\n  allow:\n    - aws_account: \"111111111111\"\n      aws_arn: \"arn:aws:sts::111111111111:assumed-role/r/i-*\"\n",
		"kind: node\nversion: v2\nmetadata:\n  name: n1\n  labels: {a: b}\nspec:\n  addr: 127.0.0.1:22\n---\nkind: role\nmetadata: {name: x}\nspec: {}\n",
		"kind: role\nspec:\n  allow: [unclosed\n",
		"- just\n- a list\n",
		"kind: bot\nmetadata: {name: b}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := ParseResources(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		for _, it := range res.Items() {
			b, err := yaml.Marshal(it)
			if err != nil {
				t.Fatalf("marshal %T: %v", it, err)
			}
			again, err := ParseResources(b)
			if err != nil {
				t.Fatalf("round trip of %s failed: %v", b, err)
			}
			if again.Len() != 1 {
				t.Fatalf("round trip of %s gave %d resources", b, again.Len())
			}
		}
	})
}

// CheckName accepts exactly what the documented pattern does.
func TestCheckNameIsThePattern(t *testing.T) {
	pattern := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$`)
	names := []string{"", "a", "robot", "bot-1.prod_x@eu", "-lead", ".lead", "_x", "@x", "a b", "a/b", "a\n", "é", "a:b",
		strings.Repeat("a", 128), strings.Repeat("a", 129), "A" + strings.Repeat("-", 127), "node:web"}
	r := rand.New(rand.NewPCG(1, 2))
	const alphabet = "aZ09._@-:/ \x00\xff"
	for range 2000 {
		b := make([]byte, r.IntN(132))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		names = append(names, string(b))
	}
	for _, n := range names {
		if got, want := CheckName("bot", n) == nil, pattern.MatchString(n); got != want {
			t.Errorf("CheckName(%q) accepts: %v, the pattern: %v", n, got, want)
		}
	}
}

// A token joins bots (bot_name, no labels) or, with join_method iam,
// nodes (labels, no bot_name); the fields of the other role are refused
// with one line naming them.
func TestTokenRoles(t *testing.T) {
	const allow = "  join_method: iam\n  allow: [{aws_account: \"111111111111\"}]\n"
	head := "kind: token\nversion: v2\nmetadata:\n  name: t\nspec:\n"
	res, err := ParseResources([]byte(head + "  roles: [node]\n  labels: {env: prod}\n" + allow))
	if err != nil {
		t.Fatalf("iam token of nodes: %v", err)
	}
	if tk := res.Tokens[0]; tk.Spec.Roles[0] != TokenRoleNode || tk.Spec.Labels["env"] != "prod" {
		t.Errorf("parsed %+v", tk.Spec)
	}
	for _, c := range []struct{ spec, want string }{
		{"  roles: [Node]\n  bot_name: robot\n" + allow, "spec.bot_name is for bot tokens"},
		{"  roles: [Bot]\n  bot_name: robot\n  labels: {env: prod}\n" + allow, "spec.labels are for node tokens"},
		{"  roles: [Node]\n  labels: {env: \"a b\"}\n" + allow, "spec.labels"},
		{"  roles: [Node]\n  join_method: token\n", "tokens add --type=node"},
		{"  roles: [Node, Bot]\n  bot_name: robot\n" + allow, "[Bot] or [Node]"},
		{"  roles: [Proxy]\n" + allow, "[Bot] or [Node]"},
	} {
		_, err := ParseResources([]byte(head + c.spec))
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: %v; want one line with %q", c.spec, err, c.want)
		}
	}
}
