// Package identity holds a machine identity in memory and renders the files
// that midfs serves from it. Nothing here writes to disk.
package identity

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// CA is one certificate authority as clients see it: its TLS certificate and,
// for the user and host CAs, its SSH public key. Both share one key.
type CA struct {
	TLS *x509.Certificate
	SSH ssh.PublicKey // nil for the database CA
}

// CAs are the trust roots of a cluster, by role.
type CAs struct {
	User, Host, Database []CA
}

// Identity is one issuance: a private key backing both an SSH user
// certificate and an X.509 client certificate, plus the cluster's CAs.
type Identity struct {
	Key         crypto.Signer
	SSHCert     *ssh.Certificate
	TLSCert     *x509.Certificate
	CAs         CAs
	ClusterName string

	// The key file's bytes, encoded once (see keyPEM).
	keyOnce sync.Once
	keyPEMs []byte
	keyErr  error
}

// keyPEM is the private key as the key and identity files hold it, encoded
// once per issuance: OpenSSH's format (used for Ed25519) carries a random
// check value, so encoding at every open would serve different bytes for
// one key. The result is shared; callers must not change it.
func (id *Identity) keyPEM() ([]byte, error) {
	id.keyOnce.Do(func() { id.keyPEMs, id.keyErr = MarshalPrivateKeyPEM(id.Key) })
	return id.keyPEMs, id.keyErr
}

// WithCAs is the same issuance (key, certificates, and the key file's
// bytes) carrying other CAs: what an agent serves when a CA rotation moves
// on between two renewals.
func (id *Identity) WithCAs(cas CAs) *Identity {
	n := &Identity{Key: id.Key, SSHCert: id.SSHCert, TLSCert: id.TLSCert, CAs: cas, ClusterName: id.ClusterName}
	n.keyOnce.Do(func() { n.keyPEMs, n.keyErr = id.keyPEM() })
	return n
}

// Expires is when the first of the two certificates runs out.
func (id *Identity) Expires() time.Time {
	exp := id.TLSCert.NotAfter
	if id.SSHCert != nil {
		if s := time.Unix(int64(id.SSHCert.ValidBefore), 0); s.Before(exp) {
			exp = s
		}
	}
	return exp
}

// Check verifies that the certificates belong to the key and are signed by
// the cluster's user CA, so a broken issuance is never served.
func (id *Identity) Check() error {
	if id.Key == nil || id.TLSCert == nil || id.SSHCert == nil {
		return fmt.Errorf("identity is incomplete")
	}
	sshPub, err := ssh.NewPublicKey(id.Key.Public())
	if err != nil {
		return err
	}
	if string(id.SSHCert.Key.Marshal()) != string(sshPub.Marshal()) {
		return fmt.Errorf("SSH certificate does not match the private key")
	}
	pkix, err := x509.MarshalPKIXPublicKey(id.Key.Public())
	if err != nil {
		return err
	}
	if string(pkix) != string(id.TLSCert.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("TLS certificate does not match the private key")
	}
	for _, ca := range id.CAs.User {
		if id.TLSCert.CheckSignatureFrom(ca.TLS) == nil {
			return nil
		}
	}
	return fmt.Errorf("TLS certificate is not signed by a user CA of cluster %q", id.ClusterName)
}

// Node is a host a bot may reach over SSH.
type Node struct {
	Name   string            `json:"name" yaml:"name"`
	Addr   string            `json:"addr" yaml:"addr"`
	Labels map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
