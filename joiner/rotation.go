package joiner

// Following a CA rotation between renewals. Every node list the authority
// sends carries its CAs (wire.CASet), and its ETag moves when they change,
// so the agent hears of a rotation's phase change at its next poll:
//
//   - a new CA is served at once (CA files, known_hosts, identity), so
//     that ssh trusts a node's host certificate from the new host CA
//     before any node presents one;
//   - the host CAs become the ones the agent trusts the authority by, so
//     that it still reaches the authority once that presents a
//     certificate of the new host CA (update_servers);
//   - when the user CA that signs is no longer the one that signed the
//     served identity or the bot identity (update_clients, rollback), the
//     agent renews at once, so that nothing it holds depends on a CA that
//     the next standby drops.

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"fmt"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// caFollow is what an agent makes of a CA set it was sent.
type caFollow struct {
	cas     identity.CAs        // to serve
	hostCAs []*x509.Certificate // to trust the authority by
	// signingUser is the user CA that signs now: certificates of
	// another are renewed.
	signingUser *x509.Certificate
	signingSSH  ssh.PublicKey
}

// readCASet checks a CA set from the authority: every CA parses and each
// kind that signs anything has exactly one signing CA.
func readCASet(set *wire.CASet) (*caFollow, error) {
	var f caFollow
	var err error
	if f.cas.User, err = parseCAs(set.User); err != nil {
		return nil, fmt.Errorf("user CA: %v", err)
	}
	if f.cas.Host, err = parseCAs(set.Host); err != nil {
		return nil, fmt.Errorf("host CA: %v", err)
	}
	if f.cas.Database, err = parseCAs(set.Database); err != nil {
		return nil, fmt.Errorf("database CA: %v", err)
	}
	if f.hostCAs = hostCerts(f.cas.Host); len(f.hostCAs) == 0 {
		return nil, fmt.Errorf("no host CA")
	}
	signing := -1
	for i, ca := range set.User {
		if ca.Signing {
			if signing >= 0 {
				return nil, fmt.Errorf("two signing user CAs")
			}
			signing = i
		}
	}
	if signing < 0 || f.cas.User[signing].SSH == nil {
		return nil, fmt.Errorf("no signing user CA")
	}
	f.signingUser, f.signingSSH = f.cas.User[signing].TLS, f.cas.User[signing].SSH
	return &f, nil
}

func hostCerts(cas []identity.CA) []*x509.Certificate {
	out := make([]*x509.Certificate, len(cas))
	for i, ca := range cas {
		out[i] = ca.TLS
	}
	return out
}

// sameCASet says whether two sets are the same to the agent.
func sameCASet(a, b *wire.CASet) bool {
	if a == nil || b == nil {
		return a == b
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// stale says whether the served identity or the bot identity was signed by
// another user CA than the one that signs now.
func (f *caFollow) stale(id *identity.Identity, botCert *x509.Certificate) bool {
	if botCert != nil && botCert.CheckSignatureFrom(f.signingUser) != nil {
		return true
	}
	if id == nil {
		return false
	}
	return id.TLSCert.CheckSignatureFrom(f.signingUser) != nil ||
		string(id.SSHCert.SignatureKey.Marshal()) != string(f.signingSSH.Marshal())
}

// sameCerts says whether two lists hold the same certificates in order.
func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return false
		}
	}
	return true
}

// followCAs takes a CA set the authority sent. It returns nil when the
// set is the one held, or older (from a replica that has not heard of the
// latest change yet); otherwise the set, read, with the session already
// trusting the authority by its host CAs. first: no set was held before.
func (s *Session) followCAs(set *wire.CASet) (f *caFollow, first bool, err error) {
	if set == nil || sameCASet(set, s.cas) || (s.cas != nil && set.Version < s.cas.Version) {
		return nil, false, nil
	}
	if f, err = readCASet(set); err != nil {
		return nil, false, err
	}
	first = s.cas == nil
	s.cas = set
	s.trustHostCAs(f.hostCAs)
	if !first {
		s.log.Info("the authority's CAs changed", "phases", set.Phases, "user_cas", len(f.cas.User), "host_cas", len(f.cas.Host))
	}
	return f, first, nil
}

// trustHostCAs makes the host CAs the authority sent (over a connection
// the ones held vouched for) the ones it is trusted by from now on, and
// keeps them with the bot identity.
func (s *Session) trustHostCAs(hostCAs []*x509.Certificate) {
	if len(hostCAs) == 0 || sameCerts(hostCAs, s.bot.hostCAs) {
		return
	}
	nb := *s.bot
	nb.hostCAs = hostCAs
	s.setBot(&nb)
	s.save()
	s.log.Info("trusting the authority's host CAs as it sent them (CA rotation)", "host_cas", len(hostCAs))
}

// FollowCAs takes the CAs the authority sent (a node's heartbeat
// answer): changed says whether they are new to the session, which then
// trusts the authority by their host CAs, and renew whether its bot
// identity is of a user CA that no longer signs (renew it now). A set
// that does not parse is an error, and changes nothing.
func (s *Session) FollowCAs(set *wire.CASet) (changed, renew bool, err error) {
	f, _, err := s.followCAs(set)
	if err != nil {
		return false, false, fmt.Errorf("the authority sent CAs this node does not take: %v", err)
	}
	if f == nil {
		return false, false, nil
	}
	return true, f.stale(nil, s.bot.cert), nil
}

// followCAs takes the CAs a node list carried: the mount serves them at
// once (true: publish), and the agent renews at once when what it holds
// is of a user CA that no longer signs. A set that does not parse is
// logged and left: the agent keeps what it has.
func (a *Agent) followCAs(set *wire.CASet) bool {
	f, _, err := a.sess.followCAs(set)
	if err != nil {
		a.log.Warn("the authority sent CAs this agent does not take; keeping the ones it has", "error", err)
		return false
	}
	if f == nil {
		return false
	}
	a.mu.Lock()
	changed := a.id != nil && !sameCAs(a.id.CAs, f.cas)
	if changed {
		a.id = a.id.WithCAs(f.cas)
	}
	id := a.id
	a.mu.Unlock()
	if f.stale(id, a.sess.bot.cert) {
		a.log.Info("renewing now: the user CA that signs changed (CA rotation)")
		a.RenewNow()
	}
	return changed
}

// sameCAs says whether two CA sets hold the same certificates.
func sameCAs(a, b identity.CAs) bool {
	same := func(x, y []identity.CA) bool {
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if !x[i].TLS.Equal(y[i].TLS) {
				return false
			}
		}
		return true
	}
	return same(a.User, b.User) && same(a.Host, b.Host) && same(a.Database, b.Database)
}
