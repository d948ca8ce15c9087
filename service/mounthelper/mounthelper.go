// Package mounthelper is the mount(8) helper of midfs and its mount probe.
// The helper turns `mount.fuse.midfs SOURCE MOUNTPOINT -o OPTIONS` into a
// detached `midfs mount` and returns once the tree is readable; the probe
// checks, from a process that is not the agent, that a tree is served.
// It imports the standard library and x/sys only: what the options may
// name and what a tree holds are given by its caller, cmd/midfs, the only
// importer; the service package uses its agent side (Child, Probe).
package mounthelper

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

	"golang.org/x/sys/unix"
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

// Request is a parsed mount(8) helper command line.
type Request struct {
	Source, Mountpoint string
	Flags              []string // for `midfs mount`
	Env                []string // flags that must not show in ps (the token)
	LogPath            string
	Fake, Sloppy       bool
}

// FlagLookup finds the `midfs mount` flag a name (with dashes) names: its
// canonical name and whether it is a boolean; ok is false for none.
type FlagLookup func(name string) (canonical string, isBool, ok bool)

// UsageError is a helper command line that cannot be honoured (exit 3).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// AgentError is the agent's own failure: its report is on stderr already,
// and Code is its exit status (not above 0 when a signal ended it).
type AgentError struct{ Code int }

func (e *AgentError) Error() string { return fmt.Sprintf("the agent exited with status %d", e.Code) }

// Run is the helper: args are mount(8)'s, after argv[0]. It returns nil
// once the agent is ready, or at once for -f (fake).
func Run(args []string, lookup FlagLookup) error {
	req, err := ParseArgs(args, lookup)
	if err != nil {
		return &UsageError{err}
	}
	if req.Fake {
		return nil
	}
	return req.run()
}

const helperUsage = "usage: mount.fuse.midfs CONFIG_FILE MOUNTPOINT [-o OPTIONS]"

// ParseArgs parses the helper's command line; options become flags of
// `midfs mount` as lookup finds them.
func ParseArgs(args []string, lookup FlagLookup) (*Request, error) {
	req := &Request{}
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
					req.Fake = true
				case 's':
					req.Sloppy = true
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
	req.Source, req.Mountpoint = pos[0], pos[1]
	for _, o := range opts {
		for _, opt := range strings.Split(o, ",") {
			if err := req.addOption(opt, lookup); err != nil {
				if !req.Sloppy {
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
func (req *Request) addOption(opt string, lookup FlagLookup) error {
	key, val, hasVal := strings.Cut(opt, "=")
	switch {
	case key == "" || (ignoredMountOptions[key] && !hasVal):
		return nil
	case strings.HasPrefix(key, "x-") || key == "comment":
		return nil // userspace-only options (x-systemd.*)
	case key == "log" && hasVal:
		req.LogPath = val
		return nil
	case key == "config":
		return fmt.Errorf("mount option config= is not accepted: the config file is the first column of the fstab line")
	}
	name, isBool, ok := lookup(strings.ReplaceAll(key, "_", "-"))
	if !ok || key == "help" || strings.Contains(key, "-") {
		return fmt.Errorf("unknown mount option %q: options are `midfs mount` flags with underscores (owner=, reader=, auth_server=, ...), log=FILE, or mount(8)'s generic ones", key)
	}
	if isBool {
		if hasVal {
			req.Flags = append(req.Flags, "--"+name+"="+val)
		} else {
			req.Flags = append(req.Flags, "--"+name)
		}
		return nil
	}
	if !hasVal || val == "" {
		return fmt.Errorf("mount option %s needs a value (%s=...)", key, key)
	}
	if name == "token" {
		// The agent runs for days: its argv is readable by every user,
		// its environment only by root and itself.
		req.Env = append(req.Env, "MIDFS_TOKEN="+val)
		return nil
	}
	req.Flags = append(req.Flags, "--"+name+"="+val)
	return nil
}

// run starts the agent and waits until it is ready or has failed.
func (req *Request) run() error {
	child, err := req.startAgent()
	if err != nil {
		return err
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

func (req *Request) startAgent() (*helperParent, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("cannot find the midfs binary: %w", err)
	}
	mnt, err := filepath.Abs(req.Mountpoint)
	if err != nil {
		return nil, err
	}
	argv := []string{"midfs", "mount", mnt}
	if req.Source != "none" && req.Source != "midfs" {
		src, err := filepath.Abs(req.Source)
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
	argv = append(argv, req.Flags...)
	sink, err := logSink(req.LogPath)
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
		Env:         helperEnv(req.Env),
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

// wait returns nil once the agent is ready (it says so only after a
// process of its own has listed and read the tree, see service.Mounted);
// else the agent's failure, with its error on stderr.
func (p *helperParent) wait() error {
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
		return nil
	}
	report := <-p.output
	err := p.cmd.Wait()
	for _, l := range report {
		fmt.Fprintln(os.Stderr, l)
	}
	code := p.cmd.ProcessState.ExitCode()
	if code <= 0 && len(report) == 0 {
		return fmt.Errorf("the agent stopped (%v) before %s was mounted", err, p.mountpoint)
	}
	return &AgentError{Code: code}
}

// Child is the agent's side of the helper's pipe.
type Child struct {
	ready *os.File
	log   int
}

// ChildFromEnv picks up the fds the helper passed, if it did; nil when it
// did not. They are made close-on-exec so the mount probe does not hold
// them open.
func ChildFromEnv() *Child {
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
	return &Child{ready: os.NewFile(uintptr(rfd), "helper-ready"), log: lfd}
}

// SignalReady detaches the agent's stdout and stderr from the helper, then
// lets it exit.
func (h *Child) SignalReady() {
	_ = unix.Dup3(h.log, 1, 0)
	_ = unix.Dup3(h.log, 2, 0)
	_ = unix.Close(h.log)
	fmt.Fprintln(h.ready, "ready")
	h.ready.Close()
}

// ProbeArgv0 is the argv[0] the mount probe runs under: the same binary,
// recognised by it, so no command of the CLI is spent on it.
const ProbeArgv0 = "midfs-probe-mount"

// Tree is what a served tree holds: the names its root lists, and a file
// that must read non-empty.
type Tree struct {
	Files    []string
	NonEmpty string
}

// CheckTree checks, from a process that is not the daemon, that dir is a
// FUSE mount serving the whole tree and that a file reads.
func CheckTree(dir string, tree Tree) error {
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
	for _, name := range tree.Files {
		if !have[name] {
			return fmt.Errorf("%s lacks %s", dir, name)
		}
	}
	data, err := os.ReadFile(filepath.Join(dir, tree.NonEmpty))
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return fmt.Errorf("%s is empty", filepath.Join(dir, tree.NonEmpty))
	}
	return nil
}

// Probe runs the probe in a child process of exe (whose main calls
// CheckTree when its argv[0] is ProbeArgv0).
func Probe(ctx context.Context, exe, dir string) error {
	cmd := exec.CommandContext(ctx, exe, dir)
	cmd.Args[0] = ProbeArgv0
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
