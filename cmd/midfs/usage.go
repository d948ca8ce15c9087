package main

import (
	"fmt"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
)

// setUsageErrors gives every command the same answer to a bad flag: one
// line with a suggestion and exit 3. urfave/cli's own prints the whole help
// and exits 1, which scripts cannot tell from a failure.
func setUsageErrors(app *cli.App) {
	app.OnUsageError = onUsageError
	var walk func([]*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			c.OnUsageError = onUsageError
			walk(c.Subcommands)
		}
	}
	walk(app.Commands)
}

func onUsageError(c *cli.Context, err error, _ bool) error {
	where := c.App.Name
	var flags []cli.Flag = c.App.Flags
	if c.Command != nil && c.Command.Name != "" {
		where = c.Command.HelpName
		flags = c.Command.Flags
	}
	msg := strings.Replace(err.Error(), " flag -", " flag --", 1) // Go's flag package writes -name
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		msg = "unknown flag --" + name + suggestFlag(flags, name)
	}
	return failf(exitUsage, "%s (`%s --help` lists the flags)", msg, where)
}

// suggestFlag names the closest flag when name looks like a typo of it.
func suggestFlag(flags []cli.Flag, name string) string {
	var names []string
	for _, f := range flags {
		names = append(names, f.Names()...)
	}
	sort.Strings(names)
	for _, n := range names {
		if cliconfig.EditDistance(n, name) <= 2 {
			return fmt.Sprintf("; did you mean --%s?", n)
		}
	}
	return ""
}
