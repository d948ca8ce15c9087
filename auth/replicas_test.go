package auth

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/pgtest"
)

// startReplicas starts n authorities at once on one new PostgreSQL
// database: replicas of one cluster, each with a data directory (its admin
// socket) of its own.
func startReplicas(t testing.TB, n int, mod ...func(*Config)) []*Server {
	t.Helper()
	return startReplicasOn(t, pgtest.Shared(t).NewURL(t), n, mod...)
}

// startReplicasOn starts n replicas at once on the database at url.
func startReplicasOn(t testing.TB, url string, n int, mod ...func(*Config)) []*Server {
	t.Helper()
	seal := sealKeyFile(t) // every replica of a cluster holds the same
	out := make([]*Server, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := Config{DataDir: t.TempDir(), DB: url, CAKeySeal: seal, Listen: "127.0.0.1:0", ClusterName: "test.example.com", Logger: testLogger(t)}
			for _, m := range mod {
				m(&cfg)
			}
			out[i], errs[i] = Start(context.Background(), cfg)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		t.Cleanup(func() { out[i].Close() })
	}
	return out
}

// changeBound is how long a replica may take to notice another's change
// of what it caches, at most: the store's poll, with room for a loaded
// machine. Notifications make it milliseconds.
const changeBound = store.DefaultPollInterval + 5*time.Second

// eventually polls cond until it holds or changeBound has passed.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(changeBound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, changeBound)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Replicas started at once on an empty database make one cluster: one set
// of CAs, one pin, whichever made it.
func TestReplicasStartedAtOnceMakeOneCluster(t *testing.T) {
	rs := startReplicas(t, 3)
	for i, r := range rs[1:] {
		if r.CAPin() != rs[0].CAPin() || r.ClusterName() != rs[0].ClusterName() {
			t.Fatalf("replica %d serves pin %s of %s; replica 0 %s of %s", i+1, r.CAPin(), r.ClusterName(), rs[0].CAPin(), rs[0].ClusterName())
		}
	}
	// A bot made through one joins through another, renews through the third.
	id := join(t, rs[1], addBot(t, rs[0], "robot", []string{"access"}, []string{"root"}).Token)
	if next := id.renew(t, rs[2]); next.gen != 2 {
		t.Fatalf("renewal through a third replica: generation %d", next.gen)
	}
}

// A thousand joins with one one-time token, at once, spread over three
// replicas: exactly one identity. Each joiner tries again with its key
// after an error that is not an answer (a timeout on a loaded machine), as
// the agent does, so every one ends with an answer.
func TestOneTokenJoinsOnceAcrossReplicas(t *testing.T) {
	rs := startReplicas(t, 3)
	tok := addBot(t, rs[0], "robot", []string{"access"}, nil).Token
	const n = 1000
	var mu sync.Mutex
	answers := map[int]int{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, pub := newKey(t)
			<-start
			status := 0
			for try := 0; try < 10 && (status == 0 || status >= 500); try++ {
				var err error
				if status, _, err = joinOnce(t, rs[(i+try)%3], tok, pub); err != nil {
					status = 0
				}
			}
			mu.Lock()
			answers[status]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	if answers[200] != 1 || answers[403] != n-1 {
		t.Fatalf("answers to %d joiners with one token over 3 replicas: %v; want one 200, the rest 403", n, answers)
	}
}

// A bot renews through each replica in turn, one generation each time; a
// renewal whose answer was lost is answered again by another replica; two
// renewals at once of one identity through two replicas are one renewal
// and a copy, and the copy locks the bot on every replica.
func TestRenewalsAcrossReplicas(t *testing.T) {
	rs := startReplicas(t, 3)
	id := join(t, rs[0], addBot(t, rs[0], "robot", []string{"access"}, nil).Token)
	for i := range 9 {
		id = id.renew(t, rs[i%3])
		if id.gen != uint64(i+2) {
			t.Fatalf("renewal %d: generation %d, want %d", i+1, id.gen, i+2)
		}
	}
	// The answer of a renewal through replica 0 is lost; the agent sends
	// the same key again, to replica 1.
	key, pub := newKey(t)
	if _, status, msg := id.tryRenewKey(t, rs[0], key, pub); status != 200 {
		t.Fatalf("renewal: %d %s", status, msg)
	}
	again, status, msg := id.tryRenewKey(t, rs[1], key, pub)
	if status != 200 || again.gen != id.gen+1 {
		t.Fatalf("the retry through another replica: %d %s, generation %d; want 200 at %d", status, msg, again.gen, id.gen+1)
	}
	// Two holders of that identity renew at once, through two replicas.
	var wg sync.WaitGroup
	ok := make([]bool, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, status, _ := again.tryRenew(t, rs[1+i])
			ok[i] = status == 200
		}()
	}
	wg.Wait()
	if ok[0] == ok[1] {
		t.Fatalf("two renewals at once of one identity through two replicas: succeeded %v; want exactly one", ok)
	}
	for i, r := range rs {
		if _, status, msg := again.tryRenew(t, r); status != 403 || !strings.Contains(msg, "locked") {
			t.Fatalf("replica %d after a copy was seen: %d %q; want the bot locked", i, status, msg)
		}
	}
}

// A bot removed through one replica is refused by every other at once:
// they read the state, they do not cache it.
func TestRemovedBotIsRefusedByEveryReplica(t *testing.T) {
	rs := startReplicas(t, 3)
	id := join(t, rs[0], addBot(t, rs[0], "robot", []string{"access"}, nil).Token)
	if err := rs[2].RemoveBot(context.Background(), "robot"); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		if _, status, _ := id.tryRenew(t, r); status != 403 {
			t.Fatalf("replica %d renewed a removed bot: %d", i, status)
		}
		if _, _, status, _ := id.tryCerts(t, r, 0); status != 403 {
			t.Fatalf("replica %d gave certificates to a removed bot: %d", i, status)
		}
	}
}

// A role edited through one replica is enforced by another: the logins of
// the certificates it signs at once (it reads roles for each), the nodes
// the bot's list shows within the store's bound (it caches them), under
// an ETag every replica agrees on, so an agent that polls one replica and
// then another is answered 304 while nothing changed.
func TestRoleEditedThroughOneReplicaIsEnforcedByAnother(t *testing.T) {
	rs := startReplicas(t, 3)
	a, b := rs[0], rs[1]
	ctx := context.Background()
	for _, n := range []identity.Node{
		{Name: "web", Addr: "10.0.0.1:22", Labels: map[string]string{"env": "prod"}},
		{Name: "db", Addr: "10.0.0.2:22", Labels: map[string]string{"env": "dev"}},
	} {
		if err := rs[2].AddNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	role := func(env, login string) {
		t.Helper()
		yaml := fmt.Sprintf("kind: role\nversion: v7\nmetadata:\n  name: ops\nspec:\n  allow:\n    logins: [%s]\n    node_labels:\n      env: %s\n", login, env)
		if _, err := a.CreateYAML(ctx, []byte(yaml), true); err != nil {
			t.Fatal(err)
		}
	}
	role("prod", "root")
	id := join(t, a, addBot(t, a, "robot", []string{"ops"}, nil).Token)
	list := func(s *Server, ifNone string) listAnswer { return pollNodes(t, s, id.key, id.cert, ifNone) }
	first := list(a, "")
	eventually(t, "replica b to serve a's list under a's ETag", func() bool {
		l := list(b, first.etag)
		return l.status == http.StatusNotModified && l.etag == first.etag
	})
	if !slices.Equal(first.names, []string{"web"}) {
		t.Fatalf("first list %v, want web", first.names)
	}

	role("dev", "deploy")
	certs, _ := id.certs(t, b)
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(certs.SSHCert))
	if err != nil {
		t.Fatal(err)
	}
	if p := pub.(*ssh.Certificate).ValidPrincipals; !slices.Equal(p, []string{"deploy"}) {
		t.Fatalf("replica b signs logins %v after the role changed through a; want deploy", p)
	}
	eventually(t, "replica b to show the nodes of the edited role", func() bool {
		l := list(b, first.etag)
		return l.status == 200 && slices.Equal(l.names, []string{"db"})
	})
	now := list(b, "")
	if l := list(a, now.etag); l.status != http.StatusNotModified {
		t.Fatalf("replica a answers %d to the ETag replica b gave for the same state (%s)", l.status, now.etag)
	}
}
