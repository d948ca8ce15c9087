package postgres

import (
	"context"
	"os"
	"testing"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/storetest"
	"github.com/midfs/midfs/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// Every promise of store.Store, against a real PostgreSQL server, several
// handles on one database standing for several replicas.
func TestConformance(t *testing.T) {
	srv := pgtest.Shared(t)
	storetest.Run(t, storetest.Backend{New: func(t *testing.T) storetest.Opener {
		url := srv.NewURL(t)
		return func(o store.Options) (store.Store, error) { return Open(context.Background(), url, o) }
	}})
}
