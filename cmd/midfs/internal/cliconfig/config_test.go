package cliconfig

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
)

// load runs a command with one flag of each kind the real commands use,
// whose Before loads the --config file.
func load(t *testing.T, path string) error {
	t.Helper()
	cmd := &cli.Command{
		Name: "mount",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "config"},
			&cli.StringFlag{Name: "auth-server"},
			&cli.StringFlag{Name: "token"},
			&cli.StringFlag{Name: "owner", Value: "root"},
			&cli.StringSliceFlag{Name: "reader"},
			&cli.DurationFlag{Name: "certificate-ttl", Value: time.Hour},
			&cli.BoolFlag{Name: "debug-fuse"},
		},
		Before: func(c *cli.Context) error {
			_, err := Load(c, "mountpoint")
			return err
		},
		Action: func(*cli.Context) error { return nil },
	}
	app := &cli.App{Name: "midfs", Commands: []*cli.Command{cmd}, ExitErrHandler: func(*cli.Context, error) {}}
	return app.Run([]string{"midfs", "mount", "--config", path})
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "robot.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigErrorsNameFileAndLine(t *testing.T) {
	cases := []struct{ name, body, want string }{
		{"typo", "token: x\ntokn: y\n", `line 2: unknown key "tokn" (did you mean token?)`},
		{"unknown key", "colour: blue\n", `line 1: unknown key "colour"; known keys: auth_server, certificate_ttl`},
		{"dashes", "auth-server: a:1\n", "keys use underscores: auth_server"},
		{"bad duration", "token: x\n\ncertificate_ttl: soon\n", `line 3: certificate_ttl: "soon" is not a duration`},
		{"bool wants bool", "debug_fuse: maybe\n", "line 1: debug_fuse: want true or false"},
		{"list for single", "owner: [a, b]\n", "line 1: owner: want a single value, got a list"},
		{"empty value", "token:\n", "line 1: token: want a single value, got nothing"},
		{"duplicate", "token: a\nowner: b\ntoken: c\n", "line 3: token is already set on line 1"},
		{"not a mapping", "- token\n", "line 1: want a mapping"},
		{"syntax", "token: [a\n", "config "},
		{"nested config", "config: other.yaml\n", "cannot name another config file"},
		// parsed, 17 MB took 678 MB of memory
		{"over 1 MiB", "token: " + strings.Repeat("x", 1<<20) + "\n", "larger than 1 MiB"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.body)
			err := load(t, path)
			if err == nil {
				t.Fatal("want an error")
			}
			msg := err.Error()
			t.Log(msg)
			if !strings.Contains(msg, tc.want) || !strings.Contains(msg, path) || strings.Contains(msg, "\n") {
				t.Fatalf("error %q must be one line naming %s and contain %q", msg, path, tc.want)
			}
		})
	}
}
