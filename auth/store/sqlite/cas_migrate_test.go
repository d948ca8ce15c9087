package sqlite

import (
	"database/sql"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/storetest"
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
