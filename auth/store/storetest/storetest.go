// Package storetest is the one suite every backend of auth/store passes:
// each promise of the store.Store documentation, as a test, run against
// real databases (a SQLite file, a PostgreSQL server), several handles on
// one state standing for several replicas.
//
// A backend's test calls Run with a Backend; a method added to store.Store
// gets its test here, so that no backend can lack it.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// Backend is a backend under test.
type Backend struct {
	// New makes a fresh, empty state for one test and returns how to
	// open a handle on it; every call opens another handle (another
	// replica) on the same state. The suite closes the handles.
	New func(t testing.TB) Opener
}

// Opener opens one more handle on a state.
type Opener func(store.Options) (store.Store, error)

// Run runs the suite.
func Run(t *testing.T, b Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, *state)
	}{
		{"EmptyState", testEmptyState},
		{"Init", testInit},
		{"InitByManyAtOnceMakesOneCluster", testConcurrentInit},
		{"Bots", testBots},
		{"Tokens", testTokens},
		{"RolesNodesAndRemove", testRolesNodesRemove},
		{"Locks", testLocks},
		{"VersionsMoveWithTheLocks", testLockVersions},
		{"UpdateIsAllOrNothing", testAllOrNothing},
		{"AFailedUpdateUndoesOnlyItsOwn", testFailureUndoesOnlyOwn},
		{"OneTimeTokenIsUsedExactlyOnce", testTokenUsedOnce},
		{"GenerationMovesOncePerRenewal", testGenerationOnce},
		{"ConcurrentUpdatesLoseNothing", testNoLostUpdates},
		{"ConcurrentUpdatesSkewNothing", testNoWriteSkew},
		{"ACommitIsSeenByEveryHandle", testCommitVisibleEverywhere},
		{"UpdateFinishesWhenCancelled", testCancelled},
		{"VersionsMoveWithTheInventory", testVersions},
		{"ChangedTellsOfEveryHandlesChanges", testChanged},
		{"CAsOfAKindAndTheirRotation", testRotation},
		{"CAChangesMoveTheirVersion", testCAVersions},
		{"PutCAReplacesAStoredCA", testPutCA},
		{"AChallengeIsSpentExactlyOnce", testSpendChallenge},
		{"DumpAndRestore", testDumpRestore},
		{"AnotherClusterIsRefused", testOtherCluster},
		{"StateOutlivesItsHandles", testReopen},
		{"CloseRefusesChanges", testClose},
	}
	tests = append(tests, eventTests...) // events.go
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, &state{t: t, open: b.New(t), b: b})
		})
	}
}

// state is one test's state and its handles.
type state struct {
	t    *testing.T
	open Opener
	b    Backend
}

// another makes a second, empty state for the same test.
func (s *state) another() *state {
	return &state{t: s.t, open: s.b.New(s.t), b: s.b}
}

// handle opens another handle, closed at the test's end.
func (s *state) handle(opts ...store.Options) store.Store {
	s.t.Helper()
	var o store.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	st, err := s.open(o)
	if err != nil {
		s.t.Fatalf("open: %v", err)
	}
	s.t.Cleanup(func() { st.Close() })
	return st
}

var bg = context.Background()

func update(t testing.TB, st store.Store, fn func(store.Tx) error) {
	t.Helper()
	if err := st.Update(bg, fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

func testCAs() []store.CA {
	return []store.CA{
		{ID: "u1", Kind: "user", KeyDER: []byte("user key"), CertDER: []byte("user cert"), Created: at},
		{ID: "h1", Kind: "host", KeyDER: []byte("host key"), CertDER: []byte("host cert"), Created: at},
		{ID: "d1", Kind: "db", KeyDER: []byte("db key"), CertDER: []byte("db cert"), Created: at},
	}
}

func role(name string, logins ...string) policy.Role {
	return policy.Role{Kind: policy.KindRole, Version: policy.RoleVersion, Metadata: policy.Metadata{Name: name},
		Spec: policy.RoleSpec{Allow: policy.Conditions{Logins: logins, NodeLabels: policy.Labels{"env": {"prod"}}}}}
}

func initState(t testing.TB, st store.Store) {
	t.Helper()
	update(t, st, func(tx store.Tx) error {
		made, err := tx.Init(bg, "test.example.com", testCAs(), []policy.Role{role("access", "root")})
		if err == nil && !made {
			err = errors.New("init of an empty state made nothing")
		}
		return err
	})
}

// at is a time as the store keeps it: whole seconds.
var at = time.Unix(1_800_000_000, 0)

func addBot(t testing.TB, st store.Store, name string) {
	t.Helper()
	update(t, st, func(tx store.Tx) error {
		return tx.AddBot(bg, &store.Bot{Name: name, Roles: []string{"access"}, Logins: []string{"root"}, Instance: "i0", Created: at})
	})
}

func getBot(t testing.TB, r store.Reader, name string) *store.Bot {
	t.Helper()
	b, err := r.Bot(bg, name)
	if err != nil {
		t.Fatalf("Bot %s: %v", name, err)
	}
	return b
}

func wantNotFound(t testing.TB, what string, err error) {
	t.Helper()
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("%s: %v, want ErrNotFound", what, err)
	}
}

func testEmptyState(t *testing.T, s *state) {
	st := s.handle()
	if err := st.Ping(bg); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	_, err := st.ClusterName(bg)
	wantNotFound(t, "ClusterName", err)
	_, err = st.ClusterID(bg)
	wantNotFound(t, "ClusterID", err)
	_, err = st.Bot(bg, "nobody")
	wantNotFound(t, "Bot", err)
	_, err = st.Token(bg, "none")
	wantNotFound(t, "Token", err)
	_, err = st.TokenBySecret(bg, []byte("none"))
	wantNotFound(t, "TokenBySecret", err)
	_, err = st.Roles(bg, []string{"access"})
	wantNotFound(t, "Roles", err)
	if v, err := st.Versions(bg); err != nil || len(v) != 0 {
		t.Fatalf("Versions of an empty state: %v, %v", v, err)
	}
	if bots, err := st.Bots(bg); err != nil || len(bots) != 0 {
		t.Fatalf("Bots of an empty state: %v, %v", bots, err)
	}
}

func testInit(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	name, err := st.ClusterName(bg)
	if err != nil || name != "test.example.com" {
		t.Fatalf("ClusterName: %q, %v", name, err)
	}
	id, err := st.ClusterID(bg)
	if err != nil || len(id) < 16 {
		t.Fatalf("ClusterID: %q, %v", id, err)
	}
	cas, err := st.CAs(bg)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(cas, func(a, b store.CA) int { return cmpString(a.Kind, b.Kind) })
	want := testCAs()
	slices.SortFunc(want, func(a, b store.CA) int { return cmpString(a.Kind, b.Kind) })
	if !sameCAs(cas, want) {
		t.Fatalf("CAs: %+v, want %+v", cas, want)
	}
	rots, err := st.Rotations(bg)
	if err != nil {
		t.Fatal(err)
	}
	wantRots := []store.Rotation{{Kind: "db", Active: "d1", Phase: "standby"}, {Kind: "host", Active: "h1", Phase: "standby"}, {Kind: "user", Active: "u1", Phase: "standby"}}
	if !sameRotations(rots, wantRots) {
		t.Fatalf("Rotations after Init: %+v, want every kind in standby with its CA active", rots)
	}
	roles, err := st.AllRoles(bg)
	if err != nil || len(roles) != 1 || !jsonEqual(roles[0], role("access", "root")) {
		t.Fatalf("AllRoles: %+v, %v", roles, err)
	}
	// A second Init (a replica that raced this one) changes nothing.
	update(t, st, func(tx store.Tx) error {
		made, err := tx.Init(bg, "other.example.com", []store.CA{{ID: "u2", Kind: "user", KeyDER: []byte("x"), CertDER: []byte("y")}}, []policy.Role{role("other")})
		if made {
			t.Error("a second Init made a cluster")
		}
		return err
	})
	if name, _ := st.ClusterName(bg); name != "test.example.com" {
		t.Fatalf("a second Init changed the cluster name to %q", name)
	}
	if id2, _ := st.ClusterID(bg); id2 != id {
		t.Fatalf("a second Init changed the cluster ID")
	}
	if roles, _ := st.AllRoles(bg); len(roles) != 1 {
		t.Fatalf("a second Init stored roles: %+v", roles)
	}
}

func testConcurrentInit(t *testing.T, s *state) {
	const n = 8
	handles := make([]store.Store, n)
	for i := range handles {
		handles[i] = s.handle()
	}
	var made atomic.Int32
	var wg sync.WaitGroup
	for i, st := range handles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cluster := fmt.Sprintf("c%d.example.com", i)
			cas := []store.CA{{ID: fmt.Sprintf("u%d", i), Kind: "user", KeyDER: []byte("key " + cluster), CertDER: []byte("cert")}}
			err := st.Update(bg, func(tx store.Tx) error {
				ok, err := tx.Init(bg, cluster, cas, nil)
				if ok {
					made.Add(1)
				}
				return err
			})
			if err != nil {
				t.Errorf("Init on handle %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	// Each Update's last run counts; made counts runs, so read the state.
	name, err := handles[0].ClusterName(bg)
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range handles {
		got, _ := st.ClusterName(bg)
		cas, _ := st.CAs(bg)
		if got != name || len(cas) != 1 || string(cas[0].KeyDER) != "key "+name {
			t.Fatalf("handle %d sees cluster %q with CAs %+v; handle 0 sees %q", i, got, cas, name)
		}
	}
	if made.Load() < 1 {
		t.Fatal("no Init reported making the cluster")
	}
}

func testBots(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	addBot(t, st, "b")
	addBot(t, st, "a")
	err := st.Update(bg, func(tx store.Tx) error {
		return tx.AddBot(bg, &store.Bot{Name: "a", Roles: []string{"x"}, Instance: "other", Created: at})
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("AddBot of an existing name: %v, want ErrConflict", err)
	}
	b := getBot(t, st, "a")
	if b.Instance != "i0" || b.Generation != 0 || !b.Created.Equal(at) || !slices.Equal(b.Roles, []string{"access"}) ||
		!slices.Equal(b.Logins, []string{"root"}) || b.Locked != "" || b.LastKeyHash != nil {
		t.Fatalf("stored bot: %+v", b)
	}
	bots, err := st.Bots(bg)
	if err != nil || len(bots) != 2 || bots[0].Name != "a" || bots[1].Name != "b" {
		t.Fatalf("Bots: %+v, %v (want a, b)", bots, err)
	}
	update(t, st, func(tx store.Tx) error { return tx.Rejoin(bg, "a", "i1", []byte("k1")) })
	update(t, st, func(tx store.Tx) error {
		return tx.SetBotGrants(bg, "a", []string{"access", "ops"}, nil, "tok")
	})
	b = getBot(t, st, "a")
	if b.Instance != "i1" || b.Generation != 1 || string(b.LastKeyHash) != "k1" || !slices.Equal(b.Roles, []string{"access", "ops"}) ||
		len(b.Logins) != 0 || b.TokenName != "tok" {
		t.Fatalf("after Rejoin and SetBotGrants: %+v", b)
	}
	update(t, st, func(tx store.Tx) error {
		if moved, err := tx.AdvanceGeneration(bg, "a", 5, []byte("k5")); moved || err != nil {
			return fmt.Errorf("AdvanceGeneration from a generation the bot is not at: %v, %v", moved, err)
		}
		if moved, err := tx.AdvanceGeneration(bg, "a", 1, []byte("k2")); !moved || err != nil {
			return fmt.Errorf("AdvanceGeneration from the bot's generation: %v, %v", moved, err)
		}
		if b := getBot(t, tx, "a"); b.Generation != 2 {
			return fmt.Errorf("the transaction reads generation %d after its own advance", b.Generation)
		}
		return nil
	})
	if b := getBot(t, st, "a"); b.Generation != 2 || string(b.LastKeyHash) != "k2" {
		t.Fatalf("after AdvanceGeneration: %+v", b)
	}
	update(t, st, func(tx store.Tx) error { return tx.SetLocked(bg, "a", "copied") })
	if b := getBot(t, st, "a"); b.Locked != "copied" || b.Generation != 2 {
		t.Fatalf("after SetLocked: %+v", b)
	}
	update(t, st, func(tx store.Tx) error { return tx.SetLocked(bg, "a", "") })
	if b := getBot(t, st, "a"); b.Locked != "" {
		t.Fatalf("after unlock: %+v", b)
	}
	update(t, st, func(tx store.Tx) error {
		removed, err := tx.Remove(bg, policy.KindBot, "a")
		if !removed {
			t.Error("Remove of a stored bot removed nothing")
		}
		return err
	})
	_, err = st.Bot(bg, "a")
	wantNotFound(t, "Bot after Remove", err)
	if ok, err := st.Exists(bg, policy.KindBot, "b"); !ok || err != nil {
		t.Fatalf("Exists(bot b): %v, %v", ok, err)
	}
}

func testTokens(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	expires := at.Add(time.Hour)
	one := &store.Token{Name: "one", BotName: "b", JoinMethod: "token", SecretHash: []byte("s1"), Expires: expires, Created: at}
	iam := &store.Token{Name: "iam", BotName: "b", JoinMethod: "iam", Allow: []policy.AllowRule{{AWSAccount: "111111111111", AWSARN: "arn:*"}}, Created: at}
	old := &store.Token{Name: "old", BotName: "c", JoinMethod: "token", SecretHash: []byte("s0"), Expires: at.Add(-time.Hour), Created: at}
	update(t, st, func(tx store.Tx) error {
		for _, tok := range []*store.Token{one, iam, old} {
			if err := tx.PutToken(bg, tok, false); err != nil {
				return err
			}
		}
		return nil
	})
	for _, c := range []struct {
		tok     *store.Token
		replace bool
		what    string
	}{
		{&store.Token{Name: "one", BotName: "x", JoinMethod: "token", SecretHash: []byte("new"), Created: at}, false, "a name in use"},
		{&store.Token{Name: "two", BotName: "x", JoinMethod: "token", SecretHash: []byte("s1"), Created: at}, false, "a secret in use"},
		{&store.Token{Name: "iam", BotName: "x", JoinMethod: "token", SecretHash: []byte("s1"), Created: at}, true, "a secret in use, replacing"},
	} {
		err := st.Update(bg, func(tx store.Tx) error { return tx.PutToken(bg, c.tok, c.replace) })
		if !errors.Is(err, store.ErrConflict) {
			t.Fatalf("PutToken with %s: %v, want ErrConflict", c.what, err)
		}
	}
	if _, err := st.Token(bg, "two"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a conflicting token was stored: %v", err)
	}
	got, err := st.TokenBySecret(bg, []byte("s1"))
	if err != nil || got.Name != "one" || !got.Expires.Equal(expires) || !got.Created.Equal(at) || !got.Used.IsZero() || got.BotName != "b" {
		t.Fatalf("TokenBySecret: %+v, %v", got, err)
	}
	if got.Role != policy.TokenRoleBot || len(got.Labels) != 0 {
		t.Fatalf("a token stored without a role joins a bot: %+v", got)
	}
	got, err = st.Token(bg, "iam")
	if err != nil || !got.Expires.IsZero() || got.SecretHash != nil || !jsonEqual(got.Allow, iam.Allow) || got.JoinMethod != "iam" {
		t.Fatalf("Token(iam): %+v, %v", got, err)
	}
	nodeTok := &store.Token{Name: "node-1", Role: policy.TokenRoleNode, Labels: map[string]string{"env": "prod"}, JoinMethod: "token", SecretHash: []byte("sn"), Expires: expires, Created: at}
	update(t, st, func(tx store.Tx) error { return tx.PutToken(bg, nodeTok, false) })
	if got, err := st.TokenBySecret(bg, []byte("sn")); err != nil || got.Role != policy.TokenRoleNode || got.Labels["env"] != "prod" || got.BotName != "" {
		t.Fatalf("a node token: %+v, %v", got, err)
	}
	update(t, st, func(tx store.Tx) error { _, err := tx.Remove(bg, policy.KindToken, "node-1"); return err })
	update(t, st, func(tx store.Tx) error {
		return tx.PutToken(bg, &store.Token{Name: "iam", BotName: "b", JoinMethod: "iam", Created: at.Add(time.Second)}, true)
	})
	if got, _ := st.Token(bg, "iam"); len(got.Allow) != 0 || !got.Created.Equal(at.Add(time.Second)) {
		t.Fatalf("a replaced token: %+v", got)
	}
	usedAt := at.Add(time.Minute)
	update(t, st, func(tx store.Tx) error {
		if used, err := tx.UseToken(bg, "one", usedAt, []byte("key"), "inst"); !used || err != nil {
			return fmt.Errorf("UseToken of an unused token: %v, %v", used, err)
		}
		if used, err := tx.UseToken(bg, "one", usedAt, []byte("key2"), "inst2"); used || err != nil {
			return fmt.Errorf("UseToken of a used token: %v, %v", used, err)
		}
		return nil
	})
	got, _ = st.Token(bg, "one")
	if !got.Used.Equal(usedAt) || string(got.UsedKeyHash) != "key" || got.UsedInstance != "inst" {
		t.Fatalf("a used token: %+v", got)
	}
	names := func() []string {
		toks, err := st.Tokens(bg)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, tok := range toks {
			out = append(out, tok.Name)
		}
		return out
	}
	if n := names(); !slices.Equal(n, []string{"iam", "old", "one"}) {
		t.Fatalf("Tokens: %v", n)
	}
	update(t, st, func(tx store.Tx) error {
		if err := tx.PutToken(bg, &store.Token{Name: "fresh", BotName: "b", JoinMethod: "token", SecretHash: []byte("s2"), Created: at}, false); err != nil {
			return err
		}
		return tx.RemoveBotTokens(bg, "b", "token", true)
	})
	if n := names(); !slices.Equal(n, []string{"iam", "old", "one"}) {
		t.Fatalf("after removing b's unused tokens: %v", n)
	}
	update(t, st, func(tx store.Tx) error { return tx.RemoveBotTokens(bg, "b", "token", false) })
	if n := names(); !slices.Equal(n, []string{"iam", "old"}) {
		t.Fatalf("after removing b's tokens: %v", n)
	}
	update(t, st, func(tx store.Tx) error {
		n, err := tx.RemoveExpiredTokens(bg, at)
		if n != 1 {
			t.Errorf("RemoveExpiredTokens removed %d, want 1", n)
		}
		return err
	})
	if n := names(); !slices.Equal(n, []string{"iam"}) {
		t.Fatalf("after removing expired tokens (a token without expiry stays): %v", n)
	}
}

// joined is a node that registered itself (midfs node start).
var joined = store.Node{
	Node:  identity.Node{Name: "joined", Addr: "10.0.0.7:2222", Labels: map[string]string{"env": "prod", "team": "web"}},
	Agent: true, Expires: at.Add(90 * time.Second), TokenLabels: map[string]string{"env": "prod"},
}

func testRolesNodesRemove(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	update(t, st, func(tx store.Tx) error {
		for _, r := range []policy.Role{role("ops", "admin"), role("access", "root", "deploy")} {
			if err := tx.PutRole(bg, r); err != nil {
				return err
			}
		}
		for _, n := range []identity.Node{{Name: "web", Addr: "10.0.0.2:22", Labels: map[string]string{"env": "prod"}}, {Name: "db", Addr: "[::1]:22"}} {
			if err := tx.PutNode(bg, store.Node{Node: n}); err != nil {
				return err
			}
		}
		return tx.PutNode(bg, joined)
	})
	got, err := st.Node(bg, "joined")
	if err != nil || !got.Agent || !got.Expires.Equal(joined.Expires) || got.TokenLabels["env"] != "prod" || got.Labels["team"] != "web" || got.Addr != joined.Addr {
		t.Fatalf("Node(joined): %+v, %v", got, err)
	}
	if got, err := st.Node(bg, "web"); err != nil || got.Agent || !got.Expires.IsZero() || len(got.TokenLabels) != 0 {
		t.Fatalf("Node(web), typed by an admin: %+v, %v", got, err)
	}
	_, err = st.Node(bg, "missing")
	wantNotFound(t, "Node(missing)", err)
	later := joined.Expires.Add(time.Minute)
	update(t, st, func(tx store.Tx) error {
		if ok, err := tx.ExtendNode(bg, "joined", later); !ok || err != nil {
			return fmt.Errorf("ExtendNode(joined): %v, %v", ok, err)
		}
		if ok, err := tx.ExtendNode(bg, "missing", later); ok || err != nil {
			return fmt.Errorf("ExtendNode(missing): %v, %v", ok, err)
		}
		return nil
	})
	if got, _ := st.Node(bg, "joined"); !got.Expires.Equal(later) || got.TokenLabels["env"] != "prod" || got.Addr != joined.Addr {
		t.Fatalf("after ExtendNode: %+v", got)
	}
	update(t, st, func(tx store.Tx) error { _, err := tx.Remove(bg, policy.KindNode, "joined"); return err })
	roles, err := st.Roles(bg, []string{"ops", "access"})
	if err != nil || len(roles) != 2 || roles[0].Metadata.Name != "ops" || !jsonEqual(roles[1], role("access", "root", "deploy")) {
		t.Fatalf("Roles(ops, access): %+v, %v", roles, err)
	}
	_, err = st.Roles(bg, []string{"access", "missing"})
	wantNotFound(t, "Roles with a missing one", err)
	all, err := st.AllRoles(bg)
	if err != nil || len(all) != 2 || all[0].Metadata.Name != "access" || all[1].Metadata.Name != "ops" {
		t.Fatalf("AllRoles: %+v, %v", all, err)
	}
	nodes, err := st.Nodes(bg)
	if err != nil || len(nodes) != 2 || nodes[0].Name != "db" || nodes[0].Addr != "[::1]:22" || len(nodes[0].Labels) != 0 ||
		nodes[1].Labels["env"] != "prod" {
		t.Fatalf("Nodes: %+v, %v", nodes, err)
	}
	update(t, st, func(tx store.Tx) error {
		return tx.PutNode(bg, store.Node{Node: identity.Node{Name: "web", Addr: "10.0.0.3:22"}})
	})
	if nodes, _ := st.Nodes(bg); len(nodes) != 2 || nodes[1].Addr != "10.0.0.3:22" || len(nodes[1].Labels) != 0 {
		t.Fatalf("a replaced node: %+v", nodes)
	}
	for _, kind := range []string{policy.KindRole, policy.KindNode} {
		name := map[string]string{policy.KindRole: "ops", policy.KindNode: "web"}[kind]
		update(t, st, func(tx store.Tx) error {
			if ok, err := tx.Remove(bg, kind, name); !ok || err != nil {
				return fmt.Errorf("Remove(%s %s): %v, %v", kind, name, ok, err)
			}
			if ok, err := tx.Remove(bg, kind, name); ok || err != nil {
				return fmt.Errorf("Remove(%s %s) again: %v, %v", kind, name, ok, err)
			}
			return nil
		})
		if ok, err := st.Exists(bg, kind, name); ok || err != nil {
			t.Fatalf("Exists(%s %s) after Remove: %v, %v", kind, name, ok, err)
		}
	}
	if ok, err := st.Exists(bg, policy.KindRole, "access"); !ok || err != nil {
		t.Fatalf("Exists(role access): %v, %v", ok, err)
	}
	if _, err := st.Exists(bg, "spaceship", "x"); err == nil {
		t.Fatal("Exists of an unknown kind gave no error")
	}
}

var errUndo = errors.New("undo")

// Locks: stored with whole-second times, listed oldest first (all, or one
// bot's), an ID taken once, long-expired ones swept, removed by ID, seen
// by every handle.
func testLocks(t *testing.T, s *state) {
	st, other := s.handle(), s.handle()
	initState(t, st)
	locks := []wire.Lock{
		{ID: "b", Bot: "robot", Message: "key leaked", Created: at.Add(time.Second)},
		{ID: "a", Bot: "other", Created: at, Expires: at.Add(time.Hour)},
		{ID: "c", Bot: "robot", Created: at.Add(time.Second), Expires: at.Add(time.Minute)},
	}
	update(t, st, func(tx store.Tx) error {
		for _, l := range locks {
			if err := tx.PutLock(bg, l); err != nil {
				return err
			}
		}
		return nil
	})
	ids := func(r store.Reader, bot string) string {
		t.Helper()
		got, err := r.Locks(bg, bot)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, l := range got {
			s = append(s, l.ID)
		}
		return fmt.Sprint(s)
	}
	if got := ids(other, ""); got != "[a b c]" {
		t.Errorf("all locks, read by another handle: %s, want [a b c] (oldest first, then by ID)", got)
	}
	if got := ids(st, "robot"); got != "[b c]" {
		t.Errorf("robot's locks: %s, want [b c]", got)
	}
	if got := ids(st, "nobody"); got != "[]" {
		t.Errorf("locks of a bot without any: %s", got)
	}
	all, _ := st.Locks(bg, "")
	if l := all[1]; l.ID != "b" || l.Bot != "robot" || l.Message != "key leaked" || !l.Created.Equal(locks[0].Created) || !l.Expires.IsZero() {
		t.Errorf("stored %+v, read %+v", locks[0], l)
	}
	if l := all[0]; !l.Expires.Equal(locks[1].Expires) || l.Message != "" {
		t.Errorf("stored %+v, read %+v", locks[1], l)
	}
	err := st.Update(bg, func(tx store.Tx) error { return tx.PutLock(bg, wire.Lock{ID: "a", Bot: "x", Created: at}) })
	if !errors.Is(err, store.ErrConflict) {
		t.Errorf("a second lock a: %v, want ErrConflict", err)
	}
	if ok, err := st.Exists(bg, policy.KindLock, "a"); !ok || err != nil {
		t.Errorf("Exists(lock a): %v %v", ok, err)
	}
	update(t, st, func(tx store.Tx) error {
		n, err := tx.RemoveExpiredLocks(bg, at.Add(30*time.Minute))
		if n != 1 {
			t.Errorf("swept %d locks before expiry+30m, want 1 (c)", n)
		}
		return err
	})
	if got := ids(st, ""); got != "[a b]" {
		t.Fatalf("after the sweep: %s", got)
	}
	update(t, st, func(tx store.Tx) error {
		if found, err := tx.Remove(bg, policy.KindLock, "a"); !found || err != nil {
			t.Errorf("Remove(lock a): %v %v", found, err)
		}
		found, err := tx.Remove(bg, policy.KindLock, "a")
		if found {
			t.Error("removed lock a twice")
		}
		return err
	})
	if got := ids(other, ""); got != "[b]" {
		t.Fatalf("after removing a: %s", got)
	}
}

// The locks version moves with every change of the locks, and nothing
// else; Changed(TopicLocks) tells another handle.
func testLockVersions(t *testing.T, s *state) {
	const poll = 200 * time.Millisecond
	st := s.handle(store.Options{PollInterval: poll})
	other := s.handle(store.Options{PollInterval: poll})
	initState(t, st)
	addBot(t, st, "b")
	ver := func() uint64 {
		v, err := st.Versions(bg)
		if err != nil {
			t.Fatal(err)
		}
		return v[store.TopicLocks]
	}
	changed := other.Changed(store.TopicLocks)
	for _, c := range []struct {
		what  string
		moves bool
		fn    func(tx store.Tx) error
	}{
		{"PutLock", true, func(tx store.Tx) error {
			return tx.PutLock(bg, wire.Lock{ID: "l1", Bot: "b", Created: at, Expires: at})
		}},
		{"RemoveExpiredLocks of none", false, func(tx store.Tx) error { _, err := tx.RemoveExpiredLocks(bg, at); return err }},
		{"RemoveExpiredLocks", true, func(tx store.Tx) error { _, err := tx.RemoveExpiredLocks(bg, at.Add(time.Second)); return err }},
		{"PutLock again", true, func(tx store.Tx) error { return tx.PutLock(bg, wire.Lock{ID: "l2", Bot: "b", Created: at}) }},
		{"Remove lock", true, func(tx store.Tx) error { _, err := tx.Remove(bg, policy.KindLock, "l2"); return err }},
		{"Remove of a lock that is not there", false, func(tx store.Tx) error { _, err := tx.Remove(bg, policy.KindLock, "l2"); return err }},
		{"PutNode", false, func(tx store.Tx) error {
			return tx.PutNode(bg, store.Node{Node: identity.Node{Name: "n", Addr: "10.0.0.1:22"}})
		}},
		{"SetLocked", false, func(tx store.Tx) error { return tx.SetLocked(bg, "b", "copied") }},
	} {
		before := ver()
		update(t, st, c.fn)
		if moved := ver() != before; moved != c.moves {
			t.Fatalf("%s: the locks version moved: %v, want %v", c.what, moved, c.moves)
		}
	}
	waitFor(t, changed, poll+5*time.Second, "another handle's Changed(locks) to fire")
}

func testAllOrNothing(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	err := st.Update(bg, func(tx store.Tx) error {
		if err := tx.AddBot(bg, &store.Bot{Name: "half", Roles: []string{"access"}, Instance: "i", Created: at}); err != nil {
			return err
		}
		if err := tx.PutNode(bg, store.Node{Node: identity.Node{Name: "n", Addr: "10.0.0.1:22"}}); err != nil {
			return err
		}
		if _, err := tx.Bot(bg, "half"); err != nil {
			return fmt.Errorf("a transaction does not read its own change: %w", err)
		}
		return errUndo
	})
	if err != errUndo {
		t.Fatalf("Update returned %v, want fn's error as it is", err)
	}
	_, err = st.Bot(bg, "half")
	wantNotFound(t, "a bot added by an undone Update", err)
	if nodes, _ := st.Nodes(bg); len(nodes) != 0 {
		t.Fatalf("a node added by an undone Update: %+v", nodes)
	}
}

func testFailureUndoesOnlyOwn(t *testing.T, s *state) {
	a, b := s.handle(), s.handle()
	initState(t, a)
	const n = 40
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := []store.Store{a, b}[i%2]
			err := st.Update(bg, func(tx store.Tx) error {
				if err := tx.AddBot(bg, &store.Bot{Name: fmt.Sprintf("bot%02d", i), Roles: []string{"access"}, Instance: "i", Created: at}); err != nil {
					return err
				}
				if i%3 == 0 {
					return errUndo
				}
				return nil
			})
			if (i%3 == 0) != (err == errUndo) || (err != nil && err != errUndo) {
				t.Errorf("Update %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	bots, err := a.Bots(bg)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range n {
		if i%3 != 0 {
			want = append(want, fmt.Sprintf("bot%02d", i))
		}
	}
	var got []string
	for _, bt := range bots {
		got = append(got, bt.Name)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("stored bots %v, want exactly those of the Updates that succeeded: %v", got, want)
	}
}

// spread runs n calls of fn at once, over the handles in turn, and counts
// the nil results.
func spread(handles []store.Store, n int, fn func(i int, st store.Store) error) (ok int, errs []error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			err := fn(i, handles[i%len(handles)])
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				ok++
			} else {
				errs = append(errs, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	return ok, errs
}

var errRefused = errors.New("refused")

// The authority's join: read the token by its secret, refuse it if used,
// else use it, in one Update. Many at once, over three handles: one wins.
func testTokenUsedOnce(t *testing.T, s *state) {
	handles := []store.Store{s.handle(), s.handle(), s.handle()}
	initState(t, handles[0])
	addBot(t, handles[0], "b")
	update(t, handles[0], func(tx store.Tx) error {
		return tx.PutToken(bg, &store.Token{Name: "t", BotName: "b", JoinMethod: "token", SecretHash: []byte("secret"), Created: at}, false)
	})
	ok, errs := spread(handles, 300, func(i int, st store.Store) error {
		return st.Update(bg, func(tx store.Tx) error {
			tok, err := tx.TokenBySecret(bg, []byte("secret"))
			if err != nil {
				return err
			}
			if !tok.Used.IsZero() {
				return errRefused
			}
			used, err := tx.UseToken(bg, tok.Name, at, fmt.Appendf(nil, "key%d", i), fmt.Sprint(i))
			if err != nil {
				return err
			}
			if !used {
				return errRefused
			}
			return tx.Rejoin(bg, "b", fmt.Sprint(i), fmt.Appendf(nil, "key%d", i))
		})
	})
	for _, err := range errs {
		if err != errRefused {
			t.Fatalf("a join failed other than by refusal: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d joins used one one-time token, want exactly 1", ok)
	}
	tok, _ := handles[1].Token(bg, "t")
	b := getBot(t, handles[2], "b")
	if b.Instance != tok.UsedInstance || string(b.LastKeyHash) != string(tok.UsedKeyHash) {
		t.Fatalf("the bot's instance %q and key do not match the token's user %q", b.Instance, tok.UsedInstance)
	}
}

// The authority seals the CA keys of an existing cluster with PutCA: the
// bytes come back as given, on every handle; a kind never stored is
// ErrNotFound, nothing written.
func testPutCA(t *testing.T, s *state) {
	a, b := s.handle(), s.handle()
	initState(t, a)
	sealed := store.CA{ID: "h1", Kind: "host", KeyDER: []byte("MSK1 sealed host key"), CertDER: []byte("host cert")}
	update(t, a, func(tx store.Tx) error { return tx.PutCA(bg, sealed) })
	cas, err := b.CAs(bg)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"user": "user key", "host": "MSK1 sealed host key", "db": "db key"}
	for _, ca := range cas {
		if string(ca.KeyDER) != want[ca.Kind] {
			t.Errorf("%s CA key %q after PutCA of the host CA, want %q", ca.Kind, ca.KeyDER, want[ca.Kind])
		}
	}
	if len(cas) != 3 {
		t.Errorf("%d CAs after PutCA, want 3", len(cas))
	}
	err = a.Update(bg, func(tx store.Tx) error {
		return tx.PutCA(bg, store.CA{ID: "none", Kind: "host", KeyDER: []byte("k"), CertDER: []byte("c")})
	})
	wantNotFound(t, "PutCA of a CA never stored", err)
}

// Replicas taking one IAM challenge at once, over three handles: one
// records it. Records are forgotten once past their expiry.
func testSpendChallenge(t *testing.T, s *state) {
	handles := []store.Store{s.handle(), s.handle(), s.handle()}
	initState(t, handles[0])
	id := []byte("challenge-0123456")
	ok, errs := spread(handles, 60, func(i int, st store.Store) error {
		return st.Update(bg, func(tx store.Tx) error {
			fresh, err := tx.SpendChallenge(bg, id, at.Add(time.Minute))
			if err == nil && !fresh {
				err = errRefused
			}
			return err
		})
	})
	for _, err := range errs {
		if err != errRefused {
			t.Fatalf("a take failed other than by refusal: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d takes recorded one challenge as new, want exactly 1", ok)
	}
	update(t, handles[1], func(tx store.Tx) error {
		if fresh, err := tx.SpendChallenge(bg, []byte("later"), at.Add(time.Hour)); err != nil || !fresh {
			return fmt.Errorf("another challenge: %v %v", fresh, err)
		}
		n, err := tx.RemoveSpentChallenges(bg, at.Add(2*time.Minute))
		if err == nil && n != 1 {
			err = fmt.Errorf("RemoveSpentChallenges removed %d, want the 1 expired", n)
		}
		return err
	})
	update(t, handles[2], func(tx store.Tx) error {
		if fresh, err := tx.SpendChallenge(bg, id, at.Add(time.Hour)); err != nil || !fresh {
			return fmt.Errorf("a forgotten challenge is not new again: %v %v", fresh, err)
		}
		if fresh, err := tx.SpendChallenge(bg, []byte("later"), at.Add(time.Hour)); err != nil || fresh {
			return fmt.Errorf("an unexpired record was forgotten: %v %v", fresh, err)
		}
		return nil
	})
}

// The authority's renewal: read the bot, refuse unless it is at the
// presented generation, advance it. Many presenting one generation at
// once, over three handles: one moves it, by exactly one.
func testGenerationOnce(t *testing.T, s *state) {
	handles := []store.Store{s.handle(), s.handle(), s.handle()}
	initState(t, handles[0])
	addBot(t, handles[0], "b")
	update(t, handles[0], func(tx store.Tx) error { return tx.Rejoin(bg, "b", "i", []byte("k")) })
	ok, errs := spread(handles, 200, func(i int, st store.Store) error {
		return st.Update(bg, func(tx store.Tx) error {
			b, err := tx.Bot(bg, "b")
			if err != nil {
				return err
			}
			if b.Generation != 1 {
				return errRefused
			}
			moved, err := tx.AdvanceGeneration(bg, "b", 1, fmt.Appendf(nil, "k%d", i))
			if err == nil && !moved {
				err = errors.New("AdvanceGeneration from the generation just read moved nothing")
			}
			return err
		})
	})
	for _, err := range errs {
		if err != errRefused {
			t.Fatalf("a renewal failed other than by refusal: %v", err)
		}
	}
	if b := getBot(t, handles[1], "b"); ok != 1 || b.Generation != 2 {
		t.Fatalf("%d renewals of generation 1 succeeded, generation now %d; want 1 and 2", ok, b.Generation)
	}
}

// Every Update writes over what it read: n at once that each advance the
// generation they read leave it n further on.
func testNoLostUpdates(t *testing.T, s *state) {
	handles := []store.Store{s.handle(), s.handle(), s.handle()}
	initState(t, handles[0])
	addBot(t, handles[0], "b")
	const n = 60
	ok, errs := spread(handles, n, func(i int, st store.Store) error {
		return st.Update(bg, func(tx store.Tx) error {
			b, err := tx.Bot(bg, "b")
			if err != nil {
				return err
			}
			moved, err := tx.AdvanceGeneration(bg, "b", b.Generation, nil)
			if err == nil && !moved {
				err = fmt.Errorf("generation %d, just read, moved under this transaction", b.Generation)
			}
			return err
		})
	})
	if ok != n {
		t.Fatalf("%d of %d Updates failed: %v", n-ok, n, errs[0])
	}
	if b := getBot(t, handles[0], "b"); b.Generation != n {
		t.Fatalf("generation %d after %d advances", b.Generation, n)
	}
}

// Serializable, not only snapshot isolation: Updates that each check that
// a bot has no token and then add one (under a name of their own, so no
// unique column stops them) leave one token, not one each.
func testNoWriteSkew(t *testing.T, s *state) {
	handles := []store.Store{s.handle(), s.handle(), s.handle()}
	initState(t, handles[0])
	ok, errs := spread(handles, 30, func(i int, st store.Store) error {
		return st.Update(bg, func(tx store.Tx) error {
			toks, err := tx.Tokens(bg)
			if err != nil {
				return err
			}
			for _, tok := range toks {
				if tok.BotName == "b" {
					return errRefused
				}
			}
			return tx.PutToken(bg, &store.Token{Name: fmt.Sprintf("t%d", i), BotName: "b", JoinMethod: "iam", Created: at}, false)
		})
	})
	for _, err := range errs {
		if err != errRefused {
			t.Fatalf("an Update failed other than by refusal: %v", err)
		}
	}
	toks, _ := handles[0].Tokens(bg)
	if ok != 1 || len(toks) != 1 {
		t.Fatalf("%d Updates added a token where none was, %d tokens stored; want 1 and 1", ok, len(toks))
	}
}

func testCommitVisibleEverywhere(t *testing.T, s *state) {
	a, b := s.handle(), s.handle()
	initState(t, a)
	addBot(t, a, "x")
	for g := uint64(0); g < 30; g++ {
		writer, reader := a, b
		if g%2 == 1 {
			writer, reader = b, a
		}
		update(t, writer, func(tx store.Tx) error {
			_, err := tx.AdvanceGeneration(bg, "x", g, nil)
			return err
		})
		if got := getBot(t, reader, "x").Generation; got != g+1 {
			t.Fatalf("after a commit through one handle, another reads generation %d, want %d", got, g+1)
		}
		update(t, reader, func(tx store.Tx) error {
			if got := getBot(t, tx, "x").Generation; got != g+1 {
				return fmt.Errorf("a transaction of another handle reads generation %d, want %d", got, g+1)
			}
			return nil
		})
	}
}

func testCancelled(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	ctx, cancel := context.WithCancel(bg)
	cancel()
	err := st.Update(ctx, func(tx store.Tx) error {
		return tx.AddBot(ctx, &store.Bot{Name: "early", Roles: []string{"access"}, Instance: "i", Created: at})
	})
	checkOutcome(t, st, "early", err)
	ctx, cancel = context.WithCancel(bg)
	err = st.Update(ctx, func(tx store.Tx) error {
		if err := tx.AddBot(ctx, &store.Bot{Name: "mid", Roles: []string{"access"}, Instance: "i", Created: at}); err != nil {
			return err
		}
		cancel()
		return tx.PutNode(ctx, store.Node{Node: identity.Node{Name: "mid", Addr: "10.0.0.1:22"}})
	})
	checkOutcome(t, st, "mid", err)
	if err == nil {
		if nodes, _ := st.Nodes(bg); len(nodes) != 1 {
			t.Fatal("Update reported success after a cancel, but only half its changes are stored")
		}
	}
}

// checkOutcome: once Update returned, its change is stored exactly when it
// said so.
func checkOutcome(t *testing.T, st store.Store, bot string, err error) {
	t.Helper()
	_, rerr := st.Bot(bg, bot)
	if (err == nil) != (rerr == nil) {
		t.Fatalf("Update with a cancelled context returned %v, yet reading its bot gives %v", err, rerr)
	}
}

func testVersions(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	inv := func() uint64 {
		v, err := st.Versions(bg)
		if err != nil {
			t.Fatal(err)
		}
		return v[store.TopicInventory]
	}
	if inv() == 0 {
		t.Fatal("Init left the inventory version at 0")
	}
	addBot(t, st, "b")
	for _, c := range []struct {
		what  string
		moves bool
		fn    func(tx store.Tx) error
	}{
		{"PutNode", true, func(tx store.Tx) error {
			return tx.PutNode(bg, store.Node{Node: identity.Node{Name: "n", Addr: "10.0.0.1:22"}})
		}},
		{"PutRole", true, func(tx store.Tx) error { return tx.PutRole(bg, role("ops")) }},
		{"SetBotGrants", true, func(tx store.Tx) error { return tx.SetBotGrants(bg, "b", []string{"ops"}, nil, "") }},
		{"Remove node", true, func(tx store.Tx) error { _, err := tx.Remove(bg, policy.KindNode, "n"); return err }},
		{"Remove role", true, func(tx store.Tx) error { _, err := tx.Remove(bg, policy.KindRole, "ops"); return err }},
		{"AddBot", false, func(tx store.Tx) error {
			return tx.AddBot(bg, &store.Bot{Name: "c", Roles: []string{"access"}, Instance: "i", Created: at})
		}},
		{"PutToken", false, func(tx store.Tx) error {
			return tx.PutToken(bg, &store.Token{Name: "t", BotName: "c", JoinMethod: "token", SecretHash: []byte("s"), Created: at}, false)
		}},
		{"UseToken", false, func(tx store.Tx) error { _, err := tx.UseToken(bg, "t", at, nil, "i"); return err }},
		{"AdvanceGeneration", false, func(tx store.Tx) error { _, err := tx.AdvanceGeneration(bg, "c", 0, nil); return err }},
		{"Remove bot", false, func(tx store.Tx) error { _, err := tx.Remove(bg, policy.KindBot, "c"); return err }},
		{"Remove of a node that is not there", false, func(tx store.Tx) error { _, err := tx.Remove(bg, policy.KindNode, "none"); return err }},
		{"PutNode of a joined node", true, func(tx store.Tx) error { return tx.PutNode(bg, joined) }},
		{"ExtendNode", false, func(tx store.Tx) error { _, err := tx.ExtendNode(bg, "joined", at.Add(time.Hour)); return err }},
	} {
		before := inv()
		update(t, st, c.fn)
		if moved := inv() != before; moved != c.moves {
			t.Fatalf("%s: the inventory version moved: %v, want %v", c.what, moved, c.moves)
		}
	}
	before := inv()
	st.Update(bg, func(tx store.Tx) error {
		if err := tx.PutNode(bg, store.Node{Node: identity.Node{Name: "undone", Addr: "10.0.0.1:22"}}); err != nil {
			return err
		}
		return errUndo
	})
	if inv() != before {
		t.Fatal("an undone PutNode moved the inventory version")
	}
}

func testChanged(t *testing.T, s *state) {
	const poll = 200 * time.Millisecond
	// What the backends promise is one poll; the rest is room for a
	// machine loaded by the other packages' tests.
	const bound = poll + 5*time.Second
	a := s.handle(store.Options{PollInterval: poll})
	b := s.handle(store.Options{PollInterval: poll})
	// Subscribe before the first change: b may learn of a's Init (by a
	// signal or its poll) before this goroutine goes on, and a change b
	// has seen before anyone listens fires nothing later.
	ca, cb := a.Changed(store.TopicInventory), b.Changed(store.TopicInventory)
	initState(t, a)
	addBot(t, a, "x")
	drain := func(ch <-chan struct{}) {
		for {
			select {
			case <-ch:
			default:
				return
			}
		}
	}
	// Let b's poll see where things are, then start afresh.
	waitFor(t, cb, bound, "b to notice a's Init")
	drain(ca)
	drain(cb)
	update(t, a, func(tx store.Tx) error {
		return tx.PutNode(bg, store.Node{Node: identity.Node{Name: "n", Addr: "10.0.0.1:22"}})
	})
	select {
	case <-ca:
	default:
		t.Fatal("Changed of the handle that committed a change did not fire by the time Update returned")
	}
	waitFor(t, cb, bound, "another handle's Changed to fire after a's PutNode")
	// A change of no cached topic fires nothing.
	drain(ca)
	drain(cb)
	update(t, a, func(tx store.Tx) error { _, err := tx.AdvanceGeneration(bg, "x", 0, nil); return err })
	select {
	case <-ca:
		t.Fatal("Changed(inventory) fired for a renewal")
	default:
	}
}

// waitFor waits for a value on ch for at most d (a bound the backend
// promises, not a speed).
func waitFor(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case _, ok := <-ch:
		if !ok {
			t.Fatalf("waiting for %s: the channel was closed", what)
		}
	case <-time.After(d):
		t.Fatalf("waited %v for %s", d, what)
	}
}

// fill stores one of everything, in every state a row can be in.
func fill(t testing.TB, st store.Store) {
	t.Helper()
	initState(t, st)
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	update(t, st, func(tx store.Tx) error {
		r := role("ops", "admin")
		r.Metadata.Description = "operators"
		r.Metadata.Expires = &exp
		r.Spec.Deny.NodeLabels = policy.Labels{"env": {"dev", "test"}}
		r.Spec.Options = map[string]any{"max_session_ttl": "8h"}
		for _, err := range []error{
			tx.PutRole(bg, r),
			tx.AddBot(bg, &store.Bot{Name: "a", Roles: []string{"access", "ops"}, Logins: []string{"root"}, Instance: "ia", TokenName: "iam", Created: at}),
			tx.AddBot(bg, &store.Bot{Name: "b", Roles: []string{"access"}, Instance: "ib", Created: at.Add(time.Second)}),
			tx.Rejoin(bg, "b", "ib2", []byte("kb")),
			tx.SetLocked(bg, "b", "copied"),
			tx.PutToken(bg, &store.Token{Name: "iam", BotName: "a", JoinMethod: "iam", Allow: []policy.AllowRule{{AWSAccount: "1", AWSARN: "arn:*"}}, Created: at}, false),
			tx.PutToken(bg, &store.Token{Name: "used", BotName: "b", JoinMethod: "token", SecretHash: []byte("s1"), Expires: exp, Created: at}, false),
			tx.PutToken(bg, &store.Token{Name: "fresh", BotName: "b", JoinMethod: "token", SecretHash: []byte("s2"), Expires: exp, Created: at}, false),
			tx.PutToken(bg, &store.Token{Name: "node-1", Role: policy.TokenRoleNode, Labels: map[string]string{"env": "prod"}, JoinMethod: "token", SecretHash: []byte("s3"), Expires: exp, Created: at}, false),
			tx.PutNode(bg, joined),
			tx.PutNode(bg, store.Node{Node: identity.Node{Name: "web", Addr: "10.0.0.2:22", Labels: map[string]string{"env": "prod", "arch": "x86_64"}}}),
			tx.PutNode(bg, store.Node{Node: identity.Node{Name: "db", Addr: "[fd00::1]:2222"}}),
			tx.PutLock(bg, wire.Lock{ID: "l-forever", Bot: "a", Message: "key leaked", Created: at}),
			tx.PutLock(bg, wire.Lock{ID: "l-day", Bot: "b", Created: at, Expires: exp}),
			// The user CA halfway through a rotation.
			tx.AddCA(bg, store.CA{ID: "u2", Kind: "user", KeyDER: []byte("new user key"), CertDER: []byte("new user cert"), Created: at.Add(time.Hour)}),
			tx.PutRotation(bg, rotating),
		} {
			if err != nil {
				return err
			}
		}
		if _, err := tx.UseToken(bg, "used", at.Add(time.Minute), []byte("ku"), "ib2"); err != nil {
			return err
		}
		_, err := tx.AdvanceGeneration(bg, "b", 1, []byte("kb2"))
		return err
	})
}

// Dump reads a whole state in one Update.
func Dump(t testing.TB, st store.Store) *store.Dump {
	t.Helper()
	var d *store.Dump
	update(t, st, func(tx store.Tx) (err error) {
		d, err = store.DumpState(bg, tx)
		return err
	})
	return d
}

// Fill stores one of everything, for tests that move a state between
// backends.
func Fill(t testing.TB, st store.Store) { fill(t, st) }

// SameDump fails the test unless two dumps hold the same state (times
// compared as instants, an empty list as no list).
func SameDump(t testing.TB, got, want *store.Dump) {
	t.Helper()
	g, w := normal(got), normal(want)
	if g != w {
		t.Fatalf("states differ:\n got %s\nwant %s", g, w)
	}
}

func normal(d *store.Dump) string {
	c := *d
	c.CAs = slices.Clone(d.CAs)
	slices.SortFunc(c.CAs, func(a, b store.CA) int { return cmpString(a.Kind+" "+a.ID, b.Kind+" "+b.ID) })
	for i := range c.CAs {
		c.CAs[i].Created = c.CAs[i].Created.UTC()
	}
	c.Rotations = slices.Clone(d.Rotations)
	for i := range c.Rotations {
		r := &c.Rotations[i]
		r.Started, r.Changed, r.LastRotated = r.Started.UTC(), r.Changed.UTC(), r.LastRotated.UTC()
	}
	var bots []store.Bot
	for _, b := range d.Bots {
		n := *b
		n.Created = n.Created.UTC()
		n.Roles, n.Logins = slices.Clip(append([]string{}, n.Roles...)), slices.Clip(append([]string{}, n.Logins...))
		bots = append(bots, n)
	}
	var toks []store.Token
	for _, tok := range d.Tokens {
		n := *tok
		n.Created, n.Expires, n.Used = n.Created.UTC(), n.Expires.UTC(), n.Used.UTC()
		n.Allow = append([]policy.AllowRule{}, n.Allow...)
		if len(n.Labels) == 0 {
			n.Labels = nil
		}
		toks = append(toks, n)
	}
	var nodes []store.Node
	for _, n := range d.Nodes {
		if len(n.Labels) == 0 {
			n.Labels = nil
		}
		if len(n.TokenLabels) == 0 {
			n.TokenLabels = nil
		}
		n.Expires = n.Expires.UTC()
		nodes = append(nodes, n)
	}
	c.Locks = nil
	for _, l := range d.Locks {
		l.Created, l.Expires = l.Created.UTC(), l.Expires.UTC()
		c.Locks = append(c.Locks, l)
	}
	b, err := json.Marshal(struct {
		D      store.Dump
		Bots   []store.Bot
		Tokens []store.Token
		Nodes  []store.Node
	}{c, bots, toks, nodes})
	if err != nil {
		panic(err)
	}
	return string(b)
}

func testDumpRestore(t *testing.T, s *state) {
	src := s.handle()
	fill(t, src)
	d := Dump(t, src)
	if len(d.Bots) != 2 || len(d.Tokens) != 4 || len(d.Nodes) != 3 || len(d.Roles) != 2 || len(d.CAs) != 4 || len(d.Rotations) != 3 || len(d.Locks) != 2 || d.Versions[store.TopicInventory] == 0 {
		t.Fatalf("dump of a filled state lacks rows: %s", normal(d))
	}
	update(t, src, func(tx store.Tx) error {
		return tx.PutNode(bg, store.Node{Node: identity.Node{Name: "late", Addr: "10.0.0.9:22"}})
	})
	err := src.Update(bg, func(tx store.Tx) error { return tx.Restore(bg, d) })
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("Restore into a state that holds a cluster: %v, want ErrConflict", err)
	}
	if nodes, _ := src.Nodes(bg); len(nodes) != 4 {
		t.Fatalf("a refused Restore changed the state: nodes %+v", nodes)
	}
	dst := s.another().handle()
	update(t, dst, func(tx store.Tx) error { return tx.Restore(bg, d) })
	SameDump(t, Dump(t, dst), d)
	if v, _ := dst.Versions(bg); v[store.TopicInventory] != d.Versions[store.TopicInventory] {
		t.Fatalf("Restore left the inventory version at %d, want %d", v[store.TopicInventory], d.Versions[store.TopicInventory])
	}
}

func testOtherCluster(t *testing.T, s *state) {
	st := s.handle(store.Options{Cluster: "any.example.com"}) // a fresh state takes any
	initState(t, st)
	if _, err := s.open(store.Options{Cluster: "other.example.com"}); !errors.Is(err, store.ErrOtherCluster) {
		t.Fatalf("open with another cluster name: %v, want ErrOtherCluster", err)
	}
	s.handle(store.Options{Cluster: "test.example.com"})
}

func testReopen(t *testing.T, s *state) {
	st := s.handle()
	fill(t, st)
	want := Dump(t, st)
	st.Close()
	SameDump(t, Dump(t, s.handle()), want)
}

func testClose(t *testing.T, s *state) {
	st := s.handle()
	ch := st.Changed(store.TopicInventory)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	err := st.Update(bg, func(tx store.Tx) error { return nil })
	if !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Update after Close: %v, want ErrClosed", err)
	}
	if _, ok := <-ch; ok {
		t.Fatal("Changed's channel is open after Close")
	}
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// BenchmarkRenewal measures the store's part of a renewal, as the
// authority runs it (read the bot, advance its generation, in one Update),
// from clients concurrent Updates over one handle.
func BenchmarkRenewal(b *testing.B, be Backend, clients int) {
	st, err := be.New(b)(store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	initState(b, st)
	for i := range clients {
		addBot(b, st, fmt.Sprintf("bot%d", i))
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("bot%d", i)
			for next.Add(1) <= int64(b.N) {
				err := st.Update(bg, func(tx store.Tx) error {
					bot, err := tx.Bot(bg, name)
					if err != nil {
						return err
					}
					_, err = tx.AdvanceGeneration(bg, name, bot.Generation, []byte("key hash of 32 bytes, more or less"))
					return err
				})
				if err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
