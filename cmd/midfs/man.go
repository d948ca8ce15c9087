//go:build mangen

// The man-page generator, linked only into `make man`'s build
// (go run -tags mangen ./cmd/midfs man), so that md2man and blackfriday stay
// out of the binaries that ship; doc/midfs.1 is its committed output.

package main

import (
	"fmt"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/urfave/cli/v2"
)

func init() {
	extraCommands = append(extraCommands, &cli.Command{
		Name:   "man",
		Usage:  "print the man page, midfs(1), in roff",
		Hidden: true,
		Action: manAction,
	})
}

func manAction(c *cli.Context) error {
	md, err := c.App.ToMarkdown()
	if err != nil {
		return err
	}
	// ToMarkdown starts with "# NAME"; a title line makes it a man page.
	page := "% midfs 1\n\n" + md + manExtra
	fmt.Fprint(c.App.Writer, string(md2man.Render([]byte(page))))
	return nil
}

// manExtra documents what the command definitions cannot say.
const manExtra = `
# CONFIGURATION FILE

**midfs mount** and **midfs auth start** read **--config** FILE: YAML whose keys are the command's
flag names with underscores (auth_server, ca_pin, join_method, token, owner, readers, diag_addr,
log_level, ...). A repeatable flag takes a list (readers: [alice, '@wheel']). **mount** also takes
mountpoint. Flags override MIDFS_* environment variables, which override the file. Unknown keys and
bad values are errors naming the file and line. Examples: /usr/share/doc/midfs/examples/.

# FSTAB AND MOUNT(8)

An fstab line such as

    /etc/midfs/robot.yaml /opt/machine-id fuse.midfs defaults,_netdev 0 0

makes **mount /opt/machine-id** run **mount.fuse.midfs** (a link to midfs), which starts the agent
in the background and returns only once the tree is readable, or fails with the agent's error and
exit status, leaving nothing mounted. Options are the mount command's flags with underscores
(owner=alice, reader=bob, reader=@wheel, certificate_ttl=30m, ...), plus log=FILE for the
background agent's log (default: the journal when run by systemd, else none). mount(8)'s generic
options (rw, _netdev, nofail, x-systemd.*, ...) are ignored; allow_other is implied when root.
**umount /opt/machine-id** stops the agent.

# SYSTEMD

midfs-auth.service runs the authority; midfs@NAME.service runs an agent from
/etc/midfs/NAME.yaml (Type=notify: ready once the tree is mounted and readable; systemctl reload
renews now). midfs speaks sd_notify (READY=1, STATUS=, STOPPING=1) when NOTIFY_SOCKET is set.

# DIAGNOSTICS

**--diag-addr**=127.0.0.1:3001 serves /livez, /readyz (JSON per component, 503 while the identity
is expired or renewals fail) and /metrics (Prometheus).

# SIGNALS

SIGTERM and SIGINT unmount and exit 0. SIGHUP renews the identity now.

# EXIT STATUS

0 success; 1 other failure; 3 bad flags, arguments or config file; 10 bad mount point; 11 join
refused; 12 CA pin mismatch; 13 authority unreachable; 14 the kernel refused the mount; 15 the
authority could not start.
`
