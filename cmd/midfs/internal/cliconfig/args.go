package cliconfig

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// PermuteArgs moves flags in front of positional arguments, command by
// command, so that `midfs bots add robot --roles=access` parses the way users
// type it from the guide: urfave/cli v2 stops parsing flags at the first
// positional argument. App-wide flags (--log-level) found after a command
// are hoisted to the front. "--" ends flag parsing as usual.
func PermuteArgs(app *cli.App, args []string) []string {
	if len(args) == 0 || args[len(args)-1] == "--generate-bash-completion" {
		return args // shell completion: urfave/cli needs the flag last, and must not run the command
	}
	global := []string{args[0]}
	out := permuteLevel(app.Flags, app.Commands, args[1:], app.Flags, &global)
	return append(global, out...)
}

func permuteLevel(flags []cli.Flag, cmds []*cli.Command, args []string, appFlags []cli.Flag, global *[]string) []string {
	var flagArgs, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i:]...)
			break
		}
		if len(pos) == 0 && len(cmds) > 0 && !strings.HasPrefix(a, "-") {
			if sub := FindCommand(cmds, a); sub != nil {
				rest := permuteLevel(sub.Flags, sub.Subcommands, args[i+1:], appFlags, global)
				return append(append(flagArgs, a), rest...)
			}
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, hasValue := flagName(a)
		dst := &flagArgs
		f := FindFlag(flags, name)
		if f == nil && flags != nil {
			if g := FindFlag(appFlags, name); g != nil {
				f, dst = g, global
			}
		}
		*dst = append(*dst, a)
		if f != nil && !hasValue && takesValue(f) && i+1 < len(args) {
			i++
			*dst = append(*dst, args[i])
		}
	}
	return append(flagArgs, pos...)
}

func flagName(a string) (name string, hasValue bool) {
	a = strings.TrimLeft(a, "-")
	if k, _, ok := strings.Cut(a, "="); ok {
		return k, true
	}
	return a, false
}

// FindCommand is the command of cmds that name names, or nil.
func FindCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// FindFlag is the flag of flags that name names (help is always one),
// or nil.
func FindFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	if name == "help" || name == "h" {
		return cli.HelpFlag
	}
	return nil
}

func takesValue(f cli.Flag) bool {
	if dv, ok := f.(cli.DocGenerationFlag); ok {
		return dv.TakesValue()
	}
	return true
}
