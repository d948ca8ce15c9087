// Command midfs issues short-lived machine identities from an authority and
// serves them to programs as a read-only FUSE mount. This file only wires
// the commands; each lives in a file of its own.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
)

// Set by the Makefile with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	if code, handled := runSpecial(args); handled { // helper.go: mount(8) helper, mount probe
		return code
	}
	app := newApp()
	if err := app.Run(cliconfig.PermuteArgs(app, args)); err != nil {
		return report(err)
	}
	return 0
}

func newApp() *cli.App {
	app := &cli.App{
		Name:                 "midfs",
		Usage:                "machine identities served from memory as a read-only FUSE mount",
		Version:              version + " (commit " + commit + ")",
		Flags:                logFlags(),
		Before:               setupLogging,
		EnableBashCompletion: true,
		HideHelpCommand:      true,
		Commands:             commands(),
		ExitErrHandler:       func(*cli.Context, error) {}, // report() prints and picks the code
	}
	addServiceFlags(app) // service_wiring.go: --config, --diag-addr, completion, cleanup
	addEnvVars(app)
	setUsageErrors(app)
	cliconfig.SetHelp()
	return app
}

// report prints err as one line and returns the exit code it carries.
func report(err error) int {
	code := exitFailure
	if e, ok := err.(*exitError); ok {
		code = e.code
	} else if ec, ok := err.(cli.ExitCoder); ok {
		code = ec.ExitCode()
	}
	if msg := err.Error(); msg != "" {
		fmt.Fprintf(os.Stderr, "midfs: %s\n", msg)
	}
	return code
}
