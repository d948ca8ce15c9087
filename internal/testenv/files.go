package testenv

import (
	"os"
	"testing"
)

// CheckOwnerOnly fails the test unless dir holds every file in want and
// nothing in dir is open to group or others: state directories hold keys
// and tokens.
func CheckOwnerOnly(t testing.TB, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		seen[e.Name()] = true
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s/%s is %v: state files must be for the owner only", dir, e.Name(), fi.Mode())
		}
	}
	for _, name := range want {
		if !seen[name] {
			t.Errorf("no %s in %s (have %v)", name, dir, seen)
		}
	}
}
