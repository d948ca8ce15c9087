// Package service runs a long-running command (the agent's mount, the
// authority's start) as a service: it tells systemd (sd_notify: READY=1,
// STATUS=, STOPPING=1) and the mount(8) helper when the command is ready,
// keeps the STATUS= line current, and holds the diagnostics server its
// components report to. Its sub-packages hold the rest of the service
// plumbing: diag (/livez, /readyz, /metrics), harden (process hardening)
// and mounthelper (the mount(8) helper and probe).
//
// It imports the standard library, x/sys, its sub-packages and the
// Prometheus client (for the registry components register with), nothing
// else of midfs. cmd/midfs wires it; a future long-running command (the
// node side) may import it too.
package service

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/midfs/midfs/service/diag"
	"github.com/midfs/midfs/service/mounthelper"
)

// Service is one run of a long-running command as a service.
type Service struct {
	notify    *notifier
	fdMax     int                 // FileDescriptorStoreMax=, from $FDSTORE
	stored    map[string]*os.File // passed back by the service manager at start
	diag      *diag.Server
	child     *mounthelper.Child // set when the mount(8) helper started this process
	readyOnce sync.Once
	stopOnce  sync.Once
	statusMu  sync.Mutex
	lastState string
	done      chan struct{}
	closeOnce sync.Once
}

// New is the service this process runs as. It takes NOTIFY_SOCKET and the
// mount(8) helper's pipe from the environment and unsets them, so that no
// child process (the mount probe) mistakes itself for the service.
func New() *Service {
	stored, err := listenFDs()
	if err != nil {
		slog.Warn("ignoring the descriptors the service manager passed", "err", err)
	}
	return &Service{notify: newNotifier(), fdMax: fdStoreMax(), stored: stored, diag: diag.New(),
		child: mounthelper.ChildFromEnv(), done: make(chan struct{})}
}

// Quiet is a service that tells nobody it is ready, for a command that
// runs outside a service (a unit test calling an Action directly).
func Quiet() *Service {
	return &Service{notify: &notifier{}, diag: diag.New(), done: make(chan struct{})}
}

// Diag is the diagnostics server, served or not.
func (s *Service) Diag() *diag.Server { return s.diag }

// Metrics is where components register their collectors.
func (s *Service) Metrics() prometheus.Registerer { return s.diag.Metrics() }

// OnOpen counts an open of a served file; fs.Options.OnOpen.
func (s *Service) OnOpen(file, result string) { s.diag.OnOpen(file, result) }

// OnSign counts a signature request to the ssh-agent socket;
// sshagent.Options.OnSign.
func (s *Service) OnSign(result string) { s.diag.OnSign(result) }

// WatchAgent serves the agent's health and metrics from status and keeps
// systemd's STATUS= line current.
func (s *Service) WatchAgent(status func() diag.AgentStatus) {
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
				s.Status(agentStatusLine(status(), time.Now()))
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

// WatchAuthority makes check the authority's /readyz component.
func (s *Service) WatchAuthority(check func() diag.Health) { s.diag.AddCheck("authority", check) }

// Mounted is called once the tree is mounted at dir. A separate process
// (the daemon must never touch its own mount) lists and reads it; then the
// service is ready: READY=1 for systemd, and the mount(8) helper may exit.
func (s *Service) Mounted(dir string) error {
	if err := probeMountChild(dir); err != nil {
		return fmt.Errorf("mounted at %s but not readable: %w", dir, err)
	}
	s.Ready("mounted at " + dir)
	return nil
}

// Ready tells systemd and the mount(8) helper that the service is up.
func (s *Service) Ready(status string) {
	s.readyOnce.Do(func() {
		if err := s.notify.notify("READY=1", "STATUS="+status); err != nil {
			slog.Warn("cannot tell systemd we are ready", "err", err)
		}
		if s.child != nil {
			s.child.SignalReady()
		}
	})
}

// Status updates the STATUS= line when it changed.
func (s *Service) Status(line string) {
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

// Stopping tells systemd that shutdown has begun.
func (s *Service) Stopping() {
	s.stopOnce.Do(func() {
		if err := s.notify.notify("STOPPING=1"); err != nil {
			slog.Debug("sd_notify STOPPING failed", "err", err)
		}
	})
}

// Close ends the service: STOPPING=1 if nobody said so yet, diagnostics
// server down.
func (s *Service) Close() {
	s.closeOnce.Do(func() {
		s.Stopping()
		close(s.done)
		s.diag.Close()
	})
}

// probeMountChild runs the mount probe in a child process: the same binary,
// recognised by its argv[0] (mounthelper.ProbeArgv0).
func probeMountChild(dir string) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return mounthelper.Probe(ctx, exe, dir)
}
