package enforce

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/wire"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// certOpts shape a test certificate; the zero value is a good one.
type certOpts struct {
	keyID      string // default bot-robot
	principals []string
	rules      *[]policy.NodeRule // nil: the access role's rules
	noRules    bool
	host       bool
	after      time.Time
	before     time.Time
}

func issue(t testing.TB, ca ssh.Signer, o certOpts) *ssh.Certificate {
	t.Helper()
	if o.keyID == "" {
		o.keyID = "bot-robot"
	}
	if o.principals == nil {
		o.principals = []string{"root", "ubuntu"}
	}
	if o.after.IsZero() {
		o.after = t0.Add(-time.Minute)
	}
	if o.before.IsZero() {
		o.before = t0.Add(time.Hour)
	}
	ext := map[string]string{"permit-pty": ""}
	if !o.noRules {
		rules := []policy.NodeRule{{Allow: policy.Labels{"*": {"*"}}}}
		if o.rules != nil {
			rules = *o.rules
		}
		v, err := policy.EncodeRules(rules)
		if err != nil {
			t.Fatal(err)
		}
		ext[policy.RulesExtension] = v
	}
	typ := uint32(ssh.UserCert)
	if o.host {
		typ = ssh.HostCert
	}
	cert := &ssh.Certificate{
		Key: newSigner(t).PublicKey(), CertType: typ, KeyId: o.keyID, ValidPrincipals: o.principals,
		ValidAfter: uint64(o.after.Unix()), ValidBefore: uint64(o.before.Unix()),
		Permissions: ssh.Permissions{Extensions: ext},
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	return cert
}

func authorizedKey(k ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
}

func stateFor(ca ssh.Signer, labels map[string]string, locks ...wire.Lock) *State {
	return &State{Cluster: "example.com", Node: "web1", Labels: labels, UserCAs: []string{authorizedKey(ca.PublicKey())}, Locks: locks, Fetched: t0}
}

func TestAllowed(t *testing.T) {
	ca, other := newSigner(t), newSigner(t)
	prod := map[string]string{"env": "prod"}
	denyProd := []policy.NodeRule{{Allow: policy.Labels{"*": {"*"}}}, {Deny: policy.Labels{"env": {"prod"}}}}
	onlyDev := []policy.NodeRule{{Allow: policy.Labels{"env": {"dev"}}}}
	none := []policy.NodeRule{}
	for _, c := range []struct {
		name   string
		cert   *ssh.Certificate
		user   string
		st     *State
		reason string // "" = allowed
	}{
		{"allowed", issue(t, ca, certOpts{}), "root", stateFor(ca, prod), ""},
		{"other principal of the cert", issue(t, ca, certOpts{}), "ubuntu", stateFor(ca, prod), ""},
		{"login not in the cert", issue(t, ca, certOpts{}), "admin", stateFor(ca, prod), `principal "admin" not in the set`},
		{"no rules extension", issue(t, ca, certOpts{noRules: true}), "root", stateFor(ca, prod), "carries no node rules"},
		{"a role denies the labels", issue(t, ca, certOpts{rules: &denyProd}), "root", stateFor(ca, prod), "do not allow node web1 (labels env=prod)"},
		{"deny of another label", issue(t, ca, certOpts{rules: &denyProd}), "root", stateFor(ca, map[string]string{"env": "dev"}), ""},
		{"no role allows the labels", issue(t, ca, certOpts{rules: &onlyDev}), "root", stateFor(ca, prod), "do not allow node"},
		{"no rules at all", issue(t, ca, certOpts{rules: &none}), "root", stateFor(ca, prod), "do not allow node"},
		{"another CA", issue(t, other, certOpts{}), "root", stateFor(ca, prod), "not signed by a user CA of cluster example.com"},
		{"host certificate", issue(t, ca, certOpts{host: true}), "root", stateFor(ca, prod), "not a user certificate"},
		{"expired", issue(t, ca, certOpts{before: t0.Add(-time.Second)}), "root", stateFor(ca, prod), "expired"},
		{"not yet valid", issue(t, ca, certOpts{after: t0.Add(time.Minute)}), "root", stateFor(ca, prod), "not yet valid"},
		{"not a bot", issue(t, ca, certOpts{keyID: "alice"}), "root", stateFor(ca, prod), `key ID "alice" is not a midfs bot's`},
		{"locked", issue(t, ca, certOpts{}), "root", stateFor(ca, prod, wire.Lock{ID: "l1", Bot: "robot", Message: "compromised"}), "bot robot is locked (lock l1: compromised)"},
		{"lock until later", issue(t, ca, certOpts{}), "root", stateFor(ca, prod, wire.Lock{ID: "l1", Bot: "robot", Expires: t0.Add(time.Second)}), "locked"},
		{"expired lock", issue(t, ca, certOpts{}), "root", stateFor(ca, prod, wire.Lock{ID: "l1", Bot: "robot", Expires: t0}), ""},
		{"lock of another bot", issue(t, ca, certOpts{}), "root", stateFor(ca, prod, wire.Lock{ID: "l1", Bot: "robot2"}), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			logins, reason := Allowed(c.cert, c.user, c.st, t0)
			if c.reason == "" {
				if reason != "" || !slices.Equal(logins, []string{c.user}) {
					t.Fatalf("refused (%s), logins %v; want %s allowed", reason, logins, c.user)
				}
				return
			}
			if len(logins) > 0 || !strings.Contains(reason, c.reason) {
				t.Fatalf("logins %v, reason %q; want refused with %q", logins, reason, c.reason)
			}
		})
	}
}

// The rules travel signed: a certificate whose extension was changed after
// signing (to widen what its bot may reach) is refused.
func TestAllowedRefusesRulesChangedAfterSigning(t *testing.T) {
	ca := newSigner(t)
	deny := []policy.NodeRule{{Deny: policy.Labels{"env": {"prod"}}}}
	cert := issue(t, ca, certOpts{rules: &deny})
	wide, _ := policy.EncodeRules([]policy.NodeRule{{Allow: policy.Labels{"*": {"*"}}}})
	cert.Extensions[policy.RulesExtension] = wide
	logins, reason := Allowed(cert, "root", stateFor(ca, map[string]string{"env": "prod"}), t0)
	if len(logins) > 0 || !strings.Contains(reason, "signature") {
		t.Fatalf("logins %v, reason %q; want refused for its signature", logins, reason)
	}
}

func TestAllowedBadRules(t *testing.T) {
	ca := newSigner(t)
	for _, v := range []string{"", "null", "{}", `[{"allow":{"*":"*"},"extra":1}]`, `[] []`} {
		cert := &ssh.Certificate{Key: newSigner(t).PublicKey(), CertType: ssh.UserCert, KeyId: "bot-robot", ValidPrincipals: []string{"root"},
			ValidAfter: uint64(t0.Add(-time.Minute).Unix()), ValidBefore: uint64(t0.Add(time.Hour).Unix()),
			Permissions: ssh.Permissions{Extensions: map[string]string{policy.RulesExtension: v}}}
		if err := cert.SignCert(rand.Reader, ca); err != nil {
			t.Fatal(err)
		}
		if logins, reason := Allowed(cert, "root", stateFor(ca, nil), t0); len(logins) > 0 || !strings.Contains(reason, "bad node rules") {
			t.Errorf("rules %q: logins %v, reason %q; want refused", v, logins, reason)
		}
	}
}

func TestWriteLoad(t *testing.T) {
	ca := newSigner(t)
	dir := t.TempDir()
	st := stateFor(ca, map[string]string{"env": "prod"}, wire.Lock{ID: "l1", Bot: "robot", Message: "m", Created: t0})
	if err := Write(dir, st); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{StateFile, KRLFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("%s has mode %v, want 0644 (sshd's AuthorizedPrincipalsCommandUser reads it)", f, fi.Mode().Perm())
		}
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Node != "web1" || got.Labels["env"] != "prod" || len(got.Locks) != 1 || got.Locks[0].Bot != "robot" || !got.Fetched.Equal(t0) || !got.Locks[0].Expires.IsZero() {
		t.Fatalf("loaded %+v, wrote %+v", got, st)
	}
	if logins, _ := Allowed(issue(t, ca, certOpts{}), "root", got, t0); logins != nil {
		t.Fatal("a loaded state lost its lock")
	}
}

// A state whose CA key does not parse is refused whole: neither file
// changes.
func TestWriteBadStateChangesNothing(t *testing.T) {
	ca := newSigner(t)
	dir := t.TempDir()
	if err := Write(dir, stateFor(ca, nil)); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, StateFile))
	beforeKRL, _ := os.ReadFile(filepath.Join(dir, KRLFile))
	bad := stateFor(ca, nil, wire.Lock{ID: "l1", Bot: "robot"})
	bad.UserCAs = append(bad.UserCAs, "ssh-ed25519 notbase64")
	if err := Write(dir, bad); err == nil || !strings.Contains(err.Error(), "user CA 2") {
		t.Fatalf("Write of a bad CA key: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, StateFile))
	afterKRL, _ := os.ReadFile(filepath.Join(dir, KRLFile))
	if string(before) != string(after) || string(beforeKRL) != string(afterKRL) {
		t.Fatal("a refused Write changed the run directory")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 2 {
		t.Fatalf("run directory holds %d entries, want 2", len(entries))
	}
}

func TestLoadMissingOrBad(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); !os.IsNotExist(err) {
		t.Fatalf("Load of an empty dir: %v", err)
	}
	os.WriteFile(filepath.Join(dir, StateFile), []byte(`{"cluster":"x","unknown":1}`), 0o644)
	if _, err := Load(dir); err == nil {
		t.Fatal("Load took a state with an unknown field")
	}
}

func sshKeygen(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("ssh-keygen"); err != nil {
		t.Skip("ssh-keygen not installed (.ci/run installs it)")
	}
	out, err := exec.Command("ssh-keygen", args...).CombinedOutput()
	return string(out), err
}

// OpenSSH reads the KRL as we mean it: the certificates of locked bots
// from every user CA are revoked, whenever they were issued; others and
// plain keys are not; an expired lock revokes nothing.
func TestKRLReadByOpenSSH(t *testing.T) {
	ca1, ca2 := newSigner(t), newSigner(t)
	dir := t.TempDir()
	st := stateFor(ca1, nil,
		wire.Lock{ID: "l1", Bot: "robot"},
		wire.Lock{ID: "l2", Bot: "robot"}, // twice: once in the KRL
		wire.Lock{ID: "l3", Bot: "b2", Expires: time.Now().Add(time.Hour)},
		wire.Lock{ID: "l4", Bot: "gone", Expires: time.Now().Add(-time.Second)})
	st.UserCAs = append(st.UserCAs, authorizedKey(ca2.PublicKey()))
	if err := Write(dir, st); err != nil {
		t.Fatal(err)
	}
	krl := filepath.Join(dir, KRLFile)
	write := func(name string, k ssh.PublicKey) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, ssh.MarshalAuthorizedKey(k), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		name    string
		key     ssh.PublicKey
		revoked bool
	}{
		{"robot-ca1", issue(t, ca1, certOpts{keyID: "bot-robot", after: time.Now().Add(-48 * time.Hour)}), true},
		{"robot-ca2", issue(t, ca2, certOpts{keyID: "bot-robot"}), true},
		{"b2", issue(t, ca1, certOpts{keyID: "bot-b2"}), true},
		{"gone", issue(t, ca1, certOpts{keyID: "bot-gone"}), false},
		{"other", issue(t, ca1, certOpts{keyID: "bot-robot2"}), false},
		{"robot-other-ca", issue(t, newSigner(t), certOpts{keyID: "bot-robot"}), false},
		{"plain key", newSigner(t).PublicKey(), false},
	} {
		out, err := sshKeygen(t, "-Q", "-f", krl, write(c.name+".pub", c.key))
		revoked := strings.Contains(out, "REVOKED")
		if revoked != c.revoked || (err != nil) != c.revoked {
			t.Errorf("%s: ssh-keygen -Q says %q (%v); want revoked=%v", c.name, strings.TrimSpace(out), err, c.revoked)
		}
	}
}

// Byte for byte what ssh-keygen -k writes for the same key IDs, from the
// sections on (the header holds dates and versions).
func TestKRLMatchesSSHKeygen(t *testing.T) {
	ca := newSigner(t)
	dir := t.TempDir()
	caPub := filepath.Join(dir, "ca.pub")
	os.WriteFile(caPub, ssh.MarshalAuthorizedKey(ca.PublicKey()), 0o644)
	spec := filepath.Join(dir, "spec")
	os.WriteFile(spec, []byte("id: bot-zed\nid: bot-alpha\n"), 0o644)
	ref := filepath.Join(dir, "ref.krl")
	if out, err := sshKeygen(t, "-k", "-f", ref, "-s", caPub, spec); err != nil {
		t.Fatalf("ssh-keygen -k: %v\n%s", err, out)
	}
	want, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}
	got := KRL([]ssh.PublicKey{ca.PublicKey()}, []string{"zed", "alpha"}, 0, time.Now())
	// Header: magic 8, format 4, version 8, date 8, flags 8, reserved
	// string 4+0, comment string 4+len.
	const fixed = 8 + 4 + 8 + 8 + 8 + 4
	skip := func(b []byte) []byte {
		n := int(b[fixed])<<24 | int(b[fixed+1])<<16 | int(b[fixed+2])<<8 | int(b[fixed+3])
		return b[fixed+4+n:]
	}
	if string(skip(got)) != string(skip(want)) {
		t.Fatalf("sections differ:\n got %x\nwant %x", skip(got), skip(want))
	}
	if string(got[:12]) != string(want[:12]) {
		t.Fatalf("magic or format differ: %x vs %x", got[:12], want[:12])
	}
}

// An empty KRL is one OpenSSH reads: a node with no locks still has a
// RevokedKeys file that lets everyone in.
func TestEmptyKRLReadByOpenSSH(t *testing.T) {
	ca := newSigner(t)
	dir := t.TempDir()
	if err := Write(dir, stateFor(ca, nil)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "c.pub")
	os.WriteFile(p, ssh.MarshalAuthorizedKey(issue(t, ca, certOpts{})), 0o644)
	if out, err := sshKeygen(t, "-Q", "-f", filepath.Join(dir, KRLFile), p); err != nil || !strings.Contains(out, "ok") {
		t.Fatalf("ssh-keygen -Q on an empty KRL: %v: %s", err, out)
	}
}
