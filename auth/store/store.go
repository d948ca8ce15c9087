// Package store is the authority's state behind one small interface: the
// cluster name and CA keys, roles, bots, join tokens and nodes. A backend
// (SQLite in store/sqlite; PostgreSQL next) implements Store; the authority
// (package auth) holds the rules of what to read and write, so a new backend
// is a new implementation of these methods, not an edit of every query.
//
// Only auth and its sub-packages import it. It imports policy (roles and
// allow rules are stored as policy values) and identity (nodes), never auth.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
)

// Errors a backend returns (wrapped) for the authority to act on.
var (
	// ErrNotFound: the named row does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a unique column (a name, a token's secret hash) already
	// holds the value.
	ErrConflict = errors.New("already exists")
	// ErrClosed: the store is closing and takes no more changes.
	ErrClosed = errors.New("authority is shutting down")
)

// Store is the authority's state.
//
// The guarantees callers rely on:
//
//   - Update runs fn in one serializable write transaction: what fn reads
//     is what it writes over, and either all of fn's changes are committed
//     or none is. An error from fn undoes fn's changes only (a backend may
//     commit several callers' functions together, but never lets one undo
//     another's) and is returned as it is.
//   - A commit is durable before Update returns nil: a change the client
//     was told about survives a crash or power cut.
//   - Update waits until fn has run and its changes are committed or
//     undone, even when ctx is cancelled: a change, once queued, is never
//     left half-known to its caller.
//
// From these the authority builds its promises: a one-time token is used
// exactly once (UseToken inside Update); a bot's generation moves exactly
// once per renewal (AdvanceGeneration inside Update); and a retry of a join
// or renewal whose answer was lost, with the same key, gets an identity at
// the same generation again, because the key hash stored with the change
// (UsedKeyHash, LastKeyHash) is read back in the retry's transaction.
//
// Reads outside Update see committed state and may run beside a write.
type Store interface {
	Reader
	Update(ctx context.Context, fn func(Tx) error) error
	Close() error
}

// Reader reads the state. Methods that look up one row return an error
// wrapping ErrNotFound when it does not exist.
type Reader interface {
	// Ping checks that the state is readable (health checks).
	Ping(ctx context.Context) error
	// ClusterName is fixed by Init; ErrNotFound before it.
	ClusterName(ctx context.Context) (string, error)
	CAs(ctx context.Context) ([]CA, error)

	Bot(ctx context.Context, name string) (*Bot, error)
	Bots(ctx context.Context) ([]*Bot, error) // by name
	Token(ctx context.Context, name string) (*Token, error)
	TokenBySecret(ctx context.Context, secretHash []byte) (*Token, error)
	Tokens(ctx context.Context) ([]*Token, error) // by name
	// Roles returns the named roles in the order named.
	Roles(ctx context.Context, names []string) ([]policy.Role, error)
	AllRoles(ctx context.Context) ([]policy.Role, error) // by name
	Nodes(ctx context.Context) ([]identity.Node, error)  // by name
	// Exists says whether a resource of kind (a policy.Kind*) is stored.
	Exists(ctx context.Context, kind, name string) (bool, error)

	EventReader // the audit trail (event.go)
}

// Tx is one write transaction, valid only inside the function given to
// Update. Its reads see its own changes.
type Tx interface {
	Reader
	EventWriter // the audit trail (event.go)

	// Init stores the cluster name, its CAs and the built-in roles, unless a
	// cluster name is stored already (a concurrent first start): then it
	// changes nothing and returns false.
	Init(ctx context.Context, cluster string, cas []CA, roles []policy.Role) (bool, error)

	// AddBot stores a new bot; ErrConflict if one of that name exists.
	AddBot(ctx context.Context, b *Bot) error
	// SetBotGrants changes what a bot may do, keeping its instance and
	// generation.
	SetBotGrants(ctx context.Context, name string, roles, logins []string, tokenName string) error
	// Rejoin starts a new instance of a bot at generation 1, the key of
	// whose identity has hash keyHash.
	Rejoin(ctx context.Context, name, instance string, keyHash []byte) error
	// AdvanceGeneration moves a bot from generation from to from+1 and
	// stores keyHash; false (nothing changed) if it is not at from.
	AdvanceGeneration(ctx context.Context, name string, from uint64, keyHash []byte) (bool, error)
	// SetLocked locks a bot with a reason, or unlocks it with "".
	SetLocked(ctx context.Context, name, reason string) error

	// PutToken stores a token, replacing one of the same name if replace
	// is set. ErrConflict if its secret hash (or, without replace, its
	// name) is already stored.
	PutToken(ctx context.Context, t *Token, replace bool) error
	// UseToken marks an unused token used at at, by the key with hash
	// keyHash for bot instance instance; false (nothing changed) if it was
	// already used.
	UseToken(ctx context.Context, name string, at time.Time, keyHash []byte, instance string) (bool, error)
	// RemoveBotTokens removes a bot's tokens of a join method, or only its
	// unused ones.
	RemoveBotTokens(ctx context.Context, bot, joinMethod string, unusedOnly bool) error
	// RemoveExpiredTokens removes tokens that expired before cutoff and
	// says how many.
	RemoveExpiredTokens(ctx context.Context, cutoff time.Time) (int64, error)

	PutRole(ctx context.Context, r policy.Role) error   // adds or replaces
	PutNode(ctx context.Context, n identity.Node) error // adds or replaces
	// Remove removes a resource of kind (a policy.Kind*); false if there
	// was none.
	Remove(ctx context.Context, kind, name string) (bool, error)
}

// CA is one stored certificate authority.
type CA struct {
	Kind    string // user, host or db
	KeyDER  []byte // PKCS #8 private key
	CertDER []byte
}

// Bot is a stored bot.
type Bot struct {
	Name        string
	Roles       []string
	Logins      []string
	Instance    string // changes at every token join; certificates carry it
	Generation  uint64
	LastKeyHash []byte // key of the latest renewable identity, for retries of a lost answer
	Locked      string // why it is locked; empty if not
	TokenName   string // delegated token, if any
	Created     time.Time
}

// Token is a stored join token. Expires is zero for tokens that never
// expire (delegated tokens without metadata.expires).
type Token struct {
	Name         string
	BotName      string
	JoinMethod   string
	Allow        []policy.AllowRule
	Expires      time.Time
	Created      time.Time
	SecretHash   []byte    // one-time tokens only
	Used         time.Time // zero while unused; only one-time tokens get used
	UsedKeyHash  []byte
	UsedInstance string
}
