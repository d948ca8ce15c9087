package main

import (
	"bytes"
	"io"
	"log/slog"
	"net/url"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/wire"
)

// safeTokenForms is the hint for anyone who put the secret where others can read it.
const safeTokenForms = "--token-file=FILE, the MIDFS_TOKEN variable, or --token=- (standard input)"

// joinToken returns the join token from wherever the flags say it is:
// --token-file, standard input (--token=-), or the value of --token (which
// MIDFS_TOKEN and the config file also set). A one-time token is a secret:
// a value in argv is readable by every local user in /proc/PID/cmdline, so
// it still works, as the guide's vocabulary has it, but draws a warning.
func joinToken(c *cli.Context, method string, log *slog.Logger) (string, error) {
	tok, file := c.String("token"), c.String("token-file")
	// Children (fusermount, the mount helper's agent) must not inherit it.
	os.Unsetenv("MIDFS_TOKEN")
	switch {
	case file != "" && tok != "":
		return "", failf(exitUsage, "give the join token once: --token or --token-file, not both")
	case file != "":
		return readTokenFile(file, method, log)
	case tok == "-":
		return readToken(c.App.Reader, "standard input (--token=-)")
	}
	if method == wire.JoinToken && tok != "" && inCommandLine(tok) {
		log.Warn("the join token is on the command line, where every local user can read it (ps, /proc/PID/cmdline); pass it with " + safeTokenForms)
	}
	return tok, nil
}

// readTokenFile reads a token file, warning when others may read it too.
func readTokenFile(path, method string, log *slog.Logger) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", failf(exitUsage, "cannot read --token-file: %v", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Mode().Perm()&0o077 != 0 && method == wire.JoinToken {
		log.Warn("the token file is readable by other users; run chmod 600 on it", "file", path)
	}
	return readToken(f, "--token-file "+path)
}

// readToken is joiner.ReadToken with the usage exit code.
func readToken(r io.Reader, from string) (string, error) {
	if r == nil {
		r = os.Stdin
	}
	tok, err := joiner.ReadToken(r, from)
	return tok, fail(exitUsage, err)
}

// inCommandLine says whether s can be read from this process's argv by
// other users. /proc/self/cmdline is what they would read.
func inCommandLine(s string) bool {
	cmdline, err := os.ReadFile("/proc/self/cmdline")
	return err == nil && bytes.Contains(cmdline, []byte(s))
}

// warnPasswordInArgv warns when a database URL with a password came on
// the command line, where every local user can read it.
func warnPasswordInArgv(dbURL string, log *slog.Logger) {
	u, err := url.Parse(dbURL)
	if err != nil || u.User == nil {
		return
	}
	if pw, ok := u.User.Password(); ok && pw != "" && inCommandLine(pw) {
		log.Warn("the database password is on the command line, where every local user can read it (ps, /proc/PID/cmdline); " +
			"put it in ~/.pgpass (or the file PGPASSFILE names), or pass --db with MIDFS_DB or the config file")
	}
}
