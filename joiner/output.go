package joiner

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// buildIdentity turns the authority's answer into an identity and checks
// that it hangs together: both certificates for our key, both signed by a
// user CA of the cluster. A broken issuance is refused, never served.
func buildIdentity(c *wire.Certs, key crypto.Signer) (*identity.Identity, error) {
	bad := func(format string, args ...any) (*identity.Identity, error) {
		return nil, fmt.Errorf("the authority sent a bad output identity: "+format, args...)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(c.SSHCert))
	if err != nil {
		return bad("SSH certificate: %v", err)
	}
	sshCert, ok := pub.(*ssh.Certificate)
	if !ok {
		return bad("SSH certificate is a plain %s key", pub.Type())
	}
	tlsCert, err := x509.ParseCertificate(c.TLSCert)
	if err != nil {
		return bad("TLS certificate: %v", err)
	}
	id := &identity.Identity{Key: key, SSHCert: sshCert, TLSCert: tlsCert, ClusterName: c.ClusterName}
	if id.CAs.User, err = parseCAs(c.UserCAs); err != nil {
		return bad("user CA: %v", err)
	}
	if id.CAs.Host, err = parseCAs(c.HostCAs); err != nil {
		return bad("host CA: %v", err)
	}
	if id.CAs.Database, err = parseCAs(c.DatabaseCAs); err != nil {
		return bad("database CA: %v", err)
	}
	if err := id.Check(); err != nil {
		return bad("%v", err)
	}
	if !signedByUserCA(sshCert, id.CAs.User) {
		return bad("SSH certificate is not signed by a user CA of cluster %q", c.ClusterName)
	}
	return id, nil
}

func parseCAs(in []wire.CA) ([]identity.CA, error) {
	out := make([]identity.CA, 0, len(in))
	for _, w := range in {
		cert, err := x509.ParseCertificate(w.TLS)
		if err != nil {
			return nil, err
		}
		ca := identity.CA{TLS: cert}
		if w.SSH != "" {
			if ca.SSH, _, _, _, err = ssh.ParseAuthorizedKey([]byte(w.SSH)); err != nil {
				return nil, err
			}
		}
		out = append(out, ca)
	}
	return out, nil
}

func signedByUserCA(cert *ssh.Certificate, cas []identity.CA) bool {
	for _, ca := range cas {
		if ca.SSH != nil && string(ca.SSH.Marshal()) == string(cert.SignatureKey.Marshal()) {
			return true
		}
	}
	return false
}

func sameNodes(a, b []identity.Node) bool {
	return slices.EqualFunc(a, b, func(x, y identity.Node) bool {
		return x.Name == y.Name && x.Addr == y.Addr && maps.Equal(x.Labels, y.Labels)
	})
}
