package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store/sqlite"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/wire"
)

func TestJoinRenewCertsNodes(t *testing.T) {
	s := startTest(t)
	bt := addBot(t, s, "robot", []string{"access"}, []string{"root", "ubuntu"})
	if len(bt.Token) != 64 || bt.CAPin != s.CAPin() || bt.JoinMethod != wire.JoinToken {
		t.Fatalf("bot token: %+v", bt)
	}
	id := join(t, s, bt.Token)
	if id.gen != 1 {
		t.Fatalf("first join generation %d, want 1", id.gen)
	}
	c := mustParseCert(t, id.cert)
	if c.Subject.CommonName != "bot-robot" || c.Issuer.Organization[0] != "test.example.com" {
		t.Errorf("bot cert subject %v issuer %v", c.Subject, c.Issuer)
	}
	if got := c.NotAfter.Sub(c.NotBefore); got != time.Hour+time.Minute {
		t.Errorf("bot identity lifetime %v, want 1h (+1m backdating)", got)
	}
	id2 := id.renew(t, s)
	if id2.gen != 2 {
		t.Fatalf("renewed generation %d, want 2", id2.gen)
	}

	out, key := id2.certs(t, s)
	sshKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(out.SSHCert))
	if err != nil {
		t.Fatal(err)
	}
	cert := sshKey.(*ssh.Certificate)
	if cert.KeyId != "bot-robot" || !reflect.DeepEqual(cert.ValidPrincipals, []string{"root", "ubuntu"}) {
		t.Errorf("ssh cert key id %q principals %v", cert.KeyId, cert.ValidPrincipals)
	}
	if _, ok := cert.Permissions.Extensions["permit-pty"]; !ok {
		t.Errorf("ssh cert lacks permit-pty: %v", cert.Permissions.Extensions)
	}
	now := time.Now().Unix()
	if va := int64(cert.ValidAfter); va > now-50 || va < now-70 {
		t.Errorf("ValidAfter %d is not about a minute before now %d", va, now)
	}
	if vb := int64(cert.ValidBefore); vb < now+3590 || vb > now+3610 {
		t.Errorf("ValidBefore %d is not an hour from now %d", vb, now)
	}
	tc := mustParseCert(t, out.TLSCert)
	if tc.Subject.CommonName != "bot-robot" || !reflect.DeepEqual(tc.Subject.Organization, []string{"access"}) ||
		!reflect.DeepEqual(tc.Subject.Locality, []string{"root", "ubuntu"}) || tc.Issuer.Organization[0] != "test.example.com" {
		t.Errorf("output TLS subject %v issuer %v", tc.Subject, tc.Issuer)
	}
	// The output identity checks out the way the mount checks it.
	ident := &identity.Identity{Key: key, SSHCert: cert, TLSCert: tc, ClusterName: out.ClusterName, CAs: s.caSet().identity()}
	if err := ident.Check(); err != nil {
		t.Errorf("output identity does not check: %v", err)
	}
	if len(out.UserCAs) != 1 || len(out.HostCAs) != 1 || len(out.DatabaseCAs) != 1 || out.HostCAs[0].SSH == "" || out.DatabaseCAs[0].SSH != "" {
		t.Errorf("CAs in output: %+v", out)
	}

	ctx := context.Background()
	for _, n := range []identity.Node{
		{Name: "web1", Addr: "127.0.0.1:22", Labels: map[string]string{"group": "web"}},
		{Name: "db1", Addr: "127.0.0.1:23", Labels: map[string]string{"group": "db"}},
	} {
		if err := s.AddNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	// Both the bot identity and the output identity may list nodes.
	for _, who := range []struct {
		name string
		key  crypto.Signer
		cert []byte
	}{{"bot", id2.key, id2.cert}, {"output", key, out.TLSCert}} {
		nodes, status, msg := nodesAs(t, s, who.key, who.cert)
		if status != 200 || len(nodes) != 2 {
			t.Errorf("nodes as %s identity: %d %s %v", who.name, status, msg, nodes)
		}
	}
	// An output identity cannot renew or get certs.
	outID := &botID{key: key, cert: out.TLSCert}
	if _, status, msg := outID.tryRenew(t, s); status != 403 || !strings.Contains(msg, "output") {
		t.Errorf("renew with output identity: %d %s", status, msg)
	}
	if _, _, status, msg := outID.tryCerts(t, s, 0); status != 403 || !strings.Contains(msg, "output") {
		t.Errorf("certs with output identity: %d %s", status, msg)
	}
}

func TestOutputTTLIsCapped(t *testing.T) {
	s := startTest(t)
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	out, _, status, msg := id.tryCerts(t, s, 100*time.Hour)
	if status != 200 {
		t.Fatalf("certs: %d %s", status, msg)
	}
	tc := mustParseCert(t, out.TLSCert)
	if life := time.Until(tc.NotAfter); life > 24*time.Hour+time.Minute || life < 23*time.Hour {
		t.Errorf("asked for 100h, got %v; want capped at 24h", life)
	}
}

func TestNoLoginsGetAnUnusablePrincipal(t *testing.T) {
	s := startTest(t)
	id := join(t, s, addBot(t, s, "auditbot", []string{"auditor"}, nil).Token)
	out, _ := id.certs(t, s)
	k, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(out.SSHCert))
	p := k.(*ssh.Certificate).ValidPrincipals
	if len(p) != 1 || !strings.HasPrefix(p[0], "-midfs-nologin-") {
		t.Errorf("principals of a bot without logins: %v; an empty list would let it log in as anyone", p)
	}
}

func TestTokenWorksOnce(t *testing.T) {
	s := startTest(t)
	bt := addBot(t, s, "robot", []string{"access"}, []string{"root"})
	key, pub := newKey(t)
	first, status, msg := tryJoinKey(t, s, bt.Token, key, pub)
	if status != 200 {
		t.Fatalf("join: %d %s", status, msg)
	}
	// Another key: refused, with the generic line.
	if _, status, msg := tryJoin(t, s, bt.Token); status != 403 || !strings.HasPrefix(msg, joinRefusedMsg+" (ref ") {
		t.Errorf("second join with another key: %d %q", status, msg)
	}
	// The same key (the answer was lost): a fresh identity at generation 1.
	again, status, msg := tryJoinKey(t, s, bt.Token, key, pub)
	if status != 200 || again.gen != 1 || bytes.Equal(again.cert, first.cert) {
		t.Errorf("retry with the same key: %d %s gen %d", status, msg, again.gen)
	}
	// Once the bot renewed, the token is spent even for that key.
	first.renew(t, s)
	if _, status, _ := tryJoinKey(t, s, bt.Token, key, pub); status != 403 {
		t.Errorf("retry after renewal: %d, want 403", status)
	}
	// Unknown tokens get the same line.
	if _, status, msg := tryJoin(t, s, strings.Repeat("ab", 32)); status != 403 || !strings.HasPrefix(msg, joinRefusedMsg+" (ref ") {
		t.Errorf("unknown token: %d %q", status, msg)
	}
	res, _ := s.Get(context.Background(), "tokens", "")
	if len(res.Tokens) != 1 || res.Tokens[0].Status == nil || !res.Tokens[0].Status.Used {
		t.Errorf("get tokens: %+v", res.Tokens)
	}
}

func TestRacingJoinsGetOneIdentity(t *testing.T) {
	s := startTest(t)
	bt := addBot(t, s, "robot", []string{"access"}, []string{"root"})
	const n = 24
	var wg sync.WaitGroup
	statuses := make([]int, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, statuses[i], _ = tryJoin(t, s, bt.Token)
		}()
	}
	wg.Wait()
	ok := 0
	for _, st := range statuses {
		switch st {
		case 200:
			ok++
		case 403:
		default:
			t.Errorf("racing join got %d", st)
		}
	}
	if ok != 1 {
		t.Errorf("%d racing joins succeeded with one token, want exactly 1", ok)
	}
}

func TestExpiredTokenRefused(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	s := startTest(t, func(c *Config) { c.Clock = clk })
	bt, err := s.AddBot(context.Background(), admin.BotSpec{Name: "robot", Roles: []string{"access"}, TTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(11 * time.Minute)
	if _, status, msg := tryJoin(t, s, bt.Token); status != 403 || !strings.HasPrefix(msg, joinRefusedMsg+" (ref ") {
		t.Errorf("expired token: %d %q", status, msg)
	}
}

func TestCopiedIdentityLocksBot(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	id1 := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	id2 := id1.renew(t, s)
	// Someone else holds a copy of id1 and renews it with their own key.
	if _, status, msg := id1.tryRenew(t, s); status != 403 || !strings.Contains(msg, "locked") {
		t.Fatalf("renewal with a stale generation: %d %s", status, msg)
	}
	bots, _ := s.Bots(ctx)
	if len(bots) != 1 || !strings.Contains(bots[0].Status.Locked, "generation mismatch stored=2 presented=1") {
		t.Fatalf("bots after mismatch: %+v", bots)
	}
	// The lock holds for everyone, including the rightful holder.
	if _, status, _ := id2.tryRenew(t, s); status != 403 {
		t.Errorf("renewal of a locked bot: %d", status)
	}
	if _, _, status, _ := id2.tryCerts(t, s, 0); status != 403 {
		t.Errorf("certs for a locked bot: %d", status)
	}
	if err := s.UnlockBot(ctx, "robot"); err != nil {
		t.Fatal(err)
	}
	if id3 := id2.renew(t, s); id3.gen != 3 {
		t.Errorf("after unlock: generation %d, want 3", id3.gen)
	}
}

func TestLostRenewalAnswerCanBeRetried(t *testing.T) {
	s := startTest(t)
	id1 := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	key, pub := newKey(t)
	if _, status, msg := id1.tryRenewKey(t, s, key, pub); status != 200 {
		t.Fatalf("renew: %d %s", status, msg)
	}
	// The answer was lost: the same request again gets generation 2 again.
	id2, status, msg := id1.tryRenewKey(t, s, key, pub)
	if status != 200 || id2.gen != 2 {
		t.Fatalf("retried renewal: %d %s gen %d", status, msg, id2.gen)
	}
	if id3 := id2.renew(t, s); id3.gen != 3 {
		t.Errorf("next renewal: gen %d", id3.gen)
	}
}

// A renewal whose answer was lost and that is retried with another key is
// what a copied identity looks like: it locks the bot. Once unlocked, the
// rightful holder's retry with the key it sent gets the generation the
// authority issued to that key, and the copy locks the bot again.
func TestLostRenewalAnswerRetriedWithAnotherKeyLocks(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	id1 := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	key, pub := newKey(t)
	if _, status, msg := id1.tryRenewKey(t, s, key, pub); status != 200 {
		t.Fatalf("renew: %d %s", status, msg)
	}
	if _, status, msg := id1.tryRenew(t, s); status != 403 || !strings.Contains(msg, "locked") {
		t.Fatalf("retry of the lost renewal with another key: %d %s, want a refusal that locks the bot", status, msg)
	}
	if err := s.UnlockBot(ctx, "robot"); err != nil {
		t.Fatal(err)
	}
	id2, status, msg := id1.tryRenewKey(t, s, key, pub)
	if status != 200 || id2.gen != 2 {
		t.Fatalf("after unlock, the retry with the key that was sent: %d %s gen %d, want generation 2", status, msg, id2.gen)
	}
	if id3 := id2.renew(t, s); id3.gen != 3 {
		t.Errorf("next renewal: gen %d", id3.gen)
	}
	if _, status, _ := id1.tryRenew(t, s); status != 403 {
		t.Errorf("the copy after unlock: %d, want it refused", status)
	}
	if bots, _ := s.Bots(ctx); !strings.Contains(bots[0].Status.Locked, "generation mismatch") {
		t.Errorf("the copy after unlock did not lock the bot again: %+v", bots[0].Status)
	}
}

// An identity the bot has renewed past lists no nodes. One generation
// behind is refused without a lock (the rightful holder presents it until
// the retry of a renewal whose answer it lost goes through); further
// behind can only be a copy, and locks the bot as a renewal would.
func TestStaleIdentityListsNoNodes(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	if err := s.AddNode(ctx, identity.Node{Name: "web1", Addr: "127.0.0.1:22"}); err != nil {
		t.Fatal(err)
	}
	id1 := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	id2 := id1.renew(t, s)
	if nodes, status, msg := nodesAs(t, s, id1.key, id1.cert); status != 403 || !strings.Contains(msg, "already renewed") {
		t.Errorf("nodes as the identity one generation behind: %d %s %v, want 403", status, msg, nodes)
	}
	if bots, _ := s.Bots(ctx); bots[0].Status.Locked != "" {
		t.Fatalf("one generation behind locked the bot: %s", bots[0].Status.Locked)
	}
	if _, status, msg := nodesAs(t, s, id2.key, id2.cert); status != 200 {
		t.Fatalf("nodes as the current identity: %d %s", status, msg)
	}
	id2.renew(t, s)
	if nodes, status, msg := nodesAs(t, s, id1.key, id1.cert); status != 403 || !strings.Contains(msg, "locked") {
		t.Errorf("nodes as the identity two generations behind: %d %s %v, want 403 and a lock", status, msg, nodes)
	}
	if bots, _ := s.Bots(ctx); !strings.Contains(bots[0].Status.Locked, "generation mismatch stored=3 presented=1") {
		t.Errorf("bot after a copy two generations behind listed nodes: %+v", bots[0].Status)
	}
}

func TestRemovedBotIsRefused(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	bt := addBot(t, s, "robot", []string{"access"}, []string{"root"})
	id := join(t, s, bt.Token)
	bt2, err := s.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveBot(ctx, "robot"); err != nil {
		t.Fatal(err)
	}
	if _, status, _ := id.tryRenew(t, s); status != 403 {
		t.Errorf("renewal of a removed bot: %d", status)
	}
	if _, _, status, _ := id.tryCerts(t, s, 0); status != 403 {
		t.Errorf("certs of a removed bot: %d", status)
	}
	if _, status, _ := tryJoin(t, s, bt2.Token); status != 403 {
		t.Errorf("join with a removed bot's token: %d", status)
	}
	// Removing locked it, so that nodes refuse the certificates it still
	// holds; while the lock stands, a bot of its name cannot be added.
	res, err := s.Get(ctx, "locks", "")
	if err != nil || len(res.Locks) != 1 || res.Locks[0].Spec.Target.Bot != "robot" || res.Locks[0].Spec.Expires == nil {
		t.Fatalf("locks after bots rm: %+v %v", res, err)
	}
	_, err = s.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}})
	if want := "rm locks/" + res.Locks[0].Metadata.Name; err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("re-adding a removed bot while its lock stands: %v, want a line naming %q", err, want)
	}
	if err := s.Remove(ctx, "locks", res.Locks[0].Metadata.Name); err != nil {
		t.Fatal(err)
	}
	// A new bot of the same name does not take the old identity back.
	bt3 := addBot(t, s, "robot", []string{"access"}, []string{"root"})
	join(t, s, bt3.Token)
	if _, status, _ := id.tryRenew(t, s); status != 403 {
		t.Errorf("renewal of the old bot's identity after re-adding: %d", status)
	}
}

func TestAddBotErrors(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	if _, err := s.AddBot(ctx, admin.BotSpec{Name: "ghost", Roles: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown role: %v", err)
	}
	if bots, _ := s.Bots(ctx); len(bots) != 0 {
		t.Errorf("a bot was made despite the unknown role: %+v", bots)
	}
	addBot(t, s, "robot", []string{"access"}, nil)
	if _, err := s.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("duplicate bot: %v", err)
	}
	for _, bad := range []admin.BotSpec{
		{Name: "bad name", Roles: []string{"access"}},
		{Name: "x", Roles: nil},
		{Name: "x", Roles: []string{"access"}, Logins: []string{"ro ot"}},
		{Name: "x", Roles: []string{"access"}, TTL: 30 * 24 * time.Hour},
		{Name: "x", Roles: []string{"access"}, TokenName: "missing"},
	} {
		if _, err := s.AddBot(ctx, bad); err == nil {
			t.Errorf("AddBot(%+v) succeeded", bad)
		}
	}
}

func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t), ClusterName: "one.example"}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	pin, cluster := s.CAPin(), s.ClusterName()
	bt := addBot(t, s, "robot", []string{"access"}, []string{"root"})
	id := join(t, s, bt.Token)
	s.Close()

	cfg.ClusterName = "two.example" // ignored: fixed at first start
	s2, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if s2.CAPin() != pin || s2.ClusterName() != cluster {
		t.Errorf("restart changed pin %s->%s or cluster %s->%s", pin, s2.CAPin(), cluster, s2.ClusterName())
	}
	if id2 := id.renew(t, s2); id2.gen != 2 {
		t.Errorf("renewal after restart: gen %d", id2.gen)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v", fi.Mode())
	}
	if fi, err := os.Stat(filepath.Join(dir, "admin.sock")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket: %v %v", err, fi)
	}
}

func TestCACertificates(t *testing.T) {
	s := startTest(t)
	for _, a := range []*authority{s.signer(caUser), s.signer(caHost), s.signer(caDB)} {
		c := a.cert
		if !c.IsCA || c.Subject.Organization[0] != "test.example.com" || c.Subject.OrganizationalUnit[0] != a.kind {
			t.Errorf("%s CA subject %v", a.kind, c.Subject)
		}
		if life := c.NotAfter.Sub(c.NotBefore); life < 9*365*24*time.Hour {
			t.Errorf("%s CA valid for %v, want ~10 years", a.kind, life)
		}
	}
	if got := identity.SPKIPin(s.signer(caHost).cert); got != s.CAPin() || !strings.HasPrefix(got, "sha256:") {
		t.Errorf("pin %s", got)
	}
}

func TestBadRequests(t *testing.T) {
	s := startTest(t)
	c := newClient(t, s, nil, nil)
	defer c.close()
	huge := []byte(`{"token":"` + strings.Repeat("a", wire.MaxBody) + `"}`)
	for name, body := range map[string][]byte{
		"garbage":       []byte("\x00\x01not json"),
		"unknown field": []byte(`{"token":"x","public_key":"","extra":1}`),
		"two objects":   []byte(`{"token":"x"}{"token":"y"}`),
		"huge":          huge,
		"bad key":       []byte(`{"token":"x","public_key":"AAAA"}`),
		"array":         []byte(`[1,2,3]`),
	} {
		status, msg, err := c.do("POST", wire.PathJoin, body, nil)
		if err != nil || status < 400 || status >= 500 || msg == "" {
			t.Errorf("%s: status %d msg %q err %v", name, status, msg, err)
		}
	}
	if status, _, _ := c.do("POST", wire.PathJoin, huge, nil); status != 413 {
		t.Errorf("oversized body: %d, want 413", status)
	}
	if status, _, _ := c.do("GET", "/v1/nope", nil, nil); status != 404 {
		t.Errorf("unknown path: %d", status)
	}
	// Without a client certificate, renew, certs and nodes iam.Refuse.
	for _, p := range []string{wire.PathRenew, wire.PathCerts} {
		if status, _, _ := c.do("POST", p, []byte(`{}`), nil); status != 401 {
			t.Errorf("%s without a client cert: %d", p, status)
		}
	}
	// A client certificate from another cluster is not accepted.
	other := startTest(t)
	id := join(t, other, addBot(t, other, "robot", []string{"access"}, nil).Token)
	c2 := newClient(t, s, id.key, id.cert)
	defer c2.close()
	if _, _, err := c2.do("POST", wire.PathRenew, []byte(`{}`), nil); err == nil {
		t.Error("a foreign bot identity got through the TLS handshake")
	}
}

func TestNodeVisibility(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	roleYAML := `
kind: role
version: v7
metadata:
  name: web-only
spec:
  allow:
    logins: [web]
    node_labels:
      group: [web, api-*]
  deny:
    node_labels:
      env: prod
`
	if _, err := s.CreateYAML(ctx, []byte(roleYAML), false); err != nil {
		t.Fatal(err)
	}
	for _, n := range []identity.Node{
		{Name: "web1", Addr: "h:22", Labels: map[string]string{"group": "web"}},
		{Name: "api1", Addr: "h:22", Labels: map[string]string{"group": "api-servers"}},
		{Name: "web-prod", Addr: "h:22", Labels: map[string]string{"group": "web", "env": "prod"}},
		{Name: "db1", Addr: "h:22", Labels: map[string]string{"group": "db"}},
		{Name: "bare", Addr: "h:22"},
	} {
		if err := s.AddNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	id := join(t, s, addBot(t, s, "webbot", []string{"web-only"}, nil).Token)
	nodes, status, msg := nodesAs(t, s, id.key, id.cert)
	var names []string
	for _, n := range nodes {
		names = append(names, n.Name)
	}
	if status != 200 || !reflect.DeepEqual(names, []string{"api1", "web1"}) {
		t.Errorf("nodes: %d %s %v, want api1 web1", status, msg, names)
	}
	out, _ := id.certs(t, s)
	k, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(out.SSHCert))
	if p := k.(*ssh.Certificate).ValidPrincipals; !reflect.DeepEqual(p, []string{"web"}) {
		t.Errorf("principals %v", p)
	}
	all := join(t, s, addBot(t, s, "allbot", []string{"access"}, nil).Token)
	if nodes, _, _ := nodesAs(t, s, all.key, all.cert); len(nodes) != 5 {
		t.Errorf("access role sees %d nodes, want all 5", len(nodes))
	}
}

func TestStartErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Start(context.Background(), Config{DataDir: dir, Listen: "nonsense", Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), "--listen") {
		t.Errorf("bad listen: %v", err)
	}
	if _, err := Start(context.Background(), Config{DataDir: dir, Listen: "127.0.0.1:0", STSEndpoint: "http://x", Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), "insecure-test-mode") {
		t.Errorf("sts endpoint without test mode: %v", err)
	}
	if _, err := Start(context.Background(), Config{DataDir: dir, Listen: "127.0.0.1:0", MaxConns: -1, Logger: testLogger(t)}); err == nil || !strings.Contains(err.Error(), "--max-connections") {
		t.Errorf("negative connection cap: %v", err)
	}
	s := startTest(t, func(c *Config) { c.DataDir = dir })
	// A second authority on the same data dir is refused.
	if _, err := Start(context.Background(), Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t)}); err == nil {
		t.Error("a second authority started on the same data dir")
	}
	_ = s
}

func TestAdminClient(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	ac := dialAdmin(t, s)
	st, err := ac.Status(ctx)
	if err != nil || st.CAPin != s.CAPin() || st.ClusterName != "test.example.com" {
		t.Fatalf("status %+v %v", st, err)
	}
	bt, err := ac.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, Logins: []string{"root"}})
	if err != nil || len(bt.Token) != 64 {
		t.Fatalf("add bot %+v %v", bt, err)
	}
	if _, err := ac.AddBot(ctx, admin.BotSpec{Name: "ghost", Roles: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("unknown role over the socket: %v", err)
	}
	if err := ac.AddNode(ctx, identity.Node{Name: "n1", Addr: "127.0.0.1:22", Labels: map[string]string{"a": "b"}}); err != nil {
		t.Fatal(err)
	}
	res, err := ac.Get(ctx, "nodes", "n1")
	if err != nil || len(res.Nodes) != 1 || res.Nodes[0].Metadata.Labels["a"] != "b" {
		t.Errorf("get node: %+v %v", res, err)
	}
	if _, err := ac.Get(ctx, "nodes", "n2"); err == nil {
		t.Error("get of a missing node succeeded")
	}
	line, err := ac.Export(ctx, admin.ExportUser)
	if err != nil || !strings.HasPrefix(line, "ecdsa-sha2-nistp256 ") {
		t.Errorf("export user: %q %v", line, err)
	}
	if err := ac.UnlockBot(ctx, "robot"); err == nil || !strings.Contains(err.Error(), "not locked") {
		t.Errorf("unlock of an unlocked bot: %v", err)
	}
	if err := ac.RemoveBot(ctx, "robot"); err != nil {
		t.Fatal(err)
	}
	if err := ac.RemoveBot(ctx, "robot"); err == nil {
		t.Error("removing a missing bot succeeded")
	}

	if _, err := admin.Dial(t.TempDir()); err == nil || !strings.Contains(err.Error(), "midfs auth start") {
		t.Errorf("dial without an authority: %v", err)
	}
}

func TestReadBotCertRejectsOthers(t *testing.T) {
	if _, err := readBotCert(&x509.Certificate{}); err == nil {
		t.Error("empty certificate read as a bot identity")
	}
}

func TestLongExpiredTokensAreSweptAtStart(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t), Clock: clk}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	addBot(t, s, "old", []string{"access"}, nil)
	s.Close()
	clk.Advance(tokenGrace + 2*time.Hour)
	s, err = Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fresh := addBot(t, s, "new", []string{"access"}, nil)
	res, _ := s.Get(context.Background(), "tokens", "")
	if len(res.Tokens) != 1 || res.Tokens[0].Metadata.Name != fresh.TokenName {
		t.Errorf("tokens after the sweep: %+v", res.Tokens)
	}
}

// TestStateFilesAreOwnerOnly: the -wal and -shm files beside the database
// hold the CA keys as much as the database does, so every file of the state
// is 0600, also when a crashed older version left them 0644.
func TestStateFilesAreOwnerOnly(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t)}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	addBot(t, s, "robot", []string{"access"}, []string{"root"})
	testenv.CheckOwnerOnly(t, dir, sqlite.File, sqlite.File+"-wal", sqlite.File+"-shm")
	s.Close()

	// A killed authority leaves a -wal with data and a -shm behind; make
	// them what older versions made.
	c := startChild(t, dir)
	ac, err := admin.Dial(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ac.AddBot(context.Background(), admin.BotSpec{Name: "robot2", Roles: []string{"access"}, Logins: []string{"root"}}); err != nil {
		t.Fatal(err)
	}
	ac.Close()
	c.kill()
	for _, name := range []string{sqlite.File, sqlite.File + "-wal", sqlite.File + "-shm"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Size() == 0 {
			t.Fatalf("the killed authority left no %s with data (%v)", name, err)
		}
		os.Chmod(filepath.Join(dir, name), 0o644)
	}
	s, err = Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	testenv.CheckOwnerOnly(t, dir, sqlite.File, sqlite.File+"-wal", sqlite.File+"-shm")
}

// TestResourceYAMLOverOneMiBIsRefused: parsing YAML takes tens of times its
// size in memory, so resource YAML over 1 MiB is refused with one line
// saying what to do, whichever way it arrives, and nothing is stored.
func TestResourceYAMLOverOneMiBIsRefused(t *testing.T) {
	const oneMiB = 1 << 20
	s := startTest(t)
	ctx := context.Background()
	ac := dialAdmin(t, s)
	big := roleYAMLOfSize(t, "big", oneMiB+1)
	for name, create := range map[string]func() error{
		"in process":   func() error { _, err := s.CreateYAML(ctx, big, false); return err },
		"admin client": func() error { _, err := ac.CreateYAML(ctx, big, false); return err },
		// as curl would send it, past the admin client's own check
		"admin socket": func() error { _, msg := adminRaw(t, s, "POST", "/v1/resources", big); return errors.New(msg) },
	} {
		err := create()
		if err == nil || !strings.Contains(err.Error(), "larger than 1 MiB") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: %d bytes of YAML: got %v, want one line saying it is larger than 1 MiB", name, len(big), err)
		}
	}
	if _, err := s.Get(ctx, policy.KindRole, "big"); err == nil {
		t.Error("the role of the refused YAML was stored")
	}
	if _, err := ac.CreateYAML(ctx, roleYAMLOfSize(t, "fits", oneMiB), false); err != nil {
		t.Errorf("1 MiB of YAML refused: %v", err)
	}
}

// roleYAMLOfSize is a valid role document of exactly n bytes.
func roleYAMLOfSize(t *testing.T, name string, n int) []byte {
	head := "kind: role\nversion: v7\nmetadata:\n  name: " + name + "\n  description: "
	tail := "\nspec: {}\n"
	doc := head + strings.Repeat("x", n-len(head)-len(tail)) + tail
	if len(doc) != n {
		t.Fatalf("made %d bytes, want %d", len(doc), n)
	}
	return []byte(doc)
}
