// Package seal keeps the authority's CA private keys sealed where they are
// stored: whoever reads the database, or a dump or backup of it, gets
// ciphertext. The key-encryption key (the "seal key") lives in a file each
// replica reads at start (--ca-key-seal, or the systemd credential
// ca-key-seal), never in the database.
//
// A sealed CA key is XChaCha20-Poly1305 over the PKCS #8 DER, under a key
// derived from the seal key, with associated data naming the cluster and
// the CA's kind: a sealed row moved to another kind or another cluster's
// database does not open. The same seal key also yields the other secrets
// that replicas must share without storing them (Derive), such as the key
// of the stateless IAM challenges.
//
// Store backends never see this package: they store the sealed bytes as
// they stored the plain ones. Only the authority (package auth) imports it;
// it imports the standard library and x/crypto.
package seal

import (
	"bytes"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/chacha20poly1305"
)

// KeySize is the size of a seal key: 32 random bytes.
const KeySize = 32

// CredentialName is the systemd credential (LoadCredential=NAME:FILE) the
// authority reads its seal key from when --ca-key-seal is not given.
const CredentialName = "ca-key-seal"

// maxFileSize bounds what Load reads: a key file is 32 bytes, or 64 hex
// digits and a line break.
const maxFileSize = 4 << 10

// magic starts every sealed value. A PKCS #8 key starts with 0x30 (an ASN.1
// SEQUENCE), so sealed and plain values never look alike.
var magic = []byte("MSK1")

const (
	idLen     = 8
	headerLen = 4 + idLen + chacha20poly1305.NonceSizeX
)

// Key is a loaded seal key. Its zero value is not usable.
type Key struct {
	master [KeySize]byte
	aead   [KeySize]byte // derived: seals CA keys
	id     [idLen]byte   // derived: names the key in sealed values and errors
}

// ErrWrongKey is what Open returns when a value was sealed under another
// seal key, or was changed, or belongs to another cluster or CA kind.
var ErrWrongKey = errors.New("sealed under another seal key, or altered")

// Load reads a seal key from path: 32 raw bytes, or 64 hex digits (what
// `openssl rand -hex 32` writes). The file must be a regular file that only
// its owner may read or write, unless it lies in $CREDENTIALS_DIRECTORY,
// where systemd decides who reads it (and may grant it by an ACL that shows
// as group bits). Every error is one line naming the file and the fix.
func Load(path string) (*Key, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("--ca-key-seal %s: %v", path, err)
	}
	f, err := os.Open(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("--ca-key-seal %s: no such file; make one with `openssl rand -hex 32 > FILE && chmod 600 FILE` and give every replica the same", path)
		}
		return nil, fmt.Errorf("--ca-key-seal %s: %v", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("--ca-key-seal %s: %v", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("--ca-key-seal %s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 && !inCredentials(abs) {
		return nil, fmt.Errorf("--ca-key-seal %s may be read or written by other users (mode %04o): run chmod 600 on it", path, perm)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("--ca-key-seal %s: %v", path, err)
	}
	defer clear(b)
	raw, err := parseKey(b)
	if err != nil {
		return nil, fmt.Errorf("--ca-key-seal %s: %v", path, err)
	}
	defer clear(raw)
	return New(raw)
}

// inCredentials says whether path lies in the directory systemd passed as
// $CREDENTIALS_DIRECTORY.
func inCredentials(path string) bool {
	dir := os.Getenv("CREDENTIALS_DIRECTORY")
	if dir == "" {
		return false
	}
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// parseKey reads 32 raw bytes, or 64 hex digits with optional white space
// around them.
func parseKey(b []byte) ([]byte, error) {
	if len(b) == KeySize {
		return bytes.Clone(b), nil
	}
	t := bytes.TrimSpace(b)
	if len(t) == 2*KeySize {
		raw := make([]byte, KeySize)
		if _, err := hex.Decode(raw, t); err == nil {
			return raw, nil
		}
	}
	return nil, fmt.Errorf("holds %d bytes; want 32 random bytes, or 64 hex digits as `openssl rand -hex 32` writes them", len(b))
}

// New makes a Key of 32 random bytes. It refuses a key whose bytes are all
// equal: a file of zeros or a placeholder, never a random key.
func New(raw []byte) (*Key, error) {
	if len(raw) != KeySize {
		return nil, fmt.Errorf("a seal key is %d bytes, not %d", KeySize, len(raw))
	}
	if bytes.Count(raw, raw[:1]) == len(raw) {
		return nil, errors.New("the seal key is not random (all its bytes are equal); make one with `openssl rand -hex 32`")
	}
	k := &Key{}
	copy(k.master[:], raw)
	copy(k.aead[:], k.derive("midfs seal: CA keys v1", KeySize))
	copy(k.id[:], k.derive("midfs seal: key id v1", idLen))
	return k, nil
}

// Generate makes a new random Key (tests, and tools that write key files).
func Generate() (*Key, []byte) {
	raw := make([]byte, KeySize)
	rand.Read(raw)
	k, err := New(raw)
	if err != nil { // 2^-248: all bytes equal
		return Generate()
	}
	return k, raw
}

func (k *Key) derive(info string, n int) []byte {
	out, err := hkdf.Key(sha256.New, k.master[:], nil, info, n)
	if err != nil {
		panic(err) // only for n > 255*32
	}
	return out
}

// Derive returns a 32-byte secret for purpose, the same on every replica
// that holds the same seal key, and unrelated to the key that seals CA keys
// and to the secret of any other purpose. The cluster name is part of it,
// so two clusters that (wrongly) share a seal key share no derived secret.
func (k *Key) Derive(purpose, cluster string) []byte {
	return k.derive("midfs seal: derived v1\x00"+purpose+"\x00"+cluster, 32)
}

// ID names the key without revealing it: 16 hex digits, shown in errors so
// that an operator can tell which replica holds another key.
func (k *Key) ID() string { return hex.EncodeToString(k.id[:]) }

// IsSealed says whether a stored CA key is sealed (by any seal key).
func IsSealed(stored []byte) bool { return bytes.HasPrefix(stored, magic) }

// SealedBy returns the ID of the key a sealed value was sealed under.
func SealedBy(stored []byte) (string, bool) {
	if !IsSealed(stored) || len(stored) < headerLen {
		return "", false
	}
	return hex.EncodeToString(stored[len(magic) : len(magic)+idLen]), true
}

// associatedData binds a sealed CA key to its header, its cluster and its
// kind. The names are length-prefixed, so no two pairs of names give the
// same bytes.
func associatedData(header []byte, cluster, kind string) []byte {
	ad := append([]byte(nil), header...)
	for _, s := range []string{"ca-key", cluster, kind} {
		ad = append(ad, byte(len(s)>>8), byte(len(s)))
		ad = append(ad, s...)
	}
	return ad
}

// SealCA seals the PKCS #8 key of the cluster's CA of kind.
func (k *Key) SealCA(cluster, kind string, keyDER []byte) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(k.aead[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, headerLen, headerLen+len(keyDER)+aead.Overhead())
	copy(out, magic)
	copy(out[len(magic):], k.id[:])
	if _, err := rand.Read(out[len(magic)+idLen : headerLen]); err != nil {
		return nil, err
	}
	nonce := out[len(magic)+idLen : headerLen]
	return aead.Seal(out, nonce, keyDER, associatedData(out[:headerLen], cluster, kind)), nil
}

// OpenCA returns the PKCS #8 key sealed by SealCA for the same cluster and
// kind. A value sealed under another key, altered, or sealed for another
// cluster or kind gives an error wrapping ErrWrongKey.
func (k *Key) OpenCA(cluster, kind string, sealed []byte) ([]byte, error) {
	id, ok := SealedBy(sealed)
	if !ok {
		return nil, errors.New("not a sealed CA key")
	}
	if id != k.ID() {
		return nil, fmt.Errorf("%w: sealed under the key with id %s, this one is %s", ErrWrongKey, id, k.ID())
	}
	aead, err := chacha20poly1305.NewX(k.aead[:])
	if err != nil {
		return nil, err
	}
	nonce := sealed[len(magic)+idLen : headerLen]
	plain, err := aead.Open(nil, nonce, sealed[headerLen:], associatedData(sealed[:headerLen], cluster, kind))
	if err != nil {
		return nil, fmt.Errorf("%w: the %s CA key of cluster %s does not open under the key with id %s", ErrWrongKey, kind, cluster, k.ID())
	}
	return plain, nil
}
