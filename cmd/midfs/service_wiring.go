package main

import (
	"context"
	"errors"
	"net"
	"net/http"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
	"github.com/midfs/midfs/service"
	"github.com/midfs/midfs/service/diag"
)

// The long-running commands (mount, auth start) run as services: they read
// a config file, tell systemd (sd_notify) or the mount(8) helper when they
// are ready, and serve diagnostics (package service). addServiceFlags wraps
// those commands so their own files only need a few calls on serviceOf(c):
//
//	svc := serviceOf(c)
//	svc.Metrics()                  // prometheus.Registerer for auth.Config.Metrics
//	svc.OnOpen                     // fs.Options.OnOpen
//	svc.WatchAgent(statusFunc)     // agent: /readyz, /metrics and STATUS= from the joiner's status
//	svc.WatchAuthority(checkFunc)  // authority: its /readyz component
//	svc.Mounted(mountpoint)        // agent: tree mounted; probes it, then READY=1
//	svc.Ready(status)              // authority: serving; READY=1
//	svc.Stopping()                 // shutdown begins; STOPPING=1
//	svc.mountpoint(c)              // the positional MOUNTPOINT, or mountpoint: from the config file

// addServiceFlags adds --config and --diag-addr to mount, node start and auth start,
// and the service commands (completion, cleanup). Call it before addEnvVars.
func addServiceFlags(app *cli.App) {
	if c := cliconfig.FindCommand(app.Commands, "mount"); c != nil {
		wrapService(c, "mountpoint")
	}
	if n := cliconfig.FindCommand(app.Commands, "node"); n != nil {
		if s := cliconfig.FindCommand(n.Subcommands, "start"); s != nil {
			wrapService(s)
		}
	}
	if a := cliconfig.FindCommand(app.Commands, "auth"); a != nil {
		if s := cliconfig.FindCommand(a.Subcommands, "start"); s != nil {
			wrapService(s)
		}
	}
	app.Commands = append(app.Commands, serviceCommands()...)
}

// wrapService adds the service flags to cmd and runs its Action inside a
// service: config applied before, diagnostics served during, STOPPING after.
func wrapService(cmd *cli.Command, extraKeys ...string) {
	if cliconfig.FindFlag(cmd.Flags, "config") == nil {
		cmd.Flags = append(cmd.Flags, &cli.StringFlag{
			Name: "config", Aliases: []string{"c"},
			Usage: "YAML `FILE` whose keys are this command's flag names with underscores; flags and MIDFS_* variables override it",
		})
	}
	if cliconfig.FindFlag(cmd.Flags, "diag-addr") == nil {
		cmd.Flags = append(cmd.Flags, &cli.StringFlag{
			Name:  "diag-addr",
			Usage: "serve /livez, /readyz and /metrics over plain HTTP on `HOST:PORT`, e.g. 127.0.0.1:3001 (keep it on loopback)",
		})
	}
	before, action := cmd.Before, cmd.Action
	cmd.Before = func(c *cli.Context) error {
		cf, err := cliconfig.Load(c, extraKeys...)
		if err != nil {
			return fail(exitUsage, err)
		}
		// log_level and log_format are app-wide: the file's choice holds
		// from here on.
		if cf.LogChanged() {
			if err := setupLogging(c); err != nil {
				return err
			}
		}
		svc := &running{Service: service.New(), config: cf}
		if c.Context == nil {
			c.Context = context.Background()
		}
		c.Context = context.WithValue(c.Context, serviceKey{}, svc)
		if before != nil {
			return before(c)
		}
		return nil
	}
	cmd.Action = func(c *cli.Context) error {
		svc := serviceOf(c)
		if addr := c.String("diag-addr"); addr != "" {
			if err := serveDiag(svc.Diag(), addr); err != nil {
				return err
			}
		}
		defer svc.Close()
		if action == nil {
			return nil
		}
		err := annotate(svc.config, action(c))
		if err != nil {
			svc.Status("failed: " + err.Error())
		}
		return err
	}
}

// diagMaxConns caps the diagnostics server's connections: a few health
// checkers and scrapers at a time.
const diagMaxConns = 64

// serveDiag serves d on --diag-addr, with the authority's connection
// limiter: any local user can connect, and a flood of idle connections
// must not take the descriptors the process needs for its real work.
func serveDiag(d *diag.Server, addr string) error {
	err := d.Serve(addr, func(srv *http.Server, ln net.Listener) net.Listener {
		return auth.LimitConnections(srv, ln, diagMaxConns, nil)
	})
	if err != nil {
		return failf(exitUsage, "cannot serve diagnostics on --diag-addr=%s: %v", addr, err)
	}
	return nil
}

type serviceKey struct{}

// running is what a wrapped command finds in its context: the service it
// runs as, and the config file it read.
type running struct {
	*service.Service
	config *cliconfig.File
}

// serviceOf returns the service the command runs in. Outside a wrapped
// command (a unit test calling an Action directly) it returns an inert one,
// so callers never check for nil.
func serviceOf(c *cli.Context) *running {
	if c != nil && c.Context != nil {
		if s, ok := c.Context.Value(serviceKey{}).(*running); ok {
			return s
		}
	}
	return &running{Service: service.Quiet(), config: &cliconfig.File{}}
}

// mountpoint is the command's MOUNTPOINT argument, or the config file's
// mountpoint: key (systemd's templated unit has only the file).
func (s *running) mountpoint(c *cli.Context) string {
	if m := c.Args().First(); m != "" {
		return m
	}
	return s.config.Extra("mountpoint")
}

// annotate points a usage error about a flag the config file set at the
// file's line.
func annotate(cf *cliconfig.File, err error) error {
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitUsage {
		return err
	}
	if msg, ok := cf.Annotate(ee.Error()); ok {
		return failf(exitUsage, "%s", msg)
	}
	return err
}
