package auth

import (
	"context"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/identity"
)

// oneLine fails unless err is a one-line error containing want.
func oneLine(t *testing.T, what string, err error, want string) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%q was accepted", what)
	case strings.ContainsAny(err.Error(), "\n\r\x00"):
		t.Errorf("%q: error is not one line: %q", what, err)
	case !strings.Contains(err.Error(), want):
		t.Errorf("%q: error %q does not say %q", what, err, want)
	}
}

// Every field that reaches a bot's ssh_config is checked when it enters
// through the admin socket: a line break in an address would give every bot
// a ProxyCommand, a space makes ssh reject the whole file. A refused node
// is not stored.
func TestAdminRefusesNodesThatWouldBreakSSHConfig(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	ac := dialAdmin(t, s)
	for _, c := range []struct {
		node identity.Node
		want string
	}{
		{identity.Node{Name: "evil", Addr: "10.0.0.1\n    ProxyCommand touch /tmp/pwned\n#:22"}, "HOST:PORT"},
		{identity.Node{Name: "evil", Addr: "10.0.0.1\r\nMatch exec \"touch /tmp/pwned\"\n#:22"}, "HOST:PORT"},
		{identity.Node{Name: "spaced", Addr: "10.0.0.1 x:22"}, "HOST:PORT"},
		{identity.Node{Name: "zone", Addr: "[fe80::1%eth0]:22"}, "zone"},
		{identity.Node{Name: "octal", Addr: "010.1.1.1:22"}, "dotted quad"},
		{identity.Node{Name: "port0", Addr: "10.0.0.1:0"}, "1 to 65535"},
		{identity.Node{Name: "port", Addr: "10.0.0.1:65536"}, "1 to 65535"},
		{identity.Node{Name: "nul", Addr: "10.0.0.1\x00:22"}, "HOST:PORT"},
		{identity.Node{Name: "bad name", Addr: "10.0.0.1:22"}, "bad node name"},
		{identity.Node{Name: "bad\nname", Addr: "10.0.0.1:22"}, "bad node name"},
		{identity.Node{Name: "root@web", Addr: "10.0.0.1:22"}, "bad node name"},
		{identity.Node{Name: "lbl", Addr: "10.0.0.1:22", Labels: map[string]string{"env": "prod\nProxyCommand x"}}, "bad value"},
		{identity.Node{Name: "lbl", Addr: "10.0.0.1:22", Labels: map[string]string{"a b": "c"}}, "bad label key"},
		{identity.Node{Name: "lbl", Addr: "10.0.0.1:22", Labels: map[string]string{"env": strings.Repeat("x", 256)}}, "up to 255"},
	} {
		oneLine(t, "node "+c.node.Addr, ac.AddNode(ctx, c.node), c.want)
	}
	res, err := ac.Get(ctx, "nodes", "")
	if err != nil || len(res.Nodes) != 0 {
		t.Fatalf("refused nodes were stored: %+v %v", res.Nodes, err)
	}
	for _, good := range []identity.Node{
		{Name: "v6", Addr: "[2001:db8::1]:22"},
		{Name: "web-1.eu", Addr: "web-1.eu.example.com:2222", Labels: map[string]string{"teleport.dev/origin": "config", "empty": ""}},
		{Name: "Upper_case", Addr: "10.0.0.1:22"},
	} {
		if err := ac.AddNode(ctx, good); err != nil {
			t.Errorf("node %+v refused: %v", good, err)
		}
	}
}

// The same checks hold for nodes, roles and tokens from `create -f`: one
// bad document and nothing is stored.
func TestAdminRefusesBadYAMLValues(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	ac := dialAdmin(t, s)
	for _, c := range []struct{ yaml, want string }{
		{"kind: node\nmetadata:\n  name: evil\nspec:\n  addr: \"10.0.0.1\\n    ProxyCommand touch /tmp/pwned\\n#:22\"\n", "HOST:PORT"},
		{"kind: node\nmetadata:\n  name: spaced\nspec:\n  addr: 10.0.0.1 x:22\n", "HOST:PORT"},
		{"kind: node\nmetadata:\n  name: n\n  labels: {env: \"a\\nb\"}\nspec:\n  addr: 10.0.0.1:22\n", "bad value"},
		{"kind: role\nmetadata:\n  name: r\nspec:\n  allow:\n    logins: [\"ro\\0ot\"]\n", "bad login"},
		{"kind: role\nmetadata:\n  name: r\nspec:\n  allow:\n    logins: [\"root\\r\"]\n", "bad login"},
		{"kind: role\nmetadata:\n  name: r\nspec:\n  allow:\n    logins: [\"*\"]\n", "only works in deny"},
		{"kind: role\nmetadata:\n  name: r\nspec:\n  allow:\n    node_labels: {\"a\\nb\": x}\n", "bad label key"},
		{"kind: role\nmetadata:\n  name: r\n  labels: {k: \"v w\"}\nspec: {}\n", "bad value"},
		{"kind: token\nmetadata:\n  name: t\n  labels: {k: \"v\\nw\"}\nspec:\n  bot_name: b\n  join_method: iam\n  allow: [{aws_account: \"111111111111\"}]\n", "bad value"},
	} {
		// A good role first: it must not be stored either.
		_, err := ac.CreateYAML(ctx, []byte("kind: role\nmetadata:\n  name: fine\nspec: {}\n---\n"+c.yaml), false)
		oneLine(t, c.yaml, err, c.want)
	}
	res, err := ac.Get(ctx, "roles", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Roles {
		if r.Metadata.Name == "fine" || r.Metadata.Name == "r" {
			t.Errorf("role %s stored from a file that was refused", r.Metadata.Name)
		}
	}
	res, _ = ac.Get(ctx, "nodes", "")
	if len(res.Nodes) != 0 {
		t.Errorf("refused nodes were stored: %+v", res.Nodes)
	}
	good := "kind: role\nmetadata:\n  name: ok\nspec:\n  allow:\n    logins: ['{{internal.logins}}', ubuntu, svc.deploy, _backup]\n    node_labels: {'*': '*'}\n  deny:\n    logins: ['*']\n"
	if _, err := ac.CreateYAML(ctx, []byte(good), false); err != nil {
		t.Errorf("good role refused: %v", err)
	}
}

// A login with NUL or CR made a certificate that OpenSSH rejects; it is
// refused by `bots add`, and the bot is not made.
func TestAdminRefusesBadLogins(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	ac := dialAdmin(t, s)
	for _, login := range []string{"ro\x00ot", "root\r", "a b", "-oProxyCommand", "x\ny", strings.Repeat("a", 33), "", "{{internal.logins}}", "root,admin", "%u"} {
		_, err := ac.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, Logins: []string{login}})
		oneLine(t, "login "+login, err, "bad login")
	}
	if bots, err := ac.Get(ctx, "bots", ""); err != nil || len(bots.Bots) != 0 {
		t.Errorf("a bot was made with a refused login: %+v %v", bots, err)
	}
	if _, err := ac.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, Logins: []string{"root", "ubuntu", "svc.deploy", strings.Repeat("a", 32)}}); err != nil {
		t.Errorf("good logins refused: %v", err)
	}
}

// The cluster name reaches every known_hosts and ssh_config: a bad one is
// refused at start, with one line, and nothing is created.
func TestStartRefusesBadClusterName(t *testing.T) {
	for _, name := range []string{"example.com\n@cert-authority *", "a b", "*.example.com", "example.com.", "-x", "x%d"} {
		dir := t.TempDir()
		s, err := Start(context.Background(), Config{DataDir: dir, Listen: "127.0.0.1:0", ClusterName: name, Logger: testLogger(t)})
		if err == nil {
			s.Close()
		}
		oneLine(t, "cluster name "+name, err, "bad cluster name")
	}
}
