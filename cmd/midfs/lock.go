package main

import (
	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/cmd/midfs/internal/output"
)

// lockCommand is tctl's `lock`, for bots.
func lockCommand() *cli.Command {
	return &cli.Command{
		Name:  "lock",
		Usage: "lock a bot: the authority and every enforcing node refuse it, whatever certificates it holds",
		Description: "The authority refuses the bot's renewals, certificates, node lists and joins at once; enforcing\n" +
			"nodes refuse its logins once they fetched the lock (within their poll interval), also with\n" +
			"certificates issued before. `midfs get locks` lists locks, `midfs rm locks/ID` removes one.",
		Flags: []cli.Flag{
			dataDirFlag(),
			&cli.StringFlag{Name: "bot", Usage: "`NAME` of the bot to lock"},
			&cli.StringFlag{Name: "message", Usage: "`TEXT` saying why, shown to the bot and in logs"},
			&cli.DurationFlag{Name: "ttl", Usage: "`DURATION` the lock lasts (default: until removed)"},
		},
		Action: withAdmin(lock),
	}
}

func lock(c *cli.Context, ac *admin.Client) error {
	if c.NArg() > 0 {
		return failf(exitUsage, "lock takes no arguments; name the bot with --bot=NAME")
	}
	if c.String("bot") == "" {
		return failf(exitUsage, "lock: name the bot with --bot=NAME (see `midfs bots ls`)")
	}
	if c.Duration("ttl") < 0 {
		return failf(exitUsage, "bad --ttl %s: give a positive duration like 30m or 24h, or none for a lock until removed", c.Duration("ttl"))
	}
	l, err := ac.AddLock(c.Context, admin.LockSpec{Bot: c.String("bot"), Message: c.String("message"), TTL: c.Duration("ttl")})
	if err != nil {
		return fail(exitFailure, err)
	}
	output.LockCreated(c.App.Writer, l)
	return nil
}
