package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
	"github.com/midfs/midfs/service/mounthelper"
)

// stubbedApp is newApp with the long-running actions replaced, so a test
// sees what a command line plus config file resolve to without joining,
// mounting or serving anything.
func stubbedApp(t *testing.T, onRun func(c *cli.Context)) *cli.App {
	t.Helper()
	app := newApp()
	app.Writer = &bytes.Buffer{}
	stub := func(c *cli.Context) error { onRun(c); return nil }
	mount := cliconfig.FindCommand(app.Commands, "mount")
	start := cliconfig.FindCommand(cliconfig.FindCommand(app.Commands, "auth").Subcommands, "start")
	nodeStart := cliconfig.FindCommand(cliconfig.FindCommand(app.Commands, "node").Subcommands, "start")
	if mount == nil || start == nil || nodeStart == nil {
		t.Fatal("mount, auth start and node start must exist")
	}
	mount.Action, start.Action, nodeStart.Action = stub, stub, stub
	return app
}

// The example configs in contrib/ must load against the real commands:
// every key a flag, every value valid.
func TestContribExampleConfigsLoad(t *testing.T) {
	for _, tc := range []struct {
		file string
		args []string
		want map[string]string
	}{
		{"agent.yaml", []string{"mount"}, map[string]string{"storage": "keyring", "diag-addr": "127.0.0.1:3001"}},
		{"auth.yaml", []string{"auth", "start"}, map[string]string{"listen": "0.0.0.0:3025", "cluster-name": "example.com"}},
		{"node.yaml", []string{"node", "start"}, map[string]string{"name": "web1", "labels": "env=prod,team=web", "sshd-config": "/etc/ssh/sshd_config.d/midfs-node.conf", "diag-addr": "127.0.0.1:3003", "join-method": "token"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			ran := false
			app := stubbedApp(t, func(c *cli.Context) {
				ran = true
				for k, v := range tc.want {
					if got := c.String(k); got != v {
						t.Errorf("%s = %q, want %q", k, got, v)
					}
				}
				if tc.file == "agent.yaml" {
					if got := c.StringSlice("auth-server"); !reflect.DeepEqual(got, []string{"auth.example.com:3025"}) {
						t.Errorf("auth-server = %q", got)
					}
					if got := c.StringSlice("reader"); !reflect.DeepEqual(got, []string{"deploy", "@ssh-users"}) {
						t.Errorf("readers = %q", got)
					}
					if m := serviceOf(c).mountpoint(c); m != "/opt/machine-id" {
						t.Errorf("mountpoint = %q", m)
					}
				}
			})
			args := append(append([]string{"midfs"}, tc.args...), "--config", filepath.Join("..", "..", "contrib", tc.file))
			if err := app.Run(cliconfig.PermuteArgs(app, args)); err != nil {
				t.Fatal(err)
			}
			if !ran {
				t.Fatal("the command did not run")
			}
		})
	}
}

// Every flag of the real mount and auth start commands can be named in a
// config file: the loader is generic, this keeps it so.
func TestEveryFlagHasAConfigKey(t *testing.T) {
	app := newApp()
	for _, path := range [][]string{{"mount"}, {"auth", "start"}, {"node", "start"}} {
		cmd := cliconfig.FindCommand(app.Commands, path[0])
		if len(path) > 1 {
			cmd = cliconfig.FindCommand(cmd.Subcommands, path[1])
		}
		ctx := cli.NewContext(app, nil, nil)
		ctx.Command = cmd
		for _, f := range cmd.Flags {
			name := f.Names()[0]
			key := strings.ReplaceAll(name, "-", "_")
			got, gotName := cliconfig.FlagForKey(ctx, key)
			if name == "config" {
				continue
			}
			if got == nil || gotName != name {
				t.Errorf("%s: key %s does not reach --%s", strings.Join(path, " "), key, name)
			}
		}
	}
}

// The options of an fstab line reach the real flags of `midfs mount`.
func TestHelperOptionsMapToFlags(t *testing.T) {
	req, err := mounthelper.ParseArgs([]string{"/etc/midfs/robot.yaml", "/opt/machine-id", "-o",
		"rw,defaults,_netdev,nofail,x-systemd.automount,allow_other,owner=alice:staff,reader=bob,reader=@wheel,certificate_ttl=30m,debug_fuse,token=s3cret,log=/var/log/m.log,ssh_agent=/run/m.agent,key_files=false",
		"-n"}, mountFlagLookup())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--owner=alice:staff", "--reader=bob", "--reader=@wheel", "--certificate-ttl=30m", "--debug-fuse",
		"--ssh-agent=/run/m.agent", "--key-files=false"}
	if !reflect.DeepEqual(req.Flags, want) {
		t.Errorf("flags %q\nwant  %q", req.Flags, want)
	}
	if !reflect.DeepEqual(req.Env, []string{"MIDFS_TOKEN=s3cret"}) {
		t.Errorf("the token must travel in the environment, not argv: env %q", req.Env)
	}
	if req.Source != "/etc/midfs/robot.yaml" || req.Mountpoint != "/opt/machine-id" || req.LogPath != "/var/log/m.log" {
		t.Errorf("parsed %+v", req)
	}
}

func TestHelperIsRecognised(t *testing.T) {
	for _, args := range [][]string{
		{"/sbin/mount.fuse.midfs", "/etc/midfs/robot.yaml", "/opt/machine-id"},
		{"midfs", "/etc/midfs/robot.yaml", "/opt/machine-id", "-o", "rw"}, // via mount.fuse3
	} {
		if _, ok := runSpecial(append(args, "-f")); !ok { // -f: fake, do nothing
			t.Errorf("%q is a helper call", args)
		}
	}
	for _, args := range [][]string{
		{"midfs", "mount", "/opt/machine-id"},
		{"midfs", "bots", "add", "robot"},
		{"midfs", "/etc/x.yaml", "/mnt", "--generate-bash-completion"},
	} {
		if _, ok := runSpecial(args); ok {
			t.Errorf("%q is not a helper call", args)
		}
	}
	if code, _ := runSpecial([]string{"mount.fuse.midfs", "/c.yaml", "/mnt", "-f"}); code != 0 {
		t.Errorf("mount -f (fake) must succeed without doing anything, got %d", code)
	}
}

// The units pass systemd-analyze verify with the binary they name present.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (apt-get install systemd); units not verified")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	units, _ := filepath.Glob(filepath.Join("..", "..", "contrib", "*.service"))
	mounts, _ := filepath.Glob(filepath.Join("..", "..", "contrib", "*.mount"))
	if len(units) != 3 || len(mounts) != 1 {
		t.Fatalf("want 3 services and 1 mount unit in contrib/, got %q %q", units, mounts)
	}
	var verify []string
	for _, u := range append(units, mounts...) {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.ReplaceAll(data, []byte("/usr/bin/midfs"), []byte(exe))
		name := filepath.Base(u)
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if name == "midfs@.service" {
			name = "midfs@robot.service" // a template verifies as an instance
		}
		verify = append(verify, filepath.Join(dir, name))
	}
	// --man=no: the man page need not be installed here (the .deb test
	// checks `man midfs`).
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, verify...)...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		// verify reports bad settings on stderr with exit 0, so any output fails.
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestUnitsVerifyCatchesMistakes(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (apt-get install systemd)")
	}
	bad := filepath.Join(t.TempDir(), "bad.service")
	os.WriteFile(bad, []byte("[Service]\nType=notiffy\nExecStart=/bin/true\n"), 0o644)
	out, _ := exec.Command(analyze, "verify", "--man=no", bad).CombinedOutput()
	if len(bytes.TrimSpace(out)) == 0 {
		t.Fatal("a misspelt setting must produce output, or TestUnitsVerify proves nothing")
	}
}

// The bash completion script, sourced into a real bash, completes commands
// and flags by asking the binary.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed")
	}
	bin := buildMidfs(t)
	script := filepath.Join(t.TempDir(), "midfs.bash")
	var buf bytes.Buffer
	app := newApp()
	app.Writer = &buf
	if err := app.Run([]string{"midfs", "completion", "bash"}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(script, buf.Bytes(), 0o644)
	complete := func(words ...string) string {
		t.Helper()
		cmd := exec.Command(bash, "--norc", "-c", `source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _midfs; printf '%s\n' "${COMPREPLY[@]}"`, "bash", script)
		cmd.Args = append(cmd.Args, words...)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return string(out)
	}
	if got := complete("midfs", "mo"); strings.TrimSpace(got) != "mount" {
		t.Errorf("midfs mo<TAB> gave %q", got)
	}
	if got := complete("midfs", "mount", "--auth"); !strings.Contains(got, "--auth-server") {
		t.Errorf("midfs mount --auth<TAB> gave %q", got)
	}
	if got := complete("midfs", "completion", ""); strings.Contains(got, "mount") {
		t.Errorf("completion takes no subcommands, gave %q", got)
	}
}

func TestZshCompletion(t *testing.T) {
	zsh, err := exec.LookPath("zsh")
	if err != nil {
		t.Skip("zsh is not installed (apt-get install zsh); zsh completion not exercised")
	}
	bin := buildMidfs(t)
	var buf bytes.Buffer
	app := newApp()
	app.Writer = &buf
	app.Run([]string{"midfs", "completion", "zsh"})
	script := filepath.Join(t.TempDir(), "_midfs")
	os.WriteFile(script, buf.Bytes(), 0o644)
	// _describe and compdef stand in for zsh's completion system; the
	// script's own logic and the binary's answers are real.
	cmd := exec.Command(zsh, "-f", "-c", `compdef() { :; }; _describe() { print -l -- "${(@P)2}"; }; _files() { print FILES; }
source "$1"; words=(midfs au); _midfs`, "zsh", script)
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "auth") {
		t.Fatalf("zsh completion of 'midfs au': %v %q", err, out)
	}
}

// The committed man page, doc/midfs.1, is what the generator makes from
// today's command definitions (`make man` regenerates it), documents the
// service parts, and renders without warnings.
func TestManPageCurrent(t *testing.T) {
	committed, err := os.ReadFile("../../doc/midfs.1")
	if err != nil {
		t.Fatalf("%v; run make man", err)
	}
	gen := exec.Command("go", "run", "-tags", "mangen", ".", "man")
	gen.Stderr = os.Stderr
	generated, err := gen.Output()
	if err != nil {
		t.Fatalf("go run -tags mangen . man: %v", err)
	}
	if !bytes.Equal(generated, committed) {
		t.Errorf("doc/midfs.1 is stale: run make man and commit it")
	}
	page := string(committed)
	for _, want := range []string{".TH midfs 1", "CONFIGURATION FILE", "mount.fuse.midfs", "EXIT STATUS", "auth start", "--diag-addr"} {
		if !strings.Contains(page, want) {
			t.Errorf("man page lacks %q", want)
		}
	}
	man, err := exec.LookPath("man")
	if err != nil {
		t.Skip("man is not installed")
	}
	cmd := exec.Command(man, "--warnings", "-l", "../../doc/midfs.1")
	cmd.Env = append(os.Environ(), "MANPAGER=cat", "MANWIDTH=100")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CONFIGURATION FILE") {
		t.Fatalf("man -l: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "warning") {
		t.Errorf("man page renders with warnings:\n%s", out)
	}
}

// The generator is not a command of the binary that ships.
func TestNoManCommandByDefault(t *testing.T) {
	app := newApp()
	if app.Command("man") != nil {
		t.Error("the default build has a man command; the generator belongs behind -tags mangen")
	}
}

// buildMidfs builds the binary once per test run, named midfs.
func buildMidfs(t *testing.T) string {
	t.Helper()
	builtOnce.Do(func() {
		dir, err := os.MkdirTemp("", "midfs-bin")
		if err != nil {
			builtErr = err
			return
		}
		builtBin = filepath.Join(dir, "midfs")
		out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput()
		if err != nil {
			builtErr = &buildError{out: string(out), err: err}
		}
	})
	if builtErr != nil {
		t.Fatal(builtErr)
	}
	return builtBin
}

var (
	builtOnce sync.Once
	builtBin  string
	builtErr  error
)

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }
