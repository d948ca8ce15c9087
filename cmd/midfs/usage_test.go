package main

import (
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestUnknownFlagIsOneLineAndExit3: scripts and people both get one line
// that names the flag and the likely intended one, and the usage code.
func TestUnknownFlagIsOneLineAndExit3(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"mount", "/m", "--ownr=root"}, "unknown flag --ownr; did you mean --owner?"},
		{[]string{"bots", "add", "robot", "--rols=access"}, "did you mean --roles?"},
		{[]string{"--bogus", "status"}, "unknown flag --bogus"},
		{[]string{"mount", "/m", "--certificate-ttl=soon"}, "--certificate-ttl"},
	} {
		r := runCLI(t, "", tc.args...)
		if r.code != exitUsage || !strings.Contains(r.err, tc.want) || strings.Contains(r.err, "\n") || r.out != "" {
			t.Errorf("midfs %q: exit %d, error %q, output %q; want exit %d, one line with %q, no help",
				tc.args, r.code, r.err, r.out, exitUsage, tc.want)
		}
	}
}

// TestExitCodesAgreeEverywhere: the README's table and the commands' help
// say what exitCodes says.
func TestExitCodesAgreeEverywhere(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "## Exit codes")
	section, _, _ = strings.Cut(section, "\n## ") // up to the next section: other tables have numbered rows too
	rows := regexp.MustCompile(`(?m)^\| (\d+) \| (.+) \|$`).FindAllStringSubmatch(section, -1)
	if len(rows) != len(exitCodes) {
		t.Fatalf("README lists %d exit codes, exitCodes %d", len(rows), len(exitCodes))
	}
	for i, e := range exitCodes {
		if rows[i][1] != strconv.Itoa(e.code) || rows[i][2] != e.detail {
			t.Errorf("README row %d: %q %q, want %d %q", i, rows[i][1], rows[i][2], e.code, e.detail)
		}
	}
	for _, cmd := range []string{"mount", "auth start"} {
		// The help wraps lines; the check reads it as one.
		help := strings.Join(strings.Fields(runCLI(t, "", append(strings.Fields(cmd), "--help")...).out), " ")
		line := regexp.MustCompile(`Exit codes: (.*?)\.`).FindStringSubmatch(help)
		if line == nil {
			t.Errorf("midfs %s --help has no exit codes", cmd)
			continue
		}
		for _, part := range strings.Split(line[1], ", ") {
			code, short, _ := strings.Cut(part, " ")
			n, _ := strconv.Atoi(code)
			if !knownExit(n, short) {
				t.Errorf("midfs %s --help: exit code %q is not in exitCodes", cmd, part)
			}
		}
	}
}

func knownExit(code int, short string) bool {
	for _, e := range exitCodes {
		if e.code == code && e.short == short {
			return true
		}
	}
	return false
}
