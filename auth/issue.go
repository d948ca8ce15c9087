package auth

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// botUser is the user name a bot's certificates carry, as in Teleport.
func botUser(bot string) string { return "bot-" + bot }

// parsePublicKey accepts the keys midfs clients generate: ECDSA P-256/384,
// Ed25519 and RSA of at least 2048 bits.
func parsePublicKey(der []byte) (crypto.PublicKey, error) {
	if len(der) == 0 {
		return nil, fmt.Errorf("public_key is missing")
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("public_key is not a PKIX DER public key")
	}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("public_key: ECDSA curve %s not accepted; use P-256", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("public_key: RSA key of %d bits is too small; use at least 2048", k.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("public_key: key type %T not accepted", pub)
	}
	return pub, nil
}

func keyHash(der []byte) []byte {
	h := sha256.Sum256(der)
	return h[:]
}

// botCert is what an authority-issued client certificate says about its bot.
type botCert struct {
	Bot        string
	Instance   string
	Generation uint64
	Renewable  bool
	Output     bool   // an output identity: may list nodes, may not renew or get certs
	Node       string // the node, for a node's identity (Bot is then "node:NAME")
}

// readBotCert reads a verified client certificate. Certificates without the
// bot attributes are not midfs bot certificates.
func readBotCert(c *x509.Certificate) (*botCert, error) {
	var b botCert
	var ok bool
	if b.Bot, ok = subjectValue(c.Subject, oidBotName); !ok || b.Bot == "" || c.Subject.CommonName != botUser(b.Bot) {
		return nil, fmt.Errorf("client certificate is not a midfs bot identity")
	}
	b.Instance, _ = subjectValue(c.Subject, oidBotInstance)
	if isNodeBot(b.Bot) {
		b.Node = strings.TrimPrefix(b.Bot, nodeBotPrefix)
	}
	if v, ok := subjectValue(c.Subject, oidDisallowReissue); ok && v == "true" {
		b.Output = true
		return &b, nil
	}
	gen, ok := subjectValue(c.Subject, oidGeneration)
	if !ok {
		return nil, fmt.Errorf("client certificate is not a midfs bot identity")
	}
	n, err := strconv.ParseUint(gen, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("client certificate has a bad generation %q", gen)
	}
	b.Generation = n
	v, _ := subjectValue(c.Subject, oidRenewable)
	b.Renewable = v == "true"
	return &b, nil
}

// issueBotTLS makes the bot's own identity certificate.
// serial is chosen before, for the audit event of the issuance.
func (s *Server) issueBotTLS(bot *store.Bot, pub crypto.PublicKey, gen uint64, renewable bool, now time.Time, serial *big.Int) (*wire.BotIdentity, error) {
	subject := pkix.Name{
		CommonName:   botUser(bot.Name),
		Organization: bot.Roles,
		ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: oidBotName, Value: bot.Name},
			{Type: oidBotInstance, Value: bot.Instance},
			{Type: oidGeneration, Value: strconv.FormatUint(gen, 10)},
			{Type: oidRenewable, Value: strconv.FormatBool(renewable)},
		},
	}
	der, err := s.signer(caUser).signTLS(&x509.Certificate{
		SerialNumber: serial,
		Subject:      subject,
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(s.cfg.BotTTL),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, pub)
	if err != nil {
		return nil, fmt.Errorf("issue bot identity: %w", err)
	}
	return &wire.BotIdentity{BotName: bot.Name, ClusterName: s.cluster, TLSCert: der, Generation: gen, Renewable: renewable}, nil
}

// issueOutput makes the output identity: an SSH user certificate and an
// X.509 client certificate over one public key, neither renewable.
func (s *Server) issueOutput(bot *store.Bot, roles []policy.Role, pub crypto.PublicKey, ttl time.Duration, now time.Time) (*wire.Certs, error) {
	logins := policy.AllowedLogins(roles, bot.Logins)
	// Logins are checked when they enter; one stored before the checks
	// existed would make a certificate OpenSSH rejects, so it is left out.
	logins = slices.DeleteFunc(logins, func(l string) bool {
		err := identity.CheckLogin(l)
		if err != nil {
			s.log.Warn("login left out of the certificate; fix the bot or its roles", "bot", bot.Name, "err", err)
		}
		return err != nil
	})
	principals := logins
	if len(principals) == 0 {
		principals = []string{noLoginPrincipal()}
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("public_key cannot be used for SSH: %w", err)
	}
	// The node rules of the bot's roles, for enforcing nodes to check at
	// login (node/enforce); signed with the rest of the certificate.
	rules, err := policy.EncodeRules(policy.RulesOf(roles))
	if err != nil {
		return nil, fmt.Errorf("bot %s: %w", bot.Name, err)
	}
	sshCert := &ssh.Certificate{
		Key:             sshPub,
		CertType:        ssh.UserCert,
		KeyId:           botUser(bot.Name),
		ValidPrincipals: principals,
		ValidAfter:      uint64(now.Add(-time.Minute).Unix()),
		ValidBefore:     uint64(now.Add(ttl).Unix()),
		Permissions: ssh.Permissions{Extensions: map[string]string{
			"permit-pty":              "",
			"permit-port-forwarding":  "",
			"permit-agent-forwarding": "",
			policy.RulesExtension:     rules,
		}},
	}
	// One set for the whole issuance: both certificates from one CA, and
	// the CAs the identity carries from the same moment.
	set := s.caSet()
	user := set.kinds[caUser].signing
	if err := user.signSSH(sshCert); err != nil {
		return nil, fmt.Errorf("sign SSH certificate: %w", err)
	}
	tlsDER, err := user.signTLS(&x509.Certificate{
		Subject: pkix.Name{
			CommonName:   botUser(bot.Name),
			Organization: bot.Roles,
			Locality:     logins,
			ExtraNames: []pkix.AttributeTypeAndValue{
				{Type: oidBotName, Value: bot.Name},
				{Type: oidBotInstance, Value: bot.Instance},
				{Type: oidDisallowReissue, Value: "true"},
			},
		},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(ttl),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, pub)
	if err != nil {
		return nil, fmt.Errorf("issue TLS certificate: %w", err)
	}
	return &wire.Certs{
		ClusterName: s.cluster,
		SSHCert:     string(ssh.MarshalAuthorizedKey(sshCert)),
		TLSCert:     tlsDER,
		UserCAs:     set.wire.User,
		HostCAs:     set.wire.Host,
		DatabaseCAs: set.wire.Database,
	}, nil
}

// noLoginPrincipal stands in for an empty principal list: OpenSSH reads a
// certificate without principals as valid for any user, so a bot with no
// logins gets one that no account can have.
func noLoginPrincipal() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "-midfs-nologin-" + hex.EncodeToString(b)
}

// signHostKey signs an SSH host certificate for the given principals.
func (s *Server) signHostKey(pub ssh.PublicKey, hosts []string, ttl time.Duration) (*ssh.Certificate, error) {
	now := s.cfg.Clock.Now()
	cert := &ssh.Certificate{
		Key:             pub,
		CertType:        ssh.HostCert,
		KeyId:           hosts[0],
		ValidPrincipals: hosts,
		ValidAfter:      uint64(now.Add(-time.Minute).Unix()),
		ValidBefore:     uint64(now.Add(ttl).Unix()),
	}
	if err := s.signer(caHost).signSSH(cert); err != nil {
		return nil, err
	}
	return cert, nil
}

func sshAuthorizedKey(k ssh.PublicKey) []byte {
	return bytes.TrimSuffix(ssh.MarshalAuthorizedKey(k), []byte("\n"))
}
