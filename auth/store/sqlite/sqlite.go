// Package sqlite is the embedded SQLite backend of auth/store, the
// authority's default: one file in the data directory, one writer that
// commits concurrent changes together (writer.go), reads beside it (WAL).
// Only the authority imports it (package auth, to open its state; tests).
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // pure Go SQLite: no cgo on the authority

	"github.com/midfs/midfs/auth/store"
)

// File is the state file inside the data directory; SQLite keeps File-wal
// and File-shm beside it.
const File = "midfs.db"

// schema is the whole state. Times are Unix seconds. JSON columns hold
// string lists and allow rules; nothing in them is ever queried by SQL.
const schema = `
CREATE TABLE IF NOT EXISTS meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cas (
	kind     TEXT PRIMARY KEY,
	key_der  BLOB NOT NULL,
	cert_der BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS roles (
	name TEXT PRIMARY KEY,
	spec TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bots (
	name          TEXT PRIMARY KEY,
	roles         TEXT NOT NULL,
	logins        TEXT NOT NULL,
	instance      TEXT NOT NULL,
	generation    INTEGER NOT NULL DEFAULT 0,
	last_key_hash BLOB,
	locked        TEXT NOT NULL DEFAULT '',
	token_name    TEXT NOT NULL DEFAULT '',
	created       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
	name          TEXT PRIMARY KEY,
	secret_hash   BLOB UNIQUE,
	bot_name      TEXT NOT NULL,
	join_method   TEXT NOT NULL,
	allow         TEXT NOT NULL DEFAULT '[]',
	expires       INTEGER NOT NULL DEFAULT 0,
	created       INTEGER NOT NULL,
	used          INTEGER NOT NULL DEFAULT 0,
	used_key_hash BLOB,
	used_instance TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS nodes (
	name   TEXT PRIMARY KEY,
	addr   TEXT NOT NULL,
	labels TEXT NOT NULL DEFAULT '{}'
);
`

// Store is the SQLite state. Reads go straight to the pool (WAL lets them
// run beside the writer); every change goes through the one writer, which
// commits concurrent requests together (see writer.go).
type Store struct {
	reader // over the pool
	db     *sql.DB
	w      *writer
}

var _ store.Store = (*Store)(nil)

// Open opens or creates DATA_DIR/midfs.db. synchronous=FULL makes a
// commit durable before the client hears of it: a token is never reported
// used and then lost by a power cut.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("restrict data dir %s to its owner: %w", dir, err)
	}
	path := filepath.Join(dir, File)
	if err := restrictStateFiles(path); err != nil {
		return nil, err
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "busy_timeout(10000)", "foreign_keys(1)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(8)
	if _, err := db.Exec(schema + eventSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w (is it a midfs database?)", path, err)
	}
	return &Store{reader: reader{q: db}, db: db, w: newWriter(db)}, nil
}

// restrictStateFiles makes the database and the -wal and -shm files beside
// it (which hold the CA keys as much as the database does) readable by the
// owner only. SQLite creates -wal and -shm with the mode of the database,
// so the database must be 0600 before SQLite first opens it; the chmod
// also fixes files left 0644 by older versions.
func restrictStateFiles(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	f.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := os.Chmod(p, 0o600); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("restrict %s to its owner: %w", p, err)
		}
	}
	return nil
}

// Close commits the changes already queued, refuses new ones and closes
// the database.
func (st *Store) Close() error {
	st.w.close()
	return st.db.Close()
}

// Update runs fn in a write transaction, batched with other writers (see
// store.Store for what callers may rely on).
func (st *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	return st.w.do(func(tx *sql.Tx) error {
		return fn(&txn{reader: reader{q: tx, detach: true}, tx: tx})
	})
}
