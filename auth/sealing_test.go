package auth

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/seal"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/sqlite"
)

// sealKeyFile writes a new seal key, as `openssl rand -hex 32` would, to
// an owner-only file and returns its path.
func sealKeyFile(t testing.TB) string {
	t.Helper()
	_, raw := seal.Generate()
	p := filepath.Join(t.TempDir(), "ca-key-seal")
	if err := os.WriteFile(p, []byte(hex.EncodeToString(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// caKeyForms lists the ways a CA private key of s could show up in a copy
// of its state: the PKCS #8 DER, the private scalar raw and in hex, and the
// base64 of PEM.
func caKeyForms(t testing.TB, s *Server) map[string][]byte {
	t.Helper()
	forms := map[string][]byte{}
	var all []*authority
	for _, kind := range caKinds {
		all = append(all, s.caSet().kinds[kind].all...)
	}
	for _, a := range all {
		der, err := x509.MarshalPKCS8PrivateKey(a.key)
		if err != nil {
			t.Fatal(err)
		}
		d, err := a.key.(*ecdsa.PrivateKey).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		forms[a.kind+" CA key DER"] = der
		forms[a.kind+" CA private scalar"] = d
		forms[a.kind+" CA private scalar, hex"] = []byte(hex.EncodeToString(d))
		forms[a.kind+" CA key PEM"] = []byte(base64.StdEncoding.EncodeToString(der)[:64])
		forms[a.kind+" CA key DER, hex (as pg_dump writes bytea)"] = []byte(hex.EncodeToString(der))
	}
	return forms
}

// stateBytes is every file of an SQLite state, as a backup would copy it.
func stateBytes(t testing.TB, dir string) []byte {
	t.Helper()
	var all []byte
	for _, f := range []string{sqlite.File, sqlite.File + "-wal", sqlite.File + "-shm"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	return all
}

func stateSum(t testing.TB, dir string) [32]byte { return sha256.Sum256(stateBytes(t, dir)) }

func TestSealedCAKeysAreNotInTheState(t *testing.T) {
	dir, keyFile := t.TempDir(), sealKeyFile(t)
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", ClusterName: "sealed.example", Logger: testLogger(t), CAKeySeal: keyFile}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	pin := s.CAPin()
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	forms := caKeyForms(t, s)
	for name, b := range forms {
		if bytes.Contains(stateBytes(t, dir), b) {
			t.Errorf("the running authority's state files hold the %s", name)
		}
	}
	s.Close()
	for name, b := range forms {
		if bytes.Contains(stateBytes(t, dir), b) {
			t.Errorf("the state files hold the %s", name)
		}
	}

	s2, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("restart with the same seal key: %v", err)
	}
	if s2.CAPin() != pin {
		t.Errorf("restart changed the CA pin")
	}
	if id2 := id.renew(t, s2); id2.gen != 2 {
		t.Errorf("renewal after the restart: generation %d", id2.gen)
	}
	s2.Close()
}

func TestSealedStateRefusesAMissingOrWrongKeyAndWritesNothing(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", ClusterName: "sealed.example", Logger: testLogger(t), CAKeySeal: sealKeyFile(t)}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	before := stateSum(t, dir)
	for name, keyFile := range map[string]string{"no key": "", "another key": sealKeyFile(t)} {
		bad := cfg
		bad.CAKeySeal = keyFile
		_, err := Start(context.Background(), bad)
		want := map[string]string{"no key": "are sealed (seal key id ", "another key": "is not the key the CA keys of cluster sealed.example were sealed with"}[name]
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: Start = %v; want one line with %q", name, err, want)
		}
		if stateSum(t, dir) != before {
			t.Errorf("%s: the refused start changed the state", name)
		}
	}
}

func TestBadSealKeyFileCreatesNoState(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	keyFile := sealKeyFile(t)
	os.Chmod(keyFile, 0o644)
	_, err := Start(context.Background(), Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t), CAKeySeal: keyFile})
	if err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("Start with a world-readable seal key = %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the refused start made the data dir (%v)", err)
	}
}

func TestStartingWithASealKeySealsAnExistingAuthority(t *testing.T) {
	dir, keyFile := t.TempDir(), sealKeyFile(t)
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", ClusterName: "plain.example", Logger: testLogger(t)}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	pin := s.CAPin()
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, []string{"root"}).Token)
	s.Close()

	cfg.CAKeySeal = keyFile
	s2, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s2.CAPin() != pin {
		t.Error("sealing changed the CA pin")
	}
	id = id.renew(t, s2)
	cas, err := s2.st.CAs(context.Background())
	if err != nil || len(cas) != 3 {
		t.Fatalf("CAs: %v %v", cas, err)
	}
	for _, ca := range cas {
		if by, ok := seal.SealedBy(ca.KeyDER); !ok || by != s2.seal.ID() {
			t.Errorf("the %s CA key is not sealed under the seal key after the start", ca.Kind)
		}
	}
	s2.Close()

	cfg.CAKeySeal = ""
	if _, err := Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "--ca-key-seal") {
		t.Errorf("start without the seal key after sealing = %v", err)
	}
	cfg.CAKeySeal = keyFile
	s3 := startTest(t, func(c *Config) { *c = cfg })
	if id.renew(t, s3).gen != 3 {
		t.Error("the bot did not renew after the keys were sealed")
	}
}

// A row copied over another (the host CA's sealed key put in the user CA's
// row) must not open: the sealed key is bound to its kind.
func TestSwappedSealedRowsDoNotOpen(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", ClusterName: "sealed.example", Logger: testLogger(t), CAKeySeal: sealKeyFile(t)}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	st, err := sqlite.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	err = st.Update(ctx, func(tx store.Tx) error {
		cas, err := tx.CAs(ctx)
		if err != nil {
			return err
		}
		byKind := map[string]store.CA{}
		for _, ca := range cas {
			byKind[ca.Kind] = ca
		}
		user := byKind[caUser]
		user.KeyDER = byKind[caHost].KeyDER
		return tx.PutCA(ctx, user)
	})
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Start(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "stored user CA key of cluster sealed.example does not open") {
		t.Fatalf("start over a swapped row = %v", err)
	}
}

// Under systemd, LoadCredential=ca-key-seal:FILE is enough: no flag.
func TestSealKeyFromTheSystemdCredential(t *testing.T) {
	creds := t.TempDir()
	_, raw := seal.Generate()
	if err := os.WriteFile(filepath.Join(creds, seal.CredentialName), raw, 0o400); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	s := startTest(t)
	if s.seal == nil {
		t.Fatal("the authority did not read the ca-key-seal credential")
	}
	cas, _ := s.st.CAs(context.Background())
	for _, ca := range cas {
		if !seal.IsSealed(ca.KeyDER) {
			t.Errorf("the %s CA key is stored unsealed", ca.Kind)
		}
	}
}

// auth migrate seals what it moves: the dump of a plain SQLite state comes
// out sealed under the key, one sealed under another key is refused.
func TestSealDumpSealsWhatAMoveCarries(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", ClusterName: "move.example", Logger: testLogger(t)}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	forms := caKeyForms(t, s)
	s.Close()
	dump := func() *store.Dump {
		st, err := sqlite.Open(dir, store.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		d, err := store.DumpState(context.Background(), st)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	keyFile := sealKeyFile(t)
	if err := sealDump(dump(), ""); err == nil || !strings.Contains(err.Error(), "--ca-key-seal") {
		t.Errorf("sealDump without a key = %v", err)
	}
	d := dump()
	if err := sealDump(d, keyFile); err != nil {
		t.Fatal(err)
	}
	k, _ := seal.Load(keyFile)
	for _, ca := range d.CAs {
		if by, ok := seal.SealedBy(ca.KeyDER); !ok || by != k.ID() {
			t.Errorf("the %s CA key of the dump is not sealed under the key", ca.Kind)
		}
		for name, b := range forms {
			if bytes.Contains(ca.KeyDER, b) {
				t.Errorf("the sealed dump holds the %s", name)
			}
		}
	}
	if err := sealDump(d, keyFile); err != nil {
		t.Errorf("a dump sealed under the key does not pass again: %v", err)
	}
	if err := sealDump(d, sealKeyFile(t)); err == nil || !strings.Contains(err.Error(), "is not the key the CA keys of cluster move.example were sealed with") {
		t.Errorf("a dump sealed under another key = %v", err)
	}
}
