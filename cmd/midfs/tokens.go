package main

import (
	"context"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/cmd/midfs/internal/output"
	"github.com/midfs/midfs/identity"
)

// tokensCommand is tctl's `tokens`: add (node tokens), ls, rm.
func tokensCommand() *cli.Command {
	return &cli.Command{
		Name:  "tokens",
		Usage: "add, list and remove join tokens",
		Subcommands: []*cli.Command{
			{
				Name:  "add",
				Usage: "make a one-time token that joins one node (`midfs node start`)",
				Flags: []cli.Flag{
					dataDirFlag(),
					&cli.StringFlag{Name: "type", Usage: "`node`: what the token joins (bots get theirs from `midfs bots add`)"},
					&cli.StringFlag{Name: "labels", Usage: "`k=v[,k=v]` every node joining with it gets, over its own --labels"},
					&cli.DurationFlag{Name: "ttl", Value: auth.DefaultNodeTokenTTL, Usage: "`DURATION` the token stays valid"},
				},
				Action: withAdmin(tokensAdd),
			},
			{
				Name:   "ls",
				Usage:  "list join tokens",
				Flags:  []cli.Flag{dataDirFlag(), formatFlag()},
				Action: withAdmin(func(c *cli.Context, ac *admin.Client) error { return getResources(c, ac, "tokens") }),
			},
			{
				Name:      "rm",
				Usage:     "remove a join token",
				ArgsUsage: "NAME",
				Flags:     []cli.Flag{dataDirFlag()},
				Action: onName("token", "removed", func(ac *admin.Client, ctx context.Context, name string) error {
					return ac.Remove(ctx, policy.KindToken, name)
				}),
			},
		},
	}
}

func tokensAdd(c *cli.Context, ac *admin.Client) error {
	if c.NArg() > 0 {
		return failf(exitUsage, "tokens add takes no arguments, got %q", c.Args().Slice())
	}
	switch typ := c.String("type"); typ {
	case "node":
	case "bot":
		return failf(exitUsage, "tokens add --type=bot: a bot gets its token from `midfs bots add NAME --roles=...`")
	case "":
		return failf(exitUsage, "tokens add: give --type=node")
	default:
		return failf(exitUsage, "tokens add: bad --type %q; want node", typ)
	}
	labels, err := identity.ParseLabels(c.String("labels"))
	if err != nil {
		return failf(exitUsage, "bad --labels: %v", err)
	}
	nt, err := ac.AddNodeToken(c.Context, admin.NodeTokenSpec{Labels: labels, TTL: c.Duration("ttl")})
	if err != nil {
		return fail(exitFailure, err)
	}
	output.NodeToken(c.App.Writer, nt, time.Now())
	return nil
}
