package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
)

// seen is what a command saw after flags, environment and file were merged.
type seen struct {
	authServer, token, owner string
	readers                  []string
	ttl                      time.Duration
	debug                    bool
	mountpoint               string
	debugEnabled             bool
}

// configApp is the app wiring of newApp around a stand-in for the mount
// command with one flag of each kind the real commands use.
func configApp(got *seen) *cli.App {
	cmd := &cli.Command{
		Name: "mount",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "auth-server"},
			&cli.StringFlag{Name: "token"},
			&cli.StringFlag{Name: "owner", Value: "root"},
			&cli.StringSliceFlag{Name: "reader"},
			&cli.DurationFlag{Name: "certificate-ttl", Value: time.Hour},
			&cli.BoolFlag{Name: "debug-fuse"},
		},
		Action: func(c *cli.Context) error {
			*got = seen{
				authServer: c.String("auth-server"), token: c.String("token"), owner: c.String("owner"),
				readers: c.StringSlice("reader"), ttl: c.Duration("certificate-ttl"), debug: c.Bool("debug-fuse"),
				mountpoint:   serviceOf(c).mountpoint(c),
				debugEnabled: slog.Default().Enabled(context.Background(), slog.LevelDebug),
			}
			return nil
		},
	}
	app := &cli.App{
		Name: "midfs", Flags: logFlags(), Before: setupLogging,
		Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {},
	}
	addServiceFlags(app)
	addEnvVars(app)
	return app
}

func runConfigApp(t *testing.T, args ...string) (seen, error) {
	t.Helper()
	prev := slog.Default()
	t.Cleanup(func() { slog.SetDefault(prev) })
	var got seen
	app := configApp(&got)
	err := app.Run(cliconfig.PermuteArgs(app, append([]string{"midfs"}, args...)))
	return got, err
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "robot.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const fullConfig = `# an agent
auth_server: auth.example.com:3025
token: 0123abcd
owner: alice:staff
readers: [bob, "@wheel"]
certificate_ttl: 30m
debug_fuse: true
mountpoint: /opt/machine-id
log_level: debug
`

func TestConfigFileSetsEveryKindOfFlag(t *testing.T) {
	got, err := runConfigApp(t, "mount", "--config", writeConfig(t, fullConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := seen{
		authServer: "auth.example.com:3025", token: "0123abcd", owner: "alice:staff",
		readers: []string{"bob", "@wheel"}, ttl: 30 * time.Minute, debug: true,
		mountpoint: "/opt/machine-id", debugEnabled: true,
	}
	if !equalSeen(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}

func equalSeen(a, b seen) bool {
	return a.authServer == b.authServer && a.token == b.token && a.owner == b.owner &&
		strings.Join(a.readers, ",") == strings.Join(b.readers, ",") && a.ttl == b.ttl &&
		a.debug == b.debug && a.mountpoint == b.mountpoint && a.debugEnabled == b.debugEnabled
}

func TestConfigPrecedenceFlagsThenEnvThenFile(t *testing.T) {
	path := writeConfig(t, fullConfig)
	t.Setenv("MIDFS_TOKEN", "from-env")
	t.Setenv("MIDFS_READER", "carol")
	t.Setenv("MIDFS_LOG_LEVEL", "warn")
	got, err := runConfigApp(t, "mount", "/mnt/x", "--config", path, "--owner=dave", "--certificate-ttl=5m")
	if err != nil {
		t.Fatal(err)
	}
	if got.owner != "dave" || got.ttl != 5*time.Minute {
		t.Errorf("flags must beat the file: owner %q ttl %v", got.owner, got.ttl)
	}
	if got.token != "from-env" || strings.Join(got.readers, ",") != "carol" {
		t.Errorf("MIDFS_* must beat the file: token %q readers %v", got.token, got.readers)
	}
	if got.debugEnabled {
		t.Error("MIDFS_LOG_LEVEL=warn must beat log_level: debug in the file")
	}
	if got.authServer != "auth.example.com:3025" || !got.debug {
		t.Errorf("keys nobody else set come from the file: %+v", got)
	}
	if got.mountpoint != "/mnt/x" {
		t.Errorf("the positional mount point beats the file: %q", got.mountpoint)
	}
}

func TestConfigFlagBeatsEnv(t *testing.T) {
	t.Setenv("MIDFS_TOKEN", "from-env")
	got, err := runConfigApp(t, "mount", "--token=from-flag", "--config", writeConfig(t, "token: from-file\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got.token != "from-flag" {
		t.Fatalf("token %q, want from-flag", got.token)
	}
}

// An error in the file is a usage error (exit 3) on one line naming the
// file; internal/cliconfig's tests go through every kind.
func TestConfigErrorIsAUsageError(t *testing.T) {
	path := writeConfig(t, "token: x\ntokn: y\n")
	_, err := runConfigApp(t, "mount", "--config", path)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(err.Error(), path+" line 2") {
		t.Fatalf("want a usage error naming %s line 2, got %v", path, err)
	}
}

func TestConfigMissingFile(t *testing.T) {
	_, err := runConfigApp(t, "mount", "--config", "/nonexistent/robot.yaml")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/robot.yaml") {
		t.Fatalf("want an error naming the file, got %v", err)
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	t.Setenv("MIDFS_CONFIG", writeConfig(t, "token: t1\n"))
	got, err := runConfigApp(t, "mount")
	if err != nil {
		t.Fatal(err)
	}
	if got.token != "t1" {
		t.Fatalf("MIDFS_CONFIG was not read: token %q", got.token)
	}
}

func TestConfigEmptyFileIsEmptyConfig(t *testing.T) {
	got, err := runConfigApp(t, "mount", "--config", writeConfig(t, "# nothing yet\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got.owner != "root" || got.ttl != time.Hour {
		t.Fatalf("defaults must stay: %+v", got)
	}
}

func TestConfigLogFormatFromFile(t *testing.T) {
	_, err := runConfigApp(t, "mount", "--config", writeConfig(t, "log_format: xml\n"))
	if err == nil || !strings.Contains(err.Error(), "--log-format") {
		t.Fatalf("a bad log_format in the file must be refused, got %v", err)
	}
}

// A value the command itself refuses (a user that does not exist) is
// traced back to the file's line.
func TestConfigLineNamedForValuesTheCommandRefuses(t *testing.T) {
	cmd := &cli.Command{
		Name:  "mount",
		Flags: []cli.Flag{&cli.StringFlag{Name: "owner"}, &cli.StringFlag{Name: "owner-group"}},
		Action: func(c *cli.Context) error {
			return failf(exitUsage, "bad --owner %q: no user %q on this machine", c.String("owner"), c.String("owner"))
		},
	}
	app := &cli.App{Name: "midfs", Flags: logFlags(), Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {}}
	addServiceFlags(app)
	path := writeConfig(t, "owner_group: x\nowner: ghost\n")
	err := app.Run([]string{"midfs", "mount", "--config", path})
	want := fmt.Sprintf(`bad --owner "ghost": no user "ghost" on this machine (--owner is set in config %s line 2)`, path)
	if err == nil || err.Error() != want {
		t.Fatalf("got  %v\nwant %s", err, want)
	}
	// Set on the command line, the flag is not the file's doing.
	err = app.Run([]string{"midfs", "mount", "--config", path, "--owner=ghost"})
	if err == nil || strings.Contains(err.Error(), "config") {
		t.Fatalf("got %v", err)
	}
}
