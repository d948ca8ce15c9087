package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/wire"
)

func (r reader) CAs(ctx context.Context) ([]store.CA, error) {
	return queryAll(ctx, r, `SELECT id, kind, key_der, cert_der, created FROM cas ORDER BY kind COLLATE "C", created NULLS FIRST, id COLLATE "C"`,
		func(row pgx.Row) (store.CA, error) {
			var ca store.CA
			var created *time.Time
			err := row.Scan(&ca.ID, &ca.Kind, &ca.KeyDER, &ca.CertDER, &created)
			if created != nil {
				ca.Created = *created
			}
			return ca, err
		})
}

func (r reader) Rotations(ctx context.Context) ([]store.Rotation, error) {
	return queryAll(ctx, r, `SELECT kind, active, phase, mode, started, changed, grace, last_rotated FROM rotations ORDER BY kind COLLATE "C"`,
		func(row pgx.Row) (store.Rotation, error) {
			var rot store.Rotation
			var started, changed, last *time.Time
			var grace int64
			err := row.Scan(&rot.Kind, &rot.Active, &rot.Phase, &rot.Mode, &started, &changed, &grace, &last)
			if started != nil {
				rot.Started = *started
			}
			if changed != nil {
				rot.Changed = *changed
			}
			if last != nil {
				rot.LastRotated = *last
			}
			rot.GracePeriod = time.Duration(grace) * time.Second
			return rot, err
		})
}

const (
	insertCA    = `INSERT INTO cas(id, kind, key_der, cert_der, created) VALUES ($1, $2, $3, $4, $5)`
	putRotation = `INSERT INTO rotations(kind, active, phase, mode, started, changed, grace, last_rotated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
		ON CONFLICT (kind) DO UPDATE SET active = excluded.active, phase = excluded.phase, mode = excluded.mode,
			started = excluded.started, changed = excluded.changed, grace = excluded.grace, last_rotated = excluded.last_rotated`
)

func caArgs(ca store.CA) []any {
	return []any{ca.ID, ca.Kind, ca.KeyDER, ca.CertDER, nullTime(ca.Created)}
}

func rotationArgs(r store.Rotation) []any {
	return []any{r.Kind, r.Active, r.Phase, r.Mode, nullTime(r.Started), nullTime(r.Changed), int64(r.GracePeriod / time.Second), nullTime(r.LastRotated)}
}

// initCAs stores the CAs of a new cluster, each the active one of its kind.
func (t *txn) initCAs(ctx context.Context, cas []store.CA) error {
	for _, ca := range cas {
		if err := t.insertCA(ctx, ca); err != nil {
			return err
		}
		if _, err := t.exec(ctx, putRotation, rotationArgs(store.Rotation{Kind: ca.Kind, Active: ca.ID, Phase: wire.PhaseStandby})...); err != nil {
			return err
		}
	}
	return nil
}

// insertCA finds a used ID without a failing statement, which would end
// the transaction (see txn).
func (t *txn) insertCA(ctx context.Context, ca store.CA) error {
	if ca.ID == "" {
		return fmt.Errorf("%s CA without an ID", ca.Kind)
	}
	n, err := t.exec(ctx, insertCA+` ON CONFLICT (id) DO NOTHING`, caArgs(ca)...)
	if err == nil && n == 0 {
		return fmt.Errorf("CA %s: %w", ca.ID, store.ErrConflict)
	}
	return err
}

func (t *txn) AddCA(ctx context.Context, ca store.CA) error {
	if err := t.insertCA(ctx, ca); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicCAs)
}

func (t *txn) RemoveCA(ctx context.Context, id string) (bool, error) {
	n, err := t.exec(ctx, `DELETE FROM cas WHERE id = $1`, id)
	if err != nil || n == 0 {
		return false, err
	}
	return true, t.bump(ctx, store.TopicCAs)
}

func (t *txn) PutRotation(ctx context.Context, r store.Rotation) error {
	if _, err := t.exec(ctx, putRotation, rotationArgs(r)...); err != nil {
		return err
	}
	return t.bump(ctx, store.TopicCAs)
}
