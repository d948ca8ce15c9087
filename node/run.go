package node

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/midfs/midfs/joiner"
)

// Status is what diagnostics and systemd's STATUS= show of the node agent.
type Status struct {
	Cluster         string
	HostCertExpires time.Time
	LastRenewal     time.Time
	LastHeartbeat   time.Time
	LastError       string // of the last failure; kept after recovery
	Failing         bool   // the last attempt of a renewal, heartbeat or lock fetch failed
}

// status is guarded by its own mutex: Run writes it, diagnostics read it.
type status struct {
	mu      sync.Mutex
	st      Status
	failing map[string]bool // by task
}

// result records the outcome of a task's attempt.
func (s *status) result(task string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failing == nil {
		s.failing = map[string]bool{}
	}
	s.failing[task] = err != nil
	if err != nil {
		s.st.LastError = task + ": " + err.Error()
	}
	s.st.Failing = false
	for _, f := range s.failing {
		s.st.Failing = s.st.Failing || f
	}
}

func (s *status) update(f func(*Status)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

// Status returns a copy of the node agent's status.
func (a *Agent) Status() Status {
	a.status.mu.Lock()
	defer a.status.mu.Unlock()
	return a.status.st
}

// task is one thing Run does every interval, with backoff after failures.
type task struct {
	name     string
	every    time.Duration
	next     time.Time
	failures int
	do       func(context.Context) error
}

// Run renews the node's identity and host certificate every renewal
// interval, heartbeats and fetches the locks, until ctx ends. A failure is
// retried with backoff (from a second up to the task's interval) and
// withdraws nothing: sshd keeps what it has, and enforcement the last
// locks it knew.
func (a *Agent) Run(ctx context.Context) error {
	defer a.Close()
	now := a.clock.Now().Round(0)
	tasks := []*task{
		{name: "renewal", every: a.cfg.Join.RenewInterval, next: now.Add(a.cfg.Join.RenewInterval), do: a.renew},
		{name: "heartbeat", every: a.cfg.HeartbeatInterval, next: now.Add(a.cfg.HeartbeatInterval), do: a.heartbeatTask},
		// Half a heartbeat after the heartbeats, so that the node's
		// connection to the authority is never idle long enough to close.
		{name: "locks", every: a.cfg.LocksInterval, next: now.Add(a.cfg.LocksInterval + a.cfg.HeartbeatInterval/2), do: a.fetchLocks},
	}
	for {
		due := tasks[0]
		for _, t := range tasks[1:] {
			if t.next.Before(due.next) {
				due = t
			}
		}
		timer := a.clock.NewTimer(max(due.next.Sub(a.clock.Now().Round(0)), 0))
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-a.renewNow:
			timer.Stop()
			due = tasks[0]
		case <-timer.C():
		}
		err := due.do(ctx)
		if ctx.Err() != nil {
			return nil
		}
		a.status.result(due.name, err)
		now := a.clock.Now().Round(0)
		if err != nil {
			due.failures++
			d := joiner.Backoff(due.failures, due.every)
			due.next = now.Add(d)
			a.failed(due.name, err, d, due.failures)
			continue
		}
		due.failures = 0
		due.next = now.Add(due.every)
	}
}

func (a *Agent) failed(what string, err error, retry time.Duration, failures int) {
	level := "warn"
	if errors.Is(err, joiner.ErrRefused) {
		level = "error"
	}
	args := []any{"err", err, "retry_in", retry.Round(time.Millisecond).String(), "failures", failures}
	msg := what + " failed; sshd keeps serving what it has"
	if level == "error" {
		a.log.Error(msg, args...)
	} else {
		a.log.Warn(msg, args...)
	}
}

// renew renews the node's identity (once per round, even when the host
// certificate of that round has to be retried), then the host
// certificate, and makes sure sshd presents it.
func (a *Agent) renew(ctx context.Context) error {
	if a.botDue {
		if err := a.sess.Renew(ctx); err != nil {
			return err
		}
		a.botDue = false
	}
	if err := a.refreshHostCert(ctx); err != nil {
		return err
	}
	a.botDue = true
	a.sshd.ensure(ctx, a.hostCert)
	a.status.update(func(s *Status) {
		s.LastRenewal = a.clock.Now()
		s.HostCertExpires = time.Unix(int64(a.hostCert.ValidBefore), 0)
	})
	return nil
}

func (a *Agent) heartbeatTask(ctx context.Context) error {
	if err := a.heartbeat(ctx); err != nil {
		return err
	}
	a.status.update(func(s *Status) { s.LastHeartbeat = a.clock.Now() })
	return nil
}
