package joiner

import (
	"testing"
	"time"
)

func TestFakeClockFiresInOrder(t *testing.T) {
	c := NewFakeClock(time.Unix(1000, 0))
	t1, t2 := c.NewTimer(time.Second), c.NewTimer(time.Minute)
	c.Advance(30 * time.Second)
	select {
	case <-t1.C():
	default:
		t.Fatal("timer due after 1s did not fire at 30s")
	}
	select {
	case <-t2.C():
		t.Fatal("timer due after 1m fired at 30s")
	default:
	}
	if !t2.Stop() || c.Timers() != 0 {
		t.Fatal("Stop did not remove the pending timer")
	}
	c.Advance(time.Hour)
	select {
	case <-t2.C():
		t.Fatal("stopped timer fired")
	default:
	}
}

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
