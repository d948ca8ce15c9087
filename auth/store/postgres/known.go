package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/wire"
)

// A join reads a token, its bot and the bot's locks, then uses the token;
// a renewal reads a bot and its locks, then advances its generation. Sent
// one statement at a time, that is a round trip each, and under a herd of
// joins the round trips, not the statements, are most of what a join
// costs the authority and the server. So a transaction reads what these
// reads lead to in one round trip, keeps it until its next statement (a
// write may change it), and answers the reads that follow from it.
//
// And when the transaction has read, at its snapshot, the very row a
// guarded write changes (a token unused, a bot at the generation to move
// on from), the write cannot change no row: under SERIALIZABLE it changes
// that row or fails with a serialization failure (a concurrent change of
// the row, committed after the snapshot, is one). Such a write is sent
// later, with the commit, and made to fail on the server unless it
// changes exactly one row (changesOne), which keeps the commit sent behind
// it from taking effect: the promise (one use, one move) is still kept by
// the row the committed write changed, not by what was read.

// known is what a transaction read and has not written since.
type known struct {
	unused map[string]bool        // tokens by name: read unused
	bots   map[string]*store.Bot  // by name; nil: no such bot
	locks  map[string][]wire.Lock // by bot
}

func (k *known) bot(name string, b *store.Bot, locks []wire.Lock) {
	if k.bots == nil {
		k.bots, k.locks = map[string]*store.Bot{}, map[string][]wire.Lock{}
	}
	k.bots[name] = b
	k.locks[name] = locks
}

const (
	selectLocks   = `SELECT name, bot, message, created, expires FROM locks`
	locksOrder    = ` ORDER BY created, name COLLATE "C"`
	tokenBotName  = `(SELECT bot_name FROM tokens WHERE secret_hash = $1)`
	tokenBySecret = `SELECT ` + tokenCols + ` FROM tokens WHERE secret_hash = $1`
)

// TokenBySecret reads the token and, in the same round trip, its bot and
// the bot's locks, which a join reads next.
func (t *txn) TokenBySecret(ctx context.Context, secretHash []byte) (*store.Token, error) {
	br, err := t.q.send(
		stmt{sql: tokenBySecret, args: []any{secretHash}},
		stmt{sql: `SELECT ` + botCols + ` FROM bots WHERE name = ` + tokenBotName, args: []any{secretHash}},
		stmt{sql: selectLocks + ` WHERE bot = ` + tokenBotName + locksOrder, args: []any{secretHash}})
	if err != nil {
		return nil, err
	}
	tok, b, locks, err := readTokenBot(br)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err = t.q.note(err); err != nil {
		return nil, err
	}
	if tok == nil {
		return nil, store.ErrNotFound
	}
	t.q.known.bot(tok.BotName, b, locks)
	if tok.Used.IsZero() {
		t.q.known.unused = map[string]bool{tok.Name: true}
	}
	return tok, nil
}

// readTokenBot reads TokenBySecret's three results: a nil token or bot
// when there is none.
func readTokenBot(br pgx.BatchResults) (*store.Token, *store.Bot, []wire.Lock, error) {
	tok, err := scanToken(br.QueryRow())
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, nil, nil
	}
	if err != nil {
		return nil, nil, nil, err
	}
	b, locks, err := readBot(br)
	return tok, b, locks, err
}

// readBot reads a bot (nil if there is none) and its locks.
func readBot(br pgx.BatchResults) (*store.Bot, []wire.Lock, error) {
	b, err := scanBot(br.QueryRow())
	if errors.Is(err, pgx.ErrNoRows) {
		b, err = nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	var locks []wire.Lock
	for rows.Next() {
		l, err := scanLock(rows)
		if err != nil {
			return nil, nil, err
		}
		locks = append(locks, l)
	}
	return b, locks, rows.Err()
}

// Bot reads the bot and, in the same round trip, its locks, which a
// renewal reads next; or answers from what the transaction knows.
func (t *txn) Bot(ctx context.Context, name string) (*store.Bot, error) {
	b, ok := t.q.known.bots[name]
	if !ok {
		br, err := t.q.send(
			stmt{sql: `SELECT ` + botCols + ` FROM bots WHERE name = $1`, args: []any{name}},
			stmt{sql: selectLocks + ` WHERE bot = $1` + locksOrder, args: []any{name}})
		if err != nil {
			return nil, err
		}
		b, locks, err := readBot(br)
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err = t.q.note(err); err != nil {
			return nil, err
		}
		t.q.known.bot(name, b, locks)
		return t.Bot(ctx, name)
	}
	if b == nil {
		return nil, fmt.Errorf("bot %q: %w", name, store.ErrNotFound)
	}
	return cloneBot(b), nil
}

// Locks answers a bot's locks from what the transaction knows, if it
// does.
func (t *txn) Locks(ctx context.Context, bot string) ([]wire.Lock, error) {
	if locks, ok := t.q.known.locks[bot]; ok && bot != "" {
		return slices.Clone(locks), nil
	}
	return t.reader.Locks(ctx, bot)
}

func cloneBot(b *store.Bot) *store.Bot {
	c := *b
	c.Roles = slices.Clone(b.Roles)
	c.Logins = slices.Clone(b.Logins)
	c.LastKeyHash = bytes.Clone(b.LastKeyHash)
	return &c
}

const useToken = `UPDATE tokens SET used = $1, used_key_hash = $2, used_instance = $3 WHERE name = $4 AND used IS NULL`

// UseToken of a token this transaction read unused is sent with the
// commit (see known).
func (t *txn) UseToken(ctx context.Context, name string, at time.Time, keyHash []byte, instance string) (bool, error) {
	args := []any{seconds(at), keyHash, instance, name}
	if t.q.known.unused[name] {
		t.q.later(changesOne(useToken), args...)
		return true, nil
	}
	n, err := t.exec(ctx, useToken, args...)
	return n == 1, err
}

const advanceGeneration = `UPDATE bots SET generation = $1, last_key_hash = $2 WHERE name = $3 AND generation = $4`

// AdvanceGeneration of a bot this transaction read at from is sent with
// the commit (see known).
func (t *txn) AdvanceGeneration(ctx context.Context, name string, from uint64, keyHash []byte) (bool, error) {
	args := []any{int64(from + 1), keyHash, name, int64(from)}
	if b := t.q.known.bots[name]; b != nil && b.Generation == from {
		t.q.later(changesOne(advanceGeneration), args...)
		return true, nil
	}
	n, err := t.exec(ctx, advanceGeneration, args...)
	return n == 1, err
}
