package e2e

// A reading load for tests where the agent restarts, upgrades or dies under
// its readers: this test binary, re-executed (on the host, or inside a
// container), reads every file of a mount in a loop until its standard
// input closes, and then prints what it saw as one JSON line.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loadEnv makes the test binary a load process on the directory it names.
const loadEnv = "MIDFS_E2E_LOAD"

func init() {
	if dir := os.Getenv(loadEnv); dir != "" {
		os.Exit(loadMain(dir))
	}
}

// loadReport is what a load process saw.
type loadReport struct {
	Ops         int64    // opens and reads that succeeded
	Errors      int64    // opens or reads that failed
	FirstErrors []string // the first few
	Pairs       int64    // key and key-cert.pub read by one short process
	Torn        int64    // ... of which the certificate was for another key
	HeldChanged int64    // rereads of a held handle that gave other bytes
	HeldTorn    int64    // held key and certificate that do not belong together
	Absent      int64    // polls of the mount table that did not list the mount
	Polls       int64
	MaxPauseMs  float64 // the longest single open+read+close or reread
}

// loadMain runs four loops: fresh opens of every file, pairs read by short
// processes (cat key key-cert.pub, as ssh reads them), rereads of handles
// held from the start, and polls of the mount table.
func loadMain(dir string) int {
	names, err := os.ReadDir(dir)
	if err != nil || len(names) == 0 {
		fmt.Printf(`{"Errors":1,"FirstErrors":["listing %s: %v"]}`+"\n", dir, err)
		return 1
	}
	var rep loadReport
	var mu sync.Mutex
	var maxPause atomic.Int64
	fail := func(what string, err error) {
		atomic.AddInt64(&rep.Errors, 1)
		mu.Lock()
		if len(rep.FirstErrors) < 5 {
			rep.FirstErrors = append(rep.FirstErrors, fmt.Sprintf("%s %s: %v", time.Now().Format("15:04:05.000"), what, err))
		}
		mu.Unlock()
	}
	timed := func(op func() error) error {
		t0 := time.Now()
		err := op()
		if d := int64(time.Since(t0)); err == nil {
			for old := maxPause.Load(); d > old && !maxPause.CompareAndSwap(old, d); old = maxPause.Load() {
			}
			atomic.AddInt64(&rep.Ops, 1)
		}
		return err
	}

	held := map[string]*os.File{}
	first := map[string][]byte{}
	for _, e := range names {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			fail("open "+e.Name(), err)
			continue
		}
		defer f.Close()
		held[e.Name()] = f
		first[e.Name()], _ = readAt0(f)
	}
	if !pairMatches(first["key"], first["key-cert.pub"]) {
		atomic.AddInt64(&rep.HeldTorn, 1)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	// Each loop rests a moment between rounds: a reader that never
	// yields would starve the agent and the ssh logins of a 2-core
	// machine, and measure that instead of the agent's pauses.
	loop := func(body func()) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				body()
			}
		}()
	}
	loop(func() { // fresh opens
		for _, e := range names {
			p := filepath.Join(dir, e.Name())
			if err := timed(func() error { _, err := os.ReadFile(p); return err }); err != nil {
				fail("read "+e.Name(), err)
			}
		}
	})
	loop(func() { // rereads of held handles
		for name, f := range held {
			var b []byte
			if err := timed(func() (err error) { b, err = readAt0(f); return err }); err != nil {
				fail("reread "+name, err)
			} else if !bytes.Equal(b, first[name]) {
				atomic.AddInt64(&rep.HeldChanged, 1)
			}
		}
	})
	loop(func() { // pairs, by short processes
		out, err := exec.Command("cat", filepath.Join(dir, "key"), filepath.Join(dir, "key-cert.pub")).Output()
		if err != nil {
			fail("cat key key-cert.pub", err)
			return
		}
		i := bytes.Index(out, []byte("-----END"))
		j := -1
		if i >= 0 {
			j = bytes.IndexByte(out[i:], '\n')
		}
		atomic.AddInt64(&rep.Pairs, 1)
		if j < 0 || !pairMatches(out[:i+j+1], out[i+j+1:]) {
			atomic.AddInt64(&rep.Torn, 1)
		}
	})
	loop(func() { // the mount table
		atomic.AddInt64(&rep.Polls, 1)
		if !listedAsMidfs(dir) {
			atomic.AddInt64(&rep.Absent, 1)
		}
	})

	io.Copy(io.Discard, os.Stdin)
	close(stop)
	wg.Wait()
	rep.MaxPauseMs = float64(maxPause.Load()) / float64(time.Millisecond)
	b, _ := json.Marshal(rep)
	fmt.Println(string(b))
	return 0
}

func readAt0(f *os.File) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Pread(int(f.Fd()), buf, int64(len(out)))
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
	}
}

// listedAsMidfs says whether this process's mount table lists dir as a
// midfs mount.
func listedAsMidfs(dir string) bool {
	for _, m := range midfsMounts() {
		if m == dir {
			return true
		}
	}
	return false
}

// load is a running load process, as the test sees it.
type load struct {
	t    *testing.T
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	errs bytes.Buffer
}

// startLoad starts a load process on dir with cmd (this binary, on the
// host or inside a container).
func startLoad(t *testing.T, cmd *exec.Cmd, dir string) *load {
	t.Helper()
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, loadEnv+"="+dir)
	l := &load{t: t, cmd: cmd}
	cmd.Stderr = &l.errs
	var err error
	if l.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	l.out = bufio.NewReader(stdout)
	// Run through nsenter, the load is nsenter's child, which may outlive
	// a killed nsenter and hold its output open: do not wait for that.
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l.cmd.ProcessState == nil {
			l.in.Close() // the load stops at the end of its input
			l.cmd.Process.Signal(syscall.SIGKILL)
			l.cmd.Wait()
		}
	})
	return l
}

// finish stops the load and returns its report.
func (l *load) finish() loadReport {
	l.t.Helper()
	l.in.Close()
	line, err := l.out.ReadString('\n')
	l.cmd.Wait()
	var rep loadReport
	if err != nil || json.Unmarshal([]byte(line), &rep) != nil {
		l.t.Fatalf("the load process reported %q (%v); stderr:\n%s", line, err, l.errs.String())
	}
	return rep
}

// check fails the test for anything a reader would have noticed.
func (rep loadReport) check(t *testing.T, who string) {
	t.Helper()
	t.Logf("%s: %d reads, %d pairs, %d mount-table polls; longest pause %.1f ms", who, rep.Ops, rep.Pairs, rep.Polls, rep.MaxPauseMs)
	if rep.Errors != 0 || rep.Torn != 0 || rep.HeldChanged != 0 || rep.HeldTorn != 0 || rep.Absent != 0 {
		t.Errorf("%s saw %d read errors %s, %d torn pairs, %d held handles changing, %d held pairs torn, the mount absent %d times",
			who, rep.Errors, strings.Join(rep.FirstErrors, "; "), rep.Torn, rep.HeldChanged, rep.HeldTorn, rep.Absent)
	}
	if rep.Ops == 0 || rep.Pairs == 0 || rep.Polls == 0 {
		t.Errorf("%s did not read: %+v", who, rep)
	}
}

// loginLoop is a loop of ssh logins through the mount, each by login.
type loginLoop struct {
	stop     chan struct{}
	done     chan struct{}
	ok, bad  atomic.Int64
	started  atomic.Int64
	firstBad atomic.Value
	longest  atomic.Int64 // ns
}

// waitStartedBefore waits until every login that started before the call
// has ended: one in flight may hold credentials read before a change the
// test just saw (a renewal), and a CA's standby would refuse it, as it
// refuses every client that still presents a certificate of the CA it
// drops. An operator waits out the grace period for the same reason.
func (l *loginLoop) waitStartedBefore(t *testing.T, what string) {
	t.Helper()
	n := l.started.Load()
	waitFor(t, what, time.Minute, func() bool { return l.ok.Load()+l.bad.Load() >= n })
}

// startLoginLoop runs login (one ssh login; an error is a failed login) in a
// loop until finish, or the end of the test.
func startLoginLoop(t *testing.T, login func() (string, error)) *loginLoop {
	l := &loginLoop{stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(l.halt)
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			l.started.Add(1)
			t0 := time.Now()
			out, err := login()
			if d := int64(time.Since(t0)); d > l.longest.Load() {
				l.longest.Store(d)
			}
			if err != nil {
				l.bad.Add(1)
				l.firstBad.CompareAndSwap(nil, fmt.Sprintf("%v: %s", err, out))
			} else {
				l.ok.Add(1)
			}
		}
	}()
	return l
}

func (l *loginLoop) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

func (l *loginLoop) finish(t *testing.T, how string) {
	t.Helper()
	l.halt()
	t.Logf("%d ssh logins %s, %d failed, the longest took %v", l.ok.Load()+l.bad.Load(), how, l.bad.Load(), time.Duration(l.longest.Load()).Round(time.Millisecond))
	if l.bad.Load() != 0 || l.ok.Load() == 0 {
		t.Errorf("%d of %d ssh logins %s failed; first: %v", l.bad.Load(), l.ok.Load()+l.bad.Load(), how, l.firstBad.Load())
	}
}

// gaps are the times from each line of the agents' JSON log whose msg is
// from to the next whose msg is to: how long no agent answered.
func gaps(log, from, to string) []time.Duration {
	var out []time.Duration
	var start time.Time
	for _, line := range strings.Split(log, "\n") {
		var l struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &l) != nil {
			continue
		}
		switch {
		case l.Msg == from:
			start = l.Time
		case l.Msg == to && !start.IsZero():
			out = append(out, l.Time.Sub(start))
			start = time.Time{}
		}
	}
	return out
}

// spread is "min/median/max" of ds, for a test's log.
func spread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none"
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	r := func(d time.Duration) string { return d.Round(100 * time.Microsecond).String() }
	return r(s[0]) + "/" + r(s[len(s)/2]) + "/" + r(s[len(s)-1])
}
