package joiner

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/identity"
)

func selfSigned(t *testing.T) *x509.Certificate {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestParsePins(t *testing.T) {
	good := "sha256:" + strings.Repeat("ab", 32)
	if p, err := parsePins(strings.ToUpper(good)); err != nil || p[0] != good {
		t.Errorf("upper-case pin: %v %v", p, err)
	}
	if p, err := parsePins(good + ", " + good); err != nil || len(p) != 2 {
		t.Errorf("two pins: %v %v", p, err)
	}
	for _, bad := range []string{"", "ab", "sha1:" + strings.Repeat("ab", 20), "sha256:" + strings.Repeat("ab", 31), "sha256:" + strings.Repeat("zz", 32)} {
		if _, err := parsePins(bad); !errors.Is(err, ErrConfig) {
			t.Errorf("parsePins(%q) = %v, want ErrConfig", bad, err)
		}
	}
}

func TestCheckPinsWantsEveryCA(t *testing.T) {
	a, b := selfSigned(t), selfSigned(t)
	pa, pb := identity.SPKIPin(a), identity.SPKIPin(b)
	if err := checkPins("x:1", []string{pa}, []*x509.Certificate{a}); err != nil {
		t.Errorf("matching pin refused: %v", err)
	}
	if err := checkPins("x:1", []string{pa, pb}, []*x509.Certificate{a, b}); err != nil {
		t.Errorf("two pins for two CAs refused: %v", err)
	}
	// A second CA the pin does not cover must fail, even beside a good one.
	err := checkPins("x:1", []string{pa}, []*x509.Certificate{a, b})
	if !errors.Is(err, ErrPinMismatch) || !strings.Contains(err.Error(), pb) || !strings.Contains(err.Error(), pa) {
		t.Errorf("uncovered CA: %v; want a mismatch naming both pins", err)
	}
	if err := checkPins("x:1", []string{pa}, nil); !errors.Is(err, ErrPinMismatch) {
		t.Errorf("no CA at all: %v, want mismatch", err)
	}
}
