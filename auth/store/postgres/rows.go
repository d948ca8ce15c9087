package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/wire"
)

// querier is what both the pool and a transaction offer.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// reader implements store.Reader over the pool or a transaction.
type reader struct {
	q querier
}

func queryAll[T any](ctx context.Context, r reader, sql string, scan func(pgx.Row) (T, error), args ...any) ([]T, error) {
	rows, err := r.q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func (r reader) Ping(ctx context.Context) error {
	var n int
	return r.q.QueryRow(ctx, `SELECT count(*) FROM meta`).Scan(&n)
}

func (r reader) meta(ctx context.Context, key string) (string, error) {
	var v string
	err := r.q.QueryRow(ctx, `SELECT value FROM meta WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("%s: %w", key, store.ErrNotFound)
	}
	return v, err
}

func (r reader) ClusterName(ctx context.Context) (string, error) { return r.meta(ctx, "cluster_name") }
func (r reader) ClusterID(ctx context.Context) (string, error)   { return r.meta(ctx, "cluster_id") }

func (r reader) Versions(ctx context.Context) (map[string]uint64, error) {
	rows, err := r.q.Query(ctx, `SELECT topic, version FROM versions`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var topic string
		var v int64
		if err := rows.Scan(&topic, &v); err != nil {
			return nil, err
		}
		out[topic] = uint64(v)
	}
	return out, rows.Err()
}

const botCols = `name, roles, logins, instance, generation, last_key_hash, locked, token_name, created`

func scanBot(row pgx.Row) (*store.Bot, error) {
	var b store.Bot
	var roles, logins []byte
	var gen int64
	if err := row.Scan(&b.Name, &roles, &logins, &b.Instance, &gen, &b.LastKeyHash, &b.Locked, &b.TokenName, &b.Created); err != nil {
		return nil, err
	}
	b.Generation = uint64(gen)
	if err := json.Unmarshal(roles, &b.Roles); err != nil {
		return nil, fmt.Errorf("bot %s: stored roles: %w", b.Name, err)
	}
	if err := json.Unmarshal(logins, &b.Logins); err != nil {
		return nil, fmt.Errorf("bot %s: stored logins: %w", b.Name, err)
	}
	return &b, nil
}

func (r reader) Bot(ctx context.Context, name string) (*store.Bot, error) {
	b, err := scanBot(r.q.QueryRow(ctx, `SELECT `+botCols+` FROM bots WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("bot %q: %w", name, store.ErrNotFound)
	}
	return b, err
}

func (r reader) Bots(ctx context.Context) ([]*store.Bot, error) {
	return queryAll(ctx, r, `SELECT `+botCols+` FROM bots ORDER BY name COLLATE "C"`, scanBot)
}

const tokenCols = `name, secret_hash, bot_name, join_method, allow, expires, created, used, used_key_hash, used_instance, role, labels`

func scanToken(row pgx.Row) (*store.Token, error) {
	var t store.Token
	var allow, labels []byte
	var expires, used *time.Time
	if err := row.Scan(&t.Name, &t.SecretHash, &t.BotName, &t.JoinMethod, &allow, &expires, &t.Created, &used, &t.UsedKeyHash, &t.UsedInstance, &t.Role, &labels); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(allow, &t.Allow); err != nil {
		return nil, fmt.Errorf("token %s: stored allow rules: %w", t.Name, err)
	}
	if err := json.Unmarshal(labels, &t.Labels); err != nil {
		return nil, fmt.Errorf("token %s: stored labels: %w", t.Name, err)
	}
	if expires != nil {
		t.Expires = *expires
	}
	if used != nil {
		t.Used = *used
	}
	return &t, nil
}

func (r reader) tokenBy(ctx context.Context, col string, val any) (*store.Token, error) {
	t, err := scanToken(r.q.QueryRow(ctx, `SELECT `+tokenCols+` FROM tokens WHERE `+col+` = $1`, val))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, store.ErrNotFound
	}
	return t, err
}

func (r reader) Token(ctx context.Context, name string) (*store.Token, error) {
	return r.tokenBy(ctx, "name", name)
}

func (r reader) TokenBySecret(ctx context.Context, secretHash []byte) (*store.Token, error) {
	return r.tokenBy(ctx, "secret_hash", secretHash)
}

func (r reader) Tokens(ctx context.Context) ([]*store.Token, error) {
	return queryAll(ctx, r, `SELECT `+tokenCols+` FROM tokens ORDER BY name COLLATE "C"`, scanToken)
}

func scanRole(row pgx.Row) (policy.Role, error) {
	var r policy.Role
	var spec []byte
	if err := row.Scan(&spec); err != nil {
		return r, err
	}
	if err := json.Unmarshal(spec, &r); err != nil {
		return r, fmt.Errorf("stored role spec: %w", err)
	}
	return r, nil
}

// Roles reads the named roles in one query and hands them out in the
// order named.
func (r reader) Roles(ctx context.Context, names []string) ([]policy.Role, error) {
	found, err := queryAll(ctx, r, `SELECT spec FROM roles WHERE name = ANY($1)`, scanRole, names)
	if err != nil {
		return nil, err
	}
	byName := make(map[string]policy.Role, len(found))
	for _, role := range found {
		byName[role.Metadata.Name] = role
	}
	out := make([]policy.Role, 0, len(names))
	for _, n := range names {
		role, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("role %q: %w", n, store.ErrNotFound)
		}
		out = append(out, role)
	}
	return out, nil
}

func (r reader) AllRoles(ctx context.Context) ([]policy.Role, error) {
	return queryAll(ctx, r, `SELECT spec FROM roles ORDER BY name COLLATE "C"`, scanRole)
}

const nodeCols = `name, addr, labels, agent, expires, token_labels`

func scanNode(row pgx.Row) (store.Node, error) {
	var n store.Node
	var labels, tokenLabels []byte
	var expires *time.Time
	if err := row.Scan(&n.Name, &n.Addr, &labels, &n.Agent, &expires, &tokenLabels); err != nil {
		return n, err
	}
	if err := json.Unmarshal(labels, &n.Labels); err != nil {
		return n, fmt.Errorf("node %s: stored labels: %w", n.Name, err)
	}
	if err := json.Unmarshal(tokenLabels, &n.TokenLabels); err != nil {
		return n, fmt.Errorf("node %s: stored token labels: %w", n.Name, err)
	}
	if expires != nil {
		n.Expires = *expires
	}
	return n, nil
}

func (r reader) Node(ctx context.Context, name string) (*store.Node, error) {
	n, err := scanNode(r.q.QueryRow(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = $1`, name))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("node %q: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return &n, nil
}

func (r reader) Nodes(ctx context.Context) ([]store.Node, error) {
	return queryAll(ctx, r, `SELECT `+nodeCols+` FROM nodes ORDER BY name COLLATE "C"`, scanNode)
}

func scanLock(row pgx.Row) (wire.Lock, error) {
	var l wire.Lock
	var expires *time.Time
	if err := row.Scan(&l.ID, &l.Bot, &l.Message, &l.Created, &expires); err != nil {
		return l, err
	}
	if expires != nil {
		l.Expires = *expires
	}
	return l, nil
}

func (r reader) Locks(ctx context.Context, bot string) ([]wire.Lock, error) {
	if bot == "" {
		return queryAll(ctx, r, selectLocks+locksOrder, scanLock)
	}
	return queryAll(ctx, r, selectLocks+` WHERE bot = $1`+locksOrder, scanLock, bot)
}

// tables maps a resource kind to its table.
var tables = map[string]string{
	policy.KindRole:  "roles",
	policy.KindToken: "tokens",
	policy.KindBot:   "bots",
	policy.KindNode:  "nodes",
	policy.KindLock:  "locks",
}

func table(kind string) (string, error) {
	t, ok := tables[kind]
	if !ok {
		return "", fmt.Errorf("no stored resources of kind %q", kind)
	}
	return t, nil
}

func (r reader) Exists(ctx context.Context, kind, name string) (bool, error) {
	t, err := table(kind)
	if err != nil {
		return false, err
	}
	var ok bool
	err = r.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+t+` WHERE name = $1)`, name).Scan(&ok)
	return ok, err
}

// txn implements store.Tx over one SERIALIZABLE transaction. Expected
// refusals (a name in use) are found without a failing statement, which
// would end the transaction in PostgreSQL (unlike SQLite): fn may go on
// after ErrConflict, as it may on the SQLite backend.
type txn struct {
	reader
	q      *watched
	bumped map[string]uint64 // topics whose version this txn moved, to where
}

func (t *txn) exec(ctx context.Context, sql string, args ...any) (int64, error) {
	tag, err := t.q.Exec(ctx, sql, args...)
	return tag.RowsAffected(), err
}

// bump moves topic's version on by one, and tells replicas at commit.
func (t *txn) bump(ctx context.Context, topic string) error {
	var v int64
	err := t.q.QueryRow(ctx, `INSERT INTO versions(topic, version) VALUES ($1, 1)
		ON CONFLICT (topic) DO UPDATE SET version = versions.version + 1 RETURNING version`, topic).Scan(&v)
	if err != nil {
		return err
	}
	return t.touched(ctx, topic, uint64(v))
}

// touched notes where topic is now, and queues a notification that
// PostgreSQL delivers to every listening replica if, and when, the
// transaction commits.
func (t *txn) touched(ctx context.Context, topic string, v uint64) error {
	if t.bumped == nil {
		t.bumped = map[string]uint64{}
	}
	t.bumped[topic] = v
	t.q.later(`SELECT pg_notify($1, $2)`, notifyChannel, fmt.Sprintf("%s %d", topic, v))
	return nil
}

func (t *txn) Init(ctx context.Context, cluster string, cas []store.CA, roles []policy.Role) (bool, error) {
	n, err := t.exec(ctx, `INSERT INTO meta(key, value) VALUES ('cluster_name', $1), ('cluster_id', $2) ON CONFLICT DO NOTHING`,
		cluster, store.NewClusterID())
	if err != nil || n == 0 {
		return false, err
	}
	if n != 2 {
		return false, fmt.Errorf("init: the state holds a cluster ID but no cluster name")
	}
	if err := t.initCAs(ctx, cas); err != nil {
		return false, err
	}
	for _, r := range roles {
		if err := t.PutRole(ctx, r); err != nil {
			return false, err
		}
	}
	return true, nil
}

func (t *txn) Restore(ctx context.Context, d *store.Dump) error {
	n, err := t.exec(ctx, `INSERT INTO meta(key, value) VALUES ('cluster_name', $1), ('cluster_id', $2) ON CONFLICT DO NOTHING`,
		d.ClusterName, d.ClusterID)
	if err != nil {
		return err
	}
	if n != 2 {
		return fmt.Errorf("restore: %w: the state already holds a cluster", store.ErrConflict)
	}
	var batch pgx.Batch
	for topic, v := range d.Versions {
		batch.Queue(`INSERT INTO versions(topic, version) VALUES ($1, $2)`, topic, int64(v))
	}
	for _, ca := range d.CAs {
		if ca.ID == "" {
			return fmt.Errorf("restore: %s CA without an ID", ca.Kind)
		}
		batch.Queue(insertCA, caArgs(ca)...)
	}
	for _, r := range d.Rotations {
		batch.Queue(putRotation, rotationArgs(r)...)
	}
	for _, r := range d.Roles {
		batch.Queue(`INSERT INTO roles(name, spec) VALUES ($1, $2)`, r.Metadata.Name, mustJSON(r))
	}
	for _, b := range d.Bots {
		batch.Queue(`INSERT INTO bots(`+botCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			b.Name, mustJSON(nonNil(b.Roles)), mustJSON(nonNil(b.Logins)), b.Instance, int64(b.Generation), b.LastKeyHash, b.Locked, b.TokenName, seconds(b.Created))
	}
	for _, tok := range d.Tokens {
		batch.Queue(`INSERT INTO tokens(`+tokenCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
			tok.Name, tok.SecretHash, tok.BotName, tok.JoinMethod, mustJSON(nonNil(tok.Allow)), nullTime(tok.Expires), seconds(tok.Created),
			nullTime(tok.Used), tok.UsedKeyHash, tok.UsedInstance, tokenRole(tok), mustJSON(nonNilMap(tok.Labels)))
	}
	for _, n := range d.Nodes {
		batch.Queue(`INSERT INTO nodes(`+nodeCols+`) VALUES ($1, $2, $3, $4, $5, $6)`, nodeArgs(n)...)
	}
	for _, l := range d.Locks {
		batch.Queue(insertLock, l.ID, l.Bot, l.Message, seconds(l.Created), nullTime(l.Expires))
	}
	if err := t.q.SendBatch(ctx, &batch); err != nil {
		return err
	}
	for topic, v := range d.Versions {
		if err := t.touched(ctx, topic, v); err != nil {
			return err
		}
	}
	return nil
}

func (t *txn) PutCA(ctx context.Context, ca store.CA) error {
	n, err := t.exec(ctx, `UPDATE cas SET key_der = $1, cert_der = $2 WHERE id = $3`, ca.KeyDER, ca.CertDER, ca.ID)
	if err == nil && n == 0 {
		return fmt.Errorf("%s CA %s: %w", ca.Kind, ca.ID, store.ErrNotFound)
	}
	return err
}

func (t *txn) AddBot(ctx context.Context, b *store.Bot) error {
	n, err := t.exec(ctx, `INSERT INTO bots(name, roles, logins, instance, token_name, created) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (name) DO NOTHING`,
		b.Name, mustJSON(b.Roles), mustJSON(nonNil(b.Logins)), b.Instance, b.TokenName, seconds(b.Created))
	if err == nil && n == 0 {
		err = fmt.Errorf("bot %q: %w", b.Name, store.ErrConflict)
	}
	return err
}

func (t *txn) SetBotGrants(ctx context.Context, name string, roles, logins []string, tokenName string) error {
	if _, err := t.exec(ctx, `UPDATE bots SET roles = $1, logins = $2, token_name = $3 WHERE name = $4`,
		mustJSON(roles), mustJSON(nonNil(logins)), tokenName, name); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicInventory)
}

func (t *txn) Rejoin(ctx context.Context, name, instance string, keyHash []byte) error {
	t.q.later(`UPDATE bots SET instance = $1, generation = 1, last_key_hash = $2 WHERE name = $3`, instance, keyHash, name)
	return nil
}

func (t *txn) SetLocked(ctx context.Context, name, reason string) error {
	t.q.later(`UPDATE bots SET locked = $1 WHERE name = $2`, reason, name)
	return nil
}

func (t *txn) PutToken(ctx context.Context, tok *store.Token, replace bool) error {
	args := []any{tok.Name, tok.SecretHash, tok.BotName, tok.JoinMethod, mustJSON(nonNil(tok.Allow)), nullTime(tok.Expires), seconds(tok.Created),
		tokenRole(tok), mustJSON(nonNilMap(tok.Labels))}
	const insert = `INSERT INTO tokens(name, secret_hash, bot_name, join_method, allow, expires, created, role, labels) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`
	if !replace {
		n, err := t.exec(ctx, insert+` ON CONFLICT DO NOTHING`, args...)
		if err == nil && n == 0 {
			err = fmt.Errorf("token %q: %w", tok.Name, store.ErrConflict)
		}
		return err
	}
	if tok.SecretHash != nil {
		var taken bool
		err := t.q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM tokens WHERE secret_hash = $1 AND name <> $2)`, tok.SecretHash, tok.Name).Scan(&taken)
		if err != nil {
			return err
		}
		if taken {
			return fmt.Errorf("token %q: its secret: %w", tok.Name, store.ErrConflict)
		}
	}
	_, err := t.exec(ctx, insert+` ON CONFLICT (name) DO UPDATE SET secret_hash = excluded.secret_hash, bot_name = excluded.bot_name,
		join_method = excluded.join_method, allow = excluded.allow, expires = excluded.expires, created = excluded.created,
		role = excluded.role, labels = excluded.labels, used = NULL, used_key_hash = NULL, used_instance = ''`, args...)
	return err
}

// tokenRole is the role to store: a token made without one joins a bot.
func tokenRole(tok *store.Token) string {
	if tok.Role == "" {
		return policy.TokenRoleBot
	}
	return tok.Role
}

func (t *txn) RemoveBotTokens(ctx context.Context, bot, joinMethod string, unusedOnly bool) error {
	q := `DELETE FROM tokens WHERE bot_name = $1 AND join_method = $2`
	if unusedOnly {
		q += ` AND used IS NULL`
	}
	_, err := t.exec(ctx, q, bot, joinMethod)
	return err
}

func (t *txn) RemoveExpiredTokens(ctx context.Context, cutoff time.Time) (int64, error) {
	return t.exec(ctx, `DELETE FROM tokens WHERE expires < $1`, seconds(cutoff))
}

// SpendChallenge: of two transactions inserting one id, the second waits
// for the first on the primary key and then inserts nothing (or, under
// SERIALIZABLE, fails and is run again by Update, to find the row): one
// of them gets true, at any isolation level.
func (t *txn) SpendChallenge(ctx context.Context, id []byte, expires time.Time) (bool, error) {
	n, err := t.exec(ctx, `INSERT INTO spent_challenges(id, expires) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING`, id, expires)
	return n == 1, err
}

func (t *txn) RemoveSpentChallenges(ctx context.Context, cutoff time.Time) (int64, error) {
	return t.exec(ctx, `DELETE FROM spent_challenges WHERE expires < $1`, cutoff)
}

func (t *txn) PutRole(ctx context.Context, r policy.Role) error {
	if _, err := t.exec(ctx, `INSERT INTO roles(name, spec) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec`,
		r.Metadata.Name, mustJSON(r)); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicInventory)
}

func (t *txn) PutNode(ctx context.Context, n store.Node) error {
	if _, err := t.exec(ctx, `INSERT INTO nodes(`+nodeCols+`) VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (name) DO UPDATE SET addr = excluded.addr, labels = excluded.labels, agent = excluded.agent,
		expires = excluded.expires, token_labels = excluded.token_labels`, nodeArgs(n)...); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicInventory)
}

func nodeArgs(n store.Node) []any {
	return []any{n.Name, n.Addr, mustJSON(nonNilMap(n.Labels)), n.Agent, nullTime(n.Expires), mustJSON(nonNilMap(n.TokenLabels))}
}

func (t *txn) ExtendNode(ctx context.Context, name string, expires time.Time) (bool, error) {
	n, err := t.exec(ctx, `UPDATE nodes SET expires = $1 WHERE name = $2`, nullTime(expires), name)
	return n == 1, err
}

func (t *txn) Remove(ctx context.Context, kind, name string) (bool, error) {
	tbl, err := table(kind)
	if err != nil {
		return false, err
	}
	n, err := t.exec(ctx, `DELETE FROM `+tbl+` WHERE name = $1`, name)
	if err != nil || n == 0 {
		return false, err
	}
	switch kind {
	case policy.KindRole, policy.KindNode:
		err = t.bump(ctx, store.TopicInventory)
	case policy.KindLock:
		err = t.bump(ctx, store.TopicLocks)
	}
	return err == nil, err
}

const insertLock = `INSERT INTO locks(name, bot, message, created, expires) VALUES ($1, $2, $3, $4, $5)`

func (t *txn) PutLock(ctx context.Context, l wire.Lock) error {
	n, err := t.exec(ctx, insertLock+` ON CONFLICT DO NOTHING`, l.ID, l.Bot, l.Message, seconds(l.Created), nullTime(l.Expires))
	if err != nil {
		return err
	}
	if n == 0 {
		return fmt.Errorf("lock %q: %w", l.ID, store.ErrConflict)
	}
	return t.bump(ctx, store.TopicLocks)
}

func (t *txn) RemoveExpiredLocks(ctx context.Context, cutoff time.Time) (int64, error) {
	n, err := t.exec(ctx, `DELETE FROM locks WHERE expires < $1`, cutoff)
	if err != nil || n == 0 {
		return n, err
	}
	return n, t.bump(ctx, store.TopicLocks)
}

// seconds is a time as every backend keeps it: whole seconds.
func seconds(t time.Time) time.Time { return t.Truncate(time.Second) }

// nullTime is NULL for the zero time (never expires, never used).
func nullTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	s := seconds(t)
	return &s
}

// mustJSON encodes v for a jsonb column ([]byte goes in as JSON text).
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func nonNilMap(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}
