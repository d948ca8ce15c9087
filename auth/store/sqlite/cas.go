package sqlite

import (
	"context"
	"fmt"
	"time"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/wire"
)

func (r reader) CAs(ctx context.Context) ([]store.CA, error) {
	return queryAll(ctx, r, `SELECT id, kind, key_der, cert_der, created FROM cas ORDER BY kind, created, id`, func(row rowScanner) (store.CA, error) {
		var ca store.CA
		var created int64
		err := row.Scan(&ca.ID, &ca.Kind, &ca.KeyDER, &ca.CertDER, &created)
		ca.Created = time.Unix(created, 0)
		return ca, err
	})
}

func (r reader) Rotations(ctx context.Context) ([]store.Rotation, error) {
	return queryAll(ctx, r, `SELECT kind, active, phase, mode, started, changed, grace, last_rotated FROM rotations ORDER BY kind`,
		func(row rowScanner) (store.Rotation, error) {
			var rot store.Rotation
			var started, changed, grace, last int64
			err := row.Scan(&rot.Kind, &rot.Active, &rot.Phase, &rot.Mode, &started, &changed, &grace, &last)
			rot.Started, rot.Changed, rot.LastRotated = fromZeroOrUnix(started), fromZeroOrUnix(changed), fromZeroOrUnix(last)
			rot.GracePeriod = time.Duration(grace) * time.Second
			return rot, err
		})
}

func fromZeroOrUnix(s int64) time.Time {
	if s == 0 {
		return time.Time{}
	}
	return time.Unix(s, 0)
}

// initCAs stores the CAs of a new cluster, each the active one of its kind.
func (t *txn) initCAs(ctx context.Context, cas []store.CA) error {
	for _, ca := range cas {
		if err := t.insertCA(ctx, ca); err != nil {
			return err
		}
		if err := t.putRotation(ctx, store.Rotation{Kind: ca.Kind, Active: ca.ID, Phase: wire.PhaseStandby}); err != nil {
			return err
		}
	}
	return nil
}

func (t *txn) insertCA(ctx context.Context, ca store.CA) error {
	if ca.ID == "" {
		return fmt.Errorf("%s CA without an ID", ca.Kind)
	}
	_, err := t.exec(ctx, `INSERT INTO cas(id, kind, key_der, cert_der, created) VALUES (?, ?, ?, ?, ?)`,
		ca.ID, ca.Kind, ca.KeyDER, ca.CertDER, zeroOrUnix(ca.Created))
	return err
}

func (t *txn) putRotation(ctx context.Context, r store.Rotation) error {
	_, err := t.exec(ctx, `INSERT OR REPLACE INTO rotations(kind, active, phase, mode, started, changed, grace, last_rotated) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		r.Kind, r.Active, r.Phase, r.Mode, zeroOrUnix(r.Started), zeroOrUnix(r.Changed), int64(r.GracePeriod/time.Second), zeroOrUnix(r.LastRotated))
	return err
}

func (t *txn) AddCA(ctx context.Context, ca store.CA) error {
	if err := t.insertCA(ctx, ca); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicCAs)
}

func (t *txn) RemoveCA(ctx context.Context, id string) (bool, error) {
	n, err := t.exec(ctx, `DELETE FROM cas WHERE id = ?`, id)
	if err != nil || n == 0 {
		return false, err
	}
	return true, t.bump(ctx, store.TopicCAs)
}

func (t *txn) PutRotation(ctx context.Context, r store.Rotation) error {
	if err := t.putRotation(ctx, r); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicCAs)
}
