package identity

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"flag"
	"io"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

var update = flag.Bool("update", false, "rewrite golden files")

// zeroReader makes signatures that take randomness (SSH cert nonces)
// repeatable, so golden files stay stable.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// newCA makes a CA whose TLS certificate and SSH key share one key.
func newCA(t testing.TB, key crypto.Signer, cluster, ou string, serial int64, rnd io.Reader) CA {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial),
		Subject:               pkix.Name{CommonName: cluster, Organization: []string{cluster}, OrganizationalUnit: []string{ou}},
		NotBefore:             epoch,
		NotAfter:              epoch.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rnd, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := CA{TLS: cert}
	if ou != "db" {
		if ca.SSH, err = ssh.NewPublicKey(key.Public()); err != nil {
			t.Fatal(err)
		}
	}
	return ca
}

// newIdentity issues an identity for key from fresh CAs the way the
// authority does: SSH cert principals are logins, TLS subject carries them.
func newIdentity(t testing.TB, key crypto.Signer, caKeys [3]crypto.Signer, rnd io.Reader, now time.Time) *Identity {
	t.Helper()
	const cluster = "example.com"
	user := newCA(t, caKeys[0], cluster, "user", 1, rnd)
	host := newCA(t, caKeys[1], cluster, "host", 2, rnd)
	db := newCA(t, caKeys[2], cluster, "db", 3, rnd)

	sshPub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	cert := &ssh.Certificate{
		Key:             sshPub,
		Serial:          7,
		CertType:        ssh.UserCert,
		KeyId:           "bot-robot",
		ValidPrincipals: []string{"root", "ubuntu"},
		ValidAfter:      uint64(now.Add(-time.Minute).Unix()),
		ValidBefore:     uint64(now.Add(time.Hour).Unix()),
		Permissions:     ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}},
	}
	caSigner, err := ssh.NewSignerFromSigner(caKeys[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.SignCert(rnd, caSigner); err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(8),
		Subject: pkix.Name{CommonName: "bot-robot", Organization: []string{"access"},
			Locality: []string{"root", "ubuntu"}},
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rnd, tmpl, user.TLS, key.Public(), caKeys[0])
	if err != nil {
		t.Fatal(err)
	}
	tlsCert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &Identity{
		Key: key, SSHCert: cert, TLSCert: tlsCert, ClusterName: cluster,
		CAs: CAs{User: []CA{user}, Host: []CA{host}, Database: []CA{db}},
	}
}

func fixedKey(t testing.TB, name string) crypto.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	k, err := ParsePrivateKeyPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var testNodes = []Node{
	{Name: "web-1", Addr: "10.0.0.7:3022", Labels: map[string]string{"group": "api-servers", "arch": "x86_64"}},
	{Name: "db-1", Addr: "db.internal:22", Labels: nil},
}

// TestRenderGolden pins every served file byte for byte. Ed25519 CAs sign
// deterministically, so the files are stable; run with -update after an
// intended format change and review the diff.
func TestRenderGolden(t *testing.T) {
	var caKeys [3]crypto.Signer
	for i := range caKeys {
		seed := bytes.Repeat([]byte{byte(i + 1)}, ed25519.SeedSize)
		caKeys[i] = ed25519.NewKeyFromSeed(seed)
	}
	id := newIdentity(t, fixedKey(t, "ecdsa.pem"), caKeys, zeroReader{}, epoch)
	for _, f := range Files {
		got, err := Render(f.Name, id, testNodes, Paths{Dir: "/opt/machine-id"})
		if err != nil {
			t.Fatalf("%s: %v", f.Name, err)
		}
		golden := filepath.Join("testdata", "golden", f.Name)
		if *update {
			os.MkdirAll(filepath.Dir(golden), 0o755)
			if err := os.WriteFile(golden, got, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		want, err := os.ReadFile(golden)
		if err != nil {
			t.Fatalf("%v (run go test ./identity -update)", err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from %s:\n--- got\n%s\n--- want\n%s", f.Name, golden, got, want)
		}
	}
}

func TestSSHConfigNamesMountAndNodes(t *testing.T) {
	b, err := SSHConfig("example.com", testNodes, Paths{Dir: "/opt/machine-id"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(b)
	for _, want := range []string{
		"Host *.example.com\n",
		`IdentityFile "/opt/machine-id/key"`,
		`CertificateFile "/opt/machine-id/key-cert.pub"`,
		`UserKnownHostsFile "/opt/machine-id/known_hosts"`,
		"Host web-1.example.com\n    HostName 10.0.0.7\n    Port 3022\n    HostKeyAlias web-1.example.com\n",
		"Host db-1.example.com\n    HostName db.internal\n    Port 22\n",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("ssh_config lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Index(cfg, "db-1") > strings.Index(cfg, "web-1") {
		t.Errorf("nodes not sorted by name:\n%s", cfg)
	}
}

// writeTree renders every file into a directory for the real tools.
func writeTree(t *testing.T, id *Identity) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range Files {
		b, err := Render(f.Name, id, testNodes, Paths{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f.Name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func tool(t *testing.T, name string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed (.ci/run installs it)", name)
	}
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestRoundTripRealTools reads what we render with OpenSSH and OpenSSL, for
// every key algorithm: the files must mean to them what they mean to us.
func TestRoundTripRealTools(t *testing.T) {
	for _, alg := range []Algorithm{ECDSA, Ed25519, RSA} {
		t.Run(string(alg), func(t *testing.T) {
			key, err := GenerateKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			var caKeys [3]crypto.Signer
			for i := range caKeys {
				caKeys[i], _ = GenerateKey(ECDSA)
			}
			id := newIdentity(t, key, caKeys, rand.Reader, time.Now())
			if err := id.Check(); err != nil {
				t.Fatal(err)
			}
			dir := writeTree(t, id)
			p := func(f string) string { return filepath.Join(dir, f) }

			l := tool(t, "ssh-keygen", "-L", "-f", p(FileSSHCert))
			for _, want := range []string{"user certificate", `Key ID: "bot-robot"`, "root", "ubuntu", "permit-pty"} {
				if !strings.Contains(l, want) {
					t.Errorf("ssh-keygen -L lacks %q:\n%s", want, l)
				}
			}
			pub, _ := os.ReadFile(p(FileSSHPub))
			y := tool(t, "ssh-keygen", "-y", "-f", p(FileKey))
			if strings.Fields(y)[1] != strings.Fields(string(pub))[1] {
				t.Errorf("ssh-keygen -y = %q, key.pub = %q", y, pub)
			}
			back, err := ParsePrivateKeyPEM(must(os.ReadFile(p(FileKey))))
			if err != nil || !back.(interface{ Equal(crypto.PrivateKey) bool }).Equal(key) {
				t.Errorf("key does not parse back to the same key: %v", err)
			}
			subj := tool(t, "openssl", "x509", "-in", p(FileTLSCert), "-noout", "-subject", "-issuer")
			for _, want := range []string{"CN = bot-robot", "O = access", "L = root", "O = example.com"} {
				if !strings.Contains(subj, want) {
					t.Errorf("openssl x509 lacks %q:\n%s", want, subj)
				}
			}
			tool(t, "openssl", "verify", "-CAfile", p(FileUserCA), p(FileTLSCert))
			if out, err := exec.Command("openssl", "verify", "-CAfile", p(FileHostCA), p(FileTLSCert)).CombinedOutput(); err == nil {
				t.Errorf("tlscert verified against the host CA, want failure:\n%s", out)
			}
			if alg != Ed25519 { // OpenSSH format, see MarshalPrivateKeyPEM
				tool(t, "openssl", "pkey", "-in", p(FileKey), "-noout")
			}
			kh := tool(t, "ssh-keygen", "-F", "web-1.example.com", "-f", p(FileKnownHosts))
			if !strings.Contains(kh, "@cert-authority example.com,*.example.com") {
				t.Errorf("known_hosts does not match hosts of the cluster:\n%s", kh)
			}
		})
	}
}

// TestIdentityFileSections checks the identity file in the order tsh and
// tbot parse it: key, SSH cert, TLS cert, CA lines, CA PEMs.
func TestIdentityFileSections(t *testing.T) {
	key, _ := GenerateKey(ECDSA)
	var caKeys [3]crypto.Signer
	for i := range caKeys {
		caKeys[i], _ = GenerateKey(ECDSA)
	}
	id := newIdentity(t, key, caKeys, rand.Reader, time.Now())
	b, err := Render(FileIdentity, id, nil, Paths{Dir: "/x"})
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	order := []string{"-----BEGIN PRIVATE KEY-----", "ecdsa-sha2-nistp256-cert-v01@openssh.com ",
		"-----BEGIN CERTIFICATE-----", "@cert-authority example.com,*.example.com ", "-----BEGIN CERTIFICATE-----"}
	pos := 0
	for _, want := range order {
		i := strings.Index(s[pos:], want)
		if i < 0 {
			t.Fatalf("identity file lacks %q after offset %d:\n%s", want, pos, s)
		}
		pos += i + len(want)
	}
	k, err := ParsePrivateKeyPEM(b)
	if err != nil || !k.(interface{ Equal(crypto.PrivateKey) bool }).Equal(key) {
		t.Fatalf("identity file's key does not parse back to the key: %v", err)
	}
}

// ParseCertsPEM reads back what CertsPEM and Render write, in order.
func TestParseCertsPEMReadsWhatIsRendered(t *testing.T) {
	var caKeys [3]crypto.Signer
	for i := range caKeys {
		caKeys[i], _ = GenerateKey(ECDSA)
	}
	key, _ := GenerateKey(ECDSA)
	id := newIdentity(t, key, caKeys, rand.Reader, time.Now())
	cas := []CA{id.CAs.User[0], id.CAs.Host[0], id.CAs.Database[0]}
	got, err := ParseCertsPEM(CertsPEM(cas))
	if err != nil || len(got) != len(cas) {
		t.Fatalf("ParseCertsPEM(CertsPEM of %d CAs) = %d certificates, %v", len(cas), len(got), err)
	}
	for i, c := range got {
		if !c.Equal(cas[i].TLS) {
			t.Errorf("certificate %d is not CA %d", i, i)
		}
	}
	tlscert, _ := Render(FileTLSCert, id, nil, Paths{Dir: "/x"})
	if got, err := ParseCertsPEM(tlscert); err != nil || len(got) != 1 || !got[0].Equal(id.TLSCert) {
		t.Errorf("ParseCertsPEM(tlscert) = %v, %v", got, err)
	}
	if _, err := ParseCertsPEM([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")); err == nil {
		t.Error("a PEM block that is no certificate parsed")
	}
}

func TestCheckRejectsMismatch(t *testing.T) {
	key, _ := GenerateKey(ECDSA)
	other, _ := GenerateKey(ECDSA)
	var caKeys [3]crypto.Signer
	for i := range caKeys {
		caKeys[i], _ = GenerateKey(ECDSA)
	}
	id := newIdentity(t, key, caKeys, rand.Reader, time.Now())
	id.Key = other
	if err := id.Check(); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("Check with a foreign key = %v, want a mismatch error", err)
	}
	id.Key = key
	id.CAs.User = id.CAs.Host
	if err := id.Check(); err == nil {
		t.Fatal("Check accepted a TLS cert not signed by the user CA")
	}
}

func TestKeySourceHandsOutFreshKeys(t *testing.T) {
	for _, alg := range []Algorithm{ECDSA, Ed25519, RSA} {
		ks := NewKeySource(alg)
		a, err := ks.Next()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := ks.Next()
		if a.(interface{ Equal(crypto.PrivateKey) bool }).Equal(b) {
			t.Fatalf("%s: KeySource returned the same key twice", alg)
		}
	}
	if _, err := ParseAlgorithm("dsa"); err == nil {
		t.Fatal("ParseAlgorithm accepted dsa")
	}
}

func TestPinIsOverSPKI(t *testing.T) {
	k := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, 32))
	ca := newCA(t, k, "c", "host", 1, zeroReader{})
	pin := SPKIPin(ca.TLS)
	if !strings.HasPrefix(pin, "sha256:") || len(pin) != 7+64 {
		t.Fatalf("pin %q", pin)
	}
	// Same key, different certificate: same pin.
	ca2 := newCA(t, k, "c", "host", 2, zeroReader{})
	if SPKIPin(ca2.TLS) != pin {
		t.Fatal("pin changed with the certificate although the key did not")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// An identity given the CAs of a rotation's next phase serves the same
// key, byte for byte (Ed25519's OpenSSH encoding is random), and the same
// certificates, with the new CAs in the CA files and known_hosts.
func TestWithCAsKeepsTheIssuance(t *testing.T) {
	for _, alg := range []Algorithm{ECDSA, Ed25519} {
		id := testIdentity(t, alg)
		extra := testIdentity(t, ECDSA).CAs.Host[0]
		cas := id.CAs
		cas.Host = append(append([]CA(nil), cas.Host...), extra)
		next := id.WithCAs(cas)
		for _, f := range []string{FileKey, FileSSHCert, FileTLSCert} {
			a, _ := Render(f, id, nil, Paths{Dir: "/m"})
			b, _ := Render(f, next, nil, Paths{Dir: "/m"})
			if string(a) != string(b) {
				t.Fatalf("%s: %s changed with the CAs", alg, f)
			}
		}
		kh, err := Render(FileKnownHosts, next, nil, Paths{Dir: "/m"})
		if err != nil || strings.Count(string(kh), "@cert-authority") != 2 {
			t.Fatalf("%s: known_hosts with two host CAs:\n%s %v", alg, kh, err)
		}
		if err := next.Check(); err != nil {
			t.Fatal(err)
		}
	}
}

// --labels as users type it: every label checked, one line naming the bad one.
func TestParseLabels(t *testing.T) {
	got, err := ParseLabels(" env=prod, team=data,,")
	if err != nil || len(got) != 2 || got["env"] != "prod" || got["team"] != "data" {
		t.Fatalf("ParseLabels: %v %v", got, err)
	}
	if got, err := ParseLabels(""); err != nil || len(got) != 0 {
		t.Fatalf("empty: %v %v", got, err)
	}
	for in, want := range map[string]string{
		"env":             "want k=v",
		"=prod":           "want k=v",
		"env=prod,env=qa": "twice",
		"bad key=x":       "bad label key",
		"env=a\nb":        "bad value",
	} {
		if _, err := ParseLabels(in); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("ParseLabels(%q): %v; want one line saying %q", in, err, want)
		}
	}
}
