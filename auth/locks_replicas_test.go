package auth

import (
	"context"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/internal/pgtest"
)

// A lock made through one replica refuses the bot at another at once, and
// reaches the lock list the other serves to nodes within the store's poll
// bound; so does its removal.
func TestLockOnOneReplicaHoldsOnAnother(t *testing.T) {
	srv := pgtest.Shared(t)
	url, key := srv.URL(srv.NewDB(t)), sealKeyFile(t)
	a := startReplica(t, url, key)
	b := startReplica(t, url, key)
	ctx := context.Background()
	id := join(t, a, addBot(t, a, "robot", []string{"access"}, []string{"root"}).Token)
	empty := pollLocks(t, a, id.key, id.cert, "")

	l, err := b.AddLock(ctx, admin.LockSpec{Bot: "robot", Message: "via b"})
	if err != nil {
		t.Fatal(err)
	}
	if _, status, msg := id.tryRenew(t, a); status != 403 || !strings.Contains(msg, "lock "+l.ID) {
		t.Fatalf("renewal at a replica other than the one that locked: %d %q", status, msg)
	}
	bound := 3 * store.DefaultPollInterval // with margin for a loaded machine
	var got lockAnswer
	waitUntil(t, "the lock in a's list", bound, func() bool {
		got = pollLocks(t, a, id.key, id.cert, empty.etag)
		return got.status == 200 && len(got.locks) == 1
	})
	if got.locks[0].ID != l.ID {
		t.Fatalf("a serves %+v", got.locks)
	}
	if err := a.Remove(ctx, "locks", l.ID); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the removal in b's list", bound, func() bool {
		a := pollLocks(t, b, id.key, id.cert, got.etag)
		return a.status == 200 && len(a.locks) == 0
	})
	id.renew(t, b)
}
