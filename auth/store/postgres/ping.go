package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// pinger asks the database on a connection of its own, not one of the
// pool's: a replica answering a burst of requests has every pooled
// connection taken and more requests queued for them, and a health check
// queued behind them would time out and take the replica off issuance for
// being busy, not for having lost its database.
type pinger struct {
	cfg  *pgx.ConnConfig
	turn chan struct{} // one check at a time; a waiter gives up with its ctx
	conn *pgx.Conn     // held by the turn; nil until connected or after a failure
}

func newPinger(cfg *pgx.ConnConfig) *pinger {
	p := &pinger{cfg: cfg, turn: make(chan struct{}, 1)}
	p.turn <- struct{}{}
	return p
}

func (p *pinger) ping(ctx context.Context) error {
	select {
	case <-p.turn:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { p.turn <- struct{}{} }()
	if p.conn == nil || p.conn.IsClosed() {
		c, err := pgx.ConnectConfig(ctx, p.cfg.Copy())
		if err != nil {
			return err
		}
		p.conn = c
	}
	var n int
	if err := p.conn.QueryRow(ctx, `SELECT count(*) FROM meta`).Scan(&n); err != nil {
		p.conn.Close(context.Background())
		p.conn = nil
		return err
	}
	return nil
}

func (p *pinger) close() {
	<-p.turn
	if p.conn != nil {
		p.conn.Close(context.Background())
		p.conn = nil
	}
	p.turn <- struct{}{}
}

// Ping checks that the database answers, on the pinger's own connection.
func (st *Store) Ping(ctx context.Context) error { return st.pinger.ping(ctx) }
