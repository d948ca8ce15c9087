package auth

import (
	"context"
	"crypto"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

// addNodeToken makes a node token with the given labels.
func addNodeToken(t testing.TB, s *Server, labels map[string]string) string {
	t.Helper()
	nt, err := s.AddNodeToken(context.Background(), admin.NodeTokenSpec{Labels: labels})
	if err != nil {
		t.Fatalf("AddNodeToken: %v", err)
	}
	return nt.Token
}

// tryJoinNode joins as node info with token and a new key.
func tryJoinNode(t testing.TB, s *Server, token string, info wire.NodeInfo) (*botID, int, string) {
	t.Helper()
	key, pub := newKey(t)
	return tryJoinNodeKey(t, s, token, info, key, pub)
}

func tryJoinNodeKey(t testing.TB, s *Server, token string, info wire.NodeInfo, key crypto.Signer, pub []byte) (*botID, int, string) {
	t.Helper()
	c := newClient(t, s, nil, nil)
	defer c.close()
	var bi wire.BotIdentity
	status, msg, err := c.do("POST", wire.PathJoin, wire.JoinRequest{Token: token, PublicKey: pub, Node: &info}, &bi)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	return &botID{key: key, pub: pub, cert: bi.TLSCert, gen: bi.Generation}, status, msg
}

func joinNode(t testing.TB, s *Server, token string, info wire.NodeInfo) *botID {
	t.Helper()
	id, status, msg := tryJoinNode(t, s, token, info)
	if status != 200 {
		t.Fatalf("node join: %d %s", status, msg)
	}
	return id
}

// heartbeatAs sends a heartbeat with the identity id.
func (id *botID) heartbeat(t testing.TB, s *Server, hb wire.Heartbeat) (*wire.HeartbeatAnswer, int, string) {
	t.Helper()
	c := newClient(t, s, id.key, id.cert)
	defer c.close()
	var ans wire.HeartbeatAnswer
	status, msg, err := c.do("POST", wire.PathHeartbeat, hb, &ans)
	if err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	return &ans, status, msg
}

func (id *botID) hostCert(t testing.TB, s *Server, pub ssh.PublicKey) (*wire.HostCerts, int, string) {
	t.Helper()
	c := newClient(t, s, id.key, id.cert)
	defer c.close()
	var out wire.HostCerts
	status, msg, err := c.do("POST", wire.PathHostCert, wire.HostCertRequest{PublicKey: string(ssh.MarshalAuthorizedKey(pub))}, &out)
	if err != nil {
		t.Fatalf("host cert: %v", err)
	}
	return &out, status, msg
}

func hostKey(t testing.TB) ssh.PublicKey {
	t.Helper()
	k, _ := newKey(t)
	pub, err := ssh.NewPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// A node joins with a node token, gets a host certificate for
// NAME.CLUSTER and NAME signed by the host CA, and enters what bots see
// with its first heartbeat, with its join token's labels over its own.
// Node and bot identities each get only their own calls.
func TestNodeJoinsGetsHostCertAndHeartbeats(t *testing.T) {
	s := startTest(t)
	bot := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	tok := addNodeToken(t, s, map[string]string{"env": "prod"})
	info := wire.NodeInfo{Name: "db1", Addr: "10.0.0.9:22", Labels: map[string]string{"env": "dev", "team": "data"}}
	node := joinNode(t, s, tok, info)

	if names := listNames(t, s, bot); len(names) != 0 {
		t.Fatalf("a node that joined but never heartbeat is listed: %v", names)
	}
	hk := hostKey(t)
	hc, status, msg := node.hostCert(t, s, hk)
	if status != 200 {
		t.Fatalf("host cert: %d %s", status, msg)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hc.HostCert))
	if err != nil {
		t.Fatal(err)
	}
	cert := pub.(*ssh.Certificate)
	if cert.CertType != ssh.HostCert || !slices.Equal(cert.ValidPrincipals, []string{"db1.test.example.com", "db1"}) ||
		string(cert.Key.Marshal()) != string(hk.Marshal()) || string(cert.SignatureKey.Marshal()) != string(s.signer(caHost).signer.PublicKey().Marshal()) {
		t.Fatalf("host certificate: type %d principals %v; want a host cert for db1.CLUSTER and db1 over the host key, signed by the host CA", cert.CertType, cert.ValidPrincipals)
	}
	if len(hc.UserCAs) != 1 || !strings.HasPrefix(hc.UserCAs[0], "ecdsa-sha2-nistp256 ") {
		t.Fatalf("user CAs: %q", hc.UserCAs)
	}

	ans, status, msg := node.heartbeat(t, s, wire.Heartbeat{Addr: info.Addr, Labels: info.Labels, IntervalSeconds: 30})
	if status != 200 {
		t.Fatalf("heartbeat: %d %s", status, msg)
	}
	want := map[string]string{"env": "prod", "team": "data"}
	if !mapsEqual(ans.Labels, want) {
		t.Fatalf("heartbeat labels %v, want %v (the token's env over the node's)", ans.Labels, want)
	}
	nodes, status, _ := nodesAs(t, s, bot.key, bot.cert)
	if status != 200 || len(nodes) != 1 || nodes[0].Name != "db1" || nodes[0].Addr != info.Addr || !mapsEqual(nodes[0].Labels, want) {
		t.Fatalf("bot's list after the heartbeat: %d %+v", status, nodes)
	}

	// Each identity only gets its own calls.
	if _, _, status, _ := node.tryCerts(t, s, 0); status != 403 {
		t.Errorf("a node identity asked for user certificates: %d, want 403", status)
	}
	if _, status, _ := nodesAs(t, s, node.key, node.cert); status != 403 {
		t.Errorf("a node identity asked for the node list: %d, want 403", status)
	}
	if _, status, _ := bot.hostCert(t, s, hk); status != 403 {
		t.Errorf("a bot identity asked for a host certificate: %d, want 403", status)
	}
	if _, status, _ := bot.heartbeat(t, s, wire.Heartbeat{Addr: "10.0.0.1:22", IntervalSeconds: 30}); status != 403 {
		t.Errorf("a bot identity heartbeat: %d, want 403", status)
	}
	// get nodes tells enforcing nodes from typed ones; get bots does not
	// list node identities.
	if err := s.AddNode(context.Background(), identity.Node{Name: "typed", Addr: "10.0.0.2:22"}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Get(context.Background(), policy.KindNode, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range res.Nodes {
		if enforcing := n.Metadata.Name == "db1"; n.Status.Enforcing != enforcing || !n.Status.Online {
			t.Errorf("get nodes: %s status %+v", n.Metadata.Name, n.Status)
		}
	}
	bots, _ := s.Bots(context.Background())
	for _, b := range bots {
		if b.Metadata.Name != "robot" {
			t.Errorf("get bots lists %s", b.Metadata.Name)
		}
	}
}

func listNames(t testing.TB, s *Server, id *botID) []string {
	t.Helper()
	nodes, status, msg := nodesAs(t, s, id.key, id.cert)
	if status != 200 {
		t.Fatalf("nodes: %d %s", status, msg)
	}
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	return names
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// A node stays in what bots see for one and a half of its heartbeat
// intervals after each heartbeat: polls with If-None-Match see it leave
// when that runs out and come back with its next heartbeat, and a
// heartbeat that only extends its stay changes no ETag.
func TestNodeLeavesWhenHeartbeatsStopAndComesBack(t *testing.T) {
	clk := clock.NewFake(time.Now())
	s := startTest(t, func(c *Config) { c.Clock = clk })
	bot := join(t, s, addBot(t, s, "robot", []string{"access"}, nil).Token)
	info := wire.NodeInfo{Name: "web", Addr: "10.0.0.1:22"}
	node := joinNode(t, s, addNodeToken(t, s, nil), info)
	beat := func() {
		t.Helper()
		if _, status, msg := node.heartbeat(t, s, wire.Heartbeat{Addr: info.Addr, IntervalSeconds: 10}); status != 200 {
			t.Fatalf("heartbeat: %d %s", status, msg)
		}
	}
	poll := func(tag string) listAnswer { return pollNodes(t, s, bot.key, bot.cert, tag) }

	beat()
	in := poll("")
	if in.status != 200 || !slices.Equal(in.names, []string{"web"}) {
		t.Fatalf("after the first heartbeat: %+v", in)
	}
	clk.Advance(9 * time.Second)
	beat() // extends the stay to 15 s from now
	clk.Advance(14 * time.Second)
	if a := poll(in.etag); a.status != http.StatusNotModified {
		t.Fatalf("within its stay, after a heartbeat that only extended it: %+v; want 304", a)
	}
	clk.Advance(time.Second)
	out := poll(in.etag)
	if out.status != 200 || len(out.names) != 0 || out.etag == in.etag {
		t.Fatalf("15 s after its last heartbeat: %+v; want a new list without it", out)
	}
	res, err := s.Get(context.Background(), policy.KindNode, "web")
	if err != nil || res.Nodes[0].Status.Online || !res.Nodes[0].Status.Enforcing {
		t.Fatalf("get nodes/web once it left: %v %+v", err, res.Nodes[0].Status)
	}
	beat()
	back := poll(out.etag)
	if back.status != 200 || !slices.Equal(back.names, []string{"web"}) {
		t.Fatalf("after it heartbeat again: %+v", back)
	}
}

// The guarantees of a bot's identity hold for a node's: a join whose
// answer was lost is answered again for the same key, the identity renews
// (and a stale generation is refused), a removed node can neither
// heartbeat nor renew. A node token names no node: the node names itself,
// but may not take the name of a node typed by an administrator or of one
// that still heartbeats. Requests that do not fit the token leave it
// unused.
func TestNodeJoinRetriesRenewalsAndNames(t *testing.T) {
	clk := clock.NewFake(time.Now())
	s := startTest(t, func(c *Config) { c.Clock = clk })
	ctx := context.Background()
	info := wire.NodeInfo{Name: "web", Addr: "10.0.0.1:22"}
	tok := addNodeToken(t, s, nil)

	// Requests that do not fit the token.
	if _, status, msg := tryJoin(t, s, tok); status != 400 || !strings.Contains(msg, "joins a node") {
		t.Fatalf("node token joined as a bot: %d %s", status, msg)
	}
	if _, status, msg := tryJoinNode(t, s, tok, wire.NodeInfo{Name: "web", Addr: "10.0.0.1:22", Labels: map[string]string{"bad key": "x"}}); status != 400 || !strings.Contains(msg, "label") {
		t.Fatalf("bad labels: %d %s", status, msg)
	}
	botTok := addBot(t, s, "robot", []string{"access"}, nil).Token
	if _, status, msg := tryJoinNode(t, s, botTok, info); status != 400 || !strings.Contains(msg, "joins a bot") {
		t.Fatalf("bot token joined a node: %d %s", status, msg)
	}

	key, pub := newKey(t)
	node, status, msg := tryJoinNodeKey(t, s, tok, info, key, pub)
	if status != 200 {
		t.Fatalf("join after refused attempts: %d %s (were they spent?)", status, msg)
	}
	again, status, msg := tryJoinNodeKey(t, s, tok, info, key, pub)
	if status != 200 || again.gen != 1 {
		t.Fatalf("join retried with the same key: %d %s gen %d", status, msg, again.gen)
	}
	if _, status, _ := tryJoinNode(t, s, tok, info); status != 403 {
		t.Fatalf("the spent token joined again with another key: %d", status)
	}
	next := node.renew(t, s)
	if _, status, _ := node.heartbeat(t, s, wire.Heartbeat{Addr: info.Addr, IntervalSeconds: 10}); status != 403 {
		t.Fatalf("heartbeat with the renewed-away identity: %d, want 403", status)
	}
	if _, status, msg := next.heartbeat(t, s, wire.Heartbeat{Addr: info.Addr, IntervalSeconds: 10}); status != 200 {
		t.Fatalf("heartbeat with the renewed identity: %d %s", status, msg)
	}

	// Names held by others.
	if _, status, msg := tryJoinNode(t, s, addNodeToken(t, s, nil), info); status != 409 || !strings.Contains(msg, "online") {
		t.Fatalf("a second join took the name of a node that heartbeats: %d %s", status, msg)
	}
	if err := s.AddNode(ctx, identity.Node{Name: "typed", Addr: "10.0.0.2:22"}); err != nil {
		t.Fatal(err)
	}
	if _, status, msg := tryJoinNode(t, s, addNodeToken(t, s, nil), wire.NodeInfo{Name: "typed", Addr: "10.0.0.2:22"}); status != 409 || !strings.Contains(msg, "nodes rm typed") {
		t.Fatalf("a join took the name of a typed node: %d %s", status, msg)
	}
	if err := s.AddNode(ctx, identity.Node{Name: "web", Addr: "10.0.0.3:22"}); admin.KindOf(err) != admin.Conflict {
		t.Fatalf("nodes add over a joined node: %v, want a conflict", err)
	}
	// Once it stopped heartbeating, a new join may take the name: the
	// earlier identity is replaced.
	clk.Advance(16 * time.Second)
	newer := joinNode(t, s, addNodeToken(t, s, nil), info)
	if _, status, _ := next.tryRenew(t, s); status != 403 {
		t.Fatalf("the identity of the earlier join still renews: %d", status)
	}

	// Removed: nothing of it works any more.
	if err := s.Remove(ctx, policy.KindNode, "web"); err != nil {
		t.Fatal(err)
	}
	if _, status, _ := newer.heartbeat(t, s, wire.Heartbeat{Addr: info.Addr, IntervalSeconds: 10}); status != 403 {
		t.Fatalf("heartbeat of a removed node: %d, want 403", status)
	}
	if _, status, _ := newer.tryRenew(t, s); status != 403 {
		t.Fatalf("renewal of a removed node: %d, want 403", status)
	}
}
