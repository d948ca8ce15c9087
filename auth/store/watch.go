package store

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Watchers is the Changed half of a backend: it hands out the channels and
// tells them of changes, from the backend's own commits (Fire), from a
// signal of another handle's (Fire, e.g. PostgreSQL's NOTIFY) and from a
// poll of Versions (Seen), the bound when signals are lost.
type Watchers struct {
	mu     sync.Mutex
	subs   map[string][]chan struct{}
	last   map[string]uint64
	closed bool
}

// Changed implements Store.Changed.
func (w *Watchers) Changed(topic string) <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	ch := make(chan struct{}, 1)
	if w.closed {
		close(ch)
		return ch
	}
	if w.subs == nil {
		w.subs = map[string][]chan struct{}{}
	}
	w.subs[topic] = append(w.subs[topic], ch)
	return ch
}

// Fire tells every channel of topic that it moved to version (0: to some
// version not known), without waiting: a channel already holding a value
// lets this one merge into it. A version already seen fires nothing, so
// a poll after a signal, or a signal after a poll, does not fire twice.
func (w *Watchers) Fire(topic string, version uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if version != 0 {
		if version <= w.last[topic] {
			return
		}
		if w.last == nil {
			w.last = map[string]uint64{}
		}
		w.last[topic] = version
	}
	for _, ch := range w.subs[topic] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Seen fires the topics whose version is past the one last seen. A
// backend calls it once in Open, before anyone subscribes, to start from
// where the state is.
func (w *Watchers) Seen(versions map[string]uint64) {
	for topic, v := range versions {
		w.Fire(topic, v)
	}
}

// Poll calls Seen with r's Versions every interval until ctx is done.
// Errors are logged once per outage, and the poll goes on.
func (w *Watchers) Poll(ctx context.Context, r Reader, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	failing := false
	for {
		v, err := r.Versions(ctx)
		switch {
		case err == nil:
			w.Seen(v)
			failing = false
		case ctx.Err() != nil:
			return
		case !failing:
			log.Warn("cannot read the state's versions; changes made through other replicas are noticed once it can", "err", err)
			failing = true
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Close closes every channel; later ones are born closed.
func (w *Watchers) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	for _, chs := range w.subs {
		for _, ch := range chs {
			close(ch)
		}
	}
	w.subs = nil
}
