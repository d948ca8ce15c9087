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
	HostCAs    [][]byte `json:"host_cas"` // DER
}

const storedVersion = 1

func (b *bot) marshal(authServer, tokenHash string) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(b.key)
	if err != nil {
		return nil, err
	}
	defer clear(der)
	s := storedBot{
		Version: storedVersion, AuthServer: authServer, Cluster: b.cluster, BotName: b.name,
		TokenHash: tokenHash, Key: der, Cert: b.cert.Raw, Generation: b.generation, Renewable: b.renewable,
	}
	for _, ca := range b.hostCAs {
		s.HostCAs = append(s.HostCAs, ca.Raw)
	}
	return json.Marshal(s)
}

// unmarshalBot reads a blob; the caller clears blob afterwards.
func unmarshalBot(blob []byte) (*bot, *storedBot, error) {
	var s storedBot
	if err := json.Unmarshal(blob, &s); err != nil {
		return nil, nil, fmt.Errorf("stored bot identity does not parse: %v", err)
	}
	defer clear(s.Key)
	if s.Version != storedVersion {
		return nil, nil, fmt.Errorf("stored bot identity has format version %d, this midfs reads %d", s.Version, storedVersion)
	}
	key, err := identity.ParsePrivateKeyDER(s.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("stored bot identity: %v", err)
	}
	var cas []*x509.Certificate
	for _, der := range s.HostCAs {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("stored bot identity: host CA: %v", err)
		}
		cas = append(cas, c)
	}
	b, err := newBot(&wire.BotIdentity{
		BotName: s.BotName, ClusterName: s.Cluster, TLSCert: s.Cert, Generation: s.Generation, Renewable: s.Renewable,
	}, key, cas)
	if err != nil {
		return nil, nil, fmt.Errorf("stored bot identity: %v", err)
	}
	return b, &s, nil
}
