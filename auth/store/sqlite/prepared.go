package sqlite

import (
	"context"
	"database/sql"
	"sync"
)

// preparedDB runs the pool's queries as statements prepared once. SQLite
// parses every statement it is given; unprepared, the parse was a tenth
// of the authority's CPU on each node heartbeat and renewal, which read a
// row or two. database/sql prepares a statement again on each connection
// that runs it, and closes it with the pool.
type preparedDB struct {
	*sql.DB
	stmts sync.Map // query -> *sql.Stmt
	mu    sync.Mutex
	count int
}

// maxPrepared bounds the statements kept: queries are constants or a few
// shapes (the events filters); past this, a query runs unprepared.
const maxPrepared = 256

func (p *preparedDB) stmt(ctx context.Context, query string) *sql.Stmt {
	if s, ok := p.stmts.Load(query); ok {
		return s.(*sql.Stmt)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if s, ok := p.stmts.Load(query); ok {
		return s.(*sql.Stmt)
	}
	if p.count >= maxPrepared {
		return nil
	}
	s, err := p.DB.PrepareContext(context.WithoutCancel(ctx), query)
	if err != nil {
		return nil // the unprepared query says what is wrong
	}
	p.stmts.Store(query, s)
	p.count++
	return s
}

func (p *preparedDB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if s := p.stmt(ctx, query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return p.DB.QueryContext(ctx, query, args...)
}

func (p *preparedDB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if s := p.stmt(ctx, query); s != nil {
		return s.QueryRowContext(ctx, args...)
	}
	return p.DB.QueryRowContext(ctx, query, args...)
}

// close closes the statements, before the pool.
func (p *preparedDB) close() {
	p.stmts.Range(func(_, s any) bool {
		s.(*sql.Stmt).Close()
		return true
	})
}
