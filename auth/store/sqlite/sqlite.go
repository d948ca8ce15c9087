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
	"log/slog"
	"net/url"
	"os"
	"path/filepath"

	_ "modernc.org/sqlite" // pure Go SQLite: no cgo on the authority

	"github.com/midfs/midfs/auth/store"
)

// File is the state file inside the data directory; SQLite keeps File-wal
// and File-shm beside it.
const File = "midfs.db"

// migrations make the state, one version each: migrations[i] takes a
// state at version i to i+1, and PRAGMA user_version says where a state
// is. A released migration is never edited; a change is a new one. Times
// are Unix seconds. JSON columns hold string lists and allow rules;
// nothing in them is ever queried by SQL.
var migrations = []string{
	// 1: the state as midfs first wrote it (without a version, so IF NOT
	// EXISTS takes such a state to version 1 unchanged).
	`
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
);`,
	// 2: versions of what handles cache, and the cluster's random ID
	// (made here for a state initialised before IDs existed).
	`
CREATE TABLE versions (
	topic   TEXT PRIMARY KEY,
	version INTEGER NOT NULL
);
INSERT INTO meta(key, value)
	SELECT 'cluster_id', lower(hex(randomblob(16))) FROM meta WHERE key = 'cluster_name';`,
	// 3: IAM challenges taken, for replicas that share a challenge key.
	`
CREATE TABLE spent_challenges (
	id      BLOB PRIMARY KEY,
	expires INTEGER NOT NULL
);
CREATE INDEX spent_challenges_expires ON spent_challenges(expires);`,
	// 4: locks, by their ID.
	`
CREATE TABLE locks (
	name    TEXT PRIMARY KEY,
	bot     TEXT NOT NULL,
	message TEXT NOT NULL DEFAULT '',
	created INTEGER NOT NULL,
	expires INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX locks_bot ON locks(bot);`,
	// 5: nodes that join: node tokens (role Node, the labels they give),
	// and nodes that registered themselves (agent), their heartbeat
	// deadline and their token's labels. The defaults keep the meaning
	// of older rows: tokens join bots, nodes were typed by an admin.
	`
ALTER TABLE tokens ADD COLUMN role TEXT NOT NULL DEFAULT 'Bot';
ALTER TABLE tokens ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN agent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN expires INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN token_labels TEXT NOT NULL DEFAULT '{}';`,
	// 6: the audit trail (events.go).
	eventSchema,
	// 7: several CAs of a kind (a rotation's old and new), by a random
	// ID, and where each kind's rotation is. The CA a state held of each
	// kind becomes its active one, not rotating.
	`
CREATE TABLE cas_by_id (
	id       TEXT PRIMARY KEY,
	kind     TEXT NOT NULL,
	key_der  BLOB NOT NULL,
	cert_der BLOB NOT NULL,
	created  INTEGER NOT NULL DEFAULT 0
);
INSERT INTO cas_by_id(id, kind, key_der, cert_der) SELECT lower(hex(randomblob(8))), kind, key_der, cert_der FROM cas;
DROP TABLE cas;
ALTER TABLE cas_by_id RENAME TO cas;
CREATE INDEX cas_kind ON cas(kind);
CREATE TABLE rotations (
	kind         TEXT PRIMARY KEY,
	active       TEXT NOT NULL,
	phase        TEXT NOT NULL,
	mode         TEXT NOT NULL DEFAULT '',
	started      INTEGER NOT NULL DEFAULT 0,
	changed      INTEGER NOT NULL DEFAULT 0,
	grace        INTEGER NOT NULL DEFAULT 0,
	last_rotated INTEGER NOT NULL DEFAULT 0
);
INSERT INTO rotations(kind, active, phase) SELECT kind, id, 'standby' FROM cas;`,
}

// Store is the SQLite state. Reads go straight to the pool (WAL lets them
// run beside the writer); every change goes through the one writer, which
// commits concurrent requests together (see writer.go).
type Store struct {
	reader   // over the pool, with its statements prepared
	db       *sql.DB
	prepared *preparedDB
	w        *writer
	store.Watchers
	stopPoll context.CancelFunc
	polled   chan struct{}
}

var _ store.Store = (*Store)(nil)

// Open opens or creates DATA_DIR/midfs.db, bringing its tables to this
// version of midfs (see migrate). synchronous=FULL makes a commit durable
// before the client hears of it: a token is never reported used and then
// lost by a power cut.
func Open(dir string, opts store.Options) (*Store, error) {
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
	if err := migrate(db, path, opts.Cluster); err != nil {
		db.Close()
		return nil, err
	}
	pdb := &preparedDB{DB: db}
	st := &Store{reader: reader{q: pdb}, db: db, prepared: pdb}
	v, err := st.Versions(context.Background())
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	st.Seen(v)
	st.w = newWriter(db)
	// Another process on the same file (never the authority's set-up,
	// but tests open two handles) is noticed by polling.
	interval := opts.PollInterval
	if interval <= 0 {
		interval = store.DefaultPollInterval
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	st.stopPoll, st.polled = cancel, make(chan struct{})
	go func() {
		defer close(st.polled)
		st.Poll(ctx, st.reader, interval, log)
	}()
	return st, nil
}

// ErrMoved: the state was moved to another backend (MarkMoved); Open
// refuses it, so that no authority issues from a copy that replicas have
// moved on from.
var ErrMoved = errors.New("the state was moved")

// MarkMoved records that the state now lives in the database to (named
// without its password): Open refuses it from then on.
func (st *Store) MarkMoved(to string) error {
	return st.w.do(func(tx *sql.Tx) error {
		_, err := tx.Exec(`INSERT INTO meta(key, value) VALUES ('moved_to', ?)`, to)
		return err
	})
}

// migrate brings the state to the last version in migrations, in one
// transaction that holds SQLite's write lock, so two openers at once run
// each migration once. A state newer than this binary, or of another
// cluster than the one asked for, is refused before anything is written.
func migrate(db *sql.DB, path, cluster string) error {
	tx, err := db.Begin()
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer tx.Rollback()
	var version int
	if err := tx.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil {
		return fmt.Errorf("open %s: %w (is it a midfs database?)", path, err)
	}
	if version > len(migrations) {
		return fmt.Errorf("%s: %w (schema version %d; this midfs knows up to %d): run a midfs at least as new as the one that last wrote it",
			path, store.ErrSchemaNewer, version, len(migrations))
	}
	var moved string
	if err := tx.QueryRow(`SELECT value FROM meta WHERE key = 'moved_to'`).Scan(&moved); err == nil {
		return fmt.Errorf("%s: %w to %s by `midfs auth migrate`: start the authority with --db naming that database (this file is kept only as a backup)",
			path, ErrMoved, moved)
	}
	if cluster != "" {
		var stored string
		err := tx.QueryRow(`SELECT value FROM meta WHERE key = 'cluster_name'`).Scan(&stored)
		if err == nil && stored != cluster {
			return fmt.Errorf("%s holds cluster %q, not %q (--cluster-name): %w; check --data-dir", path, stored, cluster, store.ErrOtherCluster)
		}
	}
	for v := version; v < len(migrations); v++ {
		if _, err := tx.Exec(migrations[v]); err != nil {
			return fmt.Errorf("open %s: schema version %d: %w (is it a midfs database?)", path, v+1, err)
		}
	}
	if version == len(migrations) {
		return nil
	}
	if _, err := tx.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, len(migrations))); err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	return nil
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
	st.stopPoll()
	<-st.polled
	st.Watchers.Close()
	st.prepared.close()
	return st.db.Close()
}

// Update runs fn in a write transaction, batched with other writers (see
// store.Store for what callers may rely on). fn runs once: the one writer
// never meets a serialization conflict.
func (st *Store) Update(ctx context.Context, fn func(store.Tx) error) error {
	var t *txn
	err := st.w.do(func(tx *sql.Tx) error {
		t = &txn{reader: reader{q: tx, detach: true}, tx: tx}
		return fn(t)
	})
	if err == nil && t != nil {
		for topic, v := range t.bumped {
			st.Fire(topic, v)
		}
	}
	return err
}
