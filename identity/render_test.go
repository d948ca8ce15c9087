package identity

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"testing"
	"time"
)

func testIdentity(t testing.TB, alg Algorithm) *Identity {
	t.Helper()
	key, err := GenerateKey(alg)
	if err != nil {
		t.Fatal(err)
	}
	var caKeys [3]crypto.Signer
	for i := range caKeys {
		caKeys[i], _ = GenerateKey(ECDSA)
	}
	return newIdentity(t, key, caKeys, rand.Reader, time.Now())
}

// One issuance, one key file: every open serves the same bytes, and the key
// in the identity file is the key file (for Ed25519 too, whose OpenSSH
// format carries a random check value).
func TestKeyBytesAreTheSameOnEveryOpen(t *testing.T) {
	for _, alg := range []Algorithm{ECDSA, Ed25519, RSA} {
		id := testIdentity(t, alg)
		first, err := Render(FileKey, id, nil, "/x")
		if err != nil {
			t.Fatal(err)
		}
		again, _ := Render(FileKey, id, nil, "/x")
		ident, _ := Render(FileIdentity, id, nil, "/x")
		if !bytes.Equal(first, again) {
			t.Errorf("%s: key differs between two opens", alg)
		}
		if !bytes.HasPrefix(ident, first) {
			t.Errorf("%s: the identity file does not start with the key file's bytes", alg)
		}
		clear(first) // what a reader's release does: must not touch the next open
		if third, _ := Render(FileKey, id, nil, "/x"); !bytes.Equal(third, again) {
			t.Errorf("%s: clearing one open's bytes changed the next open", alg)
		}
	}
}
