package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/node/enforce"
	"github.com/midfs/midfs/wire"
)

func testSigner(t *testing.T) ssh.Signer {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// runAuthorize as sshd calls it: the login on standard output if the
// certificate may log in, nothing otherwise, exit 0 both ways, and the
// reason for a refusal on one line of standard error.
func TestNodeAuthorize(t *testing.T) {
	ca := testSigner(t)
	dir := t.TempDir()
	st := &enforce.State{Cluster: "c", Node: "prod1", Labels: map[string]string{"env": "prod"},
		UserCAs: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ca.PublicKey())))}}
	if err := enforce.Write(dir, st); err != nil {
		t.Fatal(err)
	}
	rules, _ := policy.EncodeRules([]policy.NodeRule{{Allow: policy.Labels{"*": {"*"}}}})
	now := time.Now()
	cert := &ssh.Certificate{Key: testSigner(t).PublicKey(), CertType: ssh.UserCert, KeyId: "bot-robot", ValidPrincipals: []string{"root"},
		ValidAfter: uint64(now.Add(-time.Minute).Unix()), ValidBefore: uint64(now.Add(time.Hour).Unix()),
		Permissions: ssh.Permissions{Extensions: map[string]string{policy.RulesExtension: rules}}}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	k := base64.StdEncoding.EncodeToString(cert.Marshal())
	run := func(args ...string) (string, string, int) {
		var out, errb bytes.Buffer
		code := runAuthorize(args, &out, &errb)
		return out.String(), errb.String(), code
	}
	for _, args := range [][]string{{"--run-dir=" + dir, "root", k}, {"--run-dir", dir, "root", k}, {"root", "--run-dir", dir, "--", k}} {
		if out, errs, code := run(args...); out != "root\n" || errs != "" || code != 0 {
			t.Errorf("%q: out %q, err %q, exit %d; want root", args[:len(args)-1], out, errs, code)
		}
	}
	refused := func(why string, args ...string) {
		t.Helper()
		out, errs, code := run(args...)
		if out != "" || code != 0 || !strings.Contains(errs, why) || strings.Count(errs, "\n") != 1 {
			t.Errorf("%s: out %q, err %q, exit %d; want nothing printed, exit 0, one line with %q", why, out, errs, code, why)
		}
	}
	refused(`principal "admin" not in the set`, "--run-dir="+dir, "admin", k)
	refused("not base64", "--run-dir="+dir, "root", "%%%")
	refused("not a certificate", "--run-dir="+dir, "root", base64.StdEncoding.EncodeToString(ca.PublicKey().Marshal()))
	refused("node state unreadable", "--run-dir="+t.TempDir(), "root", k)
	st.Locks = []wire.Lock{{ID: "l1", Bot: "robot", Message: "bad\nday"}}
	if err := enforce.Write(dir, st); err != nil {
		t.Fatal(err)
	}
	refused("bot robot is locked (lock l1: bad?day)", "--run-dir="+dir, "root", k)

	for _, args := range [][]string{{"root"}, {"--run-dir=" + dir, "root", k, "extra"}, {"--bogus", "root", k}, {"--run-dir="}} {
		if out, errs, code := run(args...); out != "" || code != exitUsage || !strings.Contains(errs, "usage: midfs node authorize") {
			t.Errorf("%q: out %q, err %q, exit %d; want a usage line and exit 3", args, out, errs, code)
		}
	}
}

// The command line sshd runs goes to the fast path; asking for help does not.
func TestNodeAuthorizeIsSpecial(t *testing.T) {
	if !isAuthorizeCall([]string{"/usr/bin/midfs", "node", "authorize", "--run-dir=/run/x", "root", "AAAA"}) {
		t.Error("sshd's command line not recognised")
	}
	if isAuthorizeCall([]string{"midfs", "node", "authorize", "--help"}) || isAuthorizeCall([]string{"midfs", "nodes", "add"}) {
		t.Error("help or another command taken for the hook")
	}
}
