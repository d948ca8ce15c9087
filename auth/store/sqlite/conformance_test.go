package sqlite

import (
	"fmt"
	"testing"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/storetest"
)

// Every promise of store.Store, two handles on one file standing for two
// authorities.
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Backend{New: func(t testing.TB) storetest.Opener {
		dir := t.TempDir()
		return func(o store.Options) (store.Store, error) { return Open(dir, o) }
	}})
}

func BenchmarkRenewal(b *testing.B) {
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			storetest.BenchmarkRenewal(b, storetest.Backend{New: func(t testing.TB) storetest.Opener {
				dir := t.TempDir()
				return func(o store.Options) (store.Store, error) { return Open(dir, o) }
			}}, n)
		})
	}
}
