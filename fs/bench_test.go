package fs

// Benchmarks of what a reader pays, side by side with the same files on
// tmpfs in the same run. The server runs in another process (this binary
// re-executed), as in production. Each benchmark reports:
//
//	ns/op          midfs, wall time per operation (all threads together)
//	tmpfs-ns/op    the same on /dev/shm
//	x-tmpfs        midfs / tmpfs
//	p50-ns, p99-ns midfs per-operation latency percentiles
//	tmpfs-p50-ns   tmpfs median latency
//
// go test -run '^$' -bench . ./fs/

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/testenv"
)

type benchDirs struct {
	midfs, tmpfs string
	srv          *server
}

var (
	benchEnvs    = map[string]*benchDirs{}
	benchCleanup []func()
)

// dirs mounts midfs once for all benchmarks, and copies its files to tmpfs.
func dirs(b *testing.B) *benchDirs {
	return benchMount(b, "one node", serveConfig{Quiet: true, Nodes: []identity.Node{{Name: "web", Addr: "10.0.0.1:22"}}})
}

// benchMount mounts cfg once under name for all benchmarks (benchmarks
// run one at a time), and copies its files to tmpfs.
func benchMount(b *testing.B, name string, cfg serveConfig) *benchDirs {
	b.Helper()
	testenv.RequireFUSE(b)
	if d := benchEnvs[name]; d != nil {
		return d
	}
	holder := &cleanupTB{TB: b}
	benchCleanup = append(benchCleanup, holder.run)
	s := startServer(holder, cfg)
	tmp, err := os.MkdirTemp("/dev/shm", "midfs-bench-")
	if err != nil {
		b.Fatal(err)
	}
	benchCleanup = append(benchCleanup, func() { os.RemoveAll(tmp) })
	for _, f := range identity.Files {
		data, err := os.ReadFile(s.path(f.Name))
		if err != nil {
			b.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if f.Secret {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(tmp, f.Name), data, mode); err != nil {
			b.Fatal(err)
		}
		clear(data)
	}
	d := &benchDirs{midfs: s.dir, tmpfs: tmp, srv: s}
	benchEnvs[name] = d
	return d
}

// cleanupTB keeps the mount alive across benchmarks: its cleanups run from
// TestMain once all benchmarks are done.
type cleanupTB struct {
	testing.TB
	fns []func()
}

func (c *cleanupTB) Cleanup(f func()) { c.fns = append(c.fns, f) }
func (c *cleanupTB) TempDir() string {
	d, err := os.MkdirTemp("", "midfs-bench-mnt-")
	if err != nil {
		c.Fatal(err)
	}
	c.fns = append(c.fns, func() { os.RemoveAll(d) })
	return d
}
func (c *cleanupTB) run() {
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
}

func runBenchCleanup() {
	for _, f := range benchCleanup {
		f()
	}
}

// op is one operation against a directory, using buf as scratch.
type op func(dir string, buf []byte) error

func openReadClose(name string) op {
	return func(dir string, buf []byte) error {
		fd, err := unix.Open(dir+"/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		n, err := unix.Read(fd, buf)
		unix.Close(fd)
		if err == nil && n == 0 {
			err = fmt.Errorf("%s: empty read", name)
		}
		return err
	}
}

func stat(name string) op {
	return func(dir string, buf []byte) error {
		var st unix.Stat_t
		return unix.Stat(dir+"/"+name, &st)
	}
}

func readdir(dir string, buf []byte) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil || n == 0 {
			return err
		}
	}
}

// openReadAllClose reads name to its end.
func openReadAllClose(name string) op {
	return func(dir string, buf []byte) error {
		fd, err := unix.Open(dir+"/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for {
			n, err := unix.Read(fd, buf)
			if err != nil || n == 0 {
				return err
			}
		}
	}
}

func BenchmarkOpenReadCloseKey(b *testing.B) { sideBySide(b, openReadClose("key")) }
func BenchmarkStatKey(b *testing.B)          { sideBySide(b, stat("key")) }
func BenchmarkReaddir(b *testing.B)          { sideBySide(b, readdir) }

func sideBySide(b *testing.B, f op) { sideBySideIn(b, dirs(b), f) }

func sideBySideIn(b *testing.B, d *benchDirs, f op) {
	for _, threads := range []int{1, 2} {
		b.Run(fmt.Sprintf("threads=%d", threads), func(b *testing.B) {
			// Warm both: first opens fill caches and pins.
			run(d.midfs, f, 100, threads)
			run(d.tmpfs, f, 100, threads)
			b.ResetTimer()
			mid, midLat := run(d.midfs, f, b.N, threads)
			b.StopTimer()
			tmp, tmpLat := run(d.tmpfs, f, b.N, threads)
			b.ReportMetric(float64(tmp.Nanoseconds())/float64(b.N), "tmpfs-ns/op")
			b.ReportMetric(float64(mid.Nanoseconds())/float64(tmp.Nanoseconds()), "x-tmpfs")
			b.ReportMetric(pct(midLat, 50), "p50-ns")
			b.ReportMetric(pct(midLat, 99), "p99-ns")
			b.ReportMetric(pct(tmpLat, 50), "tmpfs-p50-ns")
		})
	}
}

// run does n operations spread over threads OS threads and returns the wall
// time and a sample of per-operation latencies.
func run(dir string, f op, n, threads int) (time.Duration, []time.Duration) {
	var wg sync.WaitGroup
	lats := make([][]time.Duration, threads)
	errs := make([]error, threads)
	start := time.Now()
	for t := range threads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			buf := make([]byte, 64<<10)
			mine := n / threads
			if t < n%threads {
				mine++
			}
			l := make([]time.Duration, 0, min(mine, 1<<16))
			for i := range mine {
				t0 := time.Now()
				if err := f(dir, buf); err != nil {
					errs[t] = err
					return
				}
				if i < cap(l) {
					l = append(l, time.Since(t0))
				}
			}
			lats[t] = l
		}()
	}
	wg.Wait()
	el := time.Since(start)
	for _, err := range errs {
		if err != nil {
			panic(fmt.Sprintf("benchmark operation on %s: %v", dir, err))
		}
	}
	return el, slices.Concat(lats...)
}

func pct(l []time.Duration, p int) float64 {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	return float64(s[(len(s)-1)*p/100].Nanoseconds())
}

// sshConfigNodes is the inventory of the ssh_config benchmarks.
const sshConfigNodes = 10000

func manyNodes(b *testing.B) *benchDirs {
	return benchMount(b, "many nodes", serveConfig{Quiet: true, ManyNodes: sshConfigNodes})
}

// BenchmarkReadSSHConfig10kNodes reads a whole ssh_config of 10,000 nodes
// (about 1 MB: open, read to EOF, close) as every reader does between two
// changes, when the kernel's page cache holds it; side by side with tmpfs
// as the other benchmarks.
func BenchmarkReadSSHConfig10kNodes(b *testing.B) {
	sideBySideIn(b, manyNodes(b), openReadAllClose(identity.FileSSHConfig))
}

// BenchmarkReadSSHConfig10kNodesAfterChange publishes a new generation (a
// renewal: new key and certificates, the same 10,000 nodes) and then reads
// ssh_config once, as the first reader after every change does: the daemon
// renders the tree and the kernel reads ssh_config through FUSE. Reported:
//
//	ns/op           publish and read (the publish includes making the new identity, about 0.3 ms)
//	read-p50-ns     the read alone
//	tmpfs-ns/op     reading the same bytes from tmpfs
//	x-tmpfs         ns/op / tmpfs-ns/op
func BenchmarkReadSSHConfig10kNodesAfterChange(b *testing.B) {
	d := manyNodes(b)
	f := openReadAllClose(identity.FileSSHConfig)
	buf := make([]byte, 64<<10)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var reads []time.Duration
	for b.Loop() {
		d.srv.publish()
		t0 := time.Now()
		if err := f(d.midfs, buf); err != nil {
			b.Fatal(err)
		}
		reads = append(reads, time.Since(t0))
	}
	mid := b.Elapsed()
	tmp, tmpLat := run(d.tmpfs, f, b.N, 1)
	b.ReportMetric(pct(reads, 50), "read-p50-ns")
	b.ReportMetric(float64(tmp.Nanoseconds())/float64(b.N), "tmpfs-ns/op")
	b.ReportMetric(float64(mid.Nanoseconds())/float64(tmp.Nanoseconds()), "x-tmpfs")
	b.ReportMetric(pct(tmpLat, 50), "tmpfs-p50-ns")
}
