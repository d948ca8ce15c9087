package joiner

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

// Defaults, as Teleport's tbot has them.
const (
	DefaultCertTTL       = time.Hour
	DefaultRenewInterval = 20 * time.Minute
	// DefaultNodesInterval is how often the agent asks whether the node
	// list changed. The answer to an unchanged list (304) costs the
	// authority what GET /v1/ca costs, about 0.12 ms of CPU on a kept-alive
	// connection (README, benchmarks), so 10,000 agents cost it about 8%
	// of a core; and an added node reaches ssh_config in 7.5 s on average.
	// Kept below the authority's idle connection timeout, so that a poll
	// never pays for a TLS handshake.
	DefaultNodesInterval = 15 * time.Second
	// DefaultJoinTimeout bounds how long a start keeps retrying an
	// unreachable authority: long enough to ride out a network that comes
	// up after the agent (boot order), short enough that a wrong address
	// fails while someone is still watching. systemd restarts after that.
	DefaultJoinTimeout = time.Minute
)

// wallTick is how often the renewal loop looks at the wall clock even when
// no renewal is due: Go timers stop while a machine is suspended, so a
// laptop that wakes after two hours would otherwise serve expired
// credentials until its stale timer fires.
const wallTick = 10 * time.Second

// requestTimeout bounds one HTTPS call to the authority.
const requestTimeout = 30 * time.Second

// Config says how to join the authority and how to keep the identity fresh.
type Config struct {
	// AuthServer is the HOST:PORT of the authority's HTTPS API, or of
	// several of its replicas separated by commas; a name may resolve to
	// several addresses, each a replica. The agent uses one at a time and
	// moves to another when it fails.
	AuthServer string
	// Resolver resolves the names in AuthServer; nil: the system's.
	Resolver *net.Resolver
	// Token is the join token: a one-time secret for the token method, the
	// (public) name of an iam token for the iam method. May be empty when a
	// stored bot identity exists.
	Token      string
	JoinMethod string // wire.JoinToken (default) or wire.JoinIAM
	// FIPS makes the iam method sign for AWS's FIPS STS endpoints
	// (sts-fips.REGION.amazonaws.com; us-east-1's where a region has none).
	FIPS bool
	// CAPin is "sha256:HEX", or several separated by commas during a CA
	// rotation. Required to join; a restart from a stored identity trusts
	// the CAs stored with it.
	CAPin     string
	Algorithm identity.Algorithm // of every key; default ECDSA P-256
	// CertTTL is the lifetime asked for the output identity (the authority caps it).
	CertTTL       time.Duration
	RenewInterval time.Duration // bot and output identity renewal
	NodesInterval time.Duration // node list refresh between renewals
	JoinTimeout   time.Duration // how long to retry network errors at start
	Store         Store         // where the bot identity survives a restart; default memory
	// Node, for the node side: join as this node, with a one-time node
	// token or an iam token of role Node. Its fields are checked by the
	// authority (and by the node side first).
	Node   *wire.NodeInfo
	Logger *slog.Logger
	Clock  clock.Clock // default clock.Real()
}

// Validate checks the configuration without contacting anyone, so that a
// command can refuse bad flags before it touches the mountpoint. The error
// is of kind ErrConfig.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// withDefaults fills zero fields and checks the rest. The returned error is
// of kind ErrConfig.
func (c Config) withDefaults() (Config, error) {
	if c.JoinMethod == "" {
		c.JoinMethod = wire.JoinToken
	}
	if c.Algorithm == "" {
		c.Algorithm = identity.DefaultAlgorithm
	}
	if c.CertTTL == 0 {
		c.CertTTL = DefaultCertTTL
	}
	if c.RenewInterval == 0 {
		c.RenewInterval = DefaultRenewInterval
	}
	if c.NodesInterval == 0 {
		c.NodesInterval = DefaultNodesInterval
	}
	if c.JoinTimeout == 0 {
		c.JoinTimeout = DefaultJoinTimeout
	}
	if c.Store == nil {
		c.Store = MemoryStore()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	bad := func(format string, args ...any) (Config, error) {
		return c, &kindError{kind: ErrConfig, msg: fmt.Sprintf(format, args...)}
	}
	if _, err := ParseAuthServers(c.AuthServer); err != nil {
		return c, err
	}
	if c.JoinMethod != wire.JoinToken && c.JoinMethod != wire.JoinIAM {
		return bad("bad --join-method %q: want token or iam", c.JoinMethod)
	}
	if _, err := identity.ParseAlgorithm(string(c.Algorithm)); err != nil {
		return bad("%v", err)
	}
	if c.CertTTL < 0 || c.RenewInterval < 0 || c.NodesInterval < 0 || c.JoinTimeout < 0 {
		return bad("--certificate-ttl, --renewal-interval and --join-timeout must be positive")
	}
	if c.RenewInterval >= c.CertTTL {
		return bad("--renewal-interval %v must be shorter than --certificate-ttl %v, or the credentials expire before they are renewed", c.RenewInterval, c.CertTTL)
	}
	if c.CAPin != "" {
		if _, err := parsePins(c.CAPin); err != nil {
			return c, err
		}
	}
	return c, nil
}

// tokenHash is what a stored identity remembers of the token that made
// it: enough to tell a new token from the old one, useless to an attacker.
func tokenHash(token string) string {
	if token == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}
