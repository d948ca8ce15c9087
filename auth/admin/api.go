package admin

import (
	"path/filepath"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
)

// SocketPath is the path of the admin socket of a data directory.
func SocketPath(dataDir string) string { return filepath.Join(dataDir, "admin.sock") }

// maxBody caps admin requests: resource files are small.
const maxBody = 4 << 20

// BotSpec asks for a bot and, unless TokenName names a delegated token, a
// one-time join token for it.
type BotSpec struct {
	Name      string        `json:"name"`
	Roles     []string      `json:"roles"`
	Logins    []string      `json:"logins,omitempty"`
	TokenName string        `json:"token_name,omitempty"` // bind to this existing iam token instead of making a one-time token
	TTL       time.Duration `json:"ttl,omitempty"`        // of the one-time token; default 1h
	Replace   bool          `json:"replace,omitempty"`    // bot exists: update it and issue a new token instead of failing
}

// BotToken is what `bots add` prints: how the new bot joins.
type BotToken struct {
	Bot         string    `json:"bot"`
	Token       string    `json:"token,omitempty"` // the one-time secret; empty for a delegated token
	TokenName   string    `json:"token_name"`      // as `get tokens` lists it
	JoinMethod  string    `json:"join_method"`
	Expires     time.Time `json:"expires,omitzero"` // zero: never
	CAPin       string    `json:"ca_pin"`
	AuthServer  string    `json:"auth_server"`
	ClusterName string    `json:"cluster_name"`
}

// NodeTokenSpec asks for a one-time token that joins one node.
type NodeTokenSpec struct {
	Labels map[string]string `json:"labels,omitempty"` // every node joining with it gets them, over its own
	TTL    time.Duration     `json:"ttl,omitempty"`    // default 30m
}

// NodeToken is what `tokens add --type=node` prints: how a node joins.
type NodeToken struct {
	Token       string            `json:"token"`      // the one-time secret
	TokenName   string            `json:"token_name"` // as `get tokens` lists it
	Labels      map[string]string `json:"labels,omitempty"`
	Expires     time.Time         `json:"expires"`
	CAPin       string            `json:"ca_pin"`
	AuthServer  string            `json:"auth_server"`
	ClusterName string            `json:"cluster_name"`
}

// LockSpec asks for a lock on a bot.
type LockSpec struct {
	Bot     string        `json:"bot"`
	Message string        `json:"message,omitempty"`
	TTL     time.Duration `json:"ttl,omitempty"` // 0: until removed
}

// Status is what `midfs status` prints.
type Status struct {
	ClusterName   string              `json:"cluster_name"`
	Version       string              `json:"version"`
	CAPin         string              `json:"ca_pin"` // comma-separated during a rotation of the host CA
	Addr          string              `json:"addr"`
	AdvertiseAddr string              `json:"advertise_addr"`
	CAs           []policy.CAResource `json:"cas,omitempty"`
}

// Export types of `midfs auth export`.
const (
	ExportUser    = "user"     // SSH user CA: a TrustedUserCAKeys line
	ExportHost    = "host"     // SSH host CA: a known_hosts @cert-authority line
	ExportTLSUser = "tls-user" // PEM
	ExportTLSHost = "tls-host" // PEM
	ExportDB      = "db"       // PEM
)

type textResponse struct {
	Text string `json:"text"`
}

type signHostRequest struct {
	PublicKey string        `json:"public_key"` // authorized_keys form
	Hosts     []string      `json:"hosts"`
	TTL       time.Duration `json:"ttl"`
}

type nodeRequest struct {
	Node identity.Node `json:"node"`
}
