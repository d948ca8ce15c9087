// Package auth is the midfs authority: it holds the certificate authorities,
// verifies joins, and issues bot and output identities over an HTTPS API.
// Administrators reach it through a Unix socket in its data directory (see
// admin.go). Its rooms: auth/store (the state, SQLite in auth/store/sqlite),
// auth/policy (roles, tokens, nodes and their rules) and auth/iam (the IAM
// join checks). Only cmd and tests import auth.
package auth

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/auth/iam"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

// Defaults of Config.
const (
	DefaultDataDir = "/var/lib/midfs"
	DefaultListen  = "0.0.0.0:3025"
	DefaultTTL     = time.Hour // output identity
	DefaultBotTTL  = time.Hour // the bot's own renewable identity
	DefaultJoinTTL = time.Hour // one-time join tokens
	MaxConns       = 16384     // default cap on API connections: an agent keeps one open between polls
)

// Config configures an authority.
type Config struct {
	DataDir       string        // created 0700; holds admin.sock, and midfs.db unless DB is set
	DB            string        // "": SQLite in DataDir; postgres://...: a PostgreSQL database replicas share
	Listen        string        // "0.0.0.0:3025" by default; tests use "127.0.0.1:0"
	AdvertiseAddr string        // HOST:PORT printed in `bots add` output; default: listen IP, or hostname, and the port
	ClusterName   string        // used only on first start; default: the machine's hostname
	DefaultTTL    time.Duration // output identity TTL when the client asks for none: 1h
	MaxTTL        time.Duration // cap on output TTLs: 24h
	BotTTL        time.Duration // the bot's own identity: 1h
	Version       string        // printed by `midfs status`
	Logger        *slog.Logger
	Clock         clock.Clock           // nil: clock.Real() (tests use a clock.Fake)
	Metrics       prometheus.Registerer // nil: no metrics

	// MaxConns caps the open connections of the HTTPS API (about 45 KB
	// each while idle); at the cap, the one idle longest is closed. 0:
	// MaxConns, or half the open-file limit if that is lower.
	MaxConns int

	// CAKeySeal is the file of the seal key (package auth/seal) that seals
	// the CA private keys in the state. Empty: the systemd credential
	// ca-key-seal if the service has one, else the keys are stored unsealed.
	CAKeySeal string

	// STSEndpoint replaces the AWS STS endpoint for IAM joins; only for
	// tests, so it is refused unless InsecureTestMode is set.
	STSEndpoint      string
	InsecureTestMode bool
}

func (c *Config) setDefaults() error {
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.MaxTTL <= 0 || c.MaxTTL > wire.MaxTTL {
		c.MaxTTL = wire.MaxTTL
	}
	if c.DefaultTTL <= 0 {
		c.DefaultTTL = DefaultTTL
	}
	c.DefaultTTL = min(c.DefaultTTL, c.MaxTTL)
	if c.BotTTL <= 0 {
		c.BotTTL = DefaultBotTTL
	}
	c.BotTTL = min(c.BotTTL, c.MaxTTL)
	if c.MaxConns < 0 {
		return fmt.Errorf("bad --max-connections %d: give a positive number, or 0 for the default", c.MaxConns)
	}
	if c.MaxConns == 0 {
		c.MaxConns = defaultMaxConns()
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Clock == nil {
		c.Clock = clock.Real()
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.STSEndpoint != "" && !c.InsecureTestMode {
		return fmt.Errorf("--sts-endpoint %s is only for tests: add --insecure-test-mode, never in production", c.STSEndpoint)
	}
	if c.STSEndpoint != "" {
		if err := iam.CheckEndpoint(c.STSEndpoint); err != nil {
			return err
		}
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("bad --listen %q: want HOST:PORT, like 0.0.0.0:3025", c.Listen)
	}
	if c.ClusterName != "" {
		// It names hosts in every bot's known_hosts and ssh_config.
		if err := identity.CheckClusterName(c.ClusterName); err != nil {
			return fmt.Errorf("--cluster-name: %w", err)
		}
	}
	return nil
}

// defaultMaxConns leaves half the open-file limit (which Go raises to the
// hard limit at start) to the database, STS requests and the admin socket.
func defaultMaxConns() int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return MaxConns
	}
	return int(min(MaxConns, max(lim.Cur/2, 64)))
}

// defaultClusterName is the hostname, if it is usable as a cluster name.
func defaultClusterName() string {
	h, err := os.Hostname()
	if err != nil || identity.CheckClusterName(h) != nil {
		return "midfs"
	}
	return h
}

// advertiseAddr picks the address printed for clients: the configured one,
// else the listen IP if it is specific, else the hostname; with the port
// actually listened on.
func advertiseAddr(configured, listen string, port string) string {
	if configured != "" {
		return configured
	}
	host, _, _ := net.SplitHostPort(listen)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host, _ = os.Hostname()
	}
	return net.JoinHostPort(host, port)
}
