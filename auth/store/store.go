// Package store is the authority's state behind one small interface: the
// cluster name and CA keys, roles, bots, join tokens, nodes and locks. A backend
// (SQLite in store/sqlite, the embedded default; PostgreSQL in
// store/postgres, shared by replicas) implements Store; the authority
// (package auth) holds the rules of what to read and write, so a new backend
// is a new implementation of these methods, not an edit of every query.
// One suite (store/storetest) checks every promise below on every backend.
//
// A method added here is added to both backends, with a test in storetest;
// a table or column is a new numbered migration in each backend's list
// (never an edit of a released one), and a table is carried by Dump (the
// audit trail, too large to hold in memory, by CopyEvents).
//
// Only auth and its sub-packages import it. It imports policy (roles and
// allow rules are stored as policy values), identity (nodes), wire
// (locks) and audit (events), never auth.
package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
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
	// ErrSchemaNewer: the state was written by a newer midfs, whose
	// tables this one does not know; Open refuses it, writing nothing.
	ErrSchemaNewer = errors.New("the database was written by a newer midfs")
	// ErrOtherCluster: the state belongs to another cluster than
	// Options.Cluster; Open refuses it, writing nothing.
	ErrOtherCluster = errors.New("the database holds another cluster")
)

// Options are what every backend's Open takes.
type Options struct {
	// Cluster, if set, is the cluster the opener serves: a state that
	// holds another cluster's name is refused (ErrOtherCluster) before
	// anything is written. A fresh state accepts any.
	Cluster string
	// PollInterval bounds how late Changed reports a change made through
	// another handle when no faster signal arrives (0: DefaultPollInterval).
	PollInterval time.Duration
	// Logger gets what a backend has to say outside any call (a lost
	// connection to the database); nil: slog.Default().
	Logger *slog.Logger
}

// DefaultPollInterval is Options.PollInterval's default.
const DefaultPollInterval = 5 * time.Second

// Topics of Versions and Changed.
const (
	// TopicInventory moves with every committed change of what any bot's
	// node list shows: PutNode, PutRole, Remove of a node or role,
	// SetBotGrants, Init and Restore move it. ExtendNode does not: a
	// heartbeat that keeps a node in changes nothing bots see.
	TopicInventory = "inventory"
	// TopicLocks moves with every committed change of the locks: PutLock,
	// Remove of a lock, RemoveExpiredLocks that removed one, and Restore.
	TopicLocks = "locks"
	// TopicCAs moves with every committed change of the CAs or of where
	// their rotation is: AddCA, RemoveCA and PutRotation move it, and
	// Restore sets it.
	TopicCAs = "cas"
)

// Store is the authority's state. Several Stores may be open on one state
// (replicas on one PostgreSQL database; for tests, two handles on one
// SQLite file): every guarantee holds across them.
//
// The guarantees callers rely on:
//
//   - Update runs fn in one serializable write transaction: what fn reads
//     is what it writes over, and either all of fn's changes are committed
//     or none is. An error from fn undoes fn's changes only (a backend may
//     commit several callers' functions together, but never lets one undo
//     another's) and is returned as it is.
//   - fn may run more than once: a backend that loses a serialization
//     conflict undoes the attempt and runs fn again. Only the last run's
//     changes and result count, so fn sets every result it hands out on
//     each run and keeps nothing from an earlier one.
//   - A commit is durable before Update returns nil: a change the client
//     was told about survives a crash or power cut.
//   - Update waits until fn has run and its changes are committed or
//     undone, even when ctx is cancelled: a change, once queued, is never
//     left half-known to its caller. (A database server that goes away
//     during a commit leaves its outcome unknown: Update then returns an
//     error though the change may have committed. The authority's writes
//     are safe to retry, for that reason among others.)
//   - Once Update has returned nil, every read of every Store on the
//     state sees the change.
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
	// Changed returns a channel that receives a value after a change of
	// topic committed, through this Store or another on the same state:
	// at once for this Store's own changes, and within the backend's
	// bound (Options.PollInterval at most) for another's. One value may
	// stand for several changes; read Versions for where things are. The
	// channel is closed by Close.
	Changed(topic string) <-chan struct{}
	Close() error
}

// Reader reads the state. Methods that look up one row return an error
// wrapping ErrNotFound when it does not exist.
type Reader interface {
	// Ping checks that the state is readable (health checks).
	Ping(ctx context.Context) error
	// ClusterName is fixed by Init; ErrNotFound before it.
	ClusterName(ctx context.Context) (string, error)
	// ClusterID is a random name made by Init and kept by Restore: two
	// states of one cluster name made apart never share it.
	ClusterID(ctx context.Context) (string, error)
	// Versions says how many changes each topic (Topic*) has seen; a
	// topic never changed is absent.
	Versions(ctx context.Context) (map[string]uint64, error)
	// CAs returns every stored CA, by kind, oldest first.
	CAs(ctx context.Context) ([]CA, error)
	// Rotations returns where the rotation of each kind of CA is, by kind.
	Rotations(ctx context.Context) ([]Rotation, error)

	Bot(ctx context.Context, name string) (*Bot, error)
	Bots(ctx context.Context) ([]*Bot, error) // by name
	Token(ctx context.Context, name string) (*Token, error)
	TokenBySecret(ctx context.Context, secretHash []byte) (*Token, error)
	Tokens(ctx context.Context) ([]*Token, error) // by name
	// Roles returns the named roles in the order named.
	Roles(ctx context.Context, names []string) ([]policy.Role, error)
	AllRoles(ctx context.Context) ([]policy.Role, error) // by name
	Node(ctx context.Context, name string) (*Node, error)
	Nodes(ctx context.Context) ([]Node, error) // by name
	// Locks returns the locks on bot, or every lock when bot is "",
	// expired ones too, oldest first. Times are whole seconds.
	Locks(ctx context.Context, bot string) ([]wire.Lock, error)
	// Exists says whether a resource of kind (a policy.Kind*) is stored.
	Exists(ctx context.Context, kind, name string) (bool, error)

	EventReader // the audit trail (event.go)
}

// Tx is one write transaction, valid only inside the function given to
// Update. Its reads see its own changes.
type Tx interface {
	Reader
	EventWriter // the audit trail (event.go)

	// Init stores the cluster name, a new ClusterID, its CAs (one of each
	// kind, each the active CA of its kind, not rotating) and the
	// built-in roles, unless a cluster name is stored already (a
	// concurrent first start): then it changes nothing and returns false.
	Init(ctx context.Context, cluster string, cas []CA, roles []policy.Role) (bool, error)
	// Restore writes a whole state (moved from another backend) as it
	// was, into a state that has no cluster yet; ErrConflict if it has.
	Restore(ctx context.Context, d *Dump) error
	// PutCA replaces the key and certificate of the stored CA of ca.ID
	// (the authority seals the keys of an existing cluster with it);
	// ErrNotFound if there is none.
	PutCA(ctx context.Context, ca CA) error

	// AddCA stores one more CA (a rotation's new one); ErrConflict if
	// its ID is stored.
	AddCA(ctx context.Context, ca CA) error
	// RemoveCA removes the CA of an ID (the one a rotation retires);
	// false if there was none.
	RemoveCA(ctx context.Context, id string) (bool, error)
	// PutRotation stores where the rotation of r.Kind is, replacing what
	// was stored for that kind.
	PutRotation(ctx context.Context, r Rotation) error

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

	// SpendChallenge records the identifier of a taken IAM challenge until
	// expires; false (nothing changed) if it is recorded already. It is
	// what makes a challenge single-use across replicas.
	SpendChallenge(ctx context.Context, id []byte, expires time.Time) (bool, error)
	// RemoveSpentChallenges forgets challenges recorded until before
	// cutoff and says how many.
	RemoveSpentChallenges(ctx context.Context, cutoff time.Time) (int64, error)

	PutRole(ctx context.Context, r policy.Role) error // adds or replaces
	PutNode(ctx context.Context, n Node) error        // adds or replaces
	// ExtendNode moves a stored node's Expires (a heartbeat that changes
	// nothing else) without moving TopicInventory: what bots see does not
	// change, and replicas need not read it again. False if there is no
	// such node.
	ExtendNode(ctx context.Context, name string, expires time.Time) (bool, error)
	// PutLock stores a new lock; ErrConflict if its ID is taken.
	PutLock(ctx context.Context, l wire.Lock) error
	// RemoveExpiredLocks removes locks that expired before cutoff and says
	// how many.
	RemoveExpiredLocks(ctx context.Context, cutoff time.Time) (int64, error)
	// Remove removes a resource of kind (a policy.Kind*; a lock by its ID);
	// false if there was none.
	Remove(ctx context.Context, kind, name string) (bool, error)
}

// CA is one stored certificate authority. A kind has one between
// rotations and two during one (see Rotation).
type CA struct {
	ID      string // random, fixed when the CA is made
	Kind    string // user, host or db
	KeyDER  []byte // PKCS #8 private key, or sealed (package auth/seal); stored as given
	CertDER []byte
	Created time.Time
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

// Node is a stored node: an entry of the inventory bots see, typed by an
// administrator (`midfs nodes add`, Agent false) or registered by the node
// itself (`midfs node start`, Agent true). Only an agent's node enforces
// access at its sshd, and it stays in what bots see only while it
// heartbeats.
type Node struct {
	identity.Node
	Agent bool
	// Expires is when an agent's node leaves the inventory unless it
	// heartbeats again; zero until its first heartbeat.
	Expires time.Time
	// TokenLabels are the labels of the token the node joined with: they
	// override the node's own labels of the same keys.
	TokenLabels map[string]string
}

// Token is a stored join token. Expires is zero for tokens that never
// expire (delegated tokens without metadata.expires).
type Token struct {
	Name    string
	BotName string // empty for node tokens: a node names itself when it joins
	// Role is what the token joins: policy.TokenRoleBot (also when empty,
	// as in tokens stored before nodes joined) or policy.TokenRoleNode.
	Role         string
	Labels       map[string]string // node tokens: labels the node gets
	JoinMethod   string
	Allow        []policy.AllowRule
	Expires      time.Time
	Created      time.Time
	SecretHash   []byte    // one-time tokens only
	Used         time.Time // zero while unused; only one-time tokens get used
	UsedKeyHash  []byte
	UsedInstance string
}

// Dump is a whole state: what `midfs auth migrate` moves from one backend
// to another. Every stored table is in it but the spent IAM challenges,
// which matter for a minute and only to the replicas that took them.
type Dump struct {
	ClusterName string
	ClusterID   string
	Versions    map[string]uint64
	CAs         []CA
	Rotations   []Rotation
	Roles       []policy.Role
	Bots        []*Bot
	Tokens      []*Token
	Nodes       []Node
	Locks       []wire.Lock
}

// DumpState reads a whole state; inside Update, all of it at one moment.
func DumpState(ctx context.Context, r Reader) (*Dump, error) {
	var d Dump
	var err error
	if d.ClusterName, err = r.ClusterName(ctx); err != nil {
		return nil, err
	}
	if d.ClusterID, err = r.ClusterID(ctx); err != nil {
		return nil, err
	}
	if d.Versions, err = r.Versions(ctx); err != nil {
		return nil, err
	}
	if d.CAs, err = r.CAs(ctx); err != nil {
		return nil, err
	}
	if d.Rotations, err = r.Rotations(ctx); err != nil {
		return nil, err
	}
	if d.Roles, err = r.AllRoles(ctx); err != nil {
		return nil, err
	}
	if d.Bots, err = r.Bots(ctx); err != nil {
		return nil, err
	}
	if d.Tokens, err = r.Tokens(ctx); err != nil {
		return nil, err
	}
	if d.Nodes, err = r.Nodes(ctx); err != nil {
		return nil, err
	}
	if d.Locks, err = r.Locks(ctx, ""); err != nil {
		return nil, err
	}
	return &d, nil
}

// NewClusterID makes a ClusterID (Init's).
func NewClusterID() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}
