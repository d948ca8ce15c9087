package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// commands lists every command; each group lives in its own file.
func commands() []*cli.Command {
	var cmds []*cli.Command
	cmds = append(cmds, adminCommands()...) // admin.go: auth, status, bots, create, get, rm, nodes
	cmds = append(cmds, eventsCommand())    // events.go: the audit trail
	cmds = append(cmds, agentCommands()...) // mount.go: mount, ls, renew
	cmds = append(cmds, lockCommand())      // lock.go: lock
	cmds = append(cmds, nodeCommands()...)  // node.go: node start
	return cmds
}

// addEnvVars lets every flag, app-wide or of a command, also come from
// MIDFS_<NAME> (dashes become underscores), so that units and containers can
// configure midfs without putting a token on the command line.
func addEnvVars(app *cli.App) {
	addFlagEnvVars(app.Flags)
	addCommandEnvVars(app.Commands)
}

func addCommandEnvVars(cmds []*cli.Command) {
	for _, c := range cmds {
		addFlagEnvVars(c.Flags)
		addCommandEnvVars(c.Subcommands)
	}
}

func addFlagEnvVars(flags []cli.Flag) {
	for _, f := range flags {
		env := []string{"MIDFS_" + strings.ToUpper(strings.ReplaceAll(f.Names()[0], "-", "_"))}
		switch f := f.(type) {
		case *cli.StringFlag:
			f.EnvVars = append(f.EnvVars, env...)
		case *cli.BoolFlag:
			f.EnvVars = append(f.EnvVars, env...)
		case *cli.DurationFlag:
			f.EnvVars = append(f.EnvVars, env...)
		case *cli.StringSliceFlag:
			f.EnvVars = append(f.EnvVars, env...)
		case *cli.IntFlag:
			f.EnvVars = append(f.EnvVars, env...)
		}
	}
}
