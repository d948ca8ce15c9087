package harden

import (
	"io"
	"log/slog"
	"os"
	"testing"
)

// Only read-only file mappings that hold no private copy of a page may be
// unlocked and dropped: the heap, stacks and anything writable may hold
// keys, and libc's relocated read-only data (RELRO) would be lost.
func TestReleasableMappingsNeverPicksWhatMustStay(t *testing.T) {
	smaps := []byte(`00400000-00e1c000 r-xp 00000000 fe:00 10003233                           /usr/bin/midfs (deleted)
Rss:                7728 kB
Anonymous:             0 kB
Locked:             7728 kB
VmFlags: rd ex mr mw me lo lf
00e1c000-0188a000 r--p 00a1c000 fe:00 10003233                           /usr/bin/midfs
Rss:                7800 kB
Anonymous:             0 kB
VmFlags: rd mr mw me lo lf
0188a000-01916000 rw-p 0148a000 fe:00 10003233                           /usr/bin/midfs
Rss:                 548 kB
Anonymous:           224 kB
VmFlags: rd wr mr mw me lo lf ac
340b64000000-340b66400000 ---p 00000000 00:00 0
Anonymous:             0 kB
340b66400000-340b66c00000 rw-p 00000000 00:00 0
Rss:                2832 kB
Anonymous:          2832 kB
7f3e60c82000-7f3e60ca8000 r--p 00000000 fe:00 326269                     /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f3e60ca8000-7f3e60dfe000 r-xp 00026000 fe:00 326269                     /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:             0 kB
7f3e60e52000-7f3e60e56000 r--p 001d0000 fe:00 326269                     /usr/lib/x86_64-linux-gnu/libc.so.6
Anonymous:            16 kB
7f3e60e60000-7f3e60e70000 r--s 00000000 00:01 1234                       /memfd:x (deleted)
Anonymous:             0 kB
7f3e61000000-7f3e61001000 r--p 00000000 fe:00 42
Anonymous:             0 kB
7ffe63dd0000-7ffe63df1000 rw-p 00000000 00:00 0                          [stack]
Anonymous:            16 kB
7ffe63df8000-7ffe63dfa000 r-xp 00000000 00:00 0                          [vdso]
Anonymous:             0 kB
7ffe63dfa000-7ffe63dfc000 r-xp 00000000 fe:00 99                         /usr/lib/no-anonymous-line.so
Rss:                   8 kB
`)
	got := releasableMappings(smaps)
	want := []memRange{{0x400000, 0xe1c000}, {0xe1c000, 0x188a000}, {0x7f3e60c82000, 0x7f3e60ca8000}, {0x7f3e60ca8000, 0x7f3e60dfe000}}
	if len(got) != len(want) {
		t.Fatalf("picked %x, want %x", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mapping %d: %x, want %x", i, got[i], want[i])
		}
	}
}

// The running test binary's own start-up pages go: its resident file pages
// fall, and the program goes on running.
func TestReleaseStartupPagesShrinksResidentFilePages(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		t.Skip("needs /proc")
	}
	before := residentFileKB()
	ReleaseStartupPages(slog.New(slog.NewTextHandler(io.Discard, nil)))
	after := residentFileKB()
	t.Logf("RssFile %d kB -> %d kB", before, after)
	if before <= 0 || after >= before {
		t.Errorf("RssFile %d kB before, %d kB after: start-up pages were not released", before, after)
	}
}
