package auth

import (
	"bytes"
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/sqlite"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

// trailOf is every stored event, oldest first.
func trailOf(t testing.TB, s *Server) []audit.Event {
	t.Helper()
	var out []audit.Event
	q := store.EventQuery{Limit: store.MaxEventLimit}
	for {
		page, err := s.st.Events(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for _, se := range page {
			e, err := se.Event()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, e)
		}
		if len(page) < q.Limit {
			return out
		}
		q.After = page[len(page)-1].Key()
	}
}

// waitTrail polls the trail until ok holds for it (refusals are written
// after they are answered), or fails the test after a while.
func waitTrail(t testing.TB, s *Server, what string, ok func([]audit.Event) bool) []audit.Event {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		evs := trailOf(t, s)
		if ok(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("the trail never showed %s; it holds:\n%s", what, dumpEvents(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dumpEvents(evs []audit.Event) string {
	var b strings.Builder
	for _, e := range evs {
		fmt.Fprintf(&b, "  %+v\n", e)
	}
	return b.String()
}

func ofType(evs []audit.Event, typ string) []audit.Event {
	var out []audit.Event
	for _, e := range evs {
		if e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// one is the single event of typ; it fails the test if there is not
// exactly one.
func one(t testing.TB, evs []audit.Event, typ string) audit.Event {
	t.Helper()
	got := ofType(evs, typ)
	if len(got) != 1 {
		t.Fatalf("%d %s events, want 1; the trail:\n%s", len(got), typ, dumpEvents(evs))
	}
	return got[0]
}

// A bot's life through the admin socket and the API, as the trail tells
// it: who made the bot and through which socket, from where it joined and
// renewed, which certificates it got (serials as on the certificates), the
// refused join with the reference its client was given, the lock of a
// copied identity, the unlock and the removal.
func TestTrailOfABotsLife(t *testing.T) {
	s := startTest(t)
	ac := dialAdmin(t, s)
	ctx := context.Background()
	bt, err := ac.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, Logins: []string{"root"}})
	if err != nil {
		t.Fatal(err)
	}
	id1 := join(t, s, bt.Token)
	id2 := id1.renew(t, s)
	certs, _ := id2.certs(t, s)
	_, status, msg := tryJoin(t, s, "0000000000000000000000000000000000000000000000000000000000000000")
	if status != 403 {
		t.Fatalf("join with an unknown token: %d %s", status, msg)
	}
	if _, status, _ := id1.tryRenew(t, s); status != 403 { // a copy at generation 1: locks the bot
		t.Fatalf("renewal of the old identity: %d", status)
	}
	if err := ac.UnlockBot(ctx, "robot"); err != nil {
		t.Fatal(err)
	}
	if err := ac.RemoveBot(ctx, "robot"); err != nil {
		t.Fatal(err)
	}
	evs := waitTrail(t, s, "the refused join and renewal", func(evs []audit.Event) bool {
		return len(ofType(evs, audit.JoinRefused)) > 0 && len(ofType(evs, audit.RenewRefused)) > 0
	})

	me := &audit.Actor{UID: os.Getuid(), PID: os.Getpid(), Socket: admin.SocketPath(s.DataDir())}
	if u, err := user.Current(); err == nil {
		me.User = u.Username
	}
	for _, typ := range []string{audit.BotCreated, audit.TokenCreated, audit.BotUnlocked, audit.BotRemoved} {
		if e := one(t, evs, typ); e.Actor == nil || *e.Actor != *me || e.Addr != "" || e.Bot != "robot" {
			t.Errorf("%s: actor %+v addr %q bot %q; want actor %+v, no addr, bot robot", typ, e.Actor, e.Addr, e.Bot, me)
		}
	}
	if e := one(t, evs, audit.BotCreated); !slices.Equal(e.Roles, []string{"access"}) || !slices.Equal(e.Logins, []string{"root"}) {
		t.Errorf("bot.created: %+v", e)
	}
	if e := one(t, evs, audit.TokenCreated); e.Name != bt.TokenName || e.Method != wire.JoinToken || !e.Expires.Equal(bt.Expires) {
		t.Errorf("token.created: %+v; want token %s expiring %s", e, bt.TokenName, bt.Expires)
	}

	fromAPI := func(e audit.Event) {
		t.Helper()
		if e.Actor != nil || !strings.HasPrefix(e.Addr, "127.0.0.1:") {
			t.Errorf("%s: actor %+v addr %q; want no actor, a loopback source address", e.Type, e.Actor, e.Addr)
		}
	}
	serial := func(der []byte) string { return mustParseCert(t, der).SerialNumber.Text(16) }
	joined := one(t, evs, audit.BotJoined)
	fromAPI(joined)
	if joined.Bot != "robot" || joined.Method != wire.JoinToken || joined.Token != bt.TokenName || joined.Generation != 1 ||
		joined.Instance == "" || joined.Cert != "bot" || joined.Serial != serial(id1.cert) || joined.TTL != 3600 || joined.Retry {
		t.Errorf("bot.joined: %+v; want the serial %s", joined, serial(id1.cert))
	}
	renewed := one(t, evs, audit.BotRenewed)
	fromAPI(renewed)
	if renewed.Generation != 2 || renewed.Serial != serial(id2.cert) || renewed.Instance != joined.Instance || renewed.Retry {
		t.Errorf("bot.renewed: %+v; want generation 2, serial %s", renewed, serial(id2.cert))
	}
	issued := one(t, evs, audit.CertIssued)
	fromAPI(issued)
	sshPub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(certs.SSHCert))
	if err != nil {
		t.Fatal(err)
	}
	sc := sshPub.(*ssh.Certificate)
	if issued.Bot != "robot" || issued.Cert != "user" || issued.Serial != serial(certs.TLSCert) || issued.SSHSerial != sc.Serial ||
		!slices.Equal(issued.Principals, []string{"root"}) || issued.TTL != 3600 || !issued.Expires.Equal(time.Unix(int64(sc.ValidBefore), 0)) {
		t.Errorf("cert.issued: %+v; want serials %s and %d", issued, serial(certs.TLSCert), sc.Serial)
	}
	refused := one(t, evs, audit.JoinRefused)
	fromAPI(refused)
	if refused.Code != audit.CodeTokenUnknown || refused.Detail != "token_unknown" || refused.Method != wire.JoinToken ||
		refused.Ref == "" || !strings.Contains(msg, "(ref "+refused.Ref+")") {
		t.Errorf("bot.join_refused: %+v; the client was told %q", refused, msg)
	}
	locked := one(t, evs, audit.GenerationLocked)
	fromAPI(locked)
	if locked.Bot != "robot" || locked.Generation != 1 || locked.Code != "generation_mismatch" {
		t.Errorf("bot.generation_locked: %+v", locked)
	}
	if e := one(t, evs, audit.RenewRefused); e.Bot != "" || e.Code != audit.CodeBotLocked {
		t.Errorf("bot.renew_refused: %+v", e)
	}
	if e := one(t, evs, audit.BotUnlocked); !strings.Contains(e.Message, "generation mismatch") {
		t.Errorf("bot.unlocked does not say what lock it cleared: %+v", e)
	}
	// Changes in the order they were made (refusals are written later).
	var order []string
	for _, e := range evs {
		if e.Type != audit.JoinRefused && e.Type != audit.RenewRefused {
			order = append(order, e.Type)
		}
	}
	// bots rm locks the bot until its certificates expire.
	want := []string{audit.BotCreated, audit.TokenCreated, audit.BotJoined, audit.BotRenewed, audit.CertIssued, audit.GenerationLocked, audit.BotUnlocked, audit.BotRemoved, audit.LockCreated}
	if !slices.Equal(order, want) {
		t.Errorf("events in order %v, want %v", order, want)
	}
}

// A lock and its removal are recorded with who did them, the lock's ID,
// its bot, message and end.
func TestTrailOfLocks(t *testing.T) {
	s := startTest(t)
	ac := dialAdmin(t, s)
	ctx := context.Background()
	addBot(t, s, "robot", []string{"access"}, nil)
	l, err := ac.AddLock(ctx, admin.LockSpec{Bot: "robot", Message: "incident 42", TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := ac.Remove(ctx, "locks", l.ID); err != nil {
		t.Fatal(err)
	}
	evs := trailOf(t, s)
	made, gone := one(t, evs, audit.LockCreated), one(t, evs, audit.LockRemoved)
	if made.Actor == nil || made.Name != l.ID || made.Bot != "robot" || made.Message != "incident 42" || !made.Expires.Equal(l.Expires) {
		t.Errorf("lock.created: %+v; the lock: %+v", made, l)
	}
	if gone.Actor == nil || gone.Name != l.ID {
		t.Errorf("lock.removed: %+v", gone)
	}
}

// A refused join names the token and bot once the token is known, and a
// retried join is recorded as a retry.
func TestTrailOfJoinRefusalsAndRetries(t *testing.T) {
	s := startTest(t)
	bt := addBot(t, s, "robot", []string{"access"}, nil)
	key, pub := newKey(t)
	tryJoinKey(t, s, bt.Token, key, pub)
	if _, status, _ := tryJoinKey(t, s, bt.Token, key, pub); status != 200 {
		t.Fatal("the retried join was refused")
	}
	if _, status, _ := tryJoin(t, s, bt.Token); status != 403 {
		t.Fatal("a second key joined with a used token")
	}
	evs := waitTrail(t, s, "the refused join", func(evs []audit.Event) bool { return len(ofType(evs, audit.JoinRefused)) > 0 })
	joins := ofType(evs, audit.BotJoined)
	if len(joins) != 2 || joins[0].Retry || !joins[1].Retry || joins[0].Generation != 1 || joins[1].Generation != 1 {
		t.Errorf("joins: %s", dumpEvents(joins))
	}
	if e := one(t, evs, audit.JoinRefused); e.Code != audit.CodeTokenUsed || e.Token != bt.TokenName || e.Bot != "robot" {
		t.Errorf("bot.join_refused: %+v", e)
	}
}

// A change that fails leaves no event, and nothing else is written.
func TestFailedChangesLeaveNoEvent(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	addBot(t, s, "robot", []string{"access"}, nil)
	before := trailOf(t, s)
	if _, err := s.CreateYAML(ctx, []byte("kind: role\nversion: v7\nmetadata:\n  name: dev\nspec:\n  allow:\n    logins: [dev]\n---\nkind: node\nversion: v2\nmetadata:\n  name: bad node\nspec:\n  addr: 10.0.0.1:22\n"), false); err == nil {
		t.Fatal("a node with a bad name was stored")
	}
	if _, err := s.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}}); err == nil {
		t.Fatal("a second bot robot was made")
	}
	if _, err := s.AddBot(ctx, admin.BotSpec{Name: "other", Roles: []string{"nosuchrole"}}); err == nil {
		t.Fatal("a bot with an unknown role was made")
	}
	if err := s.UnlockBot(ctx, "robot"); err == nil {
		t.Fatal("an unlocked bot was unlocked")
	}
	if err := s.Remove(ctx, "role", "access"); err == nil {
		t.Fatal("a role in use was removed")
	}
	if after := trailOf(t, s); len(after) != len(before) {
		t.Fatalf("failed changes left events:\n%s", dumpEvents(after[len(before):]))
	}
}

// Roles, tokens and nodes made, replaced and removed are recorded by name;
// a one-time token in YAML is recorded by its derived name, never by the
// secret it is.
func TestTrailOfResources(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	addBot(t, s, "robot", []string{"access"}, nil)
	const secret = "b1f3c0ffee0000000000000000000000000000000000000000000000000000aa"
	yaml := "kind: role\nversion: v7\nmetadata:\n  name: dev\nspec:\n  allow:\n    logins: [dev]\n" +
		"---\nkind: token\nversion: v2\nmetadata:\n  name: " + secret + "\nspec:\n  roles: [Bot]\n  bot_name: robot\n  join_method: token\n"
	if _, err := s.CreateYAML(ctx, []byte(yaml), false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreateYAML(ctx, []byte("kind: role\nversion: v7\nmetadata:\n  name: dev\nspec:\n  allow:\n    logins: [dev2]\n"), true); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "role", "dev"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddNode(ctx, typedNode("web", "10.0.0.1:22", "env", "prod")); err != nil {
		t.Fatal(err)
	}
	if err := s.AddNode(ctx, typedNode("web", "10.0.0.2:22", "env", "prod")); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "node", "web"); err != nil {
		t.Fatal(err)
	}
	evs := trailOf(t, s)
	tokenName := oneTimeTokenName("robot", hashToken(secret))
	var got []string
	for _, e := range evs[2:] { // after bots add's bot.created and token.created
		got = append(got, e.Type+" "+e.Name)
	}
	want := []string{"role.created dev", "token.created " + tokenName, "role.updated dev", "role.removed dev",
		"node.created web", "node.updated web", "node.removed web"}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if e := one(t, evs, audit.NodeUpdated); e.NodeAddr != "10.0.0.2:22" || e.Labels["env"] != "prod" {
		t.Errorf("node.updated: %+v", e)
	}
}

// Nothing secret reaches the trail: no join token (used, refused, one
// passed by mistake as an IAM token name), no private key of a bot, no CA
// key. The whole events table is searched, in every form a secret could
// take there.
func TestNoSecretInTheTrail(t *testing.T) {
	e := startIAM(t)
	s := e.s
	ctx := context.Background()
	bt := addBot(t, s, "tokenbot", []string{"access"}, []string{"root"})
	key, pub := newKey(t)
	id, _, _ := tryJoinKey(t, s, bt.Token, key, pub)
	id = id.renew(t, s)
	_, outKey := id.certs(t, s)
	const yamlSecret = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7"
	if _, err := s.CreateYAML(ctx, []byte("kind: token\nversion: v2\nmetadata:\n  name: "+yamlSecret+"\nspec:\n  roles: [Bot]\n  bot_name: tokenbot\n  join_method: token\n"), false); err != nil {
		t.Fatal(err)
	}
	const wrongSecret = "0badc0de0badc0de0badc0de0badc0de0badc0de0badc0de0badc0de0badc0"
	tryJoin(t, s, wrongSecret)
	ch := e.challenge(t)
	e.join(t, bt.Token, ch, signed(t, iamBot, ch)) // a one-time secret sent as an IAM token name
	ch = e.challenge(t)
	e.join(t, "iam-token", ch, signed(t, iamBot, ch))
	evs := waitTrail(t, s, "both refused joins", func(evs []audit.Event) bool { return len(ofType(evs, audit.JoinRefused)) == 2 })
	iamJoin := ofType(evs, audit.BotJoined)[1]
	if iamJoin.Method != wire.JoinIAM || iamJoin.Token != "iam-token" || iamJoin.AWSAccount != iamBot.Account || iamJoin.AWSARN != iamBot.Arn || iamJoin.Bot != "robot" {
		t.Errorf("IAM join: %+v", iamJoin)
	}
	for _, e := range ofType(evs, audit.JoinRefused) {
		if e.Token != "" {
			t.Errorf("a refused join names a token nobody stored: %+v", e)
		}
	}

	secrets := map[string][]byte{"join token": []byte(bt.Token), "YAML token": []byte(yamlSecret), "refused token": []byte(wrongSecret)}
	for name, k := range map[string]any{"bot key": key, "output key": outKey} {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		secrets[name] = der
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(s.DataDir(), sqlite.File)+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT kind, key_der FROM cas`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var kind string
		var der []byte
		rows.Scan(&kind, &der)
		secrets[kind+" CA key"] = der
	}
	rows.Close()
	var trail bytes.Buffer
	rows, err = db.Query(`SELECT id, time, type, bot, data FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		var id, tm int64
		var typ, bot, data string
		rows.Scan(&id, &tm, &typ, &bot, &data)
		fmt.Fprintln(&trail, id, tm, typ, bot, data)
		n++
	}
	rows.Close()
	if n < 10 {
		t.Fatalf("only %d events: the test did not exercise the trail", n)
	}
	for name, sec := range secrets {
		forms := [][]byte{sec, []byte(hex.EncodeToString(sec)), []byte(base64.StdEncoding.EncodeToString(sec)), []byte(base64.RawURLEncoding.EncodeToString(sec))}
		if len(sec) > 24 { // a piece of a key is as bad
			forms = append(forms, []byte(hex.EncodeToString(sec[len(sec)-16:])), []byte(base64.StdEncoding.EncodeToString(sec[len(sec)-18:])))
		}
		for _, f := range forms {
			if bytes.Contains(bytes.ToLower(trail.Bytes()), bytes.ToLower(f)) {
				t.Errorf("the trail holds the %s (as %.20s...)", name, f)
			}
		}
	}
}

// Refusals that come faster than the trail takes them are counted, never
// lost without a trace: while the store is held, more refusals come than
// the queue holds; afterwards the recorded ones and the counted ones add
// up to every refusal.
func TestRefusalsBeyondTheQueueAreCounted(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	held, release := make(chan struct{}), make(chan struct{})
	go s.st.Update(ctx, func(store.Tx) error { close(held); <-release; return nil })
	<-held
	const sent = refusalQueue + 2*refusalBatch
	for range sent {
		s.recordRefusal(ctx, audit.JoinRefused, wire.JoinToken, refuseToken("token_unknown", "no such token"))
	}
	close(release)
	var recorded, counted int64
	waitTrail(t, s, fmt.Sprintf("%d refusals accounted for", sent), func(evs []audit.Event) bool {
		recorded, counted = int64(len(ofType(evs, audit.JoinRefused))), 0
		for _, e := range ofType(evs, audit.RefusalsDropped) {
			counted += e.Count
		}
		return recorded+counted == sent
	})
	if counted == 0 {
		t.Errorf("%d refusals while the store was held, none counted as dropped: the queue is unbounded?", sent)
	}
	t.Logf("%d refusals recorded, %d counted", recorded, counted)
}

// A flood of refused joins does not stop issuance: renewals, joins and
// certificates go on while it lasts, and every refusal is recorded or
// counted.
func TestRefusalFloodLeavesIssuanceAlone(t *testing.T) {
	s := startTest(t)
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	stop := make(chan struct{})
	var sent atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient(t, s, nil, nil)
			defer c.close()
			_, pub := newKey(t)
			for {
				select {
				case <-stop:
					return
				default:
				}
				status, _, err := c.do("POST", wire.PathJoin, wire.JoinRequest{Token: "flood", PublicKey: pub}, nil)
				if err == nil && status == 403 {
					sent.Add(1)
				}
			}
		}()
	}
	for sent.Load() < 200 {
		time.Sleep(time.Millisecond)
	}
	for i := range 20 {
		id = id.renew(t, s)
		id.certs(t, s)
		join(t, s, addBot(t, s, "other"+strconv.Itoa(i), []string{"access"}, nil).Token)
	}
	close(stop)
	wg.Wait()
	waitTrail(t, s, fmt.Sprintf("%d refusals accounted for", sent.Load()), func(evs []audit.Event) bool {
		n := int64(len(ofType(evs, audit.JoinRefused)))
		for _, e := range ofType(evs, audit.RefusalsDropped) {
			n += e.Count
		}
		return n == sent.Load()
	})
	t.Logf("%d refused joins during 20 renewals, certificates and joins", sent.Load())
}

// A follower waits for the next event and gets it; one still waiting when
// the authority stops does not hold up the stop.
func TestFollowWaitsForTheNextEvent(t *testing.T) {
	s := startTest(t)
	ac := dialAdmin(t, s)
	ctx := context.Background()
	addBot(t, s, "first", []string{"access"}, nil)
	listed, err := ac.Events(ctx, admin.EventQuery{})
	if err != nil || len(listed.Events) != 2 {
		t.Fatalf("listing: %+v %v", listed, err)
	}
	got := make(chan *admin.EventPage, 1)
	go func() {
		p, err := ac.Events(ctx, admin.EventQuery{Follow: true, From: listed.End, Wait: admin.MaxEventWait, Types: []string{audit.BotCreated}})
		if err != nil {
			t.Error(err)
		}
		got <- p
	}()
	addBot(t, s, "second", []string{"access"}, nil)
	p := <-got
	if p == nil {
		t.Fatal("the follower got no page")
	}
	if evs, err := p.Decode(); err != nil || len(evs) != 1 || evs[0].Bot != "second" {
		t.Fatalf("follower got %+v %v, want bot.created of second", evs, err)
	}
	end, err := ac.Events(ctx, admin.EventQuery{})
	if err != nil {
		t.Fatal(err)
	}
	go ac.Events(ctx, admin.EventQuery{Follow: true, From: end.End, Wait: admin.MaxEventWait})
	for s.trail.waiting.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close with a follower waiting: %v", err)
	}
}

// Events older than the retention are pruned, newer ones stay.
func TestOldEventsArePruned(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC))
	s := startTest(t, func(c *Config) { c.Clock = clk; c.AuditRetention = 2 * time.Hour })
	// Both of the authority's loops on the clock, the pruner and the
	// rotations', sleep: the pruner's next prune is set from this time.
	// (Waiting for one timer was the rotations' alone when the pruner was
	// slow to set its own: the advance below then passed its wake-up time
	// before it had one, and it slept past the end of the test.)
	asleep := func() { clk.BlockUntil(2) }
	asleep()
	addBot(t, s, "old", []string{"access"}, nil)
	clk.Advance(time.Hour)
	asleep()
	addBot(t, s, "new", []string{"access"}, nil)
	clk.Advance(90 * time.Minute)
	evs := waitTrail(t, s, "the old bot's events pruned", func(evs []audit.Event) bool {
		return !slices.ContainsFunc(evs, func(e audit.Event) bool { return e.Bot == "old" })
	})
	if len(ofType(evs, audit.BotCreated)) != 1 || len(evs) != 2 {
		t.Errorf("after pruning: %s; want the new bot's two events", dumpEvents(evs))
	}
}

// Bad filters are refused with what is wrong, and so is a retention that
// would empty the trail.
func TestBadEventQueries(t *testing.T) {
	s := startTest(t)
	ac := dialAdmin(t, s)
	ctx := context.Background()
	for _, c := range []struct {
		q    admin.EventQuery
		want string
	}{
		{admin.EventQuery{Types: []string{"bot.exploded"}}, `unknown event type "bot.exploded"`},
		{admin.EventQuery{Since: time.Now(), Until: time.Now().Add(-time.Hour)}, "is not before --until"},
		{admin.EventQuery{Follow: true, Wait: time.Hour}, "bad wait"},
		{admin.EventQuery{Follow: true, From: "nonsense"}, "bad event position"},
	} {
		_, err := ac.Events(ctx, c.q)
		if err == nil || admin.KindOf(err) != admin.Invalid || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v (%s); want invalid: %s", c.q, err, admin.KindOf(err), c.want)
		}
	}
	_, err := Start(ctx, Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", AuditRetention: time.Minute, Logger: testLogger(t)})
	if err == nil || !strings.Contains(err.Error(), "--audit-retention") {
		t.Errorf("a retention of a minute: %v", err)
	}
}

// Every join refusal the authority can give maps to one of the stable
// codes, not to "other".
func TestEveryRefusalHasAStableCode(t *testing.T) {
	reasons := iamReasons()
	if len(reasons) < 19 {
		t.Fatalf("found only %d IAM reasons: %v", len(reasons), reasons)
	}
	for _, r := range reasons {
		if c := audit.RefusalCode("iam_" + r); c == audit.CodeOther {
			t.Errorf("IAM reason %s has no stable code", r)
		}
	}
	for _, code := range []string{"bad_request", "token_unknown", "token_method", "token_expired", "token_used", "bot_missing", "bot_locked",
		"superseded", "stale_generation", "output_identity", "not_renewable", "no_client_cert", "not_a_bot", "internal", "generation_mismatch", "token_role", "node_name_taken"} {
		if c := audit.RefusalCode(code); c == audit.CodeOther || !slices.Contains(audit.RefusalCodes, c) {
			t.Errorf("refusal %s maps to %q", code, c)
		}
	}
}

// iamReasons is every Reason constant auth/iam declares, read from its
// source so that a new one cannot be missed.
func iamReasons() []string {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, filepath.Join("iam", "iam.go"), nil, 0)
	if err != nil {
		panic(err)
	}
	var out []string
	for _, d := range f.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.CONST {
			continue
		}
		for _, spec := range gd.Specs {
			vs := spec.(*ast.ValueSpec)
			if id, ok := vs.Type.(*ast.Ident); ok && id.Name == "Reason" {
				for _, v := range vs.Values {
					lit, _ := strconv.Unquote(v.(*ast.BasicLit).Value)
					out = append(out, lit)
				}
			}
		}
	}
	return out
}

func typedNode(name, addr, k, v string) identity.Node {
	return identity.Node{Name: name, Addr: addr, Labels: map[string]string{k: v}}
}

// jsonEqual says whether a and b encode to the same JSON.
func jsonEqual(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// A joined node's life as the trail tells it: its token, its join (the
// node's name, address and labels, not a bot), its host certificate, its
// first heartbeat bringing it into the inventory, its departure once its
// heartbeats stop, and its return. A heartbeat that only extends a stay
// records nothing.
func TestTrailOfANodesLife(t *testing.T) {
	clk := clock.NewFake(time.Now())
	s := startTest(t, func(c *Config) { c.Clock = clk })
	bot := join(t, s, addBot(t, s, "robot", []string{"access"}, nil).Token)
	info := wire.NodeInfo{Name: "web", Addr: "10.0.0.1:22", Labels: map[string]string{"env": "dev"}}
	node := joinNode(t, s, addNodeToken(t, s, map[string]string{"env": "prod"}), info)
	if _, status, msg := node.hostCert(t, s, hostKey(t)); status != 200 {
		t.Fatalf("host cert: %d %s", status, msg)
	}
	beat := func() {
		t.Helper()
		if _, status, msg := node.heartbeat(t, s, wire.Heartbeat{Addr: info.Addr, Labels: info.Labels, IntervalSeconds: 10}); status != 200 {
			t.Fatalf("heartbeat: %d %s", status, msg)
		}
	}
	beat()
	clk.Advance(9 * time.Second)
	beat() // only extends the stay
	clk.Advance(15 * time.Second)
	pollNodes(t, s, bot.key, bot.cert, "") // makes the authority notice it left
	beat()

	evs := trailOf(t, s)
	var tok audit.Event
	for _, e := range ofType(evs, audit.TokenCreated) {
		if e.Bot == "" {
			tok = e
		}
	}
	if !strings.HasPrefix(tok.Name, "node-") || tok.Labels["env"] != "prod" {
		t.Errorf("the node token's event: %+v", tok)
	}
	j := one(t, evs, audit.NodeJoined)
	if j.Name != "web" || j.Bot != "" || j.NodeAddr != info.Addr || j.Labels["env"] != "prod" || j.Token != tok.Name || j.Addr == "" || j.Serial == "" {
		t.Errorf("node.joined: %+v", j)
	}
	var host []audit.Event
	for _, e := range ofType(evs, audit.CertIssued) {
		if e.Cert == "host" {
			host = append(host, e)
		}
	}
	if len(host) != 1 || host[0].Name != "web" || !slices.Contains(host[0].Principals, "web") || host[0].SSHSerial == 0 {
		t.Errorf("host certificate events: %+v", host)
	}
	if g := one(t, evs, audit.NodeGone); g.Name != "web" || g.Actor != nil || g.Addr != "" {
		t.Errorf("node.gone: %+v (no one acted: no actor, no address)", g)
	}
	var typesAfterJoin []string
	for _, e := range evs {
		if e.ID > j.ID && (e.Type == audit.NodeUpdated || e.Type == audit.NodeGone) {
			typesAfterJoin = append(typesAfterJoin, e.Type)
		}
	}
	if want := []string{audit.NodeUpdated, audit.NodeGone, audit.NodeUpdated}; !slices.Equal(typesAfterJoin, want) {
		t.Errorf("the node's inventory events: %v, want %v (in, gone, back)", typesAfterJoin, want)
	}
}
