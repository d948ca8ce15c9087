package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/node/enforce"
	"github.com/midfs/midfs/wire"
)

// What the node agent does for enforcement: it keeps enforce's state (the
// node's labels as the authority sees them, the user CAs, the last locks
// fetched) in the run directory, where `midfs node authorize` (sshd's
// AuthorizedPrincipalsCommand) decides every login from it, and sshd reads
// the KRL made from the locks (RevokedKeys). The authority is asked for
// the locks every --locks-interval; while it cannot be reached the node
// keeps enforcing the last locks it knew.

// hookUser runs the hook: it reads the state, nothing else.
const hookUser = "nobody"

// enforcementLines are the fragment's lines for the hook and the KRL.
func enforcementLines(d runDir, bin string) []fragmentLine {
	return []fragmentLine{
		{"AuthorizedPrincipalsCommand", fmt.Sprintf("%s node authorize --run-dir=%s %%u %%k", bin, string(d)), bin},
		{"AuthorizedPrincipalsCommandUser", hookUser, ""},
		{"RevokedKeys", d.path(enforce.KRLFile), d.path(enforce.KRLFile)},
	}
}

// checkHookPath says why sshd would refuse to run bin as its
// AuthorizedPrincipalsCommand, or nil: sshd runs it only if it and every
// directory above it belong to root and no one else may write them, and
// then refuses every login. Checked before joining, so a node installed
// where sshd cannot use it costs no token.
func checkHookPath(bin string) error {
	if err := checkConfigPath("the midfs binary's path", bin); err != nil {
		return err
	}
	for p := bin; ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("the midfs binary %s: %v", bin, err)
		}
		sys := st.Sys().(*syscall.Stat_t)
		if sys.Uid != 0 || st.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("sshd runs `midfs node authorize` only from a path that root owns and no one else may write, and %s is not (owner uid %d, mode %v): install midfs in /usr/bin or /usr/local/bin",
				p, sys.Uid, st.Mode().Perm())
		}
		if p == "/" {
			return nil
		}
	}
}

// restoreLocks takes the locks of the state a previous run left, if it
// was this node's: a restart that cannot reach the authority enforces
// them still.
func (a *Agent) restoreLocks() {
	prev, err := enforce.Load(string(a.dir))
	if err != nil || prev.Node != a.cfg.Name || prev.Cluster != a.cluster {
		return
	}
	a.locks, a.locksFetched = prev.Locks, prev.Fetched
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
// rename).
func (a *Agent) writeState() error {
	st := &enforce.State{
		Cluster: a.cluster, Node: a.cfg.Name, Labels: a.labels, UserCAs: a.userCAs,
		Locks: a.locks, Fetched: a.locksFetched,
	}
	if err := enforce.Write(string(a.dir), st); err != nil {
		return fmt.Errorf("write the enforcement state: %w", err)
	}
	a.stateWritten = true
	return nil
}
