package main

import "github.com/urfave/cli/v2"

// adminCommands are the tctl-like commands of the authority.
func adminCommands() []*cli.Command { return nil }
