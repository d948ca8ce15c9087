package auth

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
)

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// rowScanner is what both *sql.Row and *sql.Rows offer.
type rowScanner interface{ Scan(...any) error }

// queryAll runs a query and reads every row with scan.
func queryAll[T any](q querier, query string, scan func(rowScanner) (T, error)) ([]T, error) {
	rows, err := q.QueryContext(context.Background(), query)
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

// ErrNotFound is returned (wrapped) when a named resource does not exist.
var ErrNotFound = errors.New("not found")

// botRow is a stored bot.
type botRow struct {
	Name        string
	Roles       []string
	Logins      []string
	Instance    string // changes at every token join; certificates carry it
	Generation  uint64
	LastKeyHash []byte // key of the latest renewable identity, for retries of a lost answer
	Locked      string
	TokenName   string // delegated token, if any
	Created     time.Time
}

const botCols = `name, roles, logins, instance, generation, last_key_hash, locked, token_name, created`

func scanBot(row rowScanner) (*botRow, error) {
	var b botRow
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

func getBot(q querier, name string) (*botRow, error) {
	b, err := scanBot(q.QueryRowContext(context.Background(), `SELECT `+botCols+` FROM bots WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("bot %q: %w", name, ErrNotFound)
	}
	return b, err
}

func listBots(q querier) ([]*botRow, error) {
	return queryAll(q, `SELECT `+botCols+` FROM bots ORDER BY name`, scanBot)
}

// Token is a stored join token as the join code sees it. Expires is zero
// for tokens that never expire (delegated tokens without metadata.expires).
type Token struct {
	Name       string
	BotName    string
	JoinMethod string
	Allow      []policy.AllowRule
	Expires    time.Time
	Used       time.Time // zero while unused; only one-time tokens get used
}

// tokenRow is a stored token.
type tokenRow struct {
	Token
	SecretHash   []byte
	UsedKeyHash  []byte
	UsedInstance string
	Created      time.Time
}

const tokenCols = `name, secret_hash, bot_name, join_method, allow, expires, created, used, used_key_hash, used_instance`

func scanToken(row rowScanner) (*tokenRow, error) {
	var t tokenRow
	var allow string
	var expires, created, used int64
	if err := row.Scan(&t.Name, &t.SecretHash, &t.BotName, &t.JoinMethod, &allow, &expires, &created, &used, &t.UsedKeyHash, &t.UsedInstance); err != nil {
		return nil, err
	}
	if err := json.Unmarshal([]byte(allow), &t.Allow); err != nil {
		return nil, fmt.Errorf("token %s: stored allow rules: %w", t.Name, err)
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

func getTokenBy(q querier, col string, val any) (*tokenRow, error) {
	t, err := scanToken(q.QueryRowContext(context.Background(), `SELECT `+tokenCols+` FROM tokens WHERE `+col+` = ?`, val))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	return t, err
}

func listTokens(q querier) ([]*tokenRow, error) {
	return queryAll(q, `SELECT `+tokenCols+` FROM tokens ORDER BY name`, scanToken)
}

func insertToken(tx *sql.Tx, t *tokenRow, replace bool) error {
	verb := "INSERT"
	if replace {
		verb = "INSERT OR REPLACE"
	}
	_, err := tx.Exec(verb+` INTO tokens(name, secret_hash, bot_name, join_method, allow, expires, created) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		t.Name, t.SecretHash, t.BotName, t.JoinMethod, mustJSON(nonNil(t.Allow)), zeroOrUnix(t.Expires), t.Created.Unix())
	return err
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func putRole(tx *sql.Tx, r policy.Role) error {
	_, err := tx.Exec(`INSERT OR REPLACE INTO roles(name, spec) VALUES (?, ?)`, r.Metadata.Name, mustJSON(r))
	return err
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

func getRoles(q querier, names []string) ([]policy.Role, error) {
	out := make([]policy.Role, 0, len(names))
	for _, n := range names {
		r, err := scanRole(q.QueryRowContext(context.Background(), `SELECT spec FROM roles WHERE name = ?`, n))
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("role %q: %w", n, ErrNotFound)
		}
		if err != nil {
			return nil, fmt.Errorf("role %s: %w", n, err)
		}
		out = append(out, r)
	}
	return out, nil
}

func listRoles(q querier) ([]policy.Role, error) {
	return queryAll(q, `SELECT spec FROM roles ORDER BY name`, scanRole)
}

func scanNode(row rowScanner) (identity.Node, error) {
	var n identity.Node
	var labels string
	if err := row.Scan(&n.Name, &n.Addr, &labels); err != nil {
		return n, err
	}
	if err := json.Unmarshal([]byte(labels), &n.Labels); err != nil {
		return n, fmt.Errorf("node %s: stored labels: %w", n.Name, err)
	}
	return n, nil
}

func listNodes(q querier) ([]identity.Node, error) {
	return queryAll(q, `SELECT name, addr, labels FROM nodes ORDER BY name`, scanNode)
}

// putNode adds or replaces a node.
func putNode(tx *sql.Tx, n identity.Node) error {
	labels := n.Labels
	if labels == nil {
		labels = map[string]string{}
	}
	_, err := tx.Exec(`INSERT OR REPLACE INTO nodes(name, addr, labels) VALUES (?, ?, ?)`, n.Name, n.Addr, mustJSON(labels))
	return err
}

// isUnique says whether err is a UNIQUE or PRIMARY KEY violation.
func isUnique(err error) bool {
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}
