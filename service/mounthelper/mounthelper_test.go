package mounthelper

import (
	"strings"
	"testing"
)

// testFlags knows two flags of `midfs mount`, as cmd/midfs's lookup does.
func testFlags(name string) (string, bool, bool) {
	switch name {
	case "owner", "reader":
		return name, false, true
	case "debug-fuse":
		return name, true, true
	}
	return "", false, false
}

func TestHelperRefusesWhatItCannotHonour(t *testing.T) {
	flags := testFlags
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"/c.yaml", "/mnt", "-o", "colour=blue"}, `unknown mount option "colour"`},
		{[]string{"/c.yaml", "/mnt", "-o", "owner="}, "owner needs a value"},
		{[]string{"/c.yaml", "/mnt", "-o", "config=/x.yaml"}, "first column"},
		{[]string{"/c.yaml"}, "usage: mount.fuse.midfs"},
		{[]string{"/c.yaml", "/mnt", "-x"}, "unknown option -x"},
	} {
		_, err := ParseArgs(tc.args, flags)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: want error containing %q, got %v", tc.args, tc.want, err)
		}
	}
	// -s (sloppy): unknown options are skipped, not fatal.
	if _, err := ParseArgs([]string{"/c.yaml", "/mnt", "-s", "-o", "colour=blue"}, flags); err != nil {
		t.Errorf("sloppy mount must tolerate unknown options: %v", err)
	}
}
