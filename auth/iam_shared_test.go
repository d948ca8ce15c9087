package auth

import (
	"context"
	"database/sql"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/midfs/midfs/auth/iam"
	"github.com/midfs/midfs/auth/store/sqlite"
)

// otherReplica is the challenge issuer of another replica of e's authority:
// the same seal key, the same database.
func (e *iamEnv) otherReplica() *iam.Challenges {
	return iam.NewSharedChallenges(e.clock, e.s.seal.Derive("iam-challenge", e.s.cluster), &spentChallenges{s: e.s})
}

func TestIAMChallengesAreSharedByReplicas(t *testing.T) {
	keyFile := sealKeyFile(t)
	e := startIAM(t, func(c *Config) { c.CAKeySeal = keyFile })
	ctx := context.Background()
	other := e.otherReplica()

	// A challenge of another replica joins here.
	ch := other.Issue()
	if _, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch)); status != 200 {
		t.Fatalf("join with another replica's challenge: %d %s", status, msg)
	}
	// And is spent there too.
	if r := other.Take(ctx, ch); r == nil || r.Reason != iam.ReasonChallengeUnknown {
		t.Fatalf("the other replica took a challenge used here: %v", r)
	}

	// Many replicas racing for one challenge: one wins.
	replicas := []*iam.Challenges{other, e.otherReplica(), e.otherReplica()}
	ch = replicas[0].Issue()
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if replicas[i%3].Take(ctx, ch) == nil {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := wins.Load(); n != 1 {
		t.Fatalf("30 takes of one challenge on 3 replicas: %d accepted, want 1", n)
	}

	// A restart (or another replica starting) knows the key and the record.
	unused := e.challenge(t)
	cfg := e.s.cfg
	cfg.Metrics = nil // registered by the first start
	e.s.Close()
	s2, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	e.s = s2
	if _, status, msg := e.join(t, "iam-token", unused, signed(t, iamBot, unused)); status != 200 {
		t.Errorf("a challenge handed out before a restart: %d %s", status, msg)
	}
	if _, status, _ := e.join(t, "iam-token", ch, signed(t, iamBot, ch)); status == 200 {
		t.Error("a challenge taken before a restart was accepted after it")
	}
}

func TestSpentChallengesAreForgottenAfterTheirMargin(t *testing.T) {
	keyFile := sealKeyFile(t)
	e := startIAM(t, func(c *Config) { c.CAKeySeal = keyFile })
	ctx := context.Background()
	other := e.otherReplica()
	for range 5 {
		if r := other.Take(ctx, other.Issue()); r != nil {
			t.Fatal(r)
		}
	}
	db, err := sql.Open("sqlite", filepath.Join(e.s.cfg.DataDir, sqlite.File))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	count := func() (n int) {
		t.Helper()
		if err := db.QueryRow(`SELECT count(*) FROM spent_challenges`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 5 {
		t.Fatalf("%d challenges recorded, want 5", n)
	}
	e.clock.Advance(iam.ChallengeTTL + iam.SpentMargin + spentSweepEvery + 1e9)
	if r := other.Take(ctx, other.Issue()); r != nil {
		t.Fatal(r)
	}
	if n := count(); n != 1 {
		t.Errorf("%d challenges recorded after their margin, want only the one just taken", n)
	}
}
