package auth

import (
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/node/enforce"
	"github.com/midfs/midfs/wire"
)

// lockAnswer is one answer to GET /v1/locks.
type lockAnswer struct {
	status int
	etag   string
	locks  []wire.Lock
	msg    string
}

// pollLocks asks for the locks with a client identity (none if key is
// nil), with If-None-Match ifNone unless it is empty.
func pollLocks(t *testing.T, s *Server, key crypto.Signer, cert []byte, ifNone string) lockAnswer {
	t.Helper()
	resp, data := conditionalGet(t, s, key, cert, wire.PathLocks, ifNone)
	a := lockAnswer{status: resp.StatusCode, etag: resp.Header.Get("ETag")}
	switch resp.StatusCode {
	case 200:
		var list wire.LockList
		if err := json.Unmarshal(data, &list); err != nil {
			t.Fatalf("lock list: %v", err)
		}
		a.locks = list.Locks
	case 304:
		if len(data) != 0 {
			t.Errorf("304 with a body of %d bytes", len(data))
		}
	default:
		var e wire.Error
		json.Unmarshal(data, &e)
		a.msg = e.Error
	}
	return a
}

// A lock refuses the bot at once, at every call that uses its identity,
// including an unchanged node list and a join with a new token; removing
// it lets the same identity go on.
func TestLockRefusesAtOnce(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	if err := s.AddNode(ctx, identity.Node{Name: "web", Addr: "10.0.0.1:22"}); err != nil {
		t.Fatal(err)
	}
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	other := join(t, s, addBot(t, s, "other", []string{"access"}, []string{"root"}).Token)
	certs, outKey := id.certs(t, s)
	list := pollNodes(t, s, id.key, id.cert, "")
	if list.status != 200 {
		t.Fatalf("node list: %+v", list)
	}

	l, err := s.AddLock(ctx, admin.LockSpec{Bot: "robot", Message: "key leaked"})
	if err != nil {
		t.Fatal(err)
	}
	locked := func(what string, status int, msg string) {
		t.Helper()
		if status != 403 || !strings.Contains(msg, "locked (lock "+l.ID+": key leaked)") || !strings.Contains(msg, "midfs rm locks/"+l.ID) {
			t.Errorf("%s of a locked bot: %d %q", what, status, msg)
		}
	}
	_, status, msg := id.tryRenew(t, s)
	locked("renewal", status, msg)
	_, _, status, msg = id.tryCerts(t, s, 0)
	locked("certs", status, msg)
	a := pollNodes(t, s, id.key, id.cert, list.etag)
	if a.status != 403 {
		t.Errorf("unchanged node list of a locked bot: %d", a.status)
	}
	// The output identity the bot got before the lock lists nothing either.
	if _, status, _ := nodesAs(t, s, outKey, certs.TLSCert); status != 403 {
		t.Errorf("node list with an output identity of before the lock: %d", status)
	}
	bt, err := s.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, status, msg := tryJoin(t, s, bt.Token); status != 403 || !strings.HasPrefix(msg, joinRefusedMsg) {
		t.Errorf("join of a locked bot with a new token: %d %q", status, msg)
	}
	// Other bots go on.
	other.renew(t, s)

	if err := s.Remove(ctx, "locks", l.ID); err != nil {
		t.Fatal(err)
	}
	id = id.renew(t, s)
	id.certs(t, s)
	join(t, s, bt.Token)
}

// A lock with a TTL stops applying when it expires, at the authority and
// in the list nodes fetch.
func TestExpiredLockStopsApplying(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	s := startTest(t, func(c *Config) { c.Clock = clk })
	ctx := context.Background()
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	l, err := s.AddLock(ctx, admin.LockSpec{Bot: "robot", TTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !l.Expires.Equal(clk.Now().Add(10 * time.Minute)) {
		t.Errorf("lock expires %v, want 10m from now", l.Expires)
	}
	before := pollLocks(t, s, id.key, id.cert, "")
	if before.status != 200 || len(before.locks) != 1 || before.locks[0].ID != l.ID {
		t.Fatalf("locks: %+v", before)
	}
	if _, status, _ := id.tryRenew(t, s); status != 403 {
		t.Fatalf("renewal under a lock: %d", status)
	}
	clk.Advance(10*time.Minute + time.Second)
	id = id.renew(t, s)
	after := pollLocks(t, s, id.key, id.cert, before.etag)
	if after.status != 200 || len(after.locks) != 0 || after.etag == before.etag {
		t.Fatalf("locks after the only one expired, asked with the old ETag: %+v", after)
	}
	// get locks still shows it, as expired.
	res, err := s.Get(ctx, "locks", l.ID)
	if err != nil || len(res.Locks) != 1 {
		t.Fatalf("get locks/%s after expiry: %+v %v", l.ID, res, err)
	}
}

// GET /v1/locks: for any identity the cluster issued, 304 while nothing
// changed, a new ETag and list after every change.
func TestLockListETag(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	addBot(t, s, "b2", []string{"access"}, nil)
	if a := pollLocks(t, s, nil, nil, ""); a.status != 401 || !strings.Contains(a.msg, "client certificate") {
		t.Fatalf("locks without a client certificate: %+v", a)
	}
	empty := pollLocks(t, s, id.key, id.cert, "")
	if empty.status != 200 || len(empty.locks) != 0 || empty.etag == "" {
		t.Fatalf("no locks: %+v", empty)
	}
	if a := pollLocks(t, s, id.key, id.cert, empty.etag); a.status != 304 || a.etag != empty.etag {
		t.Fatalf("unchanged: %+v", a)
	}
	l, err := s.AddLock(ctx, admin.LockSpec{Bot: "b2", Message: "m"})
	if err != nil {
		t.Fatal(err)
	}
	one := pollLocks(t, s, id.key, id.cert, empty.etag)
	if one.status != 200 || len(one.locks) != 1 || one.locks[0].Bot != "b2" || one.locks[0].Message != "m" || one.etag == empty.etag {
		t.Fatalf("after a lock: %+v", one)
	}
	// An output identity (what a mount holds) may fetch them too.
	certs, outKey := id.certs(t, s)
	if a := pollLocks(t, s, outKey, certs.TLSCert, one.etag); a.status != 304 {
		t.Fatalf("output identity, unchanged: %+v", a)
	}
	// Changes that are not locks keep the ETag.
	addBot(t, s, "b3", []string{"access"}, nil)
	if a := pollLocks(t, s, id.key, id.cert, one.etag); a.status != 304 {
		t.Fatalf("after adding a bot: %+v", a)
	}
	if err := s.Remove(ctx, "locks", l.ID); err != nil {
		t.Fatal(err)
	}
	if a := pollLocks(t, s, id.key, id.cert, one.etag); a.status != 200 || len(a.locks) != 0 || a.etag != empty.etag {
		t.Fatalf("after removing the lock: %+v", a)
	}
	// bots rm locks the bot.
	if err := s.RemoveBot(ctx, "b3"); err != nil {
		t.Fatal(err)
	}
	if a := pollLocks(t, s, id.key, id.cert, empty.etag); a.status != 200 || len(a.locks) != 1 || a.locks[0].Bot != "b3" || a.locks[0].Expires.IsZero() {
		t.Fatalf("after bots rm: %+v", a)
	}
}

// Bad input: one line, nothing stored.
func TestLockBadInput(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	addBot(t, s, "robot", []string{"access"}, nil)
	for _, c := range []struct {
		spec admin.LockSpec
		kind admin.Kind
		want string
	}{
		{admin.LockSpec{Bot: "ghost"}, admin.NotFound, `bot "ghost" not found`},
		{admin.LockSpec{Bot: "bad name"}, admin.Invalid, "bad bot name"},
		{admin.LockSpec{Bot: "robot", TTL: -time.Minute}, admin.Invalid, "bad --ttl"},
		{admin.LockSpec{Bot: "robot", TTL: time.Millisecond}, admin.Invalid, "bad --ttl"},
		{admin.LockSpec{Bot: "robot", Message: "two\nlines"}, admin.Invalid, "bad --message"},
		{admin.LockSpec{Bot: "robot", Message: strings.Repeat("x", 257)}, admin.Invalid, "bad --message"},
	} {
		_, err := s.AddLock(ctx, c.spec)
		if err == nil || admin.KindOf(err) != c.kind || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%+v: %v (kind %v), want one line of kind %v with %q", c.spec, err, admin.KindOf(err), c.kind, c.want)
		}
	}
	err := s.Remove(ctx, "locks", "0123456789abcdef")
	if err == nil || admin.KindOf(err) != admin.NotFound || !strings.Contains(err.Error(), "midfs get locks") {
		t.Errorf("rm of an unknown lock: %v", err)
	}
	if res, _ := s.Get(ctx, "locks", ""); len(res.Locks) != 0 {
		t.Errorf("bad input stored locks: %+v", res.Locks)
	}
}

// The nodes the authority lists for a bot are exactly the nodes that let
// the bot in, with the certificate the authority issued it: over random
// roles and node labels, GET /v1/nodes and enforce.Allowed never disagree.
func TestNodeListAgreesWithEnforcement(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	r := rand.New(rand.NewPCG(3, 4))
	keys := []string{"env", "team", "arch"}
	values := []string{"dev", "prod", "a", "ab", "x86_64"}
	pats := []string{"*", "dev", "prod", "a?", "a*", "*6*", "p?od", "ab"}
	var nodes []identity.Node
	for i := range 40 {
		labels := map[string]string{}
		for _, k := range keys {
			if r.IntN(2) == 0 {
				labels[k] = values[r.IntN(len(values))]
			}
		}
		n := identity.Node{Name: fmt.Sprintf("n%02d", i), Addr: "10.0.0.1:22", Labels: labels}
		nodes = append(nodes, n)
		if err := s.AddNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	selector := func() string {
		var b strings.Builder
		if r.IntN(6) == 0 {
			b.WriteString("      '*': '*'\n")
		}
		for range 1 + r.IntN(2) {
			fmt.Fprintf(&b, "      %s: [%q, %q]\n", keys[r.IntN(len(keys))], pats[r.IntN(len(pats))], pats[r.IntN(len(pats))])
		}
		return b.String()
	}
	outcomes := map[bool]int{}
	for i := range 25 {
		var names []string
		for j := range 1 + r.IntN(3) {
			name := fmt.Sprintf("r%d-%d", i, j)
			yaml := fmt.Sprintf("kind: role\nversion: v7\nmetadata:\n  name: %s\nspec:\n  allow:\n    logins: [root]\n    node_labels:\n%s", name, selector())
			if r.IntN(3) == 0 {
				yaml += "  deny:\n    node_labels:\n" + selector()
			}
			if _, err := s.CreateYAML(ctx, []byte(yaml), false); err != nil {
				t.Fatalf("%v\n%s", err, yaml)
			}
			names = append(names, name)
		}
		bot := fmt.Sprintf("bot%d", i)
		bt, err := s.AddBot(ctx, admin.BotSpec{Name: bot, Roles: names})
		if err != nil {
			t.Fatal(err)
		}
		id := join(t, s, bt.Token)
		certs, _ := id.certs(t, s)
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(certs.SSHCert))
		if err != nil {
			t.Fatal(err)
		}
		cert := pub.(*ssh.Certificate)
		listed, status, msg := nodesAs(t, s, id.key, id.cert)
		if status != 200 {
			t.Fatalf("nodes: %d %s", status, msg)
		}
		st := &enforce.State{Cluster: s.ClusterName(), UserCAs: []string{certs.UserCAs[0].SSH}}
		for _, n := range nodes {
			st.Node, st.Labels = n.Name, n.Labels
			logins, reason := enforce.Allowed(cert, "root", st, time.Now())
			shown := slices.ContainsFunc(listed, func(l identity.Node) bool { return l.Name == n.Name })
			if shown != (len(logins) > 0) {
				roles, _ := s.st.Roles(ctx, names)
				t.Fatalf("bot %s, node %s %v: listed=%v, node allows %v (%s); rules %+v", bot, n.Name, n.Labels, shown, logins, reason, policy.RulesOf(roles))
			}
			outcomes[shown]++
		}
	}
	if outcomes[true] < 50 || outcomes[false] < 50 {
		t.Fatalf("too few cases of each outcome: %v", outcomes)
	}
}
