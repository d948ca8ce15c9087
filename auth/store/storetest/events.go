package storetest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/store"
)

// The audit trail's cases (see store.EventReader and store.EventWriter).
var eventTests = []struct {
	name string
	fn   func(*testing.T, *state)
}{
	{"EventCommitsWithItsChange", testEventWithChange},
	{"EventListingsFilterAndPage", testEventListings},
	{"EventListingStopsAtItsEnd", testEventListingEnd},
	{"EventFollowerMissesNothing", testEventFollow},
	{"EventFollowersOfManyWritersMissNothing", testEventFollowManyWriters},
	{"EventsArePrunedOldestFirst", testEventPrune},
}

// t0 is an event time: microseconds are what every backend keeps.
var t0 = time.Date(2026, 12, 1, 8, 0, 0, 123456000, time.UTC)

func addEvents(t testing.TB, st store.Store, evs ...audit.Event) {
	t.Helper()
	update(t, st, func(tx store.Tx) error {
		for i := range evs {
			if err := tx.AddEvent(bg, &evs[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// listAll lists every event q selects, page by page.
func listAll(t testing.TB, r store.Reader, q store.EventQuery) []audit.Event {
	t.Helper()
	var out []audit.Event
	for {
		page, err := r.Events(bg, q)
		if err != nil {
			t.Fatalf("Events: %v", err)
		}
		out = append(out, decode(t, page)...)
		if len(page) < q.PageLimit() {
			return out
		}
		q.After = page[len(page)-1].Key()
	}
}

// decode decodes stored events, checking that each one's JSON tells its
// place as the backend does.
func decode(t testing.TB, page []store.StoredEvent) []audit.Event {
	t.Helper()
	out := make([]audit.Event, len(page))
	for i, se := range page {
		e, err := se.Event()
		if err != nil {
			t.Fatal(err)
		}
		if e.ID != se.ID || !e.Time.Equal(se.Time) {
			t.Fatalf("stored event %d at %s reads as %d at %s: %s", se.ID, se.Time, e.ID, e.Time, se.JSON)
		}
		out[i] = e
	}
	return out
}

func generations(evs []audit.Event) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Generation
	}
	return out
}

// An event commits with the change it is written beside, or not at all:
// an Update that fails leaves neither, and one that fails beside others
// does not take their events along. What is read back is what was written.
func testEventWithChange(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	boom := errors.New("boom")
	err := st.Update(bg, func(tx store.Tx) error {
		if err := tx.AddBot(bg, &store.Bot{Name: "undone", Roles: []string{"access"}, Created: at}); err != nil {
			return err
		}
		if err := tx.AddEvent(bg, &audit.Event{Type: audit.BotCreated, Time: t0, Bot: "undone"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update: %v", err)
	}
	want := audit.Event{Type: audit.BotCreated, Time: t0, Bot: "kept", Roles: []string{"access"},
		Actor:  &audit.Actor{UID: 0, User: "root", PID: 42, Socket: "/var/lib/midfs/admin.sock"},
		Labels: map[string]string{"env": "prod"}, Expires: t0.Add(time.Hour), SSHSerial: 1 << 62}
	update(t, st, func(tx store.Tx) error {
		if err := tx.AddBot(bg, &store.Bot{Name: "kept", Roles: []string{"access"}, Created: at}); err != nil {
			return err
		}
		return tx.AddEvent(bg, &want)
	})
	evs := listAll(t, st, store.EventQuery{})
	if len(evs) != 1 || evs[0].ID == 0 {
		t.Fatalf("events: %+v, want only kept's", evs)
	}
	want.ID = evs[0].ID
	if !jsonEqual(evs[0], want) || !evs[0].Time.Equal(t0) {
		t.Fatalf("read back %+v, wrote %+v", evs[0], want)
	}
	if _, err := st.Bot(bg, "undone"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the failed change was kept: %v", err)
	}
}

// Every filter selects what it names, and pages in (time, ID) order meet
// without a gap or an overlap, even among events of one instant.
func testEventListings(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	var evs []audit.Event
	for i := range 30 {
		typ := audit.BotRenewed
		if i%3 == 0 {
			typ = audit.JoinRefused
		}
		// Three events share each instant.
		evs = append(evs, audit.Event{Type: typ, Time: t0.Add(time.Duration(i/3) * time.Minute), Bot: fmt.Sprintf("bot%d", i%2), Generation: uint64(i)})
	}
	// Written 20..29 first: within instant 6 (events 18, 19, 20), 20 has
	// the lowest ID, so time order is not the order of i.
	addEvents(t, st, evs[20:]...)
	addEvents(t, st, evs[:20]...)
	written := func(i int) int { return (i + 10) % 30 }
	order := make([]int, 30)
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if a/3 != b/3 {
			return a/3 - b/3
		}
		return written(a) - written(b)
	})
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
		{"all of them", store.EventQuery{Bot: "bot0", Types: []string{audit.BotRenewed}, Since: t0.Add(time.Minute)},
			func(i int) bool { return i%2 == 0 && i%3 != 0 && i >= 3 }},
	} {
		var want []uint64
		for _, i := range order {
			if c.want(i) {
				want = append(want, uint64(i))
			}
		}
		for _, limit := range []int{0, 1, 2, 4} {
			q := c.q
			q.Limit = limit
			if got := generations(listAll(t, st, q)); !slices.Equal(got, want) {
				t.Errorf("%s, pages of %d: got %v, want %v", c.name, limit, got, want)
			}
		}
	}
}

// A listing bounded by the end of the trail when it began leaves out what
// commits during it; a follower starting there gets exactly that.
func testEventListingEnd(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	for i := range 5 {
		addEvents(t, st, audit.Event{Type: audit.BotRenewed, Time: t0.Add(time.Duration(i) * time.Second), Generation: uint64(i)})
	}
	end, err := st.EventEnd(bg)
	if err != nil {
		t.Fatal(err)
	}
	q := store.EventQuery{Upto: end, Limit: 2}
	page, err := st.Events(bg, q)
	if err != nil {
		t.Fatal(err)
	}
	addEvents(t, st, audit.Event{Type: audit.BotRenewed, Time: t0, Generation: 98}, audit.Event{Type: audit.BotRenewed, Time: t0.Add(time.Hour), Generation: 99})
	q.After = page[1].Key()
	listed := append(decode(t, page), listAll(t, st, q)...)
	if got := generations(listed); !slices.Equal(got, []uint64{0, 1, 2, 3, 4}) {
		t.Errorf("listing bounded at its start: %v", got)
	}
	followed, _, err := st.EventsAfter(bg, end, store.EventQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if got := generations(decode(t, followed)); !slices.Equal(got, []uint64{98, 99}) {
		t.Errorf("following from the listing's end: %v, want 98 99", got)
	}
}

// A follower gets events in the order they committed, whatever their
// times, each once, with its filters, from the start of the trail or from
// a position it was given.
func testEventFollow(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	follow := func(pos store.EventPos, q store.EventQuery) ([]uint64, store.EventPos) {
		t.Helper()
		evs, next, err := st.EventsAfter(bg, pos, q)
		if err != nil {
			t.Fatal(err)
		}
		return generations(decode(t, evs)), next
	}
	if got, next := follow("", store.EventQuery{}); len(got) != 0 || next != "" {
		t.Fatalf("an empty trail: %v, position %q", got, next)
	}
	addEvents(t, st, audit.Event{Type: audit.BotRenewed, Time: t0.Add(time.Hour), Generation: 1})
	addEvents(t, st, audit.Event{Type: audit.JoinRefused, Time: t0, Generation: 2}, audit.Event{Type: audit.BotRenewed, Time: t0, Generation: 3})
	got, pos := follow("", store.EventQuery{Limit: 1})
	if !slices.Equal(got, []uint64{1}) {
		t.Fatalf("first page of 1: %v", got)
	}
	got, pos = follow(pos, store.EventQuery{})
	if !slices.Equal(got, []uint64{2, 3}) {
		t.Fatalf("after it: %v", got)
	}
	if again, next := follow(pos, store.EventQuery{}); len(again) != 0 || next != pos {
		t.Fatalf("nothing new: %v, position %q after %q", again, next, pos)
	}
	if got, _ := follow("", store.EventQuery{Types: []string{audit.BotRenewed}}); !slices.Equal(got, []uint64{1, 3}) {
		t.Fatalf("renewals: %v", got)
	}
}

// Writers on several handles add events in transactions that overlap,
// each waiting a little between its first write and its commit, while a
// follower reads: it sees every event exactly once.
func testEventFollowManyWriters(t *testing.T, s *state) {
	handles := []store.Store{s.handle(), s.handle(), s.handle()}
	initState(t, handles[0])
	const writers, each = 6, 15
	done := make(chan struct{})
	seen := map[uint64]int{}
	followed := make(chan error, 1)
	count := func(evs []store.StoredEvent) error { // on the follower's goroutine
		for _, se := range evs {
			e, err := se.Event()
			if err != nil {
				return err
			}
			seen[e.Generation]++
		}
		return nil
	}
	go func() {
		var pos store.EventPos
		for {
			select {
			case <-done:
				// One more look after the last commit.
				evs, _, err := handles[1].EventsAfter(bg, pos, store.EventQuery{Limit: store.MaxEventLimit})
				if err == nil {
					err = count(evs)
				}
				followed <- err
				return
			default:
			}
			evs, next, err := handles[1].EventsAfter(bg, pos, store.EventQuery{Limit: 3})
			if err != nil {
				followed <- err
				return
			}
			if err := count(evs); err != nil {
				followed <- err
				return
			}
			pos = next
		}
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				gen := uint64(w*each + i + 1)
				err := handles[(w+i)%len(handles)].Update(bg, func(tx store.Tx) error {
					if err := tx.AddEvent(bg, &audit.Event{Type: audit.BotRenewed, Time: t0, Generation: gen}); err != nil {
						return err
					}
					time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
					return nil
				})
				if err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(done)
	if err := <-followed; err != nil {
		t.Fatal(err)
	}
	for g := uint64(1); g <= writers*each; g++ {
		if seen[g] != 1 {
			t.Errorf("event %d seen %d times", g, seen[g])
		}
	}
}

// Pruning removes the oldest events before the cutoff, a bounded number
// at a time, and never hands out an ID again, even once the trail was
// empty: a follower's position stays good.
func testEventPrune(t *testing.T, s *state) {
	st := s.handle()
	initState(t, st)
	for i := range 5 {
		addEvents(t, st, audit.Event{Type: audit.BotRenewed, Time: t0.Add(time.Duration(i) * time.Hour), Generation: uint64(i)})
	}
	prune := func(cutoff time.Time, limit int) int64 {
		var n int64
		update(t, st, func(tx store.Tx) (err error) {
			n, err = tx.PruneEvents(bg, cutoff, limit)
			return err
		})
		return n
	}
	if n := prune(t0.Add(3*time.Hour), 2); n != 2 {
		t.Fatalf("pruned %d, want 2 (the limit)", n)
	}
	if n := prune(t0.Add(3*time.Hour), 2); n != 1 {
		t.Fatalf("pruned %d, want 1", n)
	}
	if got := generations(listAll(t, st, store.EventQuery{})); !slices.Equal(got, []uint64{3, 4}) {
		t.Fatalf("left: %v", got)
	}
	_, pos, err := st.EventsAfter(bg, "", store.EventQuery{})
	if err != nil {
		t.Fatal(err)
	}
	prune(t0.Add(24*time.Hour), 10)
	addEvents(t, st, audit.Event{Type: audit.BotRenewed, Time: t0, Generation: 7})
	page, _, err := st.EventsAfter(bg, pos, store.EventQuery{})
	if err != nil {
		t.Fatal(err)
	}
	if evs := decode(t, page); len(evs) != 1 || evs[0].Generation != 7 || evs[0].ID <= 5 {
		t.Fatalf("after pruning everything, following from the old end: %+v", evs)
	}
}
