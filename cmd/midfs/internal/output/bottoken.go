package output

import (
	"fmt"
	"io"
	"time"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// BotToken prints what `tctl bots add` prints, for midfs mount.
func BotToken(w io.Writer, bt *admin.BotToken, now time.Time) {
	if bt.JoinMethod == wire.JoinToken {
		fmt.Fprintf(w, "The bot token: %s\n", bt.Token)
		fmt.Fprintf(w, "This token will expire in %s, at %s.\n", humanDuration(bt.Expires.Sub(now)), bt.Expires.UTC().Format(time.RFC3339))
		fmt.Fprintf(w, "It works once; `midfs get tokens` lists it as %s.\n", bt.TokenName)
	} else {
		fmt.Fprintf(w, "Bot %s joins with the %s token %s; there is no secret to copy.\n", bt.Bot, bt.JoinMethod, bt.TokenName)
	}
	fmt.Fprintf(w, "The CA pin: %s\n\n", bt.CAPin)
	fmt.Fprintf(w, "Run this on the bot's machine to join the cluster %s and serve its identity:\n\n", bt.ClusterName)
	if bt.JoinMethod == wire.JoinToken {
		// echo is built into every shell: the token reaches midfs through a
		// pipe and never shows in any process's argv.
		fmt.Fprintf(w, "echo %s | midfs mount /opt/machine-id --auth-server=%s --token=- --ca-pin=%s\n\n", bt.Token, bt.AuthServer, bt.CAPin)
		fmt.Fprintf(w, "(or keep the token in a file only root can read and give --token-file=FILE; never --token=TOKEN,\nwhich every local user can read from the process list)\n")
	} else {
		fmt.Fprintf(w, "midfs mount /opt/machine-id --auth-server=%s --join-method=%s --token=%s --ca-pin=%s\n", bt.AuthServer, bt.JoinMethod, bt.TokenName, bt.CAPin)
	}
}

// NodeToken prints what `tctl tokens add --type=node` prints, for midfs
// node start: the token, the CA pin, and the command for the node, where
// the token reaches midfs through a pipe, never through argv.
func NodeToken(w io.Writer, nt *admin.NodeToken, now time.Time) {
	fmt.Fprintf(w, "The invite token: %s\n", nt.Token)
	fmt.Fprintf(w, "This token will expire in %s, at %s.\n", humanDuration(nt.Expires.Sub(now)), nt.Expires.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "It joins one node, once; `midfs get tokens` lists it as %s.\n", nt.TokenName)
	if len(nt.Labels) > 0 {
		fmt.Fprintf(w, "The node gets the labels %s, over its own --labels.\n", identity.FormatLabels(nt.Labels))
	}
	fmt.Fprintf(w, "The CA pin: %s\n\n", nt.CAPin)
	fmt.Fprintf(w, "Run this as root on the node to join the cluster %s; it serves sshd a host certificate\n", nt.ClusterName)
	fmt.Fprintf(w, "and checks every login against the roles and locks (NAME: the node's name, ADDR: where bots reach its sshd):\n\n")
	fmt.Fprintf(w, "echo %s | midfs node start --auth-server=%s --token=- --ca-pin=%s --name=NAME --addr=ADDR:22 --sshd-config=%s\n\n",
		nt.Token, nt.AuthServer, nt.CAPin, DefaultSSHDFragment)
	fmt.Fprintf(w, "(or keep the token in a file only root can read and give --token-file=FILE; never --token=TOKEN,\nwhich every local user can read from the process list)\n")
}

// DefaultSSHDFragment is where the node's sshd_config fragment goes in the
// printed command: the directory Debian's sshd_config includes.
const DefaultSSHDFragment = "/etc/ssh/sshd_config.d/midfs-node.conf"

// humanDuration prints "60 minutes" or "2 hours 30 minutes".
func humanDuration(d time.Duration) string {
	d = d.Round(time.Minute)
	if d < 2*time.Hour {
		return fmt.Sprintf("%d minutes", int(d.Minutes()))
	}
	h, m := int(d.Hours()), int(d.Minutes())%60
	if m == 0 {
		return fmt.Sprintf("%d hours", h)
	}
	return fmt.Sprintf("%d hours %d minutes", h, m)
}
