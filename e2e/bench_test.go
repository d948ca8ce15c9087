package e2e

// Benchmarks of the whole agent as a user meets it: the real binary, a real
// authority on loopback, real FUSE, a real sshd and ssh client. Each reports
// its own figures with b.ReportMetric (the built-in ns/op is suppressed: an
// iteration here is a whole mount or a batch of logins, not one operation),
// and nothing asserts on time.
//
//	BenchmarkMountToFirstRead  ms from starting `midfs mount` to the first read of key by another process
//	BenchmarkAgentRSS          agent VmRSS idle after mount and after a burst of opens
//	BenchmarkSSHLogin          ssh login with the files on the mount vs copied to tmpfs, interleaved
//	BenchmarkSSHLoginAgent     ssh login signing through the --ssh-agent socket vs with the key file, interleaved
//
// The per-open costs (open+read+close, stat, readdir vs tmpfs) are fs/bench_test.go's.
//
//	make bench   or   MIDFS_BIN=$PWD/bin/midfs go test -run '^$' -bench . -benchtime 2s ./e2e/

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/internal/testenv"
)

// benchHelperEnv makes the test binary, re-executed, act as a reader
// process (see benchHelper) instead of running tests.
const benchHelperEnv = "MIDFS_BENCH_HELPER"

func init() {
	if os.Getenv(benchHelperEnv) == "1" {
		os.Exit(benchHelper(os.Args[1:]))
	}
}

// benchHelper is a reader in a process of its own, so that what it
// measures is what any other program on the machine would see:
//
//	first PATH                  poll PATH until it opens and reads a private key; print CLOCK_MONOTONIC ns
//	burst N PATH...             N rounds of open+read to EOF+close of each PATH
func benchHelper(args []string) int {
	if len(args) >= 2 && args[0] == "first" {
		return firstRead(args[1])
	}
	if len(args) >= 3 && args[0] == "burst" {
		n, err := strconv.Atoi(args[1])
		if err == nil {
			err = burst(n, args[2:])
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(os.Stderr, "bench helper: bad arguments %q\n", args)
	return 2
}

// firstRead polls every 200 µs: before the mount, open fails with ENOENT
// at the cost of a path walk, so the poll does not slow the agent down.
func firstRead(path string) int {
	buf := make([]byte, 64<<10)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err == nil {
			n, rerr := unix.Read(fd, buf)
			unix.Close(fd)
			if rerr == nil && bytes.Contains(buf[:max(n, 0)], []byte("PRIVATE KEY")) {
				fmt.Println(monotonicNow())
				return 0
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	fmt.Fprintf(os.Stderr, "no private key readable at %s after 60s\n", path)
	return 1
}

func burst(n int, paths []string) error {
	buf := make([]byte, 64<<10)
	for range n {
		for _, p := range paths {
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			for {
				m, err := unix.Read(fd, buf)
				if err != nil {
					unix.Close(fd)
					return fmt.Errorf("read %s: %w", p, err)
				}
				if m == 0 {
					break
				}
			}
			unix.Close(fd)
		}
	}
	return nil
}

// monotonicNow is CLOCK_MONOTONIC in ns, comparable across processes.
func monotonicNow() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// helperCmd is the test binary re-executed as a reader.
func helperCmd(b *testing.B, args ...string) *exec.Cmd {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), benchHelperEnv+"=1")
	return cmd
}

// benchMount starts `midfs mount` for a fresh bot with the flags a user
// would give (info-level logs, JSON so the benchmark can read the times),
// without waiting. The caller stops it.
func benchMount(b *testing.B, a *authority, dir, bot string, extra ...string) *agent {
	b.Helper()
	args := append([]string{"mount", dir, "--log-format=json", "--storage=memory"},
		a.mountArgs(a.addBot(bot, "access", "root"))...)
	args = append(args, extra...)
	ag := &agent{t: b, dir: dir, logs: &testenv.LogBuffer{}, done: make(chan struct{})}
	ag.cmd = exec.Command(midfsBin, args...)
	ag.cmd.Stdout, ag.cmd.Stderr = ag.logs, ag.logs
	if err := ag.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() { ag.err = ag.cmd.Wait(); close(ag.done) }()
	b.Cleanup(ag.stop)
	return ag
}

// waitServed waits until another process can open key.pub.
func waitServed(b *testing.B, ag *agent) {
	b.Helper()
	waitFor(b, "the mount at "+ag.dir, 60*time.Second, func() bool {
		select {
		case <-ag.done:
			b.Fatalf("midfs mount exited before mounting (%v):\n%s", ag.err, ag.logs)
		default:
		}
		return mounted(ag.dir) && exec.Command("test", "-r", ag.file("key.pub")).Run() == nil
	})
}

// newMountDir makes an empty, world-traversable mountpoint under base.
func newMountDir(b *testing.B, base string, i int) string {
	b.Helper()
	dir := filepath.Join(base, "mnt"+strconv.Itoa(i))
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	return dir
}

// logTime is when the agent first logged msg, from its JSON log.
func logTime(logs, msg string) (time.Time, bool) {
	if ts := logTimes(logs, msg); len(ts) > 0 {
		return ts[0], true
	}
	return time.Time{}, false
}

// logTimes are the times of every line of the JSON log that says msg.
func logTimes(logs, msg string) []time.Time {
	var out []time.Time
	for _, line := range strings.Split(logs, "\n") {
		var rec struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == msg {
			out = append(out, rec.Time)
		}
	}
	return out
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	return sum / float64(len(v))
}

// BenchmarkMountToFirstRead times, per iteration, a fresh bot's `midfs
// mount` from the moment the process starts to the first successful read
// of key by another process, which polls for it meanwhile. Reported:
//
//	ms/mount, p50-ms/mount  start to first read of key (mean, median)
//	join-ms, mounted-ms     start to the agent's "joined the authority" and
//	                        "credential filesystem mounted" log lines (medians)
//	exec-ms                 start to exit of `midfs --version`: what starting
//	                        the binary costs at all (median)
//	x-exec                  p50 mount / p50 exec
func BenchmarkMountToFirstRead(b *testing.B) {
	a := startAuthority(b)
	base := publicDir(b)
	var total, joined, served, execs []float64
	i := 0
	for b.Loop() {
		b.StopTimer()
		i++
		dir := newMountDir(b, base, i)
		key := filepath.Join(dir, "key")
		reader := helperCmd(b, "first", key)
		var out bytes.Buffer
		reader.Stdout, reader.Stderr = &out, &out
		if err := reader.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { reader.Process.Kill() }) // if the benchmark fails before the reader is done
		// The reader is polling; a bot and its token are ready; go.
		tok := a.addBot(fmt.Sprintf("mount%d", i), "access", "root")
		args := append([]string{"mount", dir, "--log-format=json", "--storage=memory"}, a.mountArgs(tok)...)
		ag := &agent{t: b, dir: dir, logs: &testenv.LogBuffer{}, done: make(chan struct{})}
		ag.cmd = exec.Command(midfsBin, args...)
		ag.cmd.Stdout, ag.cmd.Stderr = ag.logs, ag.logs
		b.StartTimer()
		wall, start := time.Now(), monotonicNow()
		if err := ag.cmd.Start(); err != nil {
			b.Fatal(err)
		}
		go func() { ag.err = ag.cmd.Wait(); close(ag.done) }()
		b.Cleanup(ag.stop)
		werr := reader.Wait()
		b.StopTimer()
		if werr != nil {
			ag.stop()
			b.Fatalf("reader never read %s: %v\n%s\nagent:\n%s", key, werr, out.String(), ag.logs)
		}
		end, err := strconv.ParseInt(strings.TrimSpace(out.String()), 10, 64)
		if err != nil {
			b.Fatalf("reader printed %q", out.String())
		}
		total = append(total, ms(time.Duration(end-start)))
		ag.stop()
		if t, ok := logTime(ag.logs.String(), "joined the authority"); ok {
			joined = append(joined, ms(t.Sub(wall)))
		}
		if t, ok := logTime(ag.logs.String(), "credential filesystem mounted"); ok {
			served = append(served, ms(t.Sub(wall)))
		}
		os.Remove(dir)

		// The same binary started and exited, for scale.
		t0 := time.Now()
		if err := exec.Command(midfsBin, "--version").Run(); err != nil {
			b.Fatal(err)
		}
		execs = append(execs, ms(time.Since(t0)))
		b.StartTimer()
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mean(total), "ms/mount")
	b.ReportMetric(median(total), "p50-ms/mount")
	b.ReportMetric(median(joined), "join-ms")
	b.ReportMetric(median(served), "mounted-ms")
	b.ReportMetric(median(execs), "exec-ms")
	b.ReportMetric(median(total)/median(execs), "x-exec")
}

// procMB reads "Field: N kB" lines of /proc/PID/FILE (status,
// smaps_rollup) in MB.
func procMB(pid int, file string, fields ...string) (map[string]float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, file))
	if err != nil {
		return nil, err
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || !slices.Contains(fields, k) {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 2 && f[1] == "kB" {
			n, _ := strconv.ParseFloat(f[0], 64)
			out[k] = n / 1024
		}
	}
	for _, k := range fields {
		if _, ok := out[k]; !ok {
			return nil, fmt.Errorf("/proc/%d/%s has no %s", pid, file, k)
		}
	}
	return out, nil
}

// Reader processes and rounds per process of the RSS burst: each round
// opens, reads and closes key and key-cert.pub, so 2 x 10000 x 2 = 40000
// opens in all.
const (
	burstReaders = 2
	burstRounds  = 10000
	idleSettle   = 3 * time.Second
)

// BenchmarkAgentRSS mounts a fresh bot per iteration with default flags
// (but --storage=memory), and reads the agent's /proc/PID/status:
//
//	idle-MB             VmRSS 3 s after the tree is first readable
//	idle-anon-MB        its RssAnon (heap, stacks: the agent's own memory)
//	idle-file-MB        its RssFile (pages of the midfs binary and libc: clean, reclaimable unless locked)
//	idle-locked-MB      resident and locked (smaps_rollup Locked): as root, mlockall pins what is touched
//	burst-MB            VmRSS right after 2 reader processes did 10000 rounds each of
//	                    open+read+close of key and key-cert.pub (40000 opens)
//	x-idle              burst-MB / idle-MB
//	burst-us/open       wall time of the burst per open, both readers together
func BenchmarkAgentRSS(b *testing.B) {
	a := startAuthority(b)
	base := publicDir(b)
	var idle, anon, file, locked, after, perOpen []float64
	i := 0
	for b.Loop() {
		i++
		dir := newMountDir(b, base, i)
		ag := benchMount(b, a, dir, fmt.Sprintf("rss%d", i))
		waitServed(b, ag)
		time.Sleep(idleSettle)
		pid := ag.cmd.Process.Pid
		st, err := procMB(pid, "status", "VmRSS", "RssAnon", "RssFile")
		if err != nil {
			b.Fatal(err)
		}
		lk, err := procMB(pid, "smaps_rollup", "Locked")
		if err != nil {
			b.Fatal(err)
		}
		idle, anon, file = append(idle, st["VmRSS"]), append(anon, st["RssAnon"]), append(file, st["RssFile"])
		locked = append(locked, lk["Locked"])

		readers := make([]*exec.Cmd, burstReaders)
		outs := make([]bytes.Buffer, burstReaders)
		t0 := time.Now()
		for r := range readers {
			readers[r] = helperCmd(b, "burst", strconv.Itoa(burstRounds), ag.file("key"), ag.file("key-cert.pub"))
			readers[r].Stdout, readers[r].Stderr = &outs[r], &outs[r]
			if err := readers[r].Start(); err != nil {
				b.Fatal(err)
			}
		}
		for r, cmd := range readers {
			if err := cmd.Wait(); err != nil {
				b.Fatalf("burst reader %d: %v\n%s", r, err, outs[r].String())
			}
		}
		perOpen = append(perOpen, float64(time.Since(t0).Microseconds())/float64(burstReaders*burstRounds*2))
		st, err = procMB(pid, "status", "VmRSS")
		if err != nil {
			b.Fatal(err)
		}
		after = append(after, st["VmRSS"])
		ag.stop()
		os.Remove(dir)
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mean(idle), "idle-MB")
	b.ReportMetric(mean(anon), "idle-anon-MB")
	b.ReportMetric(mean(file), "idle-file-MB")
	b.ReportMetric(mean(locked), "idle-locked-MB")
	b.ReportMetric(mean(after), "burst-MB")
	b.ReportMetric(mean(after)/mean(idle), "x-idle")
	b.ReportMetric(mean(perOpen), "burst-us/open")
}

// loginPairs is how many interleaved pairs of logins one iteration makes:
// enough for steady medians even when one iteration fills -benchtime.
const loginPairs = 15

// BenchmarkSSHLogin logs in to a real sshd with `ssh -F DIR/ssh_config
// root@node-name.CLUSTER true`, strict host key checking on, where DIR is
// the mount, or a tmpfs directory (/dev/shm) holding copies of the same
// files with an ssh_config that points there. The two alternate, in turns
// that swap which goes first, so machine noise hits both alike.
//
//	ms/login        median login with the files on the mount
//	tmpfs-ms/login  median login with the files on tmpfs
//	x-tmpfs         the ratio of the two medians (goal: indistinguishable, ~1.0)
//	diff-ms         median of the paired differences, mount minus tmpfs
func BenchmarkSSHLogin(b *testing.B) {
	a := startAuthority(b)
	s := startSSHD(b, a, "node-name."+cluster, "node-name")
	a.admin("nodes", "add", "node-name", "--addr="+s.addr(), "--labels=arch=x86_64")
	dir := newMountDir(b, publicDir(b), 0)
	ag := benchMount(b, a, dir, "ssh")
	waitServed(b, ag)
	tmp := copyToTmpfs(b, ag)
	target := "root@node-name." + cluster

	login := func(d string) float64 {
		t0 := time.Now()
		out, err := sshRun(b, d, target, "true")
		el := time.Since(t0)
		if err != nil {
			b.Fatalf("ssh -F %s/ssh_config %s true: %v\n%s\nsshd:\n%s", d, target, err, out, tail(s.logs.String(), 10))
		}
		return ms(el)
	}
	login(dir) // warm both: the first connection pays for sshd's and ssh's page cache
	login(tmp)

	var onMount, onTmpfs []float64
	turn := 0
	for b.Loop() {
		for range loginPairs {
			turn++
			if turn%2 == 0 {
				onMount = append(onMount, login(dir))
				onTmpfs = append(onTmpfs, login(tmp))
			} else {
				onTmpfs = append(onTmpfs, login(tmp))
				onMount = append(onMount, login(dir))
			}
		}
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(onMount), "ms/login")
	b.ReportMetric(median(onTmpfs), "tmpfs-ms/login")
	b.ReportMetric(median(onMount)/median(onTmpfs), "x-tmpfs")
	diffs := make([]float64, len(onMount))
	for i := range onMount {
		diffs[i] = onMount[i] - onTmpfs[i]
	}
	b.ReportMetric(median(diffs), "diff-ms")
}

// BenchmarkSSHLoginAgent logs in as BenchmarkSSHLogin does, with two
// mounts of two bots: one signs through its --ssh-agent socket with the key
// files hidden (--key-files=false), the other with the key file (ssh run
// with IdentityAgent=none). The two alternate, in turns that swap which
// goes first.
//
//	ms/login          median login through the agent
//	keyfile-ms/login  median login with the key file
//	x-keyfile         the ratio of the two medians (goal: indistinguishable, ~1.0)
//	diff-ms           median of the paired differences, agent minus key file
func BenchmarkSSHLoginAgent(b *testing.B) {
	a := startAuthority(b)
	s := startSSHD(b, a, "node-name."+cluster, "node-name")
	a.admin("nodes", "add", "node-name", "--addr="+s.addr(), "--labels=arch=x86_64")
	base := publicDir(b)
	withFile := benchMount(b, a, newMountDir(b, base, 0), "keyfile")
	withAgent := benchMount(b, a, newMountDir(b, base, 1), "agent",
		"--ssh-agent="+filepath.Join(base, "robot.agent"), "--key-files=false")
	waitServed(b, withFile)
	waitServed(b, withAgent)
	target := "root@node-name." + cluster

	login := func(ag *agent) float64 {
		opts := sshOptions(ag.dir)
		if ag == withFile {
			opts = append(opts, "-o", "IdentityAgent=none")
		}
		t0 := time.Now()
		out, err := sshWith(b, opts, target, "true")
		el := time.Since(t0)
		if err != nil {
			b.Fatalf("ssh -F %s/ssh_config %s true: %v\n%s\nsshd:\n%s", ag.dir, target, err, out, tail(s.logs.String(), 10))
		}
		return ms(el)
	}
	login(withAgent) // warm both
	login(withFile)

	var viaAgent, viaFile []float64
	turn := 0
	for b.Loop() {
		for range loginPairs {
			turn++
			if turn%2 == 0 {
				viaAgent = append(viaAgent, login(withAgent))
				viaFile = append(viaFile, login(withFile))
			} else {
				viaFile = append(viaFile, login(withFile))
				viaAgent = append(viaAgent, login(withAgent))
			}
		}
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(viaAgent), "ms/login")
	b.ReportMetric(median(viaFile), "keyfile-ms/login")
	b.ReportMetric(median(viaAgent)/median(viaFile), "x-keyfile")
	diffs := make([]float64, len(viaAgent))
	for i := range viaAgent {
		diffs[i] = viaAgent[i] - viaFile[i]
	}
	b.ReportMetric(median(diffs), "diff-ms")
}

// copyToTmpfs copies the served files to a new directory on /dev/shm,
// modes kept (ssh refuses a key others can read), with ssh_config and its
// paths rewritten to the copy.
func copyToTmpfs(b *testing.B, ag *agent) string {
	b.Helper()
	tmp, err := os.MkdirTemp("/dev/shm", "midfs-bench-ssh-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(tmp) })
	for _, name := range servedFiles {
		data := ag.read(name)
		if name == "ssh_config" {
			data = bytes.ReplaceAll(data, []byte(ag.dir+"/"), []byte(tmp+"/"))
		}
		fi, err := os.Stat(ag.file(name))
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(tmp, name), data, fi.Mode().Perm()); err != nil {
			b.Fatal(err)
		}
	}
	if cfg, _ := os.ReadFile(filepath.Join(tmp, "ssh_config")); bytes.Contains(cfg, []byte(ag.dir+"/")) || !bytes.Contains(cfg, []byte(tmp)) {
		b.Fatalf("ssh_config copy still points at the mount:\n%s", cfg)
	}
	return tmp
}
