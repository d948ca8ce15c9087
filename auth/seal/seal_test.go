package seal_test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/seal"
)

func TestSealOpensOnlyForItsClusterKindAndKey(t *testing.T) {
	k, raw := seal.Generate()
	plain := make([]byte, 138) // the size of a P-256 PKCS #8 key
	rand.Read(plain)
	sealed, err := k.SealCA("example.com", "user", plain)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, plain[:16]) {
		t.Fatal("the sealed value holds the key's bytes")
	}
	if !seal.IsSealed(sealed) || seal.IsSealed(plain) {
		t.Fatal("IsSealed cannot tell sealed from plain")
	}

	// The same key file read again (another replica) opens it.
	again, err := seal.New(raw)
	if err != nil {
		t.Fatal(err)
	}
	got, err := again.OpenCA("example.com", "user", sealed)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("OpenCA = %x, %v; want the sealed key", got, err)
	}

	other, _ := seal.Generate()
	tampered := bytes.Clone(sealed)
	tampered[len(tampered)-1] ^= 1
	for name, open := range map[string]func() ([]byte, error){
		"another kind (a swapped row)": func() ([]byte, error) { return k.OpenCA("example.com", "host", sealed) },
		"another cluster":              func() ([]byte, error) { return k.OpenCA("example.org", "user", sealed) },
		"another seal key":             func() ([]byte, error) { return other.OpenCA("example.com", "user", sealed) },
		"an altered value":             func() ([]byte, error) { return k.OpenCA("example.com", "user", tampered) },
	} {
		if b, err := open(); !errors.Is(err, seal.ErrWrongKey) || b != nil {
			t.Errorf("%s: OpenCA = %x, %v; want ErrWrongKey", name, b, err)
		}
	}
	if _, err := other.OpenCA("example.com", "user", sealed); !strings.Contains(err.Error(), k.ID()) || !strings.Contains(err.Error(), other.ID()) {
		t.Errorf("a wrong key's error %q should name both key ids", err)
	}
	if id, ok := seal.SealedBy(sealed); !ok || id != k.ID() {
		t.Errorf("SealedBy = %q, %v; want %q", id, ok, k.ID())
	}
}

func TestDeriveIsSharedByReplicasAndSeparatedByPurpose(t *testing.T) {
	k1, raw := seal.Generate()
	k2, _ := seal.New(raw)
	if !bytes.Equal(k1.Derive("iam-challenge", "c"), k2.Derive("iam-challenge", "c")) {
		t.Fatal("two loads of one key derive different secrets")
	}
	a := k1.Derive("iam-challenge", "c")
	for _, b := range [][]byte{k1.Derive("other", "c"), k1.Derive("iam-challenge", "d"), raw} {
		if bytes.Equal(a, b) {
			t.Fatal("secrets of different purposes, clusters or the key itself are equal")
		}
	}
}

func writeKey(t *testing.T, dir string, content []byte, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, "seal.key")
	if err := os.WriteFile(p, content, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

func TestLoadAcceptsRawAndHexKeys(t *testing.T) {
	_, raw := seal.Generate()
	want, _ := seal.New(raw)
	for name, content := range map[string][]byte{
		"raw":          raw,
		"hex":          []byte(hex.EncodeToString(raw)),
		"hex and line": []byte(hex.EncodeToString(raw) + "\n"),
	} {
		k, err := seal.Load(writeKey(t, t.TempDir(), content, 0o600))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if k.ID() != want.ID() {
			t.Errorf("%s: loaded key id %s, want %s", name, k.ID(), want.ID())
		}
	}
}

func TestLoadRefusesBadKeyFilesInOneLine(t *testing.T) {
	_, raw := seal.Generate()
	dir := t.TempDir()
	cases := []struct {
		name, want string
		path       func() string
	}{
		{"missing", "no such file; make one with `openssl rand -hex 32", func() string { return filepath.Join(dir, "none") }},
		{"group-readable", "may be read or written by other users (mode 0640): run chmod 600", func() string {
			return writeKey(t, t.TempDir(), raw, 0o640)
		}},
		{"world-readable hex", "mode 0644", func() string {
			return writeKey(t, t.TempDir(), []byte(hex.EncodeToString(raw)), 0o644)
		}},
		{"short", "holds 16 bytes; want 32 random bytes, or 64 hex digits", func() string {
			return writeKey(t, t.TempDir(), raw[:16], 0o600)
		}},
		{"not hex", "holds 65 bytes", func() string {
			return writeKey(t, t.TempDir(), []byte(strings.Repeat("zz", 32)+"\n"), 0o600)
		}},
		{"zeros", "not random", func() string {
			return writeKey(t, t.TempDir(), make([]byte, 32), 0o600)
		}},
		{"directory", "is not a regular file", func() string { return t.TempDir() }},
	}
	for _, c := range cases {
		p := c.path()
		_, err := seal.Load(p)
		if err == nil || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: Load(%s) = %v; want one line with %q", c.name, p, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), hex.EncodeToString(raw)[:8]) {
			t.Errorf("%s: the error shows key material: %v", c.name, err)
		}
	}
}

// A systemd credential may be readable through an ACL, which shows as group
// bits: inside $CREDENTIALS_DIRECTORY systemd decides who reads it.
func TestLoadTrustsTheCredentialsDirectory(t *testing.T) {
	_, raw := seal.Generate()
	creds := t.TempDir()
	p := writeKey(t, creds, raw, 0o440)
	if _, err := seal.Load(p); err == nil {
		t.Fatal("a 0440 key outside the credentials directory was accepted")
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	if _, err := seal.Load(p); err != nil {
		t.Fatalf("a 0440 credential was refused: %v", err)
	}
	if err := os.Mkdir(creds+"-other", 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(creds + "-other") })
	sibling := writeKey(t, creds+"-other", raw, 0o440)
	if _, err := seal.Load(sibling); err == nil {
		t.Fatal("a 0440 key beside (not in) the credentials directory was accepted")
	}
}
