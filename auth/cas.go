package auth

// The CAs as this authority uses them: every CA the store holds, by kind,
// with where each kind's rotation is, rebuilt from the store after every
// change (its own, or another replica's, told by store.TopicCAs) and
// swapped whole, so that a request sees one consistent set.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// caKinds are the kinds of CA, in the order they are shown.
var caKinds = []string{caUser, caHost, caDB}

// caKind is one kind of CA: one CA between rotations, two during one.
type caKind struct {
	rot store.Rotation
	all []*authority // every trusted CA of the kind, the one a rotation started from first
	// signing is the CA whose certificates are issued now. The user CA
	// signs what clients present (bot, node and output identities), so
	// it switches to the new CA at update_clients; the host CA signs
	// what servers present (host certificates, the authority's HTTPS
	// certificate), so it switches at update_servers. Between the two,
	// the host CA's signing one is not the rotation's active one.
	signing *authority
}

// other is, during a rotation, the CA of the kind that is not active:
// the new one in init and rollback, the old one in update_clients and
// update_servers. Nil in standby.
func (k *caKind) other() *authority {
	for _, a := range k.all {
		if a.id != k.rot.Active {
			return a
		}
	}
	return nil
}

func (k *caKind) public() []identity.CA {
	out := make([]identity.CA, len(k.all))
	for i, a := range k.all {
		out[i] = a.public()
	}
	return out
}

func (k *caKind) wire() []wire.CA {
	out := make([]wire.CA, len(k.all))
	for i, a := range k.all {
		out[i].TLS = a.cert.Raw
		if a.signer != nil {
			out[i].SSH = string(sshAuthorizedKey(a.signer.PublicKey()))
		}
		out[i].Signing = a == k.signing
	}
	return out
}

// caSet is every kind of CA at one moment. Never changed once published.
type caSet struct {
	version uint64 // store.TopicCAs when read: the same on every replica
	kinds   map[string]*caKind
	wire    wire.CASet
	// wireJSON is wire encoded once, for the node lists that carry it.
	wireJSON []byte
	// tls is the HTTPS API's configuration for this set: a server
	// certificate from the host CA that signs, every user CA trusted
	// for client certificates. Nil until the API listens.
	tls *tls.Config
	// hostCert is the server certificate in tls, kept for the next set
	// while the host CA that signs stays the same.
	hostCert   *tls.Certificate
	hostCertBy string // ID of the host CA that signed hostCert
}

// identity is the set as output identities carry it.
func (c *caSet) identity() identity.CAs {
	return identity.CAs{User: c.kinds[caUser].public(), Host: c.kinds[caHost].public(), Database: c.kinds[caDB].public()}
}

// pins is the CA pin of every trusted host CA: what a joining client must
// be given, all of them, during a rotation of the host CA.
func (c *caSet) pins() []string {
	var out []string
	for _, a := range c.kinds[caHost].all {
		out = append(out, identity.SPKIPin(a.cert))
	}
	return out
}

// userCALines are the user CAs as sshd's TrustedUserCAKeys takes them.
func (c *caSet) userCALines() []string {
	var out []string
	for _, a := range c.kinds[caUser].all {
		out = append(out, string(sshAuthorizedKey(a.signer.PublicKey())))
	}
	return out
}

// clientCAs trusts every user CA for client certificates.
func (c *caSet) clientCAs() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, a := range c.kinds[caUser].all {
		pool.AddCert(a.cert)
	}
	return pool
}

// readCAs reads every CA and rotation in one transaction, so that they
// agree, and builds the set; open gives the PKCS #8 key of a stored CA
// (unsealed: sealing.go), which the caller clears.
func readCAs(ctx context.Context, st store.Store, dataDir string, open func(store.CA) ([]byte, error)) (*caSet, error) {
	var cas []store.CA
	var rots []store.Rotation
	var versions map[string]uint64
	err := st.Update(ctx, func(tx store.Tx) (err error) {
		if cas, err = tx.CAs(ctx); err != nil {
			return err
		}
		if versions, err = tx.Versions(ctx); err != nil {
			return err
		}
		rots, err = tx.Rotations(ctx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read the CAs: %w", err)
	}
	defer func() {
		for _, ca := range cas {
			clear(ca.KeyDER)
		}
	}()
	set := &caSet{version: versions[store.TopicCAs], kinds: map[string]*caKind{}}
	for _, r := range rots {
		set.kinds[r.Kind] = &caKind{rot: r}
	}
	for _, ca := range cas {
		k := set.kinds[ca.Kind]
		if k == nil {
			return nil, fmt.Errorf("authority state holds a %s CA (%s) but no rotation state for it; restore it from a backup", ca.Kind, ca.ID)
		}
		keyDER, err := open(ca)
		if err != nil {
			return nil, err
		}
		a, err := loadAuthority(ca.Kind, keyDER, ca.CertDER)
		clear(keyDER)
		if err != nil {
			return nil, err
		}
		a.id = ca.ID
		k.all = append(k.all, a)
	}
	for _, kind := range caKinds {
		k := set.kinds[kind]
		if k == nil || !slices.ContainsFunc(k.all, func(a *authority) bool { return a.id == k.rot.Active }) {
			return nil, fmt.Errorf("authority state in %s is missing the %s CA; restore it from a backup", dataDir, kind)
		}
		if n := len(k.all); n > 2 || (n == 2) == (k.rot.Phase == wire.PhaseStandby) {
			return nil, fmt.Errorf("authority state in %s holds %d %s CAs in phase %s; restore it from a backup", dataDir, n, kind, k.rot.Phase)
		}
		// The CA the rotation started from comes first (the store's
		// order breaks ties of creation time by ID): it is the active
		// one until update_clients, and again from rollback on.
		active := slices.IndexFunc(k.all, func(a *authority) bool { return a.id == k.rot.Active })
		if first := k.rot.Phase == wire.PhaseInit || k.rot.Phase == wire.PhaseRollback; len(k.all) == 2 && (active == 0) != first {
			k.all[0], k.all[1] = k.all[1], k.all[0]
			active = 1 - active
		}
		k.signing = k.all[active]
		if kind == caHost && k.rot.Phase == wire.PhaseUpdateClients {
			k.signing = k.other()
		}
	}
	set.wire = wire.CASet{
		Version: set.version,
		User:    set.kinds[caUser].wire(), Host: set.kinds[caHost].wire(), Database: set.kinds[caDB].wire(),
		Phases: map[string]string{},
	}
	for _, kind := range caKinds {
		set.wire.Phases[kind] = set.kinds[kind].rot.Phase
	}
	if set.wireJSON, err = json.Marshal(set.wire); err != nil {
		return nil, err
	}
	return set, nil
}

// sameForClients says whether clients would see a difference between two
// sets: another CA, another signing CA or another phase.
func (c *caSet) sameForClients(o *caSet) bool {
	return o != nil && string(c.wireJSON) == string(o.wireJSON)
}

// describe is a set for the log: each kind's phase and CA IDs, the
// signing one marked with '*'.
func (c *caSet) describe() string {
	var parts []string
	for _, kind := range caKinds {
		k := c.kinds[kind]
		var ids []string
		for _, a := range k.all {
			id := a.id
			if a == k.signing {
				id += "*"
			}
			ids = append(ids, id)
		}
		parts = append(parts, fmt.Sprintf("%s=%s(%s)", kind, k.rot.Phase, strings.Join(ids, ",")))
	}
	return strings.Join(parts, " ")
}

// caSet returns the CAs in use.
func (s *Server) caSet() *caSet { return s.caset.Load() }

// signer is the CA of a kind that signs now.
func (s *Server) signer(kind string) *authority { return s.caSet().kinds[kind].signing }

// loadCAs reads the CAs again and switches to them: what is issued, the
// HTTPS API's certificate and trusted client CAs, and what clients are
// told (node lists, whose ETag names the CAs' version).
func (s *Server) loadCAs(ctx context.Context) error {
	s.caMu.Lock()
	defer s.caMu.Unlock()
	set, err := readCAs(ctx, s.st, s.cfg.DataDir, func(ca store.CA) ([]byte, error) { return s.openKey(s.cluster, ca) })
	if err != nil {
		return err
	}
	old := s.caSet()
	if s.listening != nil {
		if err := s.withTLS(set, old); err != nil {
			return err
		}
	}
	s.caset.Store(set)
	if old != nil && !set.sameForClients(old) {
		s.log.Info("the CAs changed", "cas", set.describe())
	}
	return nil
}

// withTLS gives set its HTTPS configuration, with the server certificate
// of old when the same host CA signs it.
func (s *Server) withTLS(set, old *caSet) error {
	host := set.kinds[caHost].signing
	if old != nil && old.hostCert != nil && old.hostCertBy == host.id {
		set.hostCert, set.hostCertBy = old.hostCert, old.hostCertBy
	} else {
		cert, err := s.serverCert(host, s.listening)
		if err != nil {
			return err
		}
		set.hostCert, set.hostCertBy = &cert, host.id
	}
	set.tls = s.apiTLS(*set.hostCert, set.clientCAs())
	return nil
}
