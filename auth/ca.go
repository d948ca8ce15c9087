package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"fmt"
	"math/big"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/identity"
)

// CA kinds, as stored and as written in the CA certificate's OU.
const (
	caUser = "user"
	caHost = "host"
	caDB   = "db"
)

// caValidity is how long a CA certificate is valid: long, since a CA is
// replaced by rotating it (rotate.go), not by letting it expire; the pin
// covers the key, not the dates.
const caValidity = 10 * 365 * 24 * time.Hour

// Teleport's X.509 subject OIDs (lib/tlsca/ca.go), so that tools which read
// Teleport identities read midfs identities too.
var (
	oidRenewable       = asn1.ObjectIdentifier{1, 3, 9999, 1, 13}
	oidGeneration      = asn1.ObjectIdentifier{1, 3, 9999, 1, 14}
	oidDisallowReissue = asn1.ObjectIdentifier{1, 3, 9999, 2, 9}
	oidBotName         = asn1.ObjectIdentifier{1, 3, 9999, 2, 18}
	oidBotInstance     = asn1.ObjectIdentifier{1, 3, 9999, 2, 20}
)

// authority is one certificate authority: a key, its self-signed X.509
// certificate and, for the user and host CAs, the SSH signer over the same key.
type authority struct {
	id     string // in the store
	kind   string
	key    crypto.Signer
	cert   *x509.Certificate
	signer ssh.Signer // nil for the database CA
}

// newAuthority makes a CA with a fresh ECDSA P-256 key. The subject's O is
// the cluster name: tbot and midfs read the cluster from the issuer's O.
func newAuthority(kind, cluster string, now time.Time) (*authority, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, nil, err
	}
	ski := sha1.Sum(pubDER)
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: cluster, Organization: []string{cluster}, OrganizationalUnit: []string{kind}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          ski[:],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	a, err := loadAuthority(kind, keyDER, der)
	return a, keyDER, err
}

// loadAuthority rebuilds a CA from its stored key and certificate.
func loadAuthority(kind string, keyDER, certDER []byte) (*authority, error) {
	key, err := identity.ParsePrivateKeyDER(keyDER)
	if err != nil {
		return nil, fmt.Errorf("%s CA key: %w", kind, err)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return nil, fmt.Errorf("%s CA certificate: %w", kind, err)
	}
	a := &authority{kind: kind, key: key, cert: cert}
	if kind != caDB {
		if a.signer, err = ssh.NewSignerFromSigner(key); err != nil {
			return nil, fmt.Errorf("%s CA SSH signer: %w", kind, err)
		}
	}
	return a, nil
}

// public is the CA as clients see it.
func (a *authority) public() identity.CA {
	ca := identity.CA{TLS: a.cert}
	if a.signer != nil {
		ca.SSH = a.signer.PublicKey()
	}
	return ca
}

// signTLS issues a leaf certificate for pub, with a random serial unless
// tmpl has one.
func (a *authority) signTLS(tmpl *x509.Certificate, pub crypto.PublicKey) ([]byte, error) {
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = randomSerial()
	}
	return x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
}

// signSSH signs an SSH certificate in place.
func (a *authority) signSSH(cert *ssh.Certificate) error {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 63))
	if err != nil {
		return err
	}
	cert.Serial = serial.Uint64()
	return cert.SignCert(rand.Reader, a.signer)
}

// newCAID names a new CA in the store: random, so that the CAs of a
// rotation's two halves never share one.
func newCAID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return n
}

// subjectValue returns the value of an extra subject attribute, or "".
func subjectValue(name pkix.Name, oid asn1.ObjectIdentifier) (string, bool) {
	for _, atv := range name.Names {
		if atv.Type.Equal(oid) {
			s, ok := atv.Value.(string)
			return s, ok
		}
	}
	return "", false
}
