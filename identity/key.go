package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Algorithm names the key type of an identity.
type Algorithm string

const (
	ECDSA   Algorithm = "ecdsa"   // P-256: works for OpenSSH and every TLS stack
	Ed25519 Algorithm = "ed25519" // smallest and fastest; some TLS stacks lack it
	RSA     Algorithm = "rsa"     // RSA-2048 for old peers; slow to generate
)

// DefaultAlgorithm is what midfs uses unless told otherwise.
const DefaultAlgorithm = ECDSA

// ParseAlgorithm accepts the names of the constants above, case-insensitively.
func ParseAlgorithm(s string) (Algorithm, error) {
	switch a := Algorithm(strings.ToLower(s)); a {
	case ECDSA, Ed25519, RSA:
		return a, nil
	case "":
		return DefaultAlgorithm, nil
	}
	return "", fmt.Errorf("unknown key algorithm %q (want ecdsa, ed25519 or rsa)", s)
}

// AlgorithmOf names the algorithm of a public key; "" for one midfs does
// not make.
func AlgorithmOf(pub crypto.PublicKey) Algorithm {
	switch pub.(type) {
	case *ecdsa.PublicKey:
		return ECDSA
	case ed25519.PublicKey:
		return Ed25519
	case *rsa.PublicKey:
		return RSA
	}
	return ""
}

// GenerateKey makes a new private key in memory.
func GenerateKey(alg Algorithm) (crypto.Signer, error) {
	switch alg {
	case ECDSA, "":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case Ed25519:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case RSA:
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, fmt.Errorf("unknown key algorithm %q", alg)
}

// KeySource hands out fresh keys. It generates the next key in the background
// as soon as one is taken, so that a slow RSA-2048 generation (about 45 ms)
// never sits on a renewal that a reader or the authority is waiting on.
type KeySource struct {
	alg  Algorithm
	next chan keyOrErr
}

type keyOrErr struct {
	key crypto.Signer
	err error
}

// NewKeySource starts generating the first key right away.
func NewKeySource(alg Algorithm) *KeySource {
	ks := &KeySource{alg: alg, next: make(chan keyOrErr, 1)}
	go ks.fill()
	return ks
}

func (ks *KeySource) fill() {
	k, err := GenerateKey(ks.alg)
	ks.next <- keyOrErr{k, err}
}

// Next returns a key never handed out before.
func (ks *KeySource) Next() (crypto.Signer, error) {
	ke := <-ks.next
	go ks.fill()
	return ke.key, ke.err
}

// MarshalPrivateKeyPEM encodes a key the way OpenSSH and OpenSSL read it:
// PKCS#1 for RSA and PKCS#8 for ECDSA, as Teleport does. Ed25519 is the
// exception: OpenSSH (9.2 in Debian 12) cannot load a PKCS#8 Ed25519 key, and
// ssh is what reads this file, so it gets OpenSSH's own key format.
func MarshalPrivateKeyPEM(key crypto.Signer) ([]byte, error) {
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), nil
	case ed25519.PrivateKey:
		block, err := ssh.MarshalPrivateKey(k, "")
		if err != nil {
			return nil, err
		}
		b := pem.EncodeToMemory(block)
		clear(block.Bytes)
		return b, nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	clear(der)
	return b, nil
}

// ParsePrivateKeyPEM reads what MarshalPrivateKeyPEM wrote.
func ParsePrivateKeyPEM(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("no PEM private key found")
	}
	if block.Type == "OPENSSH PRIVATE KEY" {
		k, err := ssh.ParseRawPrivateKey(b)
		if err != nil {
			return nil, err
		}
		if p, ok := k.(*ed25519.PrivateKey); ok {
			return *p, nil
		}
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	return ParsePrivateKeyDER(block.Bytes)
}

// ParsePrivateKeyDER reads a PKCS#8 or PKCS#1 private key.
func ParsePrivateKeyDER(der []byte) (crypto.Signer, error) {
	if k, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	return s, nil
}

// SPKIPin is the CA pin of a certificate: "sha256:" and the hex SHA-256 of
// its DER SubjectPublicKeyInfo, as tctl status prints it.
func SPKIPin(cert *x509.Certificate) string {
	return "sha256:" + hexSHA256(cert.RawSubjectPublicKeyInfo)
}
