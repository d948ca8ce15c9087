package sqlite

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/store"
)

// The cases below hold for every backend; they move to the shared
// conformance suite once it exists.

func openTest(t *testing.T) store.Store {
	t.Helper()
	st, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

var t0 = time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)

func addEvents(t *testing.T, st store.Store, evs ...audit.Event) {
	t.Helper()
	ctx := context.Background()
	err := st.Update(ctx, func(tx store.Tx) error {
		for i := range evs {
			if err := tx.AddEvent(ctx, &evs[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func types(evs []audit.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Type
	}
	return out
}

// An event commits with the change it is written beside, or not at all:
// a function that fails leaves neither, and one that fails beside another
// in the same commit does not take the other's event along.
func TestEventCommitsWithItsChange(t *testing.T) {
	st := openTest(t)
	ctx := context.Background()
	boom := errors.New("boom")
	err := st.Update(ctx, func(tx store.Tx) error {
		if err := tx.AddBot(ctx, &store.Bot{Name: "undone", Roles: []string{"access"}, Created: t0}); err != nil {
			return err
		}
		if err := tx.AddEvent(ctx, &audit.Event{Type: audit.BotCreated, Time: t0, Bot: "undone"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update: %v", err)
	}
	err = st.Update(ctx, func(tx store.Tx) error {
		if err := tx.AddBot(ctx, &store.Bot{Name: "kept", Roles: []string{"access"}, Created: t0}); err != nil {
			return err
		}
		return tx.AddEvent(ctx, &audit.Event{Type: audit.BotCreated, Time: t0, Bot: "kept", Roles: []string{"access"}})
	})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := st.Events(ctx, store.EventQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Bot != "kept" || !slices.Equal(evs[0].Roles, []string{"access"}) || !evs[0].Time.Equal(t0) || evs[0].ID == 0 {
		t.Fatalf("events: %+v, want only kept's", evs)
	}
	if _, err := st.Bot(ctx, "undone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the failed change was kept: %v", err)
	}
}

// Every filter selects what it names, pages in (time, ID) order meet
// without a gap or an overlap even among events of one instant, and MaxID
// keeps events that commit during a listing out of it.
func TestEventQueries(t *testing.T) {
	st := openTest(t)
	ctx := context.Background()
	var evs []audit.Event
	for i := range 30 {
		typ := audit.BotRenewed
		if i%3 == 0 {
			typ = audit.JoinRefused
		}
		// Three events share each instant; the last ten are written
		// first, so time order is not ID order.
		at := t0.Add(time.Duration(i/3) * time.Minute)
		evs = append(evs, audit.Event{Type: typ, Time: at, Bot: fmt.Sprintf("bot%d", i%2), Generation: uint64(i)})
	}
	addEvents(t, st, evs[20:]...)
	addEvents(t, st, evs[:20]...)
	// The listing order: by instant, then by ID, which is the order of
	// writing: 20..29 got IDs 1..10, 0..19 got 11..30. Instant 6 holds
	// 18, 19 and 20, so 20 comes first in it.
	id := func(i int) int { return (i + 10) % 30 }
	order := make([]int, 30)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if a/3 != b/3 {
			return a/3 - b/3
		}
		return id(a) - id(b)
	})
	gens := func(q store.EventQuery) []uint64 {
		t.Helper()
		var out []uint64
		for {
			page, err := st.Events(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range page {
				out = append(out, e.Generation)
			}
			if len(page) < q.PageLimit() {
				return out
			}
			q.After = store.Key(page[len(page)-1])
		}
	}
	for _, c := range []struct {
		name string
		q    store.EventQuery
		want func(i int) bool
	}{
		{"all", store.EventQuery{}, func(int) bool { return true }},
		{"since", store.EventQuery{Since: t0.Add(4 * time.Minute)}, func(i int) bool { return i >= 12 }},
		{"until", store.EventQuery{Until: t0.Add(4 * time.Minute)}, func(i int) bool { return i < 12 }},
		{"range", store.EventQuery{Since: t0.Add(2 * time.Minute), Until: t0.Add(5 * time.Minute)}, func(i int) bool { return i >= 6 && i < 15 }},
		{"type", store.EventQuery{Types: []string{audit.JoinRefused}}, func(i int) bool { return i%3 == 0 }},
		{"types", store.EventQuery{Types: []string{audit.JoinRefused, audit.BotRenewed}}, func(int) bool { return true }},
		{"bot", store.EventQuery{Bot: "bot1"}, func(i int) bool { return i%2 == 1 }},
		{"all of them", store.EventQuery{Bot: "bot0", Types: []string{audit.BotRenewed}, Since: t0.Add(time.Minute)}, func(i int) bool { return i%2 == 0 && i%3 != 0 && i >= 3 }},
	} {
		for _, limit := range []int{0, 1, 2, 4} {
			q := c.q
			q.Limit = limit
			got := gens(q)
			var want []uint64
			for _, i := range order {
				if c.want(i) {
					want = append(want, uint64(i))
				}
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s, pages of %d: got generations %v, want %v", c.name, limit, got, want)
			}
		}
	}
	last, err := st.LastEventID(ctx)
	if err != nil || last != 30 {
		t.Fatalf("LastEventID: %d %v, want 30", last, err)
	}
	addEvents(t, st, audit.Event{Type: audit.BotRenewed, Time: t0, Generation: 99})
	if got := gens(store.EventQuery{MaxID: last}); slices.Contains(got, 99) || len(got) != 30 {
		t.Errorf("MaxID %d let a later event in: %v", last, got)
	}
}

// Following by ID sees events in commit order, each once, whatever their
// times; the query's filters still apply.
func TestEventsByID(t *testing.T) {
	st := openTest(t)
	ctx := context.Background()
	addEvents(t, st, audit.Event{Type: audit.BotRenewed, Time: t0.Add(time.Hour), Generation: 1})
	addEvents(t, st, audit.Event{Type: audit.JoinRefused, Time: t0, Generation: 2}, audit.Event{Type: audit.BotRenewed, Time: t0, Generation: 3})
	page, err := st.Events(ctx, store.EventQuery{ByID: true, Types: []string{audit.BotRenewed}})
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 2 || page[0].Generation != 1 || page[1].Generation != 3 || page[0].ID >= page[1].ID {
		t.Fatalf("by ID: %+v", page)
	}
	page, err = st.Events(ctx, store.EventQuery{ByID: true, After: store.EventKey{ID: page[0].ID}, Limit: 1})
	if err != nil || len(page) != 1 || page[0].Generation != 2 {
		t.Fatalf("by ID after the first, 1: %+v %v", page, err)
	}
}

// Pruning removes the oldest events before the cutoff, a bounded number at
// a time, and never hands out an ID again, even once the trail was empty.
func TestPruneEvents(t *testing.T) {
	st := openTest(t)
	ctx := context.Background()
	for i := range 5 {
		addEvents(t, st, audit.Event{Type: audit.BotRenewed, Time: t0.Add(time.Duration(i) * time.Hour), Generation: uint64(i)})
	}
	prune := func(cutoff time.Time, limit int) int64 {
		var n int64
		err := st.Update(ctx, func(tx store.Tx) (err error) {
			n, err = tx.PruneEvents(ctx, cutoff, limit)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := prune(t0.Add(3*time.Hour), 2); n != 2 {
		t.Fatalf("pruned %d, want 2 (the limit)", n)
	}
	if n := prune(t0.Add(3*time.Hour), 2); n != 1 {
		t.Fatalf("pruned %d, want 1", n)
	}
	evs, _ := st.Events(ctx, store.EventQuery{})
	if got := types(evs); len(got) != 2 || evs[0].Generation != 3 {
		t.Fatalf("left: %+v", evs)
	}
	prune(t0.Add(24*time.Hour), 10)
	addEvents(t, st, audit.Event{Type: audit.BotRenewed, Time: t0})
	evs, _ = st.Events(ctx, store.EventQuery{})
	if len(evs) != 1 || evs[0].ID != 6 {
		t.Fatalf("after pruning everything, the next event has ID %d, want 6", evs[0].ID)
	}
}
