package main

import (
	"fmt"
	"io"
	"log/syslog"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/node/enforce"
)

// `midfs node authorize` is sshd's AuthorizedPrincipalsCommand on an
// enforcing node. It runs once per login, so run() sends it here before the
// app is built (runSpecial): no config file, no MIDFS_* variables, no
// logger, just argv. The decision is node/enforce's.

// authorizeUsage is the one command line sshd is given (see the fragment
// `midfs node start` writes).
const authorizeUsage = "midfs node authorize [--run-dir=DIR] USER CERT_BASE64 (sshd: AuthorizedPrincipalsCommand BIN node authorize --run-dir=DIR %u %k)"

// nodeCommands are the commands of an enforcing node.
func nodeCommands() []*cli.Command {
	return []*cli.Command{{
		Name:        "node",
		Usage:       "run an enforcing SSH node",
		Subcommands: []*cli.Command{nodeStartCommand(), nodeAuthorizeCommand()},
	}}
}

func nodeAuthorizeCommand() *cli.Command {
	return &cli.Command{
		Name:      "authorize",
		Usage:     "sshd's AuthorizedPrincipalsCommand on an enforcing node: print the login a bot's certificate may use here, or nothing",
		ArgsUsage: "USER CERT_BASE64",
		Description: "sshd runs it at every certificate login, as the fragment of `midfs node start` says:\n" +
			"  AuthorizedPrincipalsCommand BIN node authorize --run-dir=DIR %u %k\n" +
			"It reads DIR/" + enforce.StateFile + " (the node's labels, user CAs and the authority's last locks), checks the\n" +
			"certificate (its CA, validity, the login, the node rules of the bot's roles, locks), and prints USER\n" +
			"if it may log in, else nothing; the reason for a refusal goes to syslog (auth) and standard error.\n" +
			"It never calls the authority, and reads no config file or MIDFS_* variable.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "run-dir", Value: enforce.DefaultRunDir, Usage: "`DIR` the node agent keeps its state in"},
		},
		Action: func(c *cli.Context) error {
			args := append([]string{"--run-dir=" + c.String("run-dir")}, c.Args().Slice()...)
			if code := runAuthorize(args, c.App.Writer, c.App.ErrWriter); code != exitOK {
				return fail(code, fmt.Errorf("usage: %s", authorizeUsage))
			}
			return nil
		},
	}
}

// isAuthorizeCall recognises `midfs node authorize ...` without help.
func isAuthorizeCall(args []string) bool {
	return len(args) >= 3 && args[1] == "node" && args[2] == "authorize" &&
		!slices.ContainsFunc(args[3:], func(a string) bool { return a == "-h" || a == "--help" || a == "-help" })
}

// runAuthorize prints the logins the certificate may use, one a line, or
// nothing. It exits 0 either way: sshd reads an empty answer as a refusal,
// and a non-zero exit only adds a line of its own.
func runAuthorize(args []string, stdout, stderr io.Writer) int {
	runDir, pos, ok := parseAuthorizeArgs(args)
	if !ok {
		fmt.Fprintf(stderr, "midfs: usage: %s\n", authorizeUsage)
		return exitUsage
	}
	logins, reason := enforce.Authorize(runDir, pos[0], pos[1], time.Now())
	if reason != "" {
		logRefusal(stderr, fmt.Sprintf("refused login as %s: %s", pos[0], reason))
		return exitOK
	}
	for _, l := range logins {
		fmt.Fprintln(stdout, l)
	}
	return exitOK
}

func parseAuthorizeArgs(args []string) (runDir string, pos []string, ok bool) {
	runDir = enforce.DefaultRunDir
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case strings.HasPrefix(a, "--run-dir="):
			runDir = strings.TrimPrefix(a, "--run-dir=")
		case a == "--run-dir" && i+1 < len(args):
			i++
			runDir = args[i]
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "-"):
			return "", nil, false
		default:
			pos = append(pos, a)
		}
	}
	return runDir, pos, len(pos) == 2 && runDir != ""
}

// logRefusal writes one line to syslog (sshd runs the command with its
// standard error on /dev/null) and to standard error, for a person who
// runs it by hand. Control characters never reach either.
func logRefusal(stderr io.Writer, line string) {
	line = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, line)
	if w, err := syslog.New(syslog.LOG_AUTHPRIV|syslog.LOG_WARNING, "midfs-node-authorize"); err == nil {
		w.Warning(line)
		w.Close()
	}
	fmt.Fprintf(stderr, "midfs: node authorize: %s\n", line)
}
