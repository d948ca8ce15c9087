package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/service/mounthelper"
)

// The binary's other roles, chosen by argv[0] or by the shape of the
// command line: the mount(8) helper and the mount probe. Both live in
// service/mounthelper; this file tells them what `midfs mount` takes and
// what a served tree holds, and turns their outcome into an exit code.

// runSpecial runs the binary in its other roles: mount(8) helper and
// mount probe. handled is false when args are an ordinary command line.
func runSpecial(args []string) (code int, handled bool) {
	if len(args) == 0 || args[len(args)-1] == "--generate-bash-completion" {
		return 0, false
	}
	switch base := filepath.Base(args[0]); {
	case base == mounthelper.ProbeArgv0:
		return runProbeMain(args[1:]), true
	case base == "mount.fuse.midfs" || base == "mount.midfs" || looksLikeHelperCall(args):
		return runHelper(args[1:]), true
	}
	return 0, false
}

// looksLikeHelperCall recognises mount.fuse3's `midfs SOURCE MOUNTPOINT ...`:
// a first argument that is no command and no flag, then an absolute path.
func looksLikeHelperCall(args []string) bool {
	if len(args) < 3 || strings.HasPrefix(args[1], "-") || !filepath.IsAbs(args[2]) {
		return false
	}
	return cliconfig.FindCommand(newApp().Commands, args[1]) == nil
}

func runHelper(args []string) int {
	err := mounthelper.Run(args, mountFlagLookup())
	var usage *mounthelper.UsageError
	var agent *mounthelper.AgentError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &agent): // the agent's own error is on stderr already
		if agent.Code > 0 {
			return agent.Code
		}
		return exitFailure
	case errors.As(err, &usage):
		fmt.Fprintf(os.Stderr, "midfs: %v\n", err)
		return exitUsage
	}
	fmt.Fprintf(os.Stderr, "midfs: %v\n", err)
	return exitFailure
}

// mountFlagLookup finds the flags of `midfs mount` that mount options name.
func mountFlagLookup() mounthelper.FlagLookup {
	var flags []cli.Flag
	if c := cliconfig.FindCommand(newApp().Commands, "mount"); c != nil {
		flags = c.Flags
	}
	return func(name string) (string, bool, bool) {
		f := cliconfig.FindFlag(flags, name)
		if f == nil {
			return "", false, false
		}
		_, isBool := f.(*cli.BoolFlag)
		return f.Names()[0], isBool, true
	}
}

// servedTree is what the probe expects of a mounted identity: the public
// files, which every tree has (--key-files=false leaves the others out).
func servedTree() mounthelper.Tree {
	t := mounthelper.Tree{NonEmpty: identity.FileSSHPub}
	for _, f := range identity.Files {
		if !f.Secret {
			t.Files = append(t.Files, f.Name)
		}
	}
	return t
}

func runProbeMain(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: "+mounthelper.ProbeArgv0+" MOUNTPOINT")
		return exitUsage
	}
	if err := mounthelper.CheckTree(args[0], servedTree()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitFailure
	}
	return exitOK
}
