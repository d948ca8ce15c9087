package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/store"
)

func rawExec(t *testing.T, dir, query string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, File))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// A state written before schema versions (midfs without replicas) opens
// with everything in it, and gets a cluster ID and a versions table.
func TestUnversionedStateIsMigrated(t *testing.T) {
	dir := t.TempDir()
	rawExec(t, dir, migrations[0]+`
		INSERT INTO meta VALUES ('cluster_name', 'old.example');
		INSERT INTO bots(name, roles, logins, instance, generation, created) VALUES ('robot', '["access"]', '[]', 'i1', 7, 1700000000);`)
	st, err := Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if name, err := st.ClusterName(ctx); err != nil || name != "old.example" {
		t.Fatalf("cluster name after migration: %q, %v", name, err)
	}
	if id, err := st.ClusterID(ctx); err != nil || len(id) != 32 {
		t.Fatalf("cluster ID after migration: %q, %v", id, err)
	}
	if b, err := st.Bot(ctx, "robot"); err != nil || b.Generation != 7 {
		t.Fatalf("bot after migration: %+v, %v", b, err)
	}
	if _, err := st.Versions(ctx); err != nil {
		t.Fatal(err)
	}
}

// A state of a newer midfs is refused with one line, and its file is left
// as it was.
func TestNewerSchemaIsRefused(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	rawExec(t, dir, `PRAGMA user_version = 99`)
	before, err := os.ReadFile(filepath.Join(dir, File))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(dir, store.Options{})
	if !errors.Is(err, store.ErrSchemaNewer) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "schema version 99") {
		t.Fatalf("open of a newer state: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, File))
	if !bytes.Equal(before, after) {
		t.Fatal("a refused open changed the state file")
	}
}

// Another cluster's state is refused when a cluster is named.
func TestAnotherClusterIsRefused(t *testing.T) {
	dir := t.TempDir()
	rawExec(t, dir, `PRAGMA journal_mode = WAL;`+migrations[0]+`INSERT INTO meta VALUES ('cluster_name', 'old.example');`) // as midfs leaves it
	before, _ := os.ReadFile(filepath.Join(dir, File))
	_, err := Open(dir, store.Options{Cluster: "new.example"})
	if !errors.Is(err, store.ErrOtherCluster) {
		t.Fatalf("open of another cluster's state: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, File)); !bytes.Equal(before, after) {
		t.Fatal("a refused open migrated the state")
	}
}
