package atomicfile

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestWriteSetsContentAndModeAndLeavesNothingElse(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	for _, c := range []struct {
		data string
		mode os.FileMode
	}{{"first", 0o600}, {"second, longer than the first", 0o644}, {"3", 0o666}} {
		if err := Write(path, []byte(c.data), c.mode); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(path); string(got) != c.data {
			t.Errorf("content %q, want %q", got, c.data)
		}
		// 0666 shows the mode is what was asked for, not masked by the umask.
		if fi, _ := os.Stat(path); fi.Mode().Perm() != c.mode {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), c.mode)
		}
	}
	if names := list(t, dir); len(names) != 1 {
		t.Errorf("directory holds %v, want only key", names)
	}
}

// TestCrashBeforeRenameLeavesTheOldContent stops a write at its last step:
// until the rename, the target holds the old content and mode, and the
// new content sits complete, with its final mode, in a hidden file in the
// same directory (so the rename cannot cross filesystems).
func TestCrashBeforeRenameLeavesTheOldContent(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := Write(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	beforeRename = func(tmp string) {
		if filepath.Dir(tmp) != dir || !strings.HasPrefix(filepath.Base(tmp), ".") {
			t.Errorf("temporary file %s: want a hidden file in %s", tmp, dir)
		}
		if got, _ := os.ReadFile(path); string(got) != "old" {
			t.Errorf("before the rename the target holds %q, want the old content", got)
		}
		if got, _ := os.ReadFile(tmp); string(got) != "new" {
			t.Errorf("before the rename the temporary file holds %q, want all the new content", got)
		}
		if fi, err := os.Stat(tmp); err != nil {
			t.Error(err)
		} else if fi.Mode().Perm() != 0o644 {
			t.Errorf("before the rename the temporary file has mode %v, want 0644", fi.Mode().Perm())
		}
		panic("crash")
	}
	defer func() { beforeRename = nil }()
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the write did not reach the rename")
			}
		}()
		Write(path, []byte("new"), 0o644)
	}()
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Errorf("after the crash the target holds %q, want the old content", got)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("after the crash the target has mode %v, want the old 0600", fi.Mode().Perm())
	}
}

func TestFailedWriteChangesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.Mkdir(path, 0o700); err != nil { // a rename over a directory fails
		t.Fatal(err)
	}
	err := Write(path, []byte("new"), 0o600)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("error %v: want one naming %s", err, path)
	}
	if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
		t.Errorf("the target changed: %v %v", fi, err)
	}
	if names := list(t, dir); len(names) != 1 {
		t.Errorf("directory holds %v after a failed write, want only key", names)
	}
	if err := Write(filepath.Join(dir, "missing", "key"), nil, 0o600); err == nil {
		t.Error("a write into a missing directory succeeded")
	}
}

// TestReadersSeeOldOrNew: a reader racing the writer reads one whole
// version or the other, never an empty or a mixed file.
func TestReadersSeeOldOrNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "blob")
	a, b := bytes.Repeat([]byte("a"), 256<<10), bytes.Repeat([]byte("b"), 256<<10)
	if err := Write(path, a, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			got, err := os.ReadFile(path)
			if err != nil || !(bytes.Equal(got, a) || bytes.Equal(got, b)) {
				t.Errorf("a reader saw %d bytes (%v), want all of one version", len(got), err)
				return
			}
		}
	}()
	for i := range 100 {
		if err := Write(path, [][]byte{a, b}[i%2], 0o600); err != nil {
			t.Error(err)
			break
		}
	}
	close(done)
	wg.Wait()
}

func list(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}
