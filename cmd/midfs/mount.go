package main

import "github.com/urfave/cli/v2"

// agentCommands are the commands of the agent: mount and ls.
func agentCommands() []*cli.Command { return nil }
