package fs

import (
	"os"
	"strings"
	"testing"
)

// Owners and readers are names or numbers; a number need not exist on the
// machine, and a user alone brings its primary group.
func TestParseOwnerAndReader(t *testing.T) {
	for _, tc := range []struct {
		in       string
		uid, gid uint32
	}{
		{"", uint32(os.Getuid()), uint32(os.Getgid())},
		{"root", 0, 0},
		{"0:0", 0, 0},
		{"root:4242", 0, 4242},
		{"4242", 4242, 4242}, // in no /etc/passwd: its own number as group
	} {
		uid, gid, err := ParseOwner(tc.in)
		if err != nil || uid != tc.uid || gid != tc.gid {
			t.Errorf("ParseOwner(%q) = %d, %d, %v; want %d, %d", tc.in, uid, gid, err, tc.uid, tc.gid)
		}
	}
	for in, want := range map[string]Reader{
		"root":  {UID: 0},
		"4242":  {UID: 4242},
		"@0":    {GID: 0, IsGroup: true},
		"@root": {GID: 0, IsGroup: true},
		"@4242": {GID: 4242, IsGroup: true},
	} {
		if got, err := ParseReader(in); err != nil || got != want {
			t.Errorf("ParseReader(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
}

func TestParseOwnerAndReaderErrors(t *testing.T) {
	for in, want := range map[string]string{
		"ghost-no-such-user":   `no user "ghost-no-such-user" on this machine`,
		"root:ghost-no-such-g": `no group "ghost-no-such-g" on this machine`,
		":0":                   "empty user name",
		"root:":                "empty group name",
	} {
		if _, _, err := ParseOwner(in); err == nil || err.Error() != want {
			t.Errorf("ParseOwner(%q): %v; want %q", in, err, want)
		}
	}
	if _, err := ParseReader("ghost-no-such-user"); err == nil || !strings.Contains(err.Error(), "write @NAME for a group") {
		t.Errorf("a reader that is no user must hint at @GROUP: %v", err)
	}
	if _, err := ParseReader("@"); err == nil || err.Error() != "empty group name" {
		t.Errorf(`ParseReader("@"): %v`, err)
	}
}
