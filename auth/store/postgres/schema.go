package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/midfs/midfs/auth/store"
)

// migrations make the state, one version each: migrations[i] takes a state
// at version i to i+1; meta's schema_version says where a state is. A
// released migration is never edited; a change is a new one. JSON columns
// hold string lists, labels, allow rules and role specs; nothing in them is
// queried by SQL.
var migrations = []string{
	// 1: the state of midfs 0.x when replicas came.
	`
CREATE TABLE meta (
	key   text PRIMARY KEY,
	value text NOT NULL
);
CREATE TABLE versions (
	topic   text PRIMARY KEY,
	version bigint NOT NULL
);
CREATE TABLE cas (
	kind     text PRIMARY KEY,
	key_der  bytea NOT NULL,
	cert_der bytea NOT NULL
);
CREATE TABLE roles (
	name text PRIMARY KEY,
	spec jsonb NOT NULL
);
CREATE TABLE bots (
	name          text PRIMARY KEY,
	roles         jsonb NOT NULL,
	logins        jsonb NOT NULL,
	instance      text NOT NULL,
	generation    bigint NOT NULL DEFAULT 0,
	last_key_hash bytea,
	locked        text NOT NULL DEFAULT '',
	token_name    text NOT NULL DEFAULT '',
	created       timestamptz NOT NULL
);
CREATE TABLE tokens (
	name          text PRIMARY KEY,
	secret_hash   bytea UNIQUE,
	bot_name      text NOT NULL,
	join_method   text NOT NULL,
	allow         jsonb NOT NULL DEFAULT '[]',
	expires       timestamptz,
	created       timestamptz NOT NULL,
	used          timestamptz,
	used_key_hash bytea,
	used_instance text NOT NULL DEFAULT ''
);
CREATE INDEX tokens_bot_name ON tokens (bot_name);
CREATE TABLE nodes (
	name   text PRIMARY KEY,
	addr   text NOT NULL,
	labels jsonb NOT NULL DEFAULT '{}'
);`,
	// 2: IAM challenges taken, so that replicas sharing a challenge key
	// take each one once.
	`
CREATE TABLE spent_challenges (
	id      bytea PRIMARY KEY,
	expires timestamptz NOT NULL
);
CREATE INDEX spent_challenges_expires ON spent_challenges (expires);`,
	// 3: locks, by their ID.
	`
CREATE TABLE locks (
	name    text PRIMARY KEY,
	bot     text NOT NULL,
	message text NOT NULL DEFAULT '',
	created timestamptz NOT NULL,
	expires timestamptz
);
CREATE INDEX locks_bot ON locks (bot);`,
	// 4: room on every page for the rows' next versions. A renewal
	// rewrites its bot's row, a join its token's and bot's; with room on
	// the page, PostgreSQL writes the new version beside the old one and
	// leaves the indexes alone (a HOT update). Without, it also inserts
	// into each index, and an insert into an index page another
	// SERIALIZABLE transaction has read (any bot or token on that page)
	// is a conflict: 8 concurrent joins of different bots ran again 0.55
	// times per join on average; with room, 0.1.
	`
ALTER TABLE bots SET (fillfactor = 50);
ALTER TABLE tokens SET (fillfactor = 70);`,
	// 5: nodes that join: node tokens (role Node, the labels they give),
	// and nodes that registered themselves (agent), their heartbeat
	// deadline and their token's labels. The defaults keep the meaning of
	// older rows: tokens join bots, nodes were typed by an admin.
	`
ALTER TABLE tokens ADD COLUMN role text NOT NULL DEFAULT 'Bot';
ALTER TABLE tokens ADD COLUMN labels jsonb NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN agent boolean NOT NULL DEFAULT false;
ALTER TABLE nodes ADD COLUMN expires timestamptz;
ALTER TABLE nodes ADD COLUMN token_labels jsonb NOT NULL DEFAULT '{}';`,
	// 6: the audit trail (events.go).
	eventSchema,
	// 7: several CAs of a kind (a rotation's old and new), by a random
	// ID, and where each kind's rotation is. The CA a state held of each
	// kind becomes its active one, not rotating.
	`
ALTER TABLE cas DROP CONSTRAINT cas_pkey;
ALTER TABLE cas ADD COLUMN id text;
ALTER TABLE cas ADD COLUMN created timestamptz;
UPDATE cas SET id = substr(md5(random()::text || clock_timestamp()::text || kind), 1, 16);
ALTER TABLE cas ALTER COLUMN id SET NOT NULL;
ALTER TABLE cas ADD PRIMARY KEY (id);
CREATE INDEX cas_kind ON cas (kind);
CREATE TABLE rotations (
	kind         text PRIMARY KEY,
	active       text NOT NULL,
	phase        text NOT NULL,
	mode         text NOT NULL DEFAULT '',
	started      timestamptz,
	changed      timestamptz,
	grace        bigint NOT NULL DEFAULT 0,
	last_rotated timestamptz
);
INSERT INTO rotations(kind, active, phase) SELECT kind, id, 'standby' FROM cas;`,
	// 8: more room for tokens' next versions (see 4). A token's row grew
	// (5: its role and labels) and grows again when used (the key hash
	// and the instance); at 70 % about 2 % of uses no longer fit on their
	// page. Each of those inserts into the token's three indexes, and
	// with joins batched (batch.go) such an insert into an index page
	// another batch has read is a likely serialization conflict: at 40 %
	// the herd benchmark ran 35 % fewer Updates again. Pages already full
	// keep their fill until rewritten (VACUUM FULL).
	`
ALTER TABLE tokens SET (fillfactor = 40);`,
}

// migrateLock is the advisory lock key under which replicas migrate, one
// at a time ("midfs" in ASCII).
const migrateLock = 0x6d69646673

// migrate brings the state to the last version in migrations. Replicas
// starting at once on an empty database queue on an advisory lock, held by
// the transaction, so each migration runs once and DDL commits with the
// version that names it. A state newer than this binary, or of another
// cluster than the one asked for, is refused before anything is written.
//
// Errors say what is wrong with the database; the caller names it.
func migrate(ctx context.Context, tx pgx.Tx, cluster string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLock)); err != nil {
		return err
	}
	version, err := schemaVersion(ctx, tx)
	if err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("%w (schema version %d; this midfs knows up to %d): run a midfs at least as new as the one that last wrote it",
			store.ErrSchemaNewer, version, len(migrations))
	}
	if cluster != "" && version > 0 {
		var stored string
		err := tx.QueryRow(ctx, `SELECT value FROM meta WHERE key = 'cluster_name'`).Scan(&stored)
		if err == nil && stored != cluster {
			return fmt.Errorf("%w, %q, not %q (--cluster-name); check --db", store.ErrOtherCluster, stored, cluster)
		}
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
	}
	for v := version; v < len(migrations); v++ {
		if _, err := tx.Exec(ctx, migrations[v]); err != nil {
			return fmt.Errorf("schema version %d: %w", v+1, err)
		}
	}
	if version == len(migrations) {
		return nil
	}
	_, err = tx.Exec(ctx, `INSERT INTO meta(key, value) VALUES ('schema_version', $1)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, strconv.Itoa(len(migrations)))
	return err
}

// schemaVersion reads the state's version: 0 for an empty database. A
// database with a meta table but no version is not midfs's.
func schemaVersion(ctx context.Context, tx pgx.Tx) (int, error) {
	var hasMeta bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass('meta') IS NOT NULL`).Scan(&hasMeta); err != nil {
		return 0, err
	}
	if !hasMeta {
		return 0, nil
	}
	var s string
	err := tx.QueryRow(ctx, `SELECT value FROM meta WHERE key = 'schema_version'`).Scan(&s)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, errors.New("it has a table meta but no midfs schema version: not a midfs database; check --db")
	}
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("bad midfs schema version %q", s)
	}
	return v, nil
}
