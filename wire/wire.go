// Package wire holds the JSON messages of the authority's HTTPS API and the
// constants both ends need (join methods, the TTL cap, the server name): the
// only thing, besides identity, that the authority (auth) and the agent
// (joiner) share, and the helpers both of the authority's HTTP servers (the
// HTTPS API and the admin socket) read requests and write answers with.
// Byte slices travel as base64 (encoding/json's default).
// Anything may import wire; wire imports only identity and the standard
// library.
package wire

import (
	"time"

	"github.com/midfs/midfs/identity"
)

// Join methods: how a bot proves who it is when it first joins.
const (
	JoinToken = "token" // one-time secret; renewable bot identity
	JoinIAM   = "iam"   // delegated: AWS IAM identity; non-renewable, token reusable
)

// MaxTTL caps the lifetime of every credential the authority issues; a client
// asking for longer gets MaxTTL.
const MaxTTL = 24 * time.Hour

// Paths of the HTTPS API.
const (
	// PathCA answers GET without a client certificate: the cluster name and
	// the host CA certificates a joining client checks against its CA pin.
	PathCA = "/v1/ca"
	// PathJoin answers POST JoinRequest with a renewable BotIdentity.
	PathJoin = "/v1/join"
	// PathRenew answers POST RenewRequest, over mTLS with the bot identity,
	// with the next BotIdentity.
	PathRenew = "/v1/renew"
	// PathCerts answers POST CertsRequest, over mTLS with the bot identity,
	// with the output identity (Certs).
	PathCerts = "/v1/certs"
	// PathNodes answers GET, over mTLS with a bot or output identity, with
	// the nodes that identity's roles may reach.
	PathNodes = "/v1/nodes"
	// PathLocks answers GET, over mTLS with any identity the cluster
	// issued (a node's or a bot's), with the LockList in force, and with
	// 304 Not Modified when If-None-Match names the list the caller holds.
	PathLocks = "/v1/locks"
	// PathIAMChallenge answers POST with a single-use IAMChallenge.
	PathIAMChallenge = "/v1/join/iam/challenge"
	// PathIAMJoin answers POST IAMJoinRequest with a non-renewable
	// BotIdentity: a bot's, or with Node a node's.
	PathIAMJoin = "/v1/join/iam"
	// PathHostCert answers POST HostCertRequest, over mTLS with a node's
	// identity, with HostCerts: the node's SSH host certificate.
	PathHostCert = "/v1/node/hostcert"
	// PathHeartbeat answers POST Heartbeat, over mTLS with a node's
	// identity, with HeartbeatAnswer; it keeps the node in the inventory.
	PathHeartbeat = "/v1/node/heartbeat"
)

// ServerName is a DNS name that every authority's HTTPS certificate carries.
// Clients verify the authority by its pinned host CA, not by the address they
// dialled, so they always ask for this name (as Teleport does with
// teleport.cluster.local).
const ServerName = "auth.midfs.cluster.local"

// MaxBody caps every request and response body; larger ones are refused.
const MaxBody = 64 << 10

// ChallengeHeader carries the IAM challenge inside the signed STS request.
const ChallengeHeader = "X-Midfs-Challenge"

// CAResponse is the answer to GET PathCA.
type CAResponse struct {
	ClusterName string   `json:"cluster_name"`
	HostCAs     [][]byte `json:"host_cas"` // DER certificates
}

// JoinRequest trades a one-time token for a bot identity, or with a node
// token (Node set) for the identity of that node.
type JoinRequest struct {
	Token     string    `json:"token"`
	PublicKey []byte    `json:"public_key"` // PKIX DER of the key the client generated
	Node      *NodeInfo `json:"node,omitempty"`
}

// NodeInfo is what a node says of itself when it joins and at every
// heartbeat: its name, the address of its sshd and its own labels. The
// authority checks every field (identity.CheckNode) before it keeps it.
type NodeInfo struct {
	Name   string            `json:"name"`
	Addr   string            `json:"addr"`
	Labels map[string]string `json:"labels,omitempty"`
}

// HostCertRequest asks for an SSH host certificate for the node's host key.
type HostCertRequest struct {
	PublicKey  string `json:"public_key"`            // authorized_keys form
	TTLSeconds int64  `json:"ttl_seconds,omitempty"` // 0: the authority's default; capped by it
}

// HostCerts is what a node serves its sshd: a host certificate for
// NAME.CLUSTER and NAME, and the user CAs sshd trusts.
type HostCerts struct {
	ClusterName string   `json:"cluster_name"`
	HostCert    string   `json:"host_cert"` // authorized_keys line
	UserCAs     []string `json:"user_cas"`  // authorized_keys lines (TrustedUserCAKeys)
}

// Heartbeat keeps a node in the inventory for one and a half of its
// intervals (one heartbeat may come late), and updates its address and
// labels.
type Heartbeat struct {
	Addr            string            `json:"addr"`
	Labels          map[string]string `json:"labels,omitempty"`
	IntervalSeconds int64             `json:"interval_seconds"`
}

// HeartbeatAnswer tells the node the labels bots' roles see it by (its
// own, overridden by its join token's), which it must enforce by too, and
// until when it stays in the inventory without another heartbeat.
type HeartbeatAnswer struct {
	Labels  map[string]string `json:"labels"`
	Expires time.Time         `json:"expires"`
	// CAs are the cluster's CAs: a node trusts every user CA among them
	// and renews its host certificate and identity when the CA that
	// signs them changes (a rotation), within one heartbeat.
	CAs *CASet `json:"cas,omitempty"`
}

// RenewRequest asks for the next bot identity for a fresh key.
type RenewRequest struct {
	PublicKey []byte `json:"public_key"`
}

// BotIdentity is the bot's own credential: a TLS client certificate that
// authenticates renewals and output requests. It never appears in the mount.
type BotIdentity struct {
	BotName     string `json:"bot_name"`
	ClusterName string `json:"cluster_name"`
	TLSCert     []byte `json:"tls_cert"` // DER
	Generation  uint64 `json:"generation"`
	Renewable   bool   `json:"renewable"`
}

// CertsRequest asks for an output identity for a fresh key.
type CertsRequest struct {
	PublicKey  []byte `json:"public_key"`
	TTLSeconds int64  `json:"ttl_seconds,omitempty"` // 0: the authority's default; capped by it
}

// CA is one certificate authority on the wire.
type CA struct {
	TLS []byte `json:"tls"`           // DER certificate
	SSH string `json:"ssh,omitempty"` // authorized_keys line; empty for the database CA
	// Signing marks, among the CAs of a kind, the one that signs new
	// certificates (see CASet); the others are trusted only.
	Signing bool `json:"signing,omitempty"`
}

// Certs is the output identity: what the mount serves.
type Certs struct {
	ClusterName string `json:"cluster_name"`
	SSHCert     string `json:"ssh_cert"` // authorized_keys line
	TLSCert     []byte `json:"tls_cert"` // DER
	UserCAs     []CA   `json:"user_cas"`
	HostCAs     []CA   `json:"host_cas"`
	DatabaseCAs []CA   `json:"database_cas"`
}

// NodeList is the answer to GET PathNodes. Its ETag moves with the CAs
// too, so that an agent polling with If-None-Match sees a rotation's
// phase change at its next poll.
type NodeList struct {
	CAs   *CASet          `json:"cas,omitempty"`
	Nodes []identity.Node `json:"nodes"`
}

// Lock refuses a bot everywhere: at the authority (renewals, certificates,
// node lists) and at every enforcing node, whatever certificates it holds.
type Lock struct {
	ID      string    `json:"id"`
	Bot     string    `json:"bot"`
	Message string    `json:"message,omitempty"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"` // zero: until removed
}

// InForce says whether the lock applies at now: it has no expiry, or it
// has not reached it.
func (l *Lock) InForce(now time.Time) bool {
	return l.Expires.IsZero() || now.Before(l.Expires)
}

// LockList is the answer to GET PathLocks.
type LockList struct {
	Locks []Lock `json:"locks"`
}

// IAMChallenge is an unguessable, single-use, short-lived challenge that the
// client signs into its sts:GetCallerIdentity request.
type IAMChallenge struct {
	Challenge string `json:"challenge"`
}

// IAMJoinRequest proves an AWS identity with a signed, unsent
// sts:GetCallerIdentity request. It never carries the AWS secret key.
type IAMJoinRequest struct {
	Token      string `json:"token"`       // name of an iam token; not a secret
	Challenge  string `json:"challenge"`   // as received from PathIAMChallenge
	STSRequest []byte `json:"sts_request"` // the signed HTTP/1.1 request, as sent on the wire
	PublicKey  []byte `json:"public_key"`
	// Node, for a node joining with an iam token of role Node: the node
	// as it names itself, as in JoinRequest. A node joining again (its
	// identity nears expiry) presents its current identity as the TLS
	// client certificate, which lets it keep its name.
	Node *NodeInfo `json:"node,omitempty"`
}

// Error is the body of every non-2xx answer: one line for the user.
type Error struct {
	Error string `json:"error"`
}
