package clock

import (
	"testing"
	"time"
)

func TestFakeFiresInOrder(t *testing.T) {
	c := NewFake(time.Unix(1000, 0))
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
