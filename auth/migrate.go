package auth

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/postgres"
	"github.com/midfs/midfs/auth/store/sqlite"
)

// Moved is what Migrate moved.
type Moved struct {
	Cluster                         string
	To                              string // the database, without its password
	CAs, Roles, Bots, Tokens, Nodes int
}

// Migrate moves the state of a stopped SQLite authority (from is
// "sqlite:PATH", PATH its data directory or the midfs.db in it) into an
// empty PostgreSQL database (to), as it is: every bot at its generation
// with the key hash of its last renewal, every token used or not, the CAs,
// the cluster ID and the inventory version. Nothing is issued anew, so
// agents go on renewing, through the replicas, the identities they hold,
// and keep their node lists' ETags.
//
// The CA keys arrive sealed with the seal key at sealKey (or the systemd
// credential ca-key-seal), which the replicas are then started with: plain
// keys of the SQLite state are sealed before anything is sent, so the
// database, its log and its backups never hold one.
//
// The SQLite state is then marked moved, and an authority started on it
// refuses: bots renewing with it and with the replicas would present
// generations the other has never seen, and be locked.
func Migrate(ctx context.Context, from, to, sealKey string) (*Moved, error) {
	dir, err := sqliteDir(from)
	if err != nil {
		return nil, err
	}
	if !postgres.IsURL(to) {
		return nil, errors.New("bad --to: want postgres://USER@HOST:PORT/DATABASE?OPTIONS")
	}
	if c, err := admin.Dial(dir); err == nil {
		c.Close()
		return nil, fmt.Errorf("an authority is serving %s (its admin socket answers): stop it first, or the changes it makes after the copy are lost", dir)
	}
	src, err := sqlite.Open(dir, store.Options{})
	if err != nil {
		return nil, err
	}
	defer src.Close()
	var d *store.Dump
	err = src.Update(ctx, func(tx store.Tx) (err error) {
		d, err = store.DumpState(ctx, tx)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("the state in %s holds no cluster yet: nothing to move", dir)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	if err := sealDump(d, sealKey); err != nil {
		return nil, err
	}
	dst, err := postgres.Open(ctx, to, store.Options{Cluster: d.ClusterName})
	if err != nil {
		return nil, err
	}
	defer dst.Close()
	err = dst.Update(ctx, func(tx store.Tx) error { return tx.Restore(ctx, d) })
	if errors.Is(err, store.ErrConflict) {
		return nil, fmt.Errorf("the database already holds cluster %s (copied before?): nothing copied; migrate into an empty database", d.ClusterName)
	}
	if err != nil {
		return nil, fmt.Errorf("copy into the database: %w", err)
	}
	m := &Moved{Cluster: d.ClusterName, To: redactURL(to), CAs: len(d.CAs), Roles: len(d.Roles), Bots: len(d.Bots), Tokens: len(d.Tokens), Nodes: len(d.Nodes)}
	if err := src.MarkMoved(m.To); err != nil {
		return m, fmt.Errorf("copied to %s, but could not mark %s moved (%v): never start an authority on it again", m.To, dir, err)
	}
	return m, nil
}

// sqliteDir reads "sqlite:PATH" into the data directory of an existing
// state.
func sqliteDir(from string) (string, error) {
	path, ok := strings.CutPrefix(from, "sqlite:")
	if !ok || path == "" {
		return "", errors.New("bad --from: want sqlite:PATH, PATH the authority's data directory (or the midfs.db in it)")
	}
	if filepath.Base(path) == sqlite.File {
		path = filepath.Dir(path)
	}
	if _, err := os.Stat(filepath.Join(path, sqlite.File)); err != nil {
		return "", fmt.Errorf("no midfs state in %s: %v", path, err)
	}
	return path, nil
}

// redactURL names a database without its password.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "the database"
	}
	if u.User != nil {
		u.User = url.User(u.User.Username())
	}
	q := u.Query()
	if q.Has("password") {
		q.Del("password")
		u.RawQuery = q.Encode()
	}
	return u.String()
}
