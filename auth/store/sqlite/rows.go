package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/wire"
)

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// rowScanner is what both *sql.Row and *sql.Rows offer.
type rowScanner interface{ Scan(...any) error }

// reader implements store.Reader over the pool or a transaction.
type reader struct {
	q querier
	// detach runs statements without the caller's cancellation, as inside
	// a write transaction: SQLite answers a write interrupted inside a
	// transaction by rolling back the whole transaction, which here holds
	// other requests' changes too.
	detach bool
}

func (r reader) ctx(ctx context.Context) context.Context {
	if r.detach {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

// queryAll runs a query and reads every row with scan.
func queryAll[T any](ctx context.Context, r reader, query string, scan func(rowScanner) (T, error), args ...any) ([]T, error) {
	rows, err := r.q.QueryContext(r.ctx(ctx), query, args...)
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
	var one int
	return r.q.QueryRowContext(r.ctx(ctx), `SELECT count(*) FROM meta`).Scan(&one)
}

func (r reader) ClusterName(ctx context.Context) (string, error) {
	var cluster string
	err := r.q.QueryRowContext(r.ctx(ctx), `SELECT value FROM meta WHERE key = 'cluster_name'`).Scan(&cluster)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("cluster name: %w", store.ErrNotFound)
	}
	return cluster, err
}

func (r reader) ClusterID(ctx context.Context) (string, error) {
	var id string
	err := r.q.QueryRowContext(r.ctx(ctx), `SELECT value FROM meta WHERE key = 'cluster_id'`).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("cluster ID: %w", store.ErrNotFound)
	}
	return id, err
}

func (r reader) Versions(ctx context.Context) (map[string]uint64, error) {
	rows, err := r.q.QueryContext(r.ctx(ctx), `SELECT topic, version FROM versions`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var topic string
		var v uint64
		if err := rows.Scan(&topic, &v); err != nil {
			return nil, err
		}
		out[topic] = v
	}
	return out, rows.Err()
}

const botCols = `name, roles, logins, instance, generation, last_key_hash, locked, token_name, created`

func scanBot(row rowScanner) (*store.Bot, error) {
	var b store.Bot
	var roles, logins string
	var created int64
	if err := row.Scan(&b.Name, &roles, &logins, &b.Instance, &b.Generation, &b.LastKeyHash, &b.Locked, &b.TokenName, &created); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(roles), &b.Roles); err != nil {
		return nil, fmt.Errorf("bot %s: stored roles: %w", b.Name, err)
	}
	if err := json.Unmarshal([]byte(logins), &b.Logins); err != nil {
		return nil, fmt.Errorf("bot %s: stored logins: %w", b.Name, err)
	}
	b.Created = time.Unix(created, 0)
	return &b, nil
}

func (r reader) Bot(ctx context.Context, name string) (*store.Bot, error) {
	b, err := scanBot(r.q.QueryRowContext(r.ctx(ctx), `SELECT `+botCols+` FROM bots WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("bot %q: %w", name, store.ErrNotFound)
	}
	return b, err
}

func (r reader) Bots(ctx context.Context) ([]*store.Bot, error) {
	return queryAll(ctx, r, `SELECT `+botCols+` FROM bots ORDER BY name`, scanBot)
}

const tokenCols = `name, secret_hash, bot_name, join_method, allow, expires, created, used, used_key_hash, used_instance, role, labels`

func scanToken(row rowScanner) (*store.Token, error) {
	var t store.Token
	var allow, labels string
	var expires, created, used int64
	if err := row.Scan(&t.Name, &t.SecretHash, &t.BotName, &t.JoinMethod, &allow, &expires, &created, &used, &t.UsedKeyHash, &t.UsedInstance, &t.Role, &labels); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(allow), &t.Allow); err != nil {
		return nil, fmt.Errorf("token %s: stored allow rules: %w", t.Name, err)
	}
	if err := json.Unmarshal([]byte(labels), &t.Labels); err != nil {
		return nil, fmt.Errorf("token %s: stored labels: %w", t.Name, err)
	}
	t.Expires = unixOrZero(expires)
	t.Used = unixOrZero(used)
	t.Created = time.Unix(created, 0)
	return &t, nil
}

func unixOrZero(s int64) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(s, 0)
}

func zeroOrUnix(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func (r reader) tokenBy(ctx context.Context, col string, val any) (*store.Token, error) {
	t, err := scanToken(r.q.QueryRowContext(r.ctx(ctx), `SELECT `+tokenCols+` FROM tokens WHERE `+col+` = ?`, val))
	if errors.Is(err, sql.ErrNoRows) {
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
	return queryAll(ctx, r, `SELECT `+tokenCols+` FROM tokens ORDER BY name`, scanToken)
}

func scanRole(row rowScanner) (policy.Role, error) {
	var r policy.Role
	var spec string
	if err := row.Scan(&spec); err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(spec), &r); err != nil {
		return r, fmt.Errorf("stored role spec: %w", err)
	}
	return r, nil
}

func (r reader) Roles(ctx context.Context, names []string) ([]policy.Role, error) {
	out := make([]policy.Role, 0, len(names))
	for _, n := range names {
		role, err := scanRole(r.q.QueryRowContext(r.ctx(ctx), `SELECT spec FROM roles WHERE name = ?`, n))
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("role %q: %w", n, store.ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("role %s: %w", n, err)
		}
		out = append(out, role)
	}
	return out, nil
}

func (r reader) AllRoles(ctx context.Context) ([]policy.Role, error) {
	return queryAll(ctx, r, `SELECT spec FROM roles ORDER BY name`, scanRole)
}

const nodeCols = `name, addr, labels, agent, expires, token_labels`

func scanNode(row rowScanner) (store.Node, error) {
	var n store.Node
	var labels, tokenLabels string
	var expires int64
	if err := row.Scan(&n.Name, &n.Addr, &labels, &n.Agent, &expires, &tokenLabels); err != nil {
		return n, err
	}
	if err := json.Unmarshal([]byte(labels), &n.Labels); err != nil {
		return n, fmt.Errorf("node %s: stored labels: %w", n.Name, err)
	}
	if err := json.Unmarshal([]byte(tokenLabels), &n.TokenLabels); err != nil {
		return n, fmt.Errorf("node %s: stored token labels: %w", n.Name, err)
	}
	n.Expires = unixOrZero(expires)
	return n, nil
}

func (r reader) Node(ctx context.Context, name string) (*store.Node, error) {
	n, err := scanNode(r.q.QueryRowContext(r.ctx(ctx), `SELECT `+nodeCols+` FROM nodes WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("node %q: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return &n, nil
}

func (r reader) Nodes(ctx context.Context) ([]store.Node, error) {
	return queryAll(ctx, r, `SELECT `+nodeCols+` FROM nodes ORDER BY name`, scanNode)
}

func scanLock(row rowScanner) (wire.Lock, error) {
	var l wire.Lock
	var created, expires int64
	if err := row.Scan(&l.ID, &l.Bot, &l.Message, &created, &expires); err != nil {
		return l, err
	}
	l.Created, l.Expires = time.Unix(created, 0), unixOrZero(expires)
	return l, nil
}

func (r reader) Locks(ctx context.Context, bot string) ([]wire.Lock, error) {
	const q = `SELECT name, bot, message, created, expires FROM locks`
	if bot == "" {
		return queryAll(ctx, r, q+` ORDER BY created, name`, scanLock)
	}
	return queryAll(ctx, r, q+` WHERE bot = ? ORDER BY created, name`, scanLock, bot)
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
	var n int
	err = r.q.QueryRowContext(r.ctx(ctx), `SELECT count(*) FROM `+t+` WHERE name = ?`, name).Scan(&n)
	return n > 0, err
}

// txn implements store.Tx over one savepoint of the writer's transaction.
type txn struct {
	reader
	tx     *sql.Tx
	bumped map[string]uint64 // topics whose version this txn moved, to where
}

// bump moves topic's version on by one.
func (t *txn) bump(ctx context.Context, topic string) error {
	var v uint64
	err := t.tx.QueryRowContext(t.ctx(ctx), `INSERT INTO versions(topic, version) VALUES (?, 1)
		ON CONFLICT(topic) DO UPDATE SET version = version + 1 RETURNING version`, topic).Scan(&v)
	if err != nil {
		return err
	}
	t.touched(topic, v)
	return nil
}

func (t *txn) touched(topic string, version uint64) {
	if t.bumped == nil {
		t.bumped = map[string]uint64{}
	}
	t.bumped[topic] = version
}

// exec runs a change and says how many rows it touched.
func (t *txn) exec(ctx context.Context, query string, args ...any) (int64, error) {
	res, err := t.tx.ExecContext(t.ctx(ctx), query, args...)
	if err != nil {
		if isUnique(err) {
			return 0, fmt.Errorf("%w: %v", store.ErrConflict, err)
		}
		return 0, err
	}
	return res.RowsAffected()
}

func (t *txn) Init(ctx context.Context, cluster string, cas []store.CA, roles []policy.Role) (bool, error) {
	n, err := t.exec(ctx, `INSERT OR IGNORE INTO meta(key, value) VALUES ('cluster_name', ?)`, cluster)
	if err != nil || n == 0 {
		return false, err
	}
	if _, err := t.exec(ctx, `INSERT INTO meta(key, value) VALUES ('cluster_id', ?)`, store.NewClusterID()); err != nil {
		return false, err
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
	n, err := t.exec(ctx, `INSERT OR IGNORE INTO meta(key, value) VALUES ('cluster_name', ?), ('cluster_id', ?)`, d.ClusterName, d.ClusterID)
	if err != nil {
		return err
	}
	if n != 2 {
		return fmt.Errorf("restore: %w: the state already holds a cluster", store.ErrConflict)
	}
	for topic, v := range d.Versions {
		if _, err := t.exec(ctx, `INSERT INTO versions(topic, version) VALUES (?, ?)`, topic, v); err != nil {
			return err
		}
		t.touched(topic, v)
	}
	for _, ca := range d.CAs {
		if err := t.insertCA(ctx, ca); err != nil {
			return err
		}
	}
	for _, r := range d.Rotations {
		if err := t.putRotation(ctx, r); err != nil {
			return err
		}
	}
	for _, r := range d.Roles {
		if _, err := t.exec(ctx, `INSERT INTO roles(name, spec) VALUES (?, ?)`, r.Metadata.Name, mustJSON(r)); err != nil {
			return err
		}
	}
	for _, b := range d.Bots {
		if _, err := t.exec(ctx, `INSERT INTO bots(`+botCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			b.Name, mustJSON(nonNil(b.Roles)), mustJSON(nonNil(b.Logins)), b.Instance, b.Generation, b.LastKeyHash, b.Locked, b.TokenName, b.Created.Unix()); err != nil {
			return err
		}
	}
	for _, tok := range d.Tokens {
		if _, err := t.exec(ctx, `INSERT INTO tokens(`+tokenCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			tok.Name, tok.SecretHash, tok.BotName, tok.JoinMethod, mustJSON(nonNil(tok.Allow)), zeroOrUnix(tok.Expires), tok.Created.Unix(),
			zeroOrUnix(tok.Used), tok.UsedKeyHash, tok.UsedInstance, tokenRole(tok), mustJSON(nonNilMap(tok.Labels))); err != nil {
			return err
		}
	}
	for _, n := range d.Nodes {
		if err := t.putNode(ctx, n); err != nil {
			return err
		}
	}
	for _, l := range d.Locks {
		if err := t.putLock(ctx, l); err != nil {
			return err
		}
	}
	return nil
}

func (t *txn) PutCA(ctx context.Context, ca store.CA) error {
	n, err := t.exec(ctx, `UPDATE cas SET key_der = ?, cert_der = ? WHERE id = ?`, ca.KeyDER, ca.CertDER, ca.ID)
	if err == nil && n == 0 {
		return fmt.Errorf("%s CA %s: %w", ca.Kind, ca.ID, store.ErrNotFound)
	}
	return err
}

func (t *txn) AddBot(ctx context.Context, b *store.Bot) error {
	_, err := t.exec(ctx, `INSERT INTO bots(name, roles, logins, instance, token_name, created) VALUES (?, ?, ?, ?, ?, ?)`,
		b.Name, mustJSON(b.Roles), mustJSON(nonNil(b.Logins)), b.Instance, b.TokenName, b.Created.Unix())
	return err
}

func (t *txn) SetBotGrants(ctx context.Context, name string, roles, logins []string, tokenName string) error {
	_, err := t.exec(ctx, `UPDATE bots SET roles = ?, logins = ?, token_name = ? WHERE name = ?`,
		mustJSON(roles), mustJSON(nonNil(logins)), tokenName, name)
	if err != nil {
		return err
	}
	return t.bump(ctx, store.TopicInventory)
}

func (t *txn) Rejoin(ctx context.Context, name, instance string, keyHash []byte) error {
	_, err := t.exec(ctx, `UPDATE bots SET instance = ?, generation = 1, last_key_hash = ? WHERE name = ?`, instance, keyHash, name)
	return err
}

func (t *txn) AdvanceGeneration(ctx context.Context, name string, from uint64, keyHash []byte) (bool, error) {
	n, err := t.exec(ctx, `UPDATE bots SET generation = ?, last_key_hash = ? WHERE name = ? AND generation = ?`, from+1, keyHash, name, from)
	return n == 1, err
}

func (t *txn) SetLocked(ctx context.Context, name, reason string) error {
	_, err := t.exec(ctx, `UPDATE bots SET locked = ? WHERE name = ?`, reason, name)
	return err
}

func (t *txn) PutToken(ctx context.Context, tok *store.Token, replace bool) error {
	q := `INSERT INTO tokens(name, secret_hash, bot_name, join_method, allow, expires, created, role, labels) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	if replace {
		// Not INSERT OR REPLACE: that would also delete another token
		// whose secret hash this one repeats, where a conflict is due.
		q += ` ON CONFLICT(name) DO UPDATE SET secret_hash = excluded.secret_hash, bot_name = excluded.bot_name,
			join_method = excluded.join_method, allow = excluded.allow, expires = excluded.expires, created = excluded.created,
			role = excluded.role, labels = excluded.labels, used = 0, used_key_hash = NULL, used_instance = ''`
	}
	_, err := t.exec(ctx, q, tok.Name, tok.SecretHash, tok.BotName, tok.JoinMethod, mustJSON(nonNil(tok.Allow)), zeroOrUnix(tok.Expires), tok.Created.Unix(),
		tokenRole(tok), mustJSON(nonNilMap(tok.Labels)))
	return err
}

// tokenRole is the role to store: a token made without one joins a bot.
func tokenRole(tok *store.Token) string {
	if tok.Role == "" {
		return policy.TokenRoleBot
	}
	return tok.Role
}

func (t *txn) UseToken(ctx context.Context, name string, at time.Time, keyHash []byte, instance string) (bool, error) {
	n, err := t.exec(ctx, `UPDATE tokens SET used = ?, used_key_hash = ?, used_instance = ? WHERE name = ? AND used = 0`,
		at.Unix(), keyHash, instance, name)
	return n == 1, err
}

func (t *txn) RemoveBotTokens(ctx context.Context, bot, joinMethod string, unusedOnly bool) error {
	q := `DELETE FROM tokens WHERE bot_name = ? AND join_method = ?`
	if unusedOnly {
		q += ` AND used = 0`
	}
	_, err := t.exec(ctx, q, bot, joinMethod)
	return err
}

func (t *txn) RemoveExpiredTokens(ctx context.Context, cutoff time.Time) (int64, error) {
	return t.exec(ctx, `DELETE FROM tokens WHERE expires != 0 AND expires < ?`, cutoff.Unix())
}

func (t *txn) SpendChallenge(ctx context.Context, id []byte, expires time.Time) (bool, error) {
	n, err := t.exec(ctx, `INSERT OR IGNORE INTO spent_challenges(id, expires) VALUES (?, ?)`, id, expires.Unix()+1)
	return n == 1, err
}

func (t *txn) RemoveSpentChallenges(ctx context.Context, cutoff time.Time) (int64, error) {
	return t.exec(ctx, `DELETE FROM spent_challenges WHERE expires < ?`, cutoff.Unix())
}

func (t *txn) PutRole(ctx context.Context, r policy.Role) error {
	if _, err := t.exec(ctx, `INSERT OR REPLACE INTO roles(name, spec) VALUES (?, ?)`, r.Metadata.Name, mustJSON(r)); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicInventory)
}

func (t *txn) PutNode(ctx context.Context, n store.Node) error {
	if err := t.putNode(ctx, n); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicInventory)
}

func (t *txn) putNode(ctx context.Context, n store.Node) error {
	_, err := t.exec(ctx, `INSERT OR REPLACE INTO nodes(`+nodeCols+`) VALUES (?, ?, ?, ?, ?, ?)`,
		n.Name, n.Addr, mustJSON(nonNilMap(n.Labels)), n.Agent, zeroOrUnix(n.Expires), mustJSON(nonNilMap(n.TokenLabels)))
	return err
}

func (t *txn) ExtendNode(ctx context.Context, name string, expires time.Time) (bool, error) {
	n, err := t.exec(ctx, `UPDATE nodes SET expires = ? WHERE name = ?`, zeroOrUnix(expires), name)
	return n == 1, err
}

func (t *txn) PutLock(ctx context.Context, l wire.Lock) error {
	if err := t.putLock(ctx, l); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicLocks)
}

func (t *txn) putLock(ctx context.Context, l wire.Lock) error {
	_, err := t.exec(ctx, `INSERT INTO locks(name, bot, message, created, expires) VALUES (?, ?, ?, ?, ?)`,
		l.ID, l.Bot, l.Message, l.Created.Unix(), zeroOrUnix(l.Expires))
	return err
}

func (t *txn) RemoveExpiredLocks(ctx context.Context, cutoff time.Time) (int64, error) {
	n, err := t.exec(ctx, `DELETE FROM locks WHERE expires != 0 AND expires < ?`, cutoff.Unix())
	if err != nil || n == 0 {
		return n, err
	}
	return n, t.bump(ctx, store.TopicLocks)
}

func (t *txn) Remove(ctx context.Context, kind, name string) (bool, error) {
	tbl, err := table(kind)
	if err != nil {
		return false, err
	}
	n, err := t.exec(ctx, `DELETE FROM `+tbl+` WHERE name = ?`, name)
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

// isUnique says whether err is a UNIQUE or PRIMARY KEY violation, by its
// SQLite extended result code.
func isUnique(err error) bool {
	var e *sqlite.Error
	return errors.As(err, &e) && (e.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || e.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
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
