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
)

type benchDirs struct {
	midfs, tmpfs string
}

var (
	benchOnce    sync.Once
	benchEnv     benchDirs
	benchCleanup []func()
)

// dirs mounts midfs once for all benchmarks, and copies its files to tmpfs.
func dirs(b *testing.B) benchDirs {
	b.Helper()
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	benchOnce.Do(func() {
		holder := &cleanupTB{TB: b}
		s := startServer(holder, serveConfig{Quiet: true, Nodes: []identity.Node{{Name: "web", Addr: "10.0.0.1:22"}}})
		tmp, err := os.MkdirTemp("/dev/shm", "midfs-bench-")
		if err != nil {
			b.Fatal(err)
		}
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
		benchEnv = benchDirs{midfs: s.dir, tmpfs: tmp}
		benchCleanup = append(benchCleanup, holder.run, func() { os.RemoveAll(tmp) })
	})
	if benchEnv.midfs == "" {
		b.Fatal("benchmark mount failed earlier")
	}
	return benchEnv
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

func BenchmarkOpenReadCloseKey(b *testing.B) { sideBySide(b, openReadClose("key")) }
func BenchmarkStatKey(b *testing.B)          { sideBySide(b, stat("key")) }
func BenchmarkReaddir(b *testing.B)          { sideBySide(b, readdir) }

func sideBySide(b *testing.B, f op) {
	d := dirs(b)
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
