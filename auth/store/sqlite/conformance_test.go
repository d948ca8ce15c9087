package sqlite

import (
	"testing"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/storetest"
)

// Every promise of store.Store, two handles on one file standing for two
// authorities.
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Backend{New: func(t *testing.T) storetest.Opener {
		dir := t.TempDir()
		return func(o store.Options) (store.Store, error) { return Open(dir, o) }
	}})
}
