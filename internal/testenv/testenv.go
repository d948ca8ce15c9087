// Package testenv holds what tests of several packages share: about the
// machine they run on (FUSE, the AWS environment), and helpers they would
// otherwise each copy (a log buffer, the IAM token of the seed guide, the
// owner-only check of a state directory). Only _test.go files import it.
//
// A developer without root still gets a green `go test ./...`: tests that
// need FUSE mounts skip. CI must not: with CI=true (set by .ci/run, and by
// most CI services) the same tests fail, so a CI runner that lost root or
// /dev/fuse cannot pass while testing nothing.
package testenv

import (
	"fmt"
	"os"
	"testing"
)

// InCI reports whether the tests run under CI (CI=true), where a missing
// prerequisite is a failure, not a reason to skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// RequireFUSE skips the test (fails it under CI) unless this process is
// root and /dev/fuse exists: mounting with allow_other, and switching to
// other uids to read, need both.
func RequireFUSE(t testing.TB) {
	t.Helper()
	if why := MissingFUSE(); why != "" {
		if InCI() {
			t.Fatalf("%s; CI=true, so this fails instead of skipping", why)
		}
		t.Skip(why)
	}
}

// MissingFUSE says what keeps FUSE tests from running here, or "" if
// nothing does. For a TestMain, which has no t to skip.
func MissingFUSE() string {
	if os.Geteuid() != 0 {
		return "needs root: FUSE mounts with allow_other and readers of other uids"
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return fmt.Sprintf("needs /dev/fuse (%v)", err)
	}
	return ""
}
