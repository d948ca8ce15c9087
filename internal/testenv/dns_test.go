package testenv_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/midfs/midfs/internal/testenv"
)

func TestDNSAnswersEveryAddressOfAName(t *testing.T) {
	want := []string{"127.0.0.2", "127.0.0.3"}
	r := testenv.DNS(t, map[string][]netip.Addr{"replicas.midfs.test": {netip.MustParseAddr(want[0]), netip.MustParseAddr(want[1])}})
	got, err := r.LookupHost(context.Background(), "replicas.midfs.test")
	slices.Sort(got)
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("LookupHost = %v, %v; want %v", got, err, want)
	}
	if got, err := r.LookupHost(context.Background(), "other.midfs.test"); err == nil {
		t.Fatalf("an unknown name resolved to %v", got)
	}
}
