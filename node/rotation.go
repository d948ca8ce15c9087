package node

// Following a CA rotation within one heartbeat: every heartbeat answer
// carries the cluster's CAs (wire.CASet). The node trusts every user CA
// among them (user_ca.pub, sshd's TrustedUserCAKeys, and the state `node
// authorize` checks certificates against), from init until the standby
// that drops one; and it renews at once when the CA that signs its host
// certificate (update_servers, or rollback) or its own identity
// (update_clients) is no longer the one that signed what it holds.

import (
	"fmt"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/wire"
)

// setUserCAs writes the user CAs (authorized_keys lines) to user_ca.pub
// and to the enforcement state, if they changed.
func (a *Agent) setUserCAs(userCAs []string) error {
	var lines []string
	var file []byte
	for _, line := range userCAs {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err != nil {
			return fmt.Errorf("the authority sent a user CA that does not parse: %v", err)
		}
		lines = append(lines, strings.TrimSpace(line))
		file = append(file, strings.TrimSpace(line)+"\n"...)
	}
	if len(lines) == 0 {
		return fmt.Errorf("the authority sent no user CA")
	}
	if slices.Equal(lines, a.userCAs) {
		return nil
	}
	if err := a.dir.write(FileUserCAs, file); err != nil {
		return err
	}
	if a.userCAs != nil {
		a.log.Info("trusting the user CAs the authority sent (CA rotation)", "user_cas", len(lines))
	}
	a.userCAs = lines
	if a.stateWritten {
		return a.writeState()
	}
	return nil
}

// followCAs takes the CAs of a heartbeat answer (nil from an authority
// before CA rotation).
func (a *Agent) followCAs(set *wire.CASet) error {
	if set == nil {
		return nil
	}
	changed, renew, err := a.sess.FollowCAs(set)
	if err != nil || !changed {
		if err != nil {
			a.log.Warn("keeping the CAs this node has", "err", err)
		}
		return nil
	}
	var userCAs []string
	for _, ca := range set.User {
		userCAs = append(userCAs, ca.SSH)
	}
	if err := a.setUserCAs(userCAs); err != nil {
		return err
	}
	if a.hostCert != nil && !signedBy(a.hostCert, set.Host) {
		renew = true
	}
	if renew {
		a.log.Info("renewing now: the CA that signs the host certificate or the node's identity changed (CA rotation)", "phases", set.Phases)
		a.RenewNow()
	}
	return nil
}

// signedBy says whether cert was signed by the signing CA among cas.
func signedBy(cert *ssh.Certificate, cas []wire.CA) bool {
	for _, ca := range cas {
		if !ca.Signing {
			continue
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(ca.SSH))
		return err == nil && string(pub.Marshal()) == string(cert.SignatureKey.Marshal())
	}
	return true // no signing CA named: nothing to renew for
}
