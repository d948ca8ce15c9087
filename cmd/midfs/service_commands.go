package main

import (
	"fmt"
	"log/slog"

	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
	"github.com/midfs/midfs/fs"

	"github.com/urfave/cli/v2"
)

// serviceCommands are the commands for packaging and operations:
// shell completion and stale-mount cleanup for systemd. The man page is
// generated at build time by a build with -tags mangen (man.go).
func serviceCommands() []*cli.Command {
	return append([]*cli.Command{
		{
			Name:      "completion",
			Usage:     "print a shell completion script (bash or zsh)",
			ArgsUsage: "bash|zsh",
			Description: "bash: source <(midfs completion bash), or install it as /usr/share/bash-completion/completions/midfs.\n" +
				"zsh: install it as _midfs in a directory of $fpath, e.g. /usr/share/zsh/vendor-completions/_midfs.",
			Action: completionAction,
		},
		{
			Name:      "cleanup",
			Usage:     "unmount a dead midfs mount left by a killed agent (systemd's ExecStopPost)",
			ArgsUsage: "[MOUNTPOINT]",
			Description: "Clears \"Transport endpoint is not connected\" at MOUNTPOINT (or the config file's mountpoint:)\n" +
				"so readers fail fast and the next start mounts cleanly. A live mount is left alone.",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "agent config `FILE`; only its mountpoint: is read"},
			},
			Action: cleanupAction,
		},
	}, extraCommands...)
}

// extraCommands are commands only some builds have: man.go (-tags mangen)
// adds the man-page generator.
var extraCommands []*cli.Command

func completionAction(c *cli.Context) error {
	switch c.Args().First() {
	case "bash":
		fmt.Fprint(c.App.Writer, cliconfig.BashCompletion)
	case "zsh":
		fmt.Fprint(c.App.Writer, cliconfig.ZshCompletion)
	default:
		return failf(exitUsage, "completion wants bash or zsh, got %q", c.Args().First())
	}
	return nil
}

func cleanupAction(c *cli.Context) error {
	dir := c.Args().First()
	if dir == "" && c.String("config") != "" {
		var err error
		if dir, err = configMountpoint(c.String("config")); err != nil {
			return fail(exitUsage, err)
		}
	}
	if dir == "" {
		return failf(exitUsage, "give the MOUNTPOINT, or --config with a mountpoint: key")
	}
	cleaned, err := fs.CleanStale(dir)
	if err != nil {
		return fail(exitMountPoint, err)
	}
	if cleaned {
		slog.Info("cleaned up a dead mount", "dir", dir)
	}
	return nil
}

// configMountpoint reads only the mountpoint: key of an agent config file.
func configMountpoint(path string) (string, error) {
	dir, found, err := cliconfig.Key(path, "mountpoint")
	if err != nil || found {
		return dir, err
	}
	return "", fmt.Errorf("config %s has no mountpoint: key; give the MOUNTPOINT", path)
}
