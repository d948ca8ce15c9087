package joiner

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"time"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// bot is the renewable bot identity: what authenticates renewals and
// output requests, and what a Store keeps.
type bot struct {
	name       string
	cluster    string
	key        crypto.Signer
	cert       *x509.Certificate
	generation uint64
	renewable  bool
	hostCAs    []*x509.Certificate
	// pinnedBy is the --ca-pin that vouched for the first host CAs of
	// this chain of identities: the ones it joined with, or that a
	// restart checked. Host CAs learnt from the authority since (a
	// rotation) are trusted as long as the same pin is given.
	pinnedBy string
}

func (b *bot) expires() time.Time { return b.cert.NotAfter }

// newBot checks an answer of the authority against the key it was asked for.
func newBot(bi *wire.BotIdentity, key crypto.Signer, hostCAs []*x509.Certificate) (*bot, error) {
	cert, err := x509.ParseCertificate(bi.TLSCert)
	if err != nil {
		return nil, fmt.Errorf("the authority sent a bot certificate that does not parse: %v", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	if string(pub) != string(cert.RawSubjectPublicKeyInfo) {
		return nil, fmt.Errorf("the authority sent a bot certificate for another key")
	}
	return &bot{
		name: bi.BotName, cluster: bi.ClusterName, key: key, cert: cert,
		generation: bi.Generation, renewable: bi.Renewable, hostCAs: hostCAs,
	}, nil
}

// storedBot is the Store's blob. Version lets a later agent refuse (and
// replace) a format it does not know instead of misreading it.
//
// Pending is the key of a join or renewal that was sent and whose answer
// may be lost: it is stored before the request goes out, so that after a
// crash the restart sends that same request again, which the authority
// answers again, instead of a new key that would find the token used or
// the bot's generation moved on (and lock the bot). Without Cert the blob
// is only a join in flight: the token itself is not kept, the restart is
// given it again and TokenHash tells whether it is the same one.
type storedBot struct {
	Version    int      `json:"version"`
	AuthServer string   `json:"auth_server"`
	Cluster    string   `json:"cluster_name"`
	BotName    string   `json:"bot_name"`
	TokenHash  string   `json:"token_sha256"` // hex SHA-256 of the token that made the bot
	Key        []byte   `json:"key"`          // PKCS#8 DER
	Cert       []byte   `json:"cert"`         // DER
	Generation uint64   `json:"generation"`
	Renewable  bool     `json:"renewable"`
	HostCAs    [][]byte `json:"host_cas"`              // DER
	PinnedBy   string   `json:"pinned_by,omitempty"`   // see bot.pinnedBy
	Pending    []byte   `json:"pending_key,omitempty"` // PKCS#8 DER
}

const storedVersion = 1

// marshalStored makes the blob of bot b (nil while a join is in flight)
// and of the key of the request in flight (nil if none).
func marshalStored(authServer, tokenHash string, b *bot, pending crypto.Signer) ([]byte, error) {
	s := storedBot{Version: storedVersion, AuthServer: authServer, TokenHash: tokenHash}
	defer func() { clear(s.Key); clear(s.Pending) }()
	var err error
	if b != nil {
		if s.Key, err = x509.MarshalPKCS8PrivateKey(b.key); err != nil {
			return nil, err
		}
		s.Cluster, s.BotName, s.Cert, s.Generation, s.Renewable, s.PinnedBy = b.cluster, b.name, b.cert.Raw, b.generation, b.renewable, b.pinnedBy
		for _, ca := range b.hostCAs {
			s.HostCAs = append(s.HostCAs, ca.Raw)
		}
	}
	if pending != nil {
		if s.Pending, err = x509.MarshalPKCS8PrivateKey(pending); err != nil {
			return nil, err
		}
	}
	return json.Marshal(s)
}

// unmarshalStored reads a blob: the bot identity (nil if only a join was
// in flight) and the key of the request in flight (nil if none). The
// caller clears blob afterwards.
func unmarshalStored(blob []byte) (*bot, crypto.Signer, *storedBot, error) {
	var s storedBot
	if err := json.Unmarshal(blob, &s); err != nil {
		return nil, nil, nil, fmt.Errorf("stored bot identity does not parse: %v", err)
	}
	defer func() { clear(s.Key); clear(s.Pending) }()
	if s.Version != storedVersion {
		return nil, nil, nil, fmt.Errorf("stored bot identity has format version %d, this midfs reads %d", s.Version, storedVersion)
	}
	var pending crypto.Signer
	if s.Pending != nil {
		var err error
		if pending, err = identity.ParsePrivateKeyDER(s.Pending); err != nil {
			return nil, nil, nil, fmt.Errorf("stored bot identity: key in flight: %v", err)
		}
	}
	if s.Cert == nil {
		if pending == nil {
			return nil, nil, nil, fmt.Errorf("stored bot identity holds neither an identity nor a join in flight")
		}
		return nil, pending, &s, nil
	}
	key, err := identity.ParsePrivateKeyDER(s.Key)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("stored bot identity: %v", err)
	}
	var cas []*x509.Certificate
	for _, der := range s.HostCAs {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("stored bot identity: host CA: %v", err)
		}
		cas = append(cas, c)
	}
	b, err := newBot(&wire.BotIdentity{
		BotName: s.BotName, ClusterName: s.Cluster, TLSCert: s.Cert, Generation: s.Generation, Renewable: s.Renewable,
	}, key, cas)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("stored bot identity: %v", err)
	}
	b.pinnedBy = s.PinnedBy
	return b, pending, &s, nil
}
