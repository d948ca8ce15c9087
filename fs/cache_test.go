package fs

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
)

// The kernel caches one size and one set of pages per file while handles
// read different generations. ssh_config changes length a lot with the node
// list, so a stale size or stale pages show up as cut or wrong bytes.
func TestKernelCacheNeverServesAnotherGeneration(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{})
	const name = "ssh_config"
	nodes := func(n int) string {
		var b strings.Builder
		b.WriteString("nodes")
		for i := range n {
			b.WriteString(" node-with-a-long-name-" + string(rune('a'+i)) + "=10.0.0.1:22")
		}
		return b.String()
	}

	// A caches generation 1 (short), twice, so the second open is served
	// from the page cache.
	a := startReader(t, s.dir, "")
	short := a.data("cat " + name)
	if again := a.data("cat " + name); !bytes.Equal(again, short) {
		t.Fatal("second read of an unchanged file differs")
	}
	if got := a.do("open " + name); got != "ok" {
		t.Fatal(got)
	}

	// Generation 2 is much longer. A still holds a handle of generation 1.
	if r := s.do(nodes(6)); r != "ok" {
		t.Fatal(r)
	}
	b := startReader(t, s.dir, "")
	long := b.data("cat " + name)
	if len(long) <= len(short)+100 || !bytes.Contains(long, []byte("node-with-a-long-name-f")) {
		t.Fatalf("new open after the node list grew read %d bytes:\n%s", len(long), long)
	}
	if got := a.data("read " + name); !bytes.Equal(got, short) {
		t.Fatalf("held handle of generation 1 now reads %d bytes, want its own %d", len(got), len(short))
	}
	if got := a.data("cat " + name); !bytes.Equal(got, short) {
		t.Fatalf("process pinned to generation 1 reads %d bytes, want %d", len(got), len(short))
	}
	for range 2 {
		if got := b.data("cat " + name); !bytes.Equal(got, long) {
			t.Fatalf("process on generation 2 reads %d bytes, want %d", len(got), len(long))
		}
	}

	// A lets go: the size moves on to generation 2 and B's reads go
	// through the page cache, still right.
	a.do("close " + name)
	waitForSize(t, s.path(name), int64(len(long)))
	for range 3 {
		if got := b.data("cat " + name); !bytes.Equal(got, long) {
			t.Fatalf("cached reads of generation 2 return %d bytes, want %d", len(got), len(long))
		}
	}

	// Generation 3 is short again, while B holds a cached handle of 2.
	if got := b.do("open " + name); got != "ok" {
		t.Fatal(got)
	}
	if r := s.do(nodes(1)); r != "ok" {
		t.Fatal(r)
	}
	c := startReader(t, s.dir, "")
	mid := c.data("cat " + name)
	if len(mid) >= len(long) || !bytes.Contains(mid, []byte("node-with-a-long-name-a")) || bytes.Contains(mid, []byte("long-name-b")) {
		t.Fatalf("open after the node list shrank read %d bytes:\n%s", len(mid), mid)
	}
	if got := b.data("read " + name); !bytes.Equal(got, long) {
		t.Fatalf("held handle of generation 2 reads %d bytes after a shorter generation, want %d", len(got), len(long))
	}
	b.do("close " + name)
	waitForSize(t, s.path(name), int64(len(mid)))
	if got := c.data("cat " + name); !bytes.Equal(got, mid) {
		t.Fatalf("generation 3 via the page cache: %d bytes, want %d", len(got), len(mid))
	}
	// The test process itself never opened anything: a plain new open.
	if got, _ := os.ReadFile(s.path(name)); !bytes.Equal(got, mid) {
		t.Fatalf("new process reads %d bytes, want %d", len(got), len(mid))
	}
}

// A handle that reads through the page cache keeps its bytes when the
// kernel's attributes expire and are fetched again after a renewal to a
// shorter file: stat goes on reporting that handle's size until it closes.
func TestCachedHandleSurvivesAttributeExpiry(t *testing.T) {
	requireRoot(t)
	s := startServer(t, serveConfig{
		AttrTimeout: 50 * time.Millisecond, Debug: true, // the request log shows the refetch
		Nodes: []identity.Node{{Name: "a-node-with-a-rather-long-name", Addr: "10.0.0.1:22"},
			{Name: "another-node-with-a-rather-long-name", Addr: "10.0.0.2:22"}},
	})
	const name = "ssh_config"
	a := startReader(t, s.dir, "")
	if got := a.do("open " + name); got != "ok" {
		t.Fatal(got)
	}
	long := a.data("read " + name)
	if r := s.do("nodes"); r != "ok" {
		t.Fatal(r)
	}
	// Stat until the kernel's attributes have expired and it has asked the
	// server again; then stat must still report the open handle's size.
	mark := len(s.stderr.String())
	refetched := func() bool { return strings.Contains(s.stderr.String()[mark:], ": GETATTR ") }
	deadline := time.Now().Add(5 * time.Second)
	var st unix.Stat_t
	for {
		done := refetched()
		if err := unix.Stat(s.path(name), &st); err != nil {
			t.Fatal(err)
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the kernel never asked for the attributes again")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st.Size != int64(len(long)) {
		t.Errorf("stat reports %d bytes after the attributes were refetched while a cached handle is open, want its %d", st.Size, len(long))
	}
	if got := a.data("read " + name); !bytes.Equal(got, long) {
		t.Fatalf("cached handle reads %d bytes after its attributes were refetched, want its own %d", len(got), len(long))
	}
	a.do("close " + name)
	b := startReader(t, s.dir, "")
	short := b.data("cat " + name)
	if len(short) >= len(long) {
		t.Fatalf("after the node list emptied, ssh_config has %d bytes (was %d)", len(short), len(long))
	}
	waitForSize(t, s.path(name), int64(len(short)))
}

// waitForSize waits for stat to report size: the move to a new generation
// follows the last release, which the kernel sends asynchronously after
// close(2) returns.
func waitForSize(t *testing.T, path string, size int64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var st unix.Stat_t
	for {
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		if st.Size == size {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: stat size stays %d, want %d", path, st.Size, size)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The rules of inodeCache.open, one state at a time.
func TestCacheDecisions(t *testing.T) {
	const g1, g2 = 1, 2
	c := inodeCache{st: &testState(t).files[0]}
	c.init(g1)
	const (
		direct = "direct"
		plain  = "plain"
		keep   = "keep"
	)
	kind := func(flags uint32, cached bool) string {
		switch {
		case flags&fuse.FOPEN_DIRECT_IO != 0 && !cached && flags&fuse.FOPEN_KEEP_CACHE != 0:
			return direct
		case flags&fuse.FOPEN_DIRECT_IO == 0 && cached && flags&fuse.FOPEN_KEEP_CACHE == 0:
			return plain
		case flags&fuse.FOPEN_DIRECT_IO == 0 && cached && flags&fuse.FOPEN_KEEP_CACHE != 0:
			return keep
		}
		return "invalid"
	}
	step := func(g uint64, want string) {
		t.Helper()
		if got := kind(c.open(g)); got != want {
			t.Fatalf("open of generation %d: %s, want %s (state %+v)", g, got, want, *c.st)
		}
	}
	step(g1, plain) // nothing cached yet: the kernel drops pages at open
	step(g1, keep)  // same generation: page cache is right
	step(g2, direct)
	c.st.cachedOpen = 0
	step(g2, direct) // attrs are still generation 1's until settled
	c.st.attrsGen, c.st.fresh = g2, 1
	step(g2, plain) // pages hold generation 1: drop them
	step(g2, keep)
	step(g1, direct) // a process pinned to the old one
	c.st.cachedOpen = 0
	c.st.fresh = 0
	step(g2, direct) // an invalidation is in flight
}

// A generation's bytes, the private key among them, are zeroed in the
// memory every holder shares once nothing can reach the generation, and
// not before: a handle holds its generation.
func TestLostGenerationIsZeroed(t *testing.T) {
	ca, _ := newTestCA()
	s := testServer(t, ca)
	old := s.current.Load()
	// Second views of the memfds, as a successor (or systemd's store) has.
	view, err := unix.Mmap(int(old.fd.Fd()), 0, len(old.mem), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(view)
	keyView, err := unix.Mmap(int(old.keyFd.Fd()), 0, len(old.keyMem), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(keyView)
	key := bytes.Clone(old.files[1])
	if !bytes.Contains(key, []byte("PRIVATE KEY")) || !bytes.Contains(keyView, key) {
		t.Fatalf("generation does not hold the key file: %q", key)
	}
	slot, gen := s.pins.acquire(4242, s.currentID, s.opts.Clock.Now())
	for range 2 {
		id, err := ca.issue()
		if err != nil {
			t.Fatal(err)
		}
		s.Publish(&Snapshot{Identity: id})
	}
	if s.generation(gen) == nil || !bytes.Contains(keyView, key) {
		t.Fatal("a generation held by an open handle was let go")
	}
	s.pins.release(slot, s.opts.Clock.Now().Add(pinMaxAge))
	s.pins.acquire(4243, s.currentID, s.opts.Clock.Now().Add(pinMaxAge+sweepEach)) // sweeps
	s.publishMu.Lock()
	s.collect()
	s.publishMu.Unlock()
	if s.generation(gen) != nil {
		t.Fatal("a generation nothing reaches is kept")
	}
	if !bytes.Equal(view, make([]byte, len(view))) || !bytes.Equal(keyView, make([]byte, len(keyView))) {
		t.Error("a let-go generation's memory was not zeroed")
	}
	if n := len(s.gens); n != 1 {
		t.Errorf("%d generations kept, want only the current one", n)
	}
}

// testServer is a server over its first generation, never mounted.
func testServer(t *testing.T, ca *testCA) *Server {
	t.Helper()
	id, err := ca.issue()
	if err != nil {
		t.Fatal(err)
	}
	opts, _ := checkOptions(Options{Dir: "/run/midfs-test", Logger: slog.New(slog.DiscardHandler)})
	s := newServer(opts, testState(t))
	g, err := s.newGeneration(&Snapshot{Identity: id})
	if err != nil {
		t.Fatal(err)
	}
	s.addGeneration(g)
	s.setCurrent(g)
	for _, n := range s.files {
		n.cache.init(g.id)
	}
	return s
}
