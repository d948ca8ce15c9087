package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
)

// mount(8) runs `mount.fuse.midfs SOURCE MOUNTPOINT -o OPTIONS` for an fstab
// line of type fuse.midfs (or, with only fuse3's helper installed,
// mount.fuse3 runs `midfs SOURCE MOUNTPOINT -o OPTIONS`) and waits for it.
// SOURCE is the config file. The helper starts the agent as a detached
// background process (re-exec, setsid, chdir /, stdin from /dev/null) and
// exits only once the tree is mounted and readable, or with the agent's own
// one-line error and exit code when it is not; in the gocryptfs manner,
// the child reports readiness through a pipe.
//
// Until it is ready the agent's stdout and stderr are a pipe to the helper,
// so its error reaches the user; at readiness it moves them to the log
// sink (fd 4) before writing "ready" on fd 3, so nothing it writes later
// can hit a closed pipe.

const helperFDsEnv = "MIDFS_HELPER_FDS"

// Options mount(8) and mount.fuse3 pass that mean nothing to midfs: the tree
// is always read-only, nodev and nosuid, and the rest is for mount(8).
var ignoredMountOptions = map[string]bool{
	"rw": true, "ro": true, "defaults": true, "dev": true, "nodev": true, "suid": true, "nosuid": true,
	"exec": true, "noexec": true, "auto": true, "noauto": true, "_netdev": true, "nofail": true,
	"user": true, "nouser": true, "users": true, "owner": true, "group": true, "async": true, "sync": true,
	"atime": true, "noatime": true, "relatime": true, "norelatime": true, "strictatime": true,
	"nostrictatime": true, "lazytime": true, "nolazytime": true, "diratime": true, "nodiratime": true,
	"silent": true, "loud": true,
	// midfs mounts with allow_other whenever it runs as root, so that other
	// uids reach the public files; access to the secret ones is decided by
	// owner= and reader=, not by this option.
	"allow_other": true,
}

// runSpecial runs the binary in its other roles: mount(8) helper and mount
// probe. handled is false when args are an ordinary command line.
func runSpecial(args []string) (code int, handled bool) {
	if len(args) == 0 || args[len(args)-1] == "--generate-bash-completion" {
		return 0, false
	}
	switch base := filepath.Base(args[0]); {
	case base == probeArgv0:
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
	return findCommand(newApp().Commands, args[1]) == nil
}

// helperRequest is a parsed mount(8) helper command line.
type helperRequest struct {
	source, mountpoint string
	flags              []string // for `midfs mount`
	env                []string // flags that must not show in ps (the token)
	logPath            string
	fake, sloppy       bool
}

func runHelper(args []string) int {
	req, err := parseHelperArgs(args, mountCommandFlags())
	if err != nil {
		fmt.Fprintf(os.Stderr, "midfs: %v\n", err)
		return exitUsage
	}
	if req.fake {
		return exitOK
	}
	return req.run()
}

func mountCommandFlags() []cli.Flag {
	if c := findCommand(newApp().Commands, "mount"); c != nil {
		return c.Flags
	}
	return nil
}

const helperUsage = "usage: mount.fuse.midfs CONFIG_FILE MOUNTPOINT [-o OPTIONS]"

func parseHelperArgs(args []string, mountFlags []cli.Flag) (*helperRequest, error) {
	req := &helperRequest{}
	var pos, opts []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o" || a == "-t":
			if i+1 >= len(args) {
				return nil, fmt.Errorf("%s needs a value; %s", a, helperUsage)
			}
			if a == "-o" {
				opts = append(opts, args[i+1])
			}
			i++
		case strings.HasPrefix(a, "-o"):
			opts = append(opts, a[2:])
		case strings.HasPrefix(a, "-t"):
		case a == "--":
			pos = append(pos, args[i+1:]...)
			i = len(args)
		case strings.HasPrefix(a, "-") && len(a) > 1:
			// -f fake, -s sloppy, -n no mtab, -v verbose, possibly combined.
			for _, ch := range a[1:] {
				switch ch {
				case 'f':
					req.fake = true
				case 's':
					req.sloppy = true
				case 'n', 'v':
				default:
					return nil, fmt.Errorf("unknown option -%c; %s", ch, helperUsage)
				}
			}
		default:
			pos = append(pos, a)
		}
	}
	if len(pos) != 2 {
		return nil, errors.New(helperUsage)
	}
	req.source, req.mountpoint = pos[0], pos[1]
	for _, o := range opts {
		for _, opt := range strings.Split(o, ",") {
			if err := req.addOption(opt, mountFlags); err != nil {
				if !req.sloppy {
					return nil, err
				}
				fmt.Fprintf(os.Stderr, "midfs: ignored: %v\n", err)
			}
		}
	}
	return req, nil
}

// addOption maps one mount option to a flag of `midfs mount`: the option
// names are the flag names with underscores, as in the config file.
func (req *helperRequest) addOption(opt string, mountFlags []cli.Flag) error {
	key, val, hasVal := strings.Cut(opt, "=")
	switch {
	case key == "" || (ignoredMountOptions[key] && !hasVal):
		return nil
	case strings.HasPrefix(key, "x-") || key == "comment":
		return nil // userspace-only options (x-systemd.*)
	case key == "log" && hasVal:
		req.logPath = val
		return nil
	case key == "config":
		return fmt.Errorf("mount option config= is not accepted: the config file is the first column of the fstab line")
	}
	f := findFlag(mountFlags, strings.ReplaceAll(key, "_", "-"))
	if f == nil || key == "help" || strings.Contains(key, "-") {
		return fmt.Errorf("unknown mount option %q: options are `midfs mount` flags with underscores (owner=, reader=, auth_server=, ...), log=FILE, or mount(8)'s generic ones", key)
	}
	name := f.Names()[0]
	if _, isBool := f.(*cli.BoolFlag); isBool {
		if hasVal {
			req.flags = append(req.flags, "--"+name+"="+val)
		} else {
			req.flags = append(req.flags, "--"+name)
		}
		return nil
	}
	if !hasVal || val == "" {
		return fmt.Errorf("mount option %s needs a value (%s=...)", key, key)
	}
	if name == "token" {
		// The agent runs for days: its argv is readable by every user,
		// its environment only by root and itself.
		req.env = append(req.env, "MIDFS_TOKEN="+val)
		return nil
	}
	req.flags = append(req.flags, "--"+name+"="+val)
	return nil
}

// run starts the agent and waits until it is ready or has failed.
func (req *helperRequest) run() int {
	child, err := req.startAgent()
	if err != nil {
		fmt.Fprintf(os.Stderr, "midfs: %v\n", err)
		return exitFailure
	}
	return child.wait()
}

// helperParent is the helper's view of the agent it started.
type helperParent struct {
	cmd        *exec.Cmd
	mountpoint string
	ready      *os.File      // read end of fd 3
	output     chan []string // the agent's report lines ("midfs: ..."), sent at EOF
}

func (req *helperRequest) startAgent() (*helperParent, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("cannot find the midfs binary: %w", err)
	}
	mnt, err := filepath.Abs(req.mountpoint)
	if err != nil {
		return nil, err
	}
	argv := []string{"midfs", "mount", mnt}
	if req.source != "none" && req.source != "midfs" {
		src, err := filepath.Abs(req.source)
		if err != nil {
			return nil, err
		}
		f, err := os.Open(src) // fail here, with the helper's own words, if unreadable
		if err != nil {
			return nil, fmt.Errorf("cannot read config file: %w", err)
		}
		f.Close()
		argv = append(argv, "--config="+src)
	}
	argv = append(argv, req.flags...)
	sink, err := logSink(req.logPath)
	if err != nil {
		return nil, err
	}
	defer sink.Close()
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{
		Path:        exe,
		Args:        argv,
		Dir:         "/",
		Env:         helperEnv(req.env),
		Stdout:      outW,
		Stderr:      outW,
		ExtraFiles:  []*os.File{readyW, sink},
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	err = cmd.Start()
	readyW.Close()
	outW.Close()
	if err != nil {
		readyR.Close()
		outR.Close()
		return nil, fmt.Errorf("cannot start the agent: %w", err)
	}
	p := &helperParent{cmd: cmd, mountpoint: mnt, ready: readyR, output: make(chan []string, 1)}
	forward, err := dupFile(sink)
	if err != nil {
		forward = nil
	}
	go p.collect(outR, forward)
	return p, nil
}

// helperEnv is the agent's environment: ours, PATH defaulted (systemd runs
// mount units with none; fusermount3 must be found), the fds announced.
func helperEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, helperFDsEnv+"=") {
			env = append(env, kv)
		}
	}
	if os.Getenv("PATH") == "" {
		env = append(env, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	return append(append(env, extra...), helperFDsEnv+"=3,4")
}

// logSink is where the agent logs once detached: log=FILE, else the
// journal when mount(8) runs under systemd with stderr on a journal
// stream, else nowhere.
func logSink(path string) (*os.File, error) {
	if path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("cannot open log file: %w", err)
		}
		return f, nil
	}
	if stderrIsJournal() {
		return dupFile(os.Stderr)
	}
	return os.OpenFile(os.DevNull, os.O_WRONLY, 0)
}

// stderrIsJournal follows systemd's rule: $JOURNAL_STREAM holds the
// device and inode of the journal stream stderr must still be.
func stderrIsJournal() bool {
	want := os.Getenv("JOURNAL_STREAM")
	var st unix.Stat_t
	if want == "" || unix.Fstat(2, &st) != nil {
		return false
	}
	return want == fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// collect reads the agent's output until it detaches or exits: log lines go
// to the sink, report lines ("midfs: ...") are kept for the user.
func (p *helperParent) collect(r io.ReadCloser, sink *os.File) {
	defer r.Close()
	if sink != nil {
		defer sink.Close()
	}
	var report []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "midfs: ") {
			report = append(report, line) // wait prints it to mount(8)'s stderr
		} else if sink != nil {
			fmt.Fprintln(sink, line)
		}
	}
	p.output <- report
}

// wait returns the helper's exit code: 0 once the agent is ready (it says
// so only after a process of its own has listed and read the tree, see
// service.mounted); else the agent's code, with its error on stderr.
func (p *helperParent) wait() int {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	go func() {
		for range sigs { // mount(8) interrupted: the agent must not outlive it half-started
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
		}
	}()
	line, _ := bufio.NewReader(p.ready).ReadString('\n')
	p.ready.Close()
	if strings.TrimSpace(line) == "ready" {
		select { // the agent moved its output away before it wrote "ready"
		case <-p.output:
		case <-time.After(5 * time.Second):
		}
		_ = p.cmd.Process.Release()
		return exitOK
	}
	report := <-p.output
	err := p.cmd.Wait()
	for _, l := range report {
		fmt.Fprintln(os.Stderr, l)
	}
	code := p.cmd.ProcessState.ExitCode()
	if code <= 0 {
		if len(report) == 0 {
			fmt.Fprintf(os.Stderr, "midfs: the agent stopped (%v) before %s was mounted\n", err, p.mountpoint)
		}
		return exitFailure
	}
	return code
}

// helperChild is the agent's side of the helper's pipe.
type helperChild struct {
	ready *os.File
	log   int
}

// helperChildFromEnv picks up the fds the helper passed, if it did. They
// are made close-on-exec so the mount probe does not hold them open.
func helperChildFromEnv() *helperChild {
	v := os.Getenv(helperFDsEnv)
	if v == "" {
		return nil
	}
	os.Unsetenv(helperFDsEnv)
	r, l, ok := strings.Cut(v, ",")
	rfd, err1 := strconv.Atoi(r)
	lfd, err2 := strconv.Atoi(l)
	if !ok || err1 != nil || err2 != nil {
		return nil
	}
	unix.CloseOnExec(rfd)
	unix.CloseOnExec(lfd)
	return &helperChild{ready: os.NewFile(uintptr(rfd), "helper-ready"), log: lfd}
}

// signalReady detaches the agent's stdout and stderr from the helper, then
// lets it exit.
func (h *helperChild) signalReady() {
	_ = unix.Dup3(h.log, 1, 0)
	_ = unix.Dup3(h.log, 2, 0)
	_ = unix.Close(h.log)
	fmt.Fprintln(h.ready, "ready")
	h.ready.Close()
}

// probeMount checks, from a process that is not the daemon, that dir is a
// FUSE mount serving the whole tree and that a file reads.
func probeMount(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.FUSE_SUPER_MAGIC {
		return fmt.Errorf("%s is not a FUSE mount", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, e := range entries {
		have[e.Name()] = true
	}
	for _, f := range identity.Files {
		if !have[f.Name] {
			return fmt.Errorf("%s lacks %s", dir, f.Name)
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, identity.FileSSHPub))
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return fmt.Errorf("%s is empty", filepath.Join(dir, identity.FileSSHPub))
	}
	return nil
}

func runProbeMain(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: "+probeArgv0+" MOUNTPOINT")
		return exitUsage
	}
	if err := probeMount(args[0]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitFailure
	}
	return exitOK
}

// runProbe runs probeMount in a child process of exe.
func runProbe(ctx context.Context, exe, dir string) error {
	cmd := exec.CommandContext(ctx, exe, dir)
	cmd.Args[0] = probeArgv0
	cmd.Dir = "/"
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		if msg := strings.TrimSpace(string(out)); msg != "" {
			return errors.New(msg)
		}
		return err
	}
	return nil
}
