package auth

// CA keys at rest: sealed with the seal key (package auth/seal) when the
// authority has one, so that a dump or backup of its state does not give
// them away. The store holds whatever bytes it is given.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/midfs/midfs/auth/seal"
	"github.com/midfs/midfs/auth/store"
)

// loadSealKey reads the seal key at path (--ca-key-seal), or, without one,
// the systemd credential seal.CredentialName if the service was given it.
// It returns nil when there is neither: the CA keys are then stored as
// they are.
func loadSealKey(path string) (*seal.Key, string, error) {
	if path == "" {
		dir := os.Getenv("CREDENTIALS_DIRECTORY")
		if dir == "" {
			return nil, "", nil
		}
		path = filepath.Join(dir, seal.CredentialName)
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			return nil, "", nil
		}
	}
	k, err := seal.Load(path)
	if err != nil {
		return nil, "", err
	}
	return k, path, nil
}

// storedKey is how a new CA's key is stored: sealed if there is a seal key.
func (s *Server) storedKey(cluster, kind string, keyDER []byte) ([]byte, error) {
	if s.seal == nil {
		return keyDER, nil
	}
	return s.seal.SealCA(cluster, kind, keyDER)
}

// openKey returns the PKCS #8 key of a stored CA, unsealing it if sealed.
// The caller clears it after use.
func (s *Server) openKey(cluster string, ca store.CA) ([]byte, error) {
	if !seal.IsSealed(ca.KeyDER) {
		return ca.KeyDER, nil
	}
	by, _ := seal.SealedBy(ca.KeyDER)
	if s.seal == nil {
		return nil, fmt.Errorf("the CA keys of cluster %s are sealed (seal key id %s): give the seal key with --ca-key-seal=FILE or the systemd credential %s",
			cluster, by, seal.CredentialName)
	}
	key, err := s.seal.OpenCA(cluster, ca.Kind, ca.KeyDER)
	if errors.Is(err, seal.ErrWrongKey) && by != s.seal.ID() {
		return nil, fmt.Errorf("--ca-key-seal %s (key id %s) is not the key the CA keys of cluster %s were sealed with (key id %s): give every replica the same seal key",
			s.sealPath, s.seal.ID(), cluster, by)
	}
	if err != nil {
		// The right key, but the row does not open: altered, or moved
		// from another kind or cluster.
		return nil, fmt.Errorf("the stored %s CA key of cluster %s does not open with --ca-key-seal %s: it was altered or belongs to another CA; restore the state from a backup", ca.Kind, cluster, s.sealPath)
	}
	return key, nil
}

// sealStoredKeys seals the CA keys still stored plain, when an authority
// that stored them plain is started with a seal key. It reads them again
// in its transaction, so that two replicas doing it at once seal each key
// once. Copies made before (backups, and with SQLite pages of the file
// that still hold the old bytes) keep the plain keys: only a CA rotation
// makes them worthless.
func (s *Server) sealStoredKeys(ctx context.Context) error {
	if s.seal == nil {
		return nil
	}
	var sealed []string
	err := s.st.Update(ctx, func(tx store.Tx) error {
		sealed = nil
		cas, err := tx.CAs(ctx)
		if err != nil {
			return err
		}
		for _, ca := range cas {
			if seal.IsSealed(ca.KeyDER) {
				continue
			}
			ca.KeyDER, err = s.seal.SealCA(s.cluster, ca.Kind, ca.KeyDER)
			if err != nil {
				return err
			}
			if err := tx.PutCA(ctx, ca); err != nil {
				return err
			}
			sealed = append(sealed, ca.Kind)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("seal the stored CA keys: %w", err)
	}
	if len(sealed) > 0 {
		s.log.Warn("sealed the CA keys that were stored unsealed; backups made before still hold them unsealed",
			"kinds", sealed, "seal_key_id", s.seal.ID())
	}
	return nil
}

// sealDump makes a state moved into a shared database (auth migrate) hold
// its CA keys sealed with the seal key at keyPath (or the systemd
// credential): plain keys are sealed, sealed ones must open with it. So
// the database never receives a plain key, not even in its log for a
// moment, nor one its replicas cannot open. Every error is one line.
func sealDump(d *store.Dump, keyPath string) error {
	k, path, err := loadSealKey(keyPath)
	if err != nil {
		return err
	}
	if k == nil {
		return fmt.Errorf("a shared database needs --ca-key-seal=FILE (or the systemd credential %s), so that whoever reads it or its backups gets no CA key; make one with `openssl rand -hex 32 > FILE && chmod 600 FILE` and give every replica the same", seal.CredentialName)
	}
	s := &Server{seal: k, sealPath: path}
	for i, ca := range d.CAs {
		if seal.IsSealed(ca.KeyDER) {
			plain, err := s.openKey(d.ClusterName, ca)
			clear(plain)
			if err != nil {
				return err
			}
			continue
		}
		sealed, err := k.SealCA(d.ClusterName, ca.Kind, ca.KeyDER)
		if err != nil {
			return err
		}
		clear(ca.KeyDER)
		d.CAs[i].KeyDER = sealed
	}
	return nil
}
