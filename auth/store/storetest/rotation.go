package storetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity"
)

// rotating is the user CA of testCAs halfway through a rotation to u2.
var rotating = store.Rotation{Kind: "user", Active: "u2", Phase: "update_clients", Mode: "auto",
	Started: at.Add(time.Hour), Changed: at.Add(2 * time.Hour), GracePeriod: 90 * time.Minute, LastRotated: at.Add(-24 * time.Hour)}

// sameCAs compares CAs with times as instants.
func sameCAs(got, want []store.CA) bool {
	return slices.EqualFunc(got, want, func(a, b store.CA) bool {
		return a.ID == b.ID && a.Kind == b.Kind && string(a.KeyDER) == string(b.KeyDER) &&
			string(a.CertDER) == string(b.CertDER) && a.Created.Equal(b.Created)
	})
}

// sameRotations compares rotations with times as instants.
func sameRotations(got, want []store.Rotation) bool {
	return slices.EqualFunc(got, want, func(a, b store.Rotation) bool {
		return a.Kind == b.Kind && a.Active == b.Active && a.Phase == b.Phase && a.Mode == b.Mode &&
			a.Started.Equal(b.Started) && a.Changed.Equal(b.Changed) && a.GracePeriod == b.GracePeriod && a.LastRotated.Equal(b.LastRotated)
	})
}

func rotations(t testing.TB, r store.Reader) []store.Rotation {
	t.Helper()
	rots, err := r.Rotations(bg)
	if err != nil {
		t.Fatal(err)
	}
	return rots
}

func cas(t testing.TB, r store.Reader) []store.CA {
	t.Helper()
	out, err := r.CAs(bg)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A kind holds two CAs during a rotation, listed oldest first, and the
// rotation's state comes back as stored, on every handle; an ID in use
// is a conflict, and a removed CA is gone.
func testRotation(t *testing.T, s *state) {
	a, b := s.handle(), s.handle()
	initState(t, a)
	newUser := store.CA{ID: "u2", Kind: "user", KeyDER: []byte("new user key"), CertDER: []byte("new user cert"), Created: at.Add(time.Hour)}
	update(t, a, func(tx store.Tx) error {
		if err := tx.AddCA(bg, newUser); err != nil {
			return err
		}
		return tx.PutRotation(bg, rotating)
	})
	want := []store.CA{testCAs()[2], testCAs()[1], testCAs()[0], newUser}
	for _, h := range []store.Store{a, b} {
		if got := cas(t, h); !sameCAs(got, want) {
			t.Fatalf("CAs during a rotation: %+v, want %+v (by kind, oldest first)", got, want)
		}
		rots := rotations(t, h)
		if len(rots) != 3 || !sameRotations(rots[2:], []store.Rotation{rotating}) || rots[0].Phase != "standby" {
			t.Fatalf("Rotations: %+v, want the user CA's as stored: %+v", rots, rotating)
		}
	}
	err := a.Update(bg, func(tx store.Tx) error {
		return tx.AddCA(bg, store.CA{ID: "u2", Kind: "host", KeyDER: []byte("k"), CertDER: []byte("c"), Created: at})
	})
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("AddCA with an ID in use: %v, want ErrConflict", err)
	}
	if got := cas(t, a); len(got) != 4 {
		t.Fatalf("a conflicting AddCA stored something: %+v", got)
	}
	done := store.Rotation{Kind: "user", Active: "u2", Phase: "standby", LastRotated: at.Add(3 * time.Hour)}
	update(t, b, func(tx store.Tx) error {
		removed, err := tx.RemoveCA(bg, "u1")
		if err != nil || !removed {
			return errors.Join(err, errors.New("RemoveCA of a stored CA removed nothing"))
		}
		if removed, err := tx.RemoveCA(bg, "u1"); err != nil || removed {
			return errors.Join(err, errors.New("RemoveCA of a removed CA removed something"))
		}
		return tx.PutRotation(bg, done)
	})
	want = []store.CA{testCAs()[2], testCAs()[1], newUser}
	if got := cas(t, a); !sameCAs(got, want) {
		t.Fatalf("CAs after the rotation: %+v, want %+v", got, want)
	}
	if rots := rotations(t, a); !sameRotations(rots[2:], []store.Rotation{done}) {
		t.Fatalf("Rotations after the rotation: %+v, want %+v", rots, done)
	}
	// A rotation step that fails halfway leaves no trace.
	a.Update(bg, func(tx store.Tx) error {
		if err := tx.AddCA(bg, store.CA{ID: "h2", Kind: "host", KeyDER: []byte("k"), CertDER: []byte("c"), Created: at}); err != nil {
			return err
		}
		if err := tx.PutRotation(bg, store.Rotation{Kind: "host", Active: "h1", Phase: "init", Mode: "manual", Started: at}); err != nil {
			return err
		}
		return errUndo
	})
	if got := cas(t, b); len(got) != 3 {
		t.Fatalf("an undone AddCA stored a CA: %+v", got)
	}
	if rots := rotations(t, b); rots[1].Phase != "standby" {
		t.Fatalf("an undone PutRotation stored %+v", rots[1])
	}
}

// Replicas reload their CAs when TopicCAs moves: every change of a CA or
// of a rotation moves it and tells every handle; other changes do not.
func testCAVersions(t *testing.T, s *state) {
	const poll = 200 * time.Millisecond
	a := s.handle(store.Options{PollInterval: poll})
	b := s.handle(store.Options{PollInterval: poll})
	initState(t, a)
	addBot(t, a, "x")
	version := func() uint64 {
		v, err := a.Versions(bg)
		if err != nil {
			t.Fatal(err)
		}
		return v[store.TopicCAs]
	}
	cb := b.Changed(store.TopicCAs)
	for _, c := range []struct {
		what  string
		moves bool
		fn    func(tx store.Tx) error
	}{
		{"AddCA", true, func(tx store.Tx) error {
			return tx.AddCA(bg, store.CA{ID: "h2", Kind: "host", KeyDER: []byte("k"), CertDER: []byte("c"), Created: at})
		}},
		{"PutRotation", true, func(tx store.Tx) error {
			return tx.PutRotation(bg, store.Rotation{Kind: "host", Active: "h1", Phase: "init", Mode: "manual", Started: at})
		}},
		{"RemoveCA", true, func(tx store.Tx) error { _, err := tx.RemoveCA(bg, "h2"); return err }},
		{"RemoveCA of no CA", false, func(tx store.Tx) error { _, err := tx.RemoveCA(bg, "none"); return err }},
		{"PutNode", false, func(tx store.Tx) error {
			return tx.PutNode(bg, store.Node{Node: identity.Node{Name: "n", Addr: "10.0.0.1:22"}})
		}},
		{"AdvanceGeneration", false, func(tx store.Tx) error { _, err := tx.AdvanceGeneration(bg, "x", 0, nil); return err }},
	} {
		before := version()
		update(t, a, c.fn)
		if moved := version() != before; moved != c.moves {
			t.Fatalf("%s: the CA version moved: %v, want %v", c.what, moved, c.moves)
		}
		if c.moves {
			waitFor(t, cb, poll+5*time.Second, "another handle's Changed(cas) after "+c.what)
		}
	}
}

// CheckMigratedCAs checks a state migrated from one CA per kind (keyed by
// kind, before CAs could rotate), made with the key and certificate of
// each kind K as "Kk" and "Kc": each CA got an ID of its own, kept its key
// and certificate, and became its kind's active CA, in standby.
func CheckMigratedCAs(t *testing.T, st store.Reader) {
	t.Helper()
	cas, err := st.CAs(bg)
	if err != nil {
		t.Fatal(err)
	}
	rots, err := st.Rotations(bg)
	if err != nil {
		t.Fatal(err)
	}
	if len(cas) != 3 || len(rots) != 3 {
		t.Fatalf("after the migration: CAs %+v, rotations %+v", cas, rots)
	}
	for i, kind := range []string{"db", "host", "user"} {
		ca, r := cas[i], rots[i]
		if ca.Kind != kind || string(ca.KeyDER) != kind[:1]+"k" || string(ca.CertDER) != kind[:1]+"c" || len(ca.ID) != 16 {
			t.Fatalf("migrated %s CA: %+v", kind, ca)
		}
		if r.Kind != kind || r.Active != ca.ID || r.Phase != "standby" || r.Mode != "" || !r.Started.IsZero() {
			t.Fatalf("migrated %s rotation: %+v, want standby with CA %s active", kind, r, ca.ID)
		}
	}
	if cas[0].ID == cas[1].ID || cas[1].ID == cas[2].ID {
		t.Fatalf("migrated CAs share an ID: %+v", cas)
	}
}
