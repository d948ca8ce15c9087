package admin

import (
	"errors"
	"fmt"
	"testing"
)

// A kind survives the trip through its HTTP status, and marking never
// changes what the error says.
func TestKindRoundTrip(t *testing.T) {
	for _, k := range []Kind{Internal, Invalid, NotFound, Conflict} {
		if got := KindOfStatus(k.Status()); got != k {
			t.Errorf("%s: status %d comes back as %s", k, k.Status(), got)
		}
		err := fmt.Errorf("outer: %w", Errorf(k, "inner %d", 1))
		if KindOf(err) != k || err.Error() != "outer: inner 1" {
			t.Errorf("%s: marked error is %s %q", k, KindOf(err), err)
		}
	}
	if KindOf(errors.New("plain")) != Internal || KindOfStatus(403) != Internal || Mark(NotFound, nil) != nil {
		t.Error("an unmarked error or an unknown status is not Internal, or Mark(nil) is not nil")
	}
}
