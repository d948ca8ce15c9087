package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/policy"
)

// lock, get locks and rm locks/ID as an administrator types them.
func TestLockCommands(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	mustCLI(t, dir, "bots", "add", "robot", "--roles=access")
	out := mustCLI(t, dir, "lock", "--bot=robot", "--message=key leaked", "--ttl=2h")
	m := regexp.MustCompile(`^Created lock ([0-9a-f]{16}): bot robot is refused until \S+Z\.\n.*midfs rm locks/([0-9a-f]{16})\n$`).FindStringSubmatch(out)
	if m == nil || m[1] != m[2] {
		t.Fatalf("lock printed:\n%s", out)
	}
	id := m[1]
	forever := mustCLI(t, dir, "lock", "--bot", "robot")
	if !strings.Contains(forever, "refused until removed") {
		t.Fatalf("lock without --ttl printed:\n%s", forever)
	}

	table := mustCLI(t, dir, "get", "locks")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "ID ") || !strings.Contains(lines[0], "Bot") || !strings.Contains(lines[0], "Expires") {
		t.Fatalf("get locks:\n%s", table)
	}
	if !regexp.MustCompile(`(?m)^` + id + ` +robot +key leaked +\S+Z +\S+Z +in force$`).MatchString(table) {
		t.Errorf("get locks has no row for %s:\n%s", id, table)
	}
	if !regexp.MustCompile(`(?m)^[0-9a-f]{16} +robot +\S+Z +never +in force$`).MatchString(table) {
		t.Errorf("get locks has no row for the lock without --ttl:\n%s", table)
	}
	var items []policy.LockResource
	if err := json.Unmarshal([]byte(mustCLI(t, dir, "get", "locks/"+id, "--format=json")), &items); err != nil || len(items) != 1 ||
		items[0].Kind != "lock" || items[0].Spec.Target.Bot != "robot" || items[0].Spec.Expires == nil {
		t.Fatalf("get locks/%s --format=json: %+v %v", id, items, err)
	}
	if y := mustCLI(t, dir, "get", "locks/"+id, "--format=yaml"); !strings.Contains(y, "kind: lock") || !strings.Contains(y, "bot: robot") {
		t.Errorf("yaml:\n%s", y)
	}
	if out := mustCLI(t, dir, "rm", "locks/"+id); out != "lock "+id+" removed\n" {
		t.Errorf("rm printed %q", out)
	}
	if table := mustCLI(t, dir, "get", "locks"); strings.Contains(table, id) {
		t.Errorf("removed lock still listed:\n%s", table)
	}
}

// Bad input: one line, the right exit code, nothing changed.
func TestLockBadInput(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	mustCLI(t, dir, "bots", "add", "robot", "--roles=access")
	before := mustCLI(t, dir, "get", "locks")
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"lock", "--bot=ghost"}, exitFailure, `bot "ghost" not found`},
		{[]string{"lock"}, exitUsage, "--bot=NAME"},
		{[]string{"lock", "robot"}, exitUsage, "takes no arguments"},
		{[]string{"lock", "--bot=robot", "--ttl=banana"}, exitUsage, "--ttl"},
		{[]string{"lock", "--bot=robot", "--ttl=-1h"}, exitUsage, "bad --ttl"},
		{[]string{"lock", "--bot=robot", "--message=a\x01b"}, exitFailure, "bad --message"},
		{[]string{"rm", "locks/0123456789abcdef"}, exitFailure, `lock "0123456789abcdef" not found`},
		{[]string{"get", "locks/0123456789abcdef"}, exitFailure, `not found`},
	} {
		r := runCLI(t, dir, c.args...)
		if r.code != c.code || !strings.Contains(r.err, c.want) || strings.Contains(r.err, "\n") {
			t.Errorf("midfs %s: %s; want exit %d and one line with %q", strings.Join(c.args, " "), r, c.code, c.want)
		}
	}
	if after := mustCLI(t, dir, "get", "locks"); after != before {
		t.Errorf("bad input changed the locks:\n%s", after)
	}
}
