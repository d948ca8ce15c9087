package sshagent

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
)

// issue makes an ECDSA key and a user certificate for it valid from a
// minute before now for ttl, as the authority does.
func issue(t testing.TB, now time.Time, ttl time.Duration) (crypto.Signer, *ssh.Certificate) {
	t.Helper()
	return issueAlg(t, identity.ECDSA, now, ttl)
}

func issueAlg(t testing.TB, alg identity.Algorithm, now time.Time, ttl time.Duration) (crypto.Signer, *ssh.Certificate) {
	t.Helper()
	ca, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caSigner, err := ssh.NewSignerFromSigner(ca)
	if err != nil {
		t.Fatal(err)
	}
	key, err := identity.GenerateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	cert := &ssh.Certificate{Key: pub, CertType: ssh.UserCert, KeyId: "bot-robot", ValidPrincipals: []string{"root"},
		ValidAfter: uint64(now.Add(-time.Minute).Unix()), ValidBefore: uint64(now.Add(ttl).Unix())}
	if err := cert.SignCert(rand.Reader, caSigner); err != nil {
		t.Fatal(err)
	}
	return key, cert
}

// publicDir is a directory every uid can reach (t.TempDir's parent is
// private to root), removed at the end.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sshagent-test-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// counts gathers what the server reports.
type counts struct {
	mu       sync.Mutex
	connects map[string]int
	signs    map[string]int
	peers    []Peer
}

func (c *counts) get(m map[string]int, k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return m[k]
}

type testAgent struct {
	*Server
	path  string
	clock *clock.Fake
	seen  *counts
}

// start serves a fresh key on a socket in dir; allow decides connections.
func start(t *testing.T, dir string, mode os.FileMode, allow func(Peer) bool) (*testAgent, *ssh.Certificate) {
	t.Helper()
	fake := clock.NewFake(time.Now())
	key, cert := issue(t, fake.Now(), time.Hour)
	seen := &counts{connects: map[string]int{}, signs: map[string]int{}}
	path := filepath.Join(dir, "agent.sock")
	s, err := Listen(Options{
		Path: path, UID: 0, GID: 0, Mode: mode, Clock: fake,
		Allow: func(p Peer) bool {
			seen.mu.Lock()
			seen.peers = append(seen.peers, p)
			seen.mu.Unlock()
			return allow(p)
		},
		OnConnect: func(r string) { seen.mu.Lock(); seen.connects[r]++; seen.mu.Unlock() },
		OnSign:    func(r string) { seen.mu.Lock(); seen.signs[r]++; seen.mu.Unlock() },
	}, key, cert)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &testAgent{Server: s, path: path, clock: fake, seen: seen}, cert
}

func anyone(Peer) bool { return true }

func dial(t *testing.T, path string) agent.ExtendedAgent {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return agent.NewClient(c)
}

// signs asks for a signature with key and checks it against key.
func signs(t *testing.T, client agent.ExtendedAgent, key ssh.PublicKey) error {
	t.Helper()
	data := []byte("session id and userauth request")
	sig, err := client.Sign(key, data)
	if err != nil {
		return err
	}
	if cert, ok := key.(*ssh.Certificate); ok {
		key = cert.Key
	}
	if err := key.Verify(data, sig); err != nil {
		t.Fatalf("the agent's signature does not verify: %v", err)
	}
	return nil
}

// The agent lists the certificate and its key, signs with either name, and
// refuses every request that would change it.
func TestListsSignsAndChangesNothing(t *testing.T) {
	a, cert := start(t, t.TempDir(), 0o600, anyone)
	client := dial(t, a.path)
	keys, err := client.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || string(keys[0].Blob) != string(cert.Marshal()) || string(keys[1].Blob) != string(cert.Key.Marshal()) || keys[0].Comment != "bot-robot" {
		t.Fatalf("List = %v, want the certificate, then its key", keys)
	}
	for _, k := range []ssh.PublicKey{cert, cert.Key} {
		if err := signs(t, client, k); err != nil {
			t.Errorf("sign with %s: %v", k.Type(), err)
		}
	}
	other, _ := issue(t, time.Now(), time.Hour)
	otherPub, _ := ssh.NewPublicKey(other.Public())
	if err := signs(t, client, otherPub); err == nil {
		t.Errorf("signed with a key the agent does not hold")
	}
	refusals := map[string]error{
		"add":        client.Add(agent.AddedKey{PrivateKey: other}),
		"remove":     client.Remove(cert),
		"remove all": client.RemoveAll(),
		"lock":       client.Lock([]byte("x")),
		"unlock":     client.Unlock([]byte("x")),
	}
	for op, err := range refusals {
		if err == nil {
			t.Errorf("%s succeeded on a read-only agent", op)
		}
	}
	if keys, _ := client.List(); len(keys) != 2 || signs(t, client, cert) != nil {
		t.Errorf("after the refused requests the agent lists %d keys or no longer signs", len(keys))
	}
	if a.seen.get(a.seen.signs, SignOK) != 3 || a.seen.get(a.seen.signs, SignUnknownKey) != 1 || a.seen.get(a.seen.connects, ResultOK) != 1 {
		t.Errorf("reported connections %v, signatures %v", a.seen.connects, a.seen.signs)
	}
}

// Every key algorithm signs, RSA with the SHA-2 algorithm the client asks
// for (OpenSSH asks for rsa-sha2-512 or -256, never SHA-1).
func TestSignsWithEveryAlgorithm(t *testing.T) {
	for _, alg := range []identity.Algorithm{identity.ECDSA, identity.Ed25519, identity.RSA} {
		key, cert := issueAlg(t, alg, time.Now(), time.Hour)
		s, err := Listen(Options{Path: filepath.Join(t.TempDir(), "agent.sock"), Mode: 0o600, Allow: anyone}, key, cert)
		if err != nil {
			t.Fatal(err)
		}
		client := dial(t, s.opts.Path)
		data := []byte("data")
		for _, flags := range []agent.SignatureFlags{0, agent.SignatureFlagRsaSha256, agent.SignatureFlagRsaSha512} {
			if alg != identity.RSA && flags != 0 {
				continue
			}
			sig, err := client.SignWithFlags(cert, data, flags)
			if err != nil {
				t.Fatalf("%s flags %d: %v", alg, flags, err)
			}
			if err := cert.Key.Verify(data, sig); err != nil {
				t.Errorf("%s flags %d: signature %s does not verify: %v", alg, flags, sig.Format, err)
			}
			want := map[agent.SignatureFlags]string{agent.SignatureFlagRsaSha256: ssh.KeyAlgoRSASHA256, agent.SignatureFlagRsaSha512: ssh.KeyAlgoRSASHA512}[flags]
			if want != "" && sig.Format != want {
				t.Errorf("%s flags %d: signature format %s, want %s", alg, flags, sig.Format, want)
			}
		}
		s.Close()
	}
}

// Publish serves the new pair from the next request on; the previous key
// still signs for a client that listed it just before, for a moment, and
// then no more.
func TestPublishSwapsForTheNextRequest(t *testing.T) {
	a, old := start(t, t.TempDir(), 0o600, anyone)
	client := dial(t, a.path)
	key, cert := issue(t, a.clock.Now(), time.Hour)
	a.Publish(key, cert)
	keys, _ := client.List()
	if len(keys) != 4 || string(keys[0].Blob) != string(cert.Marshal()) || string(keys[2].Blob) != string(old.Marshal()) {
		t.Fatalf("after Publish the agent lists %d keys, not the new certificate first and the old one after", len(keys))
	}
	if err := signs(t, client, cert); err != nil {
		t.Errorf("the new key does not sign: %v", err)
	}
	if err := signs(t, client, old); err != nil {
		t.Errorf("the previous key no longer signs right after a renewal: %v", err)
	}
	a.clock.Advance(retiredKeyGrace)
	if err := signs(t, client, old); err == nil {
		t.Errorf("the previous key still signs %v after the renewal", retiredKeyGrace)
	}
	if keys, _ := client.List(); len(keys) != 2 || string(keys[0].Blob) != string(cert.Marshal()) {
		t.Errorf("%v after the renewal the agent lists %d keys, want the new pair", retiredKeyGrace, len(keys))
	}
}

// A key whose certificate has expired never signs, current or not, and is
// no longer listed.
func TestExpiredCertificateNeverSigns(t *testing.T) {
	a, cert := start(t, t.TempDir(), 0o600, anyone)
	client := dial(t, a.path)
	a.clock.Set(time.Unix(int64(cert.ValidBefore), 0).Add(-time.Second))
	if err := signs(t, client, cert); err != nil {
		t.Fatalf("a second before expiry: %v", err)
	}
	a.clock.Advance(time.Second)
	if err := signs(t, client, cert); err == nil {
		t.Fatalf("signed with a certificate that expired")
	}
	if keys, _ := client.List(); len(keys) != 0 {
		t.Errorf("an expired certificate is still listed (%d keys)", len(keys))
	}
	if a.seen.get(a.seen.signs, SignExpired) != 1 {
		t.Errorf("signatures reported: %v", a.seen.signs)
	}
	// A renewal that comes late brings it back.
	key, fresh := issue(t, a.clock.Now(), time.Hour)
	a.Publish(key, fresh)
	if err := signs(t, client, fresh); err != nil {
		t.Errorf("after a late renewal: %v", err)
	}
}

// sshAdd runs the real ssh-add against the socket as uid:gid with groups.
func sshAdd(path string, cred *syscall.Credential, args ...string) (string, error) {
	cmd := exec.Command("ssh-add", args...)
	cmd.Env = []string{"SSH_AUTH_SOCK=" + path, "PATH=" + os.Getenv("PATH")}
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Each connection is decided from the peer the kernel reports, supplementary
// groups included, and a refused one gets nothing: the real ssh-add of a
// stranger lists no key.
func TestPeerCredentialsDecide(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run ssh-add as other uids")
	}
	if _, err := exec.LookPath("ssh-add"); err != nil {
		t.Skip("ssh-add not installed")
	}
	a, cert := start(t, publicDir(t), 0o666, func(p Peer) bool {
		for _, g := range p.Groups {
			if g == 3000 {
				return true
			}
		}
		return p.UID == 0
	})
	out, err := sshAdd(a.path, nil, "-L")
	if err != nil || !strings.Contains(out, cert.Type()) {
		t.Fatalf("ssh-add -L as root: %v\n%s", err, out)
	}
	member := &syscall.Credential{Uid: 4000, Gid: 4000, Groups: []uint32{7, 3000}}
	if out, err := sshAdd(a.path, member, "-L"); err != nil || !strings.Contains(out, cert.Type()) {
		t.Errorf("ssh-add -L as uid 4000 in group 3000: %v\n%s", err, out)
	}
	stranger := &syscall.Credential{Uid: 5000, Gid: 5000, Groups: []uint32{7}}
	if out, err := sshAdd(a.path, stranger, "-L"); err == nil || strings.Contains(out, "ecdsa") {
		t.Errorf("ssh-add -L as a stranger: %v\n%s", err, out)
	}
	if out, err := sshAdd(a.path, nil, "-D"); err == nil {
		t.Errorf("ssh-add -D succeeded on a read-only agent:\n%s", out)
	}
	if a.seen.get(a.seen.connects, ResultDenied) != 1 || a.seen.get(a.seen.connects, ResultOK) != 3 {
		t.Errorf("connections reported: %v", a.seen.connects)
	}
	a.seen.mu.Lock()
	defer a.seen.mu.Unlock()
	var sawMember bool
	for _, p := range a.seen.peers {
		if p.UID == 4000 && p.GID == 4000 && len(p.Groups) == 2 && p.Groups[1] == 3000 && p.PID != 0 {
			sawMember = true
		}
	}
	if !sawMember {
		t.Errorf("the kernel's view of uid 4000 never reached Allow: %+v", a.seen.peers)
	}
}

// Close ends the connections and removes the socket.
func TestCloseRemovesTheSocket(t *testing.T) {
	a, _ := start(t, t.TempDir(), 0o600, anyone)
	c, err := net.Dial("unix", a.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client := agent.NewClient(c)
	if _, err := client.List(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(a.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Close: %v", err)
	}
	if _, err := client.List(); err == nil {
		t.Errorf("a connection still answers after Close")
	}
}

// Signatures and renewals at once: after each List a renewal runs while
// the client asks for a signature with what it listed, which must succeed
// and verify (and the race detector sees Publish and Sign overlap).
func TestSignWhileRenewing(t *testing.T) {
	a, _ := start(t, t.TempDir(), 0o600, anyone)
	renew := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range renew {
			key, cert := issue(t, a.clock.Now(), time.Hour)
			a.Publish(key, cert)
		}
	}()
	client := dial(t, a.path)
	for range 100 {
		keys, err := client.List()
		if err != nil || len(keys) == 0 {
			t.Fatalf("list: %d keys, %v", len(keys), err)
		}
		renew <- struct{}{}
		pub, err := ssh.ParsePublicKey(keys[0].Blob)
		if err != nil {
			t.Fatal(err)
		}
		if err := signs(t, client, pub); err != nil {
			t.Fatalf("the key listed a moment ago does not sign: %v", err)
		}
	}
	close(renew)
	<-done
}
