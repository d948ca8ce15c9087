package postgres

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/storetest"
	"github.com/midfs/midfs/internal/pgtest"
)

// A state written before CAs could rotate held one CA of each kind, keyed
// by kind: opening it gives each an ID, makes it its kind's active CA, and
// puts every kind in standby, keys and certificates unchanged.
func TestMigrateOneCAPerKind(t *testing.T) {
	srv := pgtest.Shared(t)
	url := srv.NewURL(t)
	ctx := context.Background()
	c, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	before := migrationIndex(t, "CREATE TABLE rotations")
	for _, m := range migrations[:before] {
		if _, err := c.Exec(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{
		`INSERT INTO meta(key, value) VALUES ('schema_version', '` + strconv.Itoa(before) + `'), ('cluster_name', 'old.example.com'), ('cluster_id', 'abc')`,
		`INSERT INTO cas(kind, key_der, cert_der) VALUES ('user', 'uk', 'uc'), ('host', 'hk', 'hc'), ('db', 'dk', 'dc')`,
	} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	c.Close(ctx)

	st, err := Open(ctx, url, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	storetest.CheckMigratedCAs(t, st)
}

// migrationIndex is the index of the migration that contains what.
func migrationIndex(t *testing.T, what string) int {
	for i, m := range migrations {
		if strings.Contains(m, what) {
			return i
		}
	}
	t.Fatalf("no migration contains %q", what)
	return 0
}
