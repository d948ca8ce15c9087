package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/cmd/midfs/internal/output"
	"github.com/midfs/midfs/wire"
)

// authRotateCommand is `midfs auth rotate`, tctl's `auth rotate`.
func authRotateCommand() *cli.Command {
	return &cli.Command{
		Name:  "rotate",
		Usage: "replace a CA: a new one is trusted, then signs, then the old one is dropped",
		Description: "Rotates one CA in Teleport's phases: init (the new CA is trusted everywhere, signs nothing), " +
			"update_clients (it signs bot, node and output identities), update_servers (host certificates and the " +
			"authority's own), standby (the old CA is dropped). Without --manual the authority moves through them by " +
			"itself, a third of --grace-period each; with --manual, one --phase at a time. --phase=rollback goes back " +
			"to the old CA from any phase before the last standby. Agents and nodes follow at their next poll. " +
			"During a rotation of the host CA the CA pin is both pins, comma-separated: give both to what joins then.\n" +
			exitHelp(exitUsage, exitFailure, exitAuthority),
		Flags: []cli.Flag{
			dataDirFlag(),
			&cli.StringFlag{Name: "type", Usage: "`user|host|db`: which CA"},
			&cli.DurationFlag{Name: "grace-period", Usage: fmt.Sprintf("`DURATION` an automatic rotation is spread over (default %s)", auth.DefaultGracePeriod)},
			&cli.BoolFlag{Name: "manual", Usage: "move the rotation by hand, one --phase at a time"},
			&cli.StringFlag{Name: "phase", Usage: "`init|update_clients|update_servers|standby|rollback`: the phase to move to, with --manual"},
		},
		Action: withAdmin(authRotate),
	}
}

func authRotate(c *cli.Context, ac *admin.Client) error {
	if c.NArg() > 0 {
		return failf(exitUsage, "auth rotate takes no arguments, got %q; give the CA with --type", strings.Join(c.Args().Slice(), " "))
	}
	if c.String("type") == "" {
		return failf(exitUsage, "auth rotate: give the CA to rotate with --type=user, host or db")
	}
	res, err := ac.Rotate(c.Context, admin.RotateRequest{
		Type: c.String("type"), GracePeriod: c.Duration("grace-period"), Manual: c.Bool("manual"), Phase: c.String("phase"),
	})
	switch {
	case admin.KindOf(err) == admin.Invalid:
		return fail(exitUsage, err)
	case err != nil:
		return fail(exitFailure, err)
	}
	if err := output.CAs(c.App.Writer, []policy.CAResource{*res}); err != nil {
		return err
	}
	if r := res.Spec.Rotation; r.Mode == wire.RotationManual {
		next := "next: midfs auth rotate --type=" + res.Spec.Type + " --manual --phase="
		switch r.Phase {
		case wire.PhaseInit:
			next += wire.PhaseUpdateClients + " (or --phase=rollback)"
		case wire.PhaseUpdateClients:
			next += wire.PhaseUpdateServers + " (or --phase=rollback)"
		case wire.PhaseUpdateServers:
			next += wire.PhaseStandby + " (or --phase=rollback)"
		case wire.PhaseRollback:
			next += wire.PhaseStandby
		}
		fmt.Fprintln(c.App.Writer, next)
	}
	return nil
}

// caTitle is a CA type as a status row names it: User, Host, DB.
func caTitle(typ string) string {
	if typ == "db" || typ == "" {
		return strings.ToUpper(typ)
	}
	return strings.ToUpper(typ[:1]) + typ[1:]
}
