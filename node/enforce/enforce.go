// Package enforce is the node's side of access control: what an enforcing
// node knows (its labels, the user CAs it trusts, the authority's locks),
// and the decision, made at every login, whether a bot's certificate lets
// it in as a login.
//
// The decision needs no call to the authority: the certificate carries,
// signed, the node rules of the bot's roles (policy.RulesExtension), the
// node matches them against its labels with the authority's own matcher
// (policy.NodeAllowed), and checks the last locks it fetched. The node
// agent holds the state and answers sshd's hook on a socket (Hook, Decide);
// it also keeps the state in its run directory (Write, Load), for the next
// process to start from, and renders the locks as an OpenSSH KRL for
// sshd's RevokedKeys, so that sshd refuses locked bots even without the
// hook.
//
// It imports identity, wire, auth/policy, internal/peercred and
// x/crypto/ssh; the decision is pure and fast: a login waits for it.
package enforce

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/internal/atomicfile"
	"github.com/midfs/midfs/wire"
)

// DefaultRunDir is the node's run directory (a tmpfs under /run).
const DefaultRunDir = "/run/midfs-node"

// Files of the run directory that this package writes.
const (
	StateFile = "state.json"  // State, for the next node agent to start from
	KRLFile   = "revoked.krl" // sshd's RevokedKeys
)

// State is what the node decides logins from.
type State struct {
	Cluster string            `json:"cluster"`
	Node    string            `json:"node"`
	Labels  map[string]string `json:"labels"`
	// UserCAs are the trusted user CA keys, in authorized_keys form.
	UserCAs []string `json:"user_cas"`
	// Locks are the authority's locks as last fetched.
	Locks []wire.Lock `json:"locks"`
	// Fetched is when the locks were last fetched from the authority.
	Fetched time.Time `json:"fetched"`
}

// maxState bounds what Load reads: a state is a few KB, plus about 150
// bytes per lock.
const maxState = 16 << 20

// Write replaces the state and the KRL in runDir, each atomically (a
// reader sees the old file or the new one). An unusable state (a CA key
// that does not parse) is an error, and then nothing is written.
func Write(runDir string, st *State) error {
	cas, err := st.caKeys()
	if err != nil {
		return err
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	now := time.Now()
	krl := KRL(cas, st.lockedBots(now), uint64(st.Fetched.Unix()), now)
	// The KRL first: sshd reads it at every login, so a new lock
	// applies there even if the state write fails.
	if err := atomicfile.Write(filepath.Join(runDir, KRLFile), krl, 0o644); err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(runDir, StateFile), append(data, '\n'), 0o644)
}

// Load reads the state Write left in runDir.
func Load(runDir string) (*State, error) {
	f, err := os.Open(filepath.Join(runDir, StateFile))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dec := json.NewDecoder(io.LimitReader(f, maxState))
	dec.DisallowUnknownFields()
	var st State
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("read %s: %v", f.Name(), err)
	}
	return &st, nil
}

// Allowed decides whether cert may log in as user on the node st
// describes, at now. It returns the lines for sshd (the login, which the
// certificate names as a principal) or, when refused, no lines and why.
//
// It checks, in order: a user certificate, signed by one of st.UserCAs,
// valid at now, naming user; issued to a midfs bot; carrying node rules
// (a certificate without them was minted before enforcement, or by
// another tool with this CA, and is refused) that allow st.Labels; and no
// lock in force on the bot.
//
// Only user is printed, never the certificate's other principals: sshd
// admits a certificate if any principal it names is printed, so printing
// them all would let a bot log in as any user while naming one it has.
func Allowed(cert *ssh.Certificate, user string, st *State, now time.Time) (logins []string, reason string) {
	if err := checkCert(cert, user, st, now); err != nil {
		return nil, err.Error()
	}
	bot, ok := strings.CutPrefix(cert.KeyId, botPrefix)
	if !ok || policy.CheckName("bot", bot) != nil {
		return nil, fmt.Sprintf("certificate key ID %q is not a midfs bot's", cert.KeyId)
	}
	raw, ok := cert.Extensions[policy.RulesExtension]
	if !ok {
		return nil, fmt.Sprintf("bot %s: certificate carries no node rules (issued before enforcement or by another tool); renew it", bot)
	}
	rules, err := policy.DecodeRules(raw)
	if err != nil {
		return nil, fmt.Sprintf("bot %s: %v", bot, err)
	}
	if !policy.NodeAllowed(rules, st.Labels) {
		return nil, fmt.Sprintf("bot %s: its roles do not allow node %s (labels %s)", bot, st.Node, formatLabels(st.Labels))
	}
	for _, l := range st.Locks {
		if l.Bot == bot && l.InForce(now) {
			return nil, fmt.Sprintf("bot %s is locked (lock %s: %s)", bot, l.ID, l.Message)
		}
	}
	return []string{user}, ""
}

// Decide is the decision of sshd's AuthorizedPrincipalsCommand: may the
// certificate certB64 (sshd's %k: the base64 key blob) log in as user
// (%u) on the node st describes, at now.
func Decide(st *State, user, certB64 string, now time.Time) (logins []string, reason string) {
	blob, err := base64.StdEncoding.DecodeString(certB64)
	if err != nil {
		return nil, "the key is not base64 (give sshd's %k)"
	}
	key, err := ssh.ParsePublicKey(blob)
	if err != nil {
		return nil, fmt.Sprintf("the key is not an SSH key: %v", err)
	}
	cert, ok := key.(*ssh.Certificate)
	if !ok {
		return nil, "the key is not a certificate"
	}
	return Allowed(cert, user, st, now)
}

// botPrefix starts the key ID of every bot certificate: bot-NAME.
const botPrefix = "bot-"

// checkCert checks what sshd checks too (the hook must not rely on how it
// was called): type, CA, signature, validity and principal.
func checkCert(cert *ssh.Certificate, user string, st *State, now time.Time) error {
	if cert.CertType != ssh.UserCert {
		return errors.New("not a user certificate")
	}
	cas, err := st.caKeys()
	if err != nil {
		return err
	}
	signer := cert.SignatureKey.Marshal()
	trusted := false
	for _, ca := range cas {
		if bytes.Equal(ca.Marshal(), signer) {
			trusted = true
			break
		}
	}
	if !trusted {
		return fmt.Errorf("certificate %q is not signed by a user CA of cluster %s", cert.KeyId, st.Cluster)
	}
	checker := ssh.CertChecker{
		Clock: func() time.Time { return now },
		// sshd applies these options itself after the hook.
		SupportedCriticalOptions: []string{"force-command", "source-address", "verify-required"},
	}
	if err := checker.CheckCert(user, cert); err != nil {
		return fmt.Errorf("certificate %q: %v", cert.KeyId, err)
	}
	return nil
}

// caKeys parses the trusted user CA keys.
func (st *State) caKeys() ([]ssh.PublicKey, error) {
	out := make([]ssh.PublicKey, 0, len(st.UserCAs))
	for i, line := range st.UserCAs {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("user CA %d of the node state: %v", i+1, err)
		}
		out = append(out, k)
	}
	return out, nil
}

// lockedBots are the bots with a lock in force at now, each once.
func (st *State) lockedBots(now time.Time) []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range st.Locks {
		if l.InForce(now) && !seen[l.Bot] {
			seen[l.Bot] = true
			out = append(out, l.Bot)
		}
	}
	return out
}

// formatLabels writes labels as k=v,.. in key order, for log lines.
func formatLabels(labels map[string]string) string {
	if len(labels) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k + "=" + labels[k])
	}
	return b.String()
}
