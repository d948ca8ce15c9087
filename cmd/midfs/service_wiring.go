package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/service/diag"
	"github.com/midfs/midfs/service/mounthelper"
)

// The long-running commands (mount, auth start) run as services: they read
// a config file, tell systemd (sd_notify) or the mount(8) helper when they
// are ready, and serve diagnostics. addServiceFlags wraps those commands so
// their own files only need a few calls on serviceOf(c):
//
//	svc := serviceOf(c)
//	svc.metrics()                  // prometheus.Registerer for auth.Config.Metrics
//	svc.onOpen                     // fs.Options.OnOpen
//	svc.watchAgent(statusFunc)     // agent: /readyz, /metrics and STATUS= from the joiner's status
//	svc.watchAuthority(checkFunc)  // authority: its /readyz component
//	svc.mounted(mountpoint)        // agent: tree mounted; probes it, then READY=1
//	svc.ready(status)              // authority: serving; READY=1
//	svc.stopping()                 // shutdown begins; STOPPING=1
//	svc.mountpoint(c)              // the positional MOUNTPOINT, or mountpoint: from the config file

// addServiceFlags adds --config and --diag-addr to mount and auth start,
// and the service commands (completion, cleanup). Call it before addEnvVars.
func addServiceFlags(app *cli.App) {
	if c := findCommand(app.Commands, "mount"); c != nil {
		wrapService(c, "mountpoint")
	}
	if a := findCommand(app.Commands, "auth"); a != nil {
		if s := findCommand(a.Subcommands, "start"); s != nil {
			wrapService(s)
		}
	}
	app.Commands = append(app.Commands, serviceCommands()...)
}

// wrapService adds the service flags to cmd and runs its Action inside a
// service: config applied before, diagnostics served during, STOPPING after.
func wrapService(cmd *cli.Command, extraKeys ...string) {
	if findFlag(cmd.Flags, "config") == nil {
		cmd.Flags = append(cmd.Flags, &cli.StringFlag{
			Name: "config", Aliases: []string{"c"},
			Usage: "YAML `FILE` whose keys are this command's flag names with underscores; flags and MIDFS_* variables override it",
		})
	}
	if findFlag(cmd.Flags, "diag-addr") == nil {
		cmd.Flags = append(cmd.Flags, &cli.StringFlag{
			Name:  "diag-addr",
			Usage: "serve /livez, /readyz and /metrics over plain HTTP on `HOST:PORT`, e.g. 127.0.0.1:3001 (keep it on loopback)",
		})
	}
	before, action := cmd.Before, cmd.Action
	cmd.Before = func(c *cli.Context) error {
		cf, err := loadConfig(c, extraKeys...)
		if err != nil {
			return err
		}
		svc := newService(cf)
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
			if err := serveDiag(svc.diag, addr); err != nil {
				return err
			}
		}
		defer svc.close()
		if action == nil {
			return nil
		}
		err := svc.config.annotate(action(c))
		if err != nil {
			svc.status("failed: " + err.Error())
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

// service is one run of a long-running command as a service.
type service struct {
	notify    *notifier
	diag      *diag.Server
	child     *mounthelper.Child // set when the mount(8) helper started this process
	config    *configFile
	readyOnce sync.Once
	stopOnce  sync.Once
	statusMu  sync.Mutex
	lastState string
	done      chan struct{}
	closeOnce sync.Once
}

func newService(cf *configFile) *service {
	return &service{
		notify: newNotifier(),
		diag:   diag.New(),
		child:  mounthelper.ChildFromEnv(),
		config: cf,
		done:   make(chan struct{}),
	}
}

// serviceOf returns the service the command runs in. Outside a wrapped
// command (a unit test calling an Action directly) it returns an inert one,
// so callers never check for nil.
func serviceOf(c *cli.Context) *service {
	if c != nil && c.Context != nil {
		if s, ok := c.Context.Value(serviceKey{}).(*service); ok {
			return s
		}
	}
	return &service{notify: &notifier{}, diag: diag.New(), config: &configFile{}, done: make(chan struct{})}
}

// metrics is where components register their collectors.
func (s *service) metrics() prometheus.Registerer { return s.diag.Metrics() }

// onOpen counts an open of a served file; fs.Options.OnOpen.
func (s *service) onOpen(file, result string) { s.diag.OnOpen(file, result) }

// mountpoint is the command's MOUNTPOINT argument, or the config file's
// mountpoint: key (systemd's templated unit has only the file).
func (s *service) mountpoint(c *cli.Context) string {
	if m := c.Args().First(); m != "" {
		return m
	}
	return s.config.extras["mountpoint"]
}

// watchAgent serves the agent's health and metrics from status and keeps
// systemd's STATUS= line current.
func (s *service) watchAgent(status func() diag.AgentStatus) {
	s.diag.WatchAgent(status)
	if !s.notify.enabled() {
		return
	}
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
				s.status(agentStatusLine(status(), time.Now()))
			}
		}
	}()
}

// agentStatusLine is the one line `systemctl status` shows.
func agentStatusLine(st diag.AgentStatus, now time.Time) string {
	if st.Expires.IsZero() {
		return "joining"
	}
	line := "identity expires at " + st.Expires.Local().Format(time.DateTime)
	if !now.Before(st.Expires) {
		line = "identity expired at " + st.Expires.Local().Format(time.DateTime)
	}
	if st.LastError != "" {
		line += "; renewal failing: " + st.LastError
	}
	return line
}

// watchAuthority makes check the authority's /readyz component.
func (s *service) watchAuthority(check func() diag.Health) { s.diag.AddCheck("authority", check) }

// mounted is called once the tree is mounted at dir. A separate process
// (the daemon must never touch its own mount) lists and reads it; then the
// service is ready: READY=1 for systemd, and the mount(8) helper may exit.
func (s *service) mounted(dir string) error {
	if err := probeMountChild(dir); err != nil {
		return fmt.Errorf("mounted at %s but not readable: %w", dir, err)
	}
	s.ready("mounted at " + dir)
	return nil
}

// ready tells systemd and the mount(8) helper that the service is up.
func (s *service) ready(status string) {
	s.readyOnce.Do(func() {
		if err := s.notify.notify("READY=1", "STATUS="+status); err != nil {
			slog.Warn("cannot tell systemd we are ready", "err", err)
		}
		if s.child != nil {
			s.child.SignalReady()
		}
	})
}

// status updates the STATUS= line when it changed.
func (s *service) status(line string) {
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	if line == s.lastState {
		return
	}
	s.lastState = line
	if err := s.notify.notify("STATUS=" + line); err != nil {
		slog.Debug("sd_notify STATUS failed", "err", err)
	}
}

// stopping tells systemd that shutdown has begun.
func (s *service) stopping() {
	s.stopOnce.Do(func() {
		if err := s.notify.notify("STOPPING=1"); err != nil {
			slog.Debug("sd_notify STOPPING failed", "err", err)
		}
	})
}

// close ends the service: STOPPING=1 if nobody said so yet, diagnostics
// server down.
func (s *service) close() {
	s.closeOnce.Do(func() {
		s.stopping()
		close(s.done)
		s.diag.Close()
	})
}

func probeMountChild(dir string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return mounthelper.Probe(ctx, exe, dir)
}
