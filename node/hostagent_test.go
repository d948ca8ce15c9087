package node

import (
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/midfs/midfs/identity"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// agentClient dials the socket as sshd does.
func agentClient(t *testing.T, path string) agent.ExtendedAgent {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return agent.NewClient(c)
}

// sshd lists the host key and signs with it through the socket, for every
// key type and RSA's SHA-2 algorithms; a process that reaches the socket
// cannot add, remove or lock keys, and signing still works after it tried.
func TestHostAgentSignsAndTakesNoChanges(t *testing.T) {
	for _, alg := range []identity.Algorithm{identity.ECDSA, identity.Ed25519, identity.RSA} {
		t.Run(string(alg), func(t *testing.T) {
			key, err := identity.GenerateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			h, err := newHostAgent(key)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), FileAgentSocket)
			srv, err := serveAgent(path, h, quiet())
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 || st.Mode()&os.ModeSocket == 0 {
				t.Fatalf("socket %v %v; want a socket only root may use", st.Mode(), err)
			}
			c := agentClient(t, path)
			keys, err := c.List()
			pub, _ := ssh.NewPublicKey(key.Public())
			if err != nil || len(keys) != 1 || string(keys[0].Blob) != string(pub.Marshal()) {
				t.Fatalf("List: %v %v", keys, err)
			}
			data := make([]byte, 64)
			rand.Read(data)
			flags := []agent.SignatureFlags{0}
			if alg == identity.RSA {
				flags = append(flags, agent.SignatureFlagRsaSha256, agent.SignatureFlagRsaSha512)
			}
			check := func() {
				t.Helper()
				for _, f := range flags {
					sig, err := c.SignWithFlags(pub, data, f)
					if err != nil {
						t.Fatalf("sign (flags %d): %v", f, err)
					}
					if err := pub.Verify(data, sig); err != nil {
						t.Fatalf("signature (flags %d, %s) does not verify: %v", f, sig.Format, err)
					}
				}
			}
			check()
			other, _ := identity.GenerateKey(identity.ECDSA)
			otherPub, _ := ssh.NewPublicKey(other.Public())
			if _, err := c.Sign(otherPub, data); err == nil {
				t.Error("signed with a key it does not hold")
			}
			if err := c.Add(agent.AddedKey{PrivateKey: other}); err == nil {
				t.Error("Add accepted")
			}
			if err := c.RemoveAll(); err == nil {
				t.Error("RemoveAll accepted")
			}
			if err := c.Lock([]byte("x")); err == nil {
				t.Error("Lock accepted")
			}
			check()
		})
	}
}

// A restart serves the same path: the new socket replaces the old in one
// rename, and answers.
func TestHostAgentReplacesTheSocketOfTheProcessBefore(t *testing.T) {
	key, _ := identity.GenerateKey(identity.ECDSA)
	h, _ := newHostAgent(key)
	path := filepath.Join(t.TempDir(), FileAgentSocket)
	first, err := serveAgent(path, h, quiet())
	if err != nil {
		t.Fatal(err)
	}
	first.Close() // as a killed process leaves it: a socket file nobody answers
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("the closed server still answers")
	}
	second, err := serveAgent(path, h, quiet())
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if keys, err := agentClient(t, path).List(); err != nil || len(keys) != 1 {
		t.Fatalf("List after the restart: %v %v", keys, err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("temporary sockets left behind: %v", ents)
	}
}
