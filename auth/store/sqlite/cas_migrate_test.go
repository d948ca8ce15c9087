package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/store"
)

// A state written before CAs could rotate held one CA of each kind, keyed
// by kind: opening it gives each an ID, makes it its kind's active CA, and
// puts every kind in standby, keys and certificates unchanged.
func TestMigrateOneCAPerKind(t *testing.T) {
	dir := t.TempDir()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, File))
	if err != nil {
		t.Fatal(err)
	}
	before := migrationIndex(t, "CREATE TABLE rotations")
	for _, m := range migrations[:before] {
		if _, err := db.Exec(m); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{
		fmt.Sprintf(`PRAGMA user_version = %d`, before),
		`INSERT INTO meta(key, value) VALUES ('cluster_name', 'old.example.com'), ('cluster_id', 'abc')`,
		`INSERT INTO cas(kind, key_der, cert_der) VALUES ('user', 'uk', 'uc'), ('host', 'hk', 'hc'), ('db', 'dk', 'dc')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	st, err := Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	cas, err := st.CAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rots, err := st.Rotations(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(cas) != 3 || len(rots) != 3 {
		t.Fatalf("after the migration: CAs %+v, rotations %+v", cas, rots)
	}
	for i, kind := range []string{"db", "host", "user"} {
		ca, r := cas[i], rots[i]
		if ca.Kind != kind || string(ca.KeyDER) != kind[:1]+"k" || string(ca.CertDER) != kind[:1]+"c" || len(ca.ID) != 16 {
			t.Fatalf("migrated %s CA: %+v", kind, ca)
		}
		if r.Kind != kind || r.Active != ca.ID || r.Phase != "standby" || r.Mode != "" || !r.Started.IsZero() {
			t.Fatalf("migrated %s rotation: %+v, want standby with CA %s active", kind, r, ca.ID)
		}
	}
	if cas[0].ID == cas[1].ID || cas[1].ID == cas[2].ID {
		t.Fatalf("migrated CAs share an ID: %+v", cas)
	}
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
