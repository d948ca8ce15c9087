package joiner

import (
	"testing"
	"time"
)

func TestBackoffStaysWithinLimits(t *testing.T) {
	for f := 1; f < 20; f++ {
		d := backoff(f, 20*time.Minute)
		if d <= 0 || d > time.Minute {
			t.Fatalf("backoff(%d) = %v, want in (0, 1m]", f, d)
		}
	}
	if d := backoff(10, 100*time.Millisecond); d > 100*time.Millisecond {
		t.Fatalf("backoff with a 100ms interval = %v, want at most the interval", d)
	}
}
