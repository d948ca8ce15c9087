// Package atomicfile is the one way midfs writes a file: the new content
// goes to a temporary file beside the target, is flushed to disk with its
// final mode, and is renamed over the target; then the directory is
// flushed, so the rename itself survives a crash. A reader, or a machine
// that crashes at any moment, sees the old content or the new one, never a
// torn or half-permissioned file. It imports only the standard library;
// any package of the module may import it.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
)

// beforeRename, if set (by tests), runs with the temporary file's name
// once it holds the new content and mode, just before the rename.
var beforeRename func(tmp string)

// Write replaces path with data, with permissions mode (not masked by the
// umask). The directory of path must exist. On error path is unchanged and
// no temporary file is left behind.
func Write(path string, data []byte, mode os.FileMode) error {
	if err := write(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func write(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	// The leading dot keeps the temporary file out of globs and listings.
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename this removes nothing
	if err := writeSync(f, data, mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if beforeRename != nil {
		beforeRename(tmp)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	syncDir(dir)
	return nil
}

// writeSync sets the mode first, so the content is never readable under a
// wider mode, and flushes before the rename: otherwise a crash can leave
// the new name pointing at an empty or partial file.
func writeSync(f *os.File, data []byte, mode os.FileMode) error {
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	return f.Sync()
}

// syncDir flushes the directory entry the rename changed. It is best
// effort: the new content is already in place, and some filesystems refuse
// fsync on a directory; failing here would tell the caller the write did
// not happen when readers already see it.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
