package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/node/enforce"
	"github.com/midfs/midfs/wire"
)

// What the node agent does for enforcement: it holds enforce's state (the
// node's labels as the authority sees them, the user CAs, the last locks
// fetched) and answers sshd's hook (midfs-node-hook, its
// AuthorizedPrincipalsCommand) from it on the hook socket; it keeps the
// state in the run directory too, for the next process, and the KRL made
// from the locks, which sshd reads itself (RevokedKeys). The authority is
// asked for the locks every --locks-interval; while it cannot be reached
// the node keeps enforcing the last locks it knew.

// HookName is the hook's file name: midfs-node-hook is installed beside
// midfs (make install, the package), and Config.Hook defaults to it.
const HookName = "midfs-node-hook"

// enforcementLines are the fragment's lines for the hook and the KRL.
func enforcementLines(d runDir, hook string) []fragmentLine {
	return []fragmentLine{
		{"AuthorizedPrincipalsCommand", fmt.Sprintf("%s %s %%u %%k", hook, d.path(enforce.HookSocket)), hook},
		{"AuthorizedPrincipalsCommandUser", enforce.HookUser, ""},
		{"RevokedKeys", d.path(enforce.KRLFile), d.path(enforce.KRLFile)},
	}
}

// checkHookPath says why sshd would refuse to run hook as its
// AuthorizedPrincipalsCommand, or nil: sshd runs it only if it and every
// directory above it belong to root and no one else may write them, and
// then refuses every login. Checked before joining, so a node installed
// where sshd cannot use it costs no token.
func checkHookPath(hook string) error {
	if err := checkConfigPath("the hook's path", hook); err != nil {
		return err
	}
	for p := hook; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("sshd's hook %s: %v (it is installed beside midfs: make install)", hook, err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Uid != 0 || st.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("sshd runs its hook %s only from a path that root owns and no one else may write, and %s is not (owner uid %d, mode %v): install midfs in /usr/bin or /usr/local/bin",
				hook, p, sys.Uid, st.Mode().Perm())
		}
		if p == "/" {
			return nil
		}
	}
}

// serveHook answers sshd's hook from st, listening first if this process
// does not yet: the hook user (and root) may ask.
func (a *Agent) serveHook(st *enforce.State) error {
	if a.hook == nil {
		uid, err := lookupUID(enforce.HookUser)
		if err != nil {
			return err
		}
		if err := a.dir.make(); err != nil {
			return err
		}
		h, err := enforce.ListenHook(string(a.dir), func(u uint32) bool { return u == uid }, a.clock.Now, a.log)
		if err != nil {
			return err
		}
		a.hook = h
	}
	a.hook.Set(st)
	return nil
}

// lookupUID is the uid of user name.
func lookupUID(name string) (uint32, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, fmt.Errorf("sshd's hook runs as %s: %v", name, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(uid), err
}

// answerEarly answers the hook at once on a restart, from the state the
// previous process left if it was this node's (with serveEarly: sshd can
// sign and decide again before the authority is asked anything).
func (a *Agent) answerEarly() {
	prev, err := enforce.Load(string(a.dir))
	if err != nil || prev.Node != a.cfg.Name {
		return
	}
	if err := a.serveHook(prev); err != nil {
		a.log.Warn("cannot answer sshd's hook before joining; it is answered once the node has joined", "err", err)
	}
}

// restoreLocks takes the locks of the state a previous run left, if it
// was this node's in this cluster: a restart that cannot reach the
// authority enforces them still. Nothing wrote the state before: writes
// wait for the first writeState (stateWritten).
func (a *Agent) restoreLocks() {
	prev, err := enforce.Load(string(a.dir))
	if err == nil && prev.Node == a.cfg.Name && prev.Cluster == a.cluster {
		a.locks, a.locksFetched = prev.Locks, prev.Fetched
	}
}

// fetchLocks asks for the locks, with the ETag of the list held, and
// writes the state when they changed (or were never written).
func (a *Agent) fetchLocks(ctx context.Context) error {
	var list wire.LockList
	tag, err := a.sess.Get(ctx, wire.PathLocks, a.locksTag, &list)
	now := a.clock.Now()
	switch {
	case errors.Is(err, joiner.ErrNotModified):
		a.locksFetched = now
		return a.writeStateIfChanged(false)
	case err != nil:
		return fmt.Errorf("locks: %w", err)
	}
	a.locks, a.locksTag, a.locksFetched = list.Locks, tag, now
	a.log.Debug("locks fetched", "locks", len(list.Locks))
	return a.writeStateIfChanged(true)
}

// writeStateIfChanged writes the state if what logins are decided from
// changed, or if it was never written by this process. A 304 only
// refreshes Fetched: that is kept in memory and written with the next
// change, which spares a write every interval.
func (a *Agent) writeStateIfChanged(changed bool) error {
	if !changed && a.stateWritten {
		return nil
	}
	return a.writeState()
}

// writeState writes enforce's state and the KRL (each replaced in one
// rename), and answers the hook from the state.
func (a *Agent) writeState() error {
	st := &enforce.State{
		Cluster: a.cluster, Node: a.cfg.Name, Labels: a.labels, UserCAs: a.userCAs,
		Locks: a.locks, Fetched: a.locksFetched,
	}
	if err := enforce.Write(string(a.dir), st); err != nil {
		return fmt.Errorf("write the enforcement state: %w", err)
	}
	if err := a.serveHook(st); err != nil {
		return err
	}
	a.stateWritten = true
	return nil
}
