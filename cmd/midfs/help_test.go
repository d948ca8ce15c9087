package main

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
)

// TestHelpFitsAndNamesValues: every command's --help fits in cliconfig.HelpWidth
// columns, and every flag that takes a value says what the value is
// (`--storage keyring|memory|dir:PATH`, not urfave/cli's `--storage value`).
func TestHelpFitsAndNamesValues(t *testing.T) {
	paths := [][]string{nil}
	var walk func(prefix []string, cmds []*cli.Command)
	walk = func(prefix []string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := append(append([]string(nil), prefix...), c.Name)
			paths = append(paths, p)
			checkPlaceholders(t, "midfs "+strings.Join(p, " "), c.Flags)
			walk(p, c.Subcommands)
		}
	}
	app := newApp()
	walk(nil, app.Commands)
	checkPlaceholders(t, "midfs", app.Flags)
	for _, p := range paths {
		r := runCLI(t, "", append(p, "--help")...)
		if r.code != 0 || !strings.Contains(r.out, "USAGE:") {
			t.Errorf("midfs %s --help: %s", strings.Join(p, " "), r)
			continue
		}
		for _, line := range strings.Split(r.out, "\n") {
			if len(line) > cliconfig.HelpWidth {
				t.Errorf("midfs %s --help: a line of %d columns:\n%s", strings.Join(p, " "), len(line), line)
			}
		}
	}
	if len(paths) < 20 {
		t.Errorf("checked the help of only %d commands", len(paths))
	}
}

// checkPlaceholders: a flag that takes a value names it between backquotes
// in its usage, and a duration is a DURATION.
func checkPlaceholders(t *testing.T, cmd string, flags []cli.Flag) {
	t.Helper()
	for _, f := range flags {
		df, ok := f.(cli.DocGenerationFlag)
		if !ok || !df.TakesValue() {
			continue
		}
		name, _ := cliconfig.Placeholder(df.GetUsage())
		_, isDuration := f.(*cli.DurationFlag)
		switch {
		case name == "":
			t.Errorf("%s --%s: the usage names no placeholder for its value", cmd, f.Names()[0])
		case isDuration && name != "DURATION":
			t.Errorf("%s --%s: a duration shown as %s, want DURATION", cmd, f.Names()[0], name)
		}
	}
}
