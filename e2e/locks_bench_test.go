package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/midfs/midfs/wire"
)

// locksInterval is how often a simulated node asks for the locks: the
// node agent's default.
const locksInterval = 30 * time.Second

// fleetNodes is how many nodes BenchmarkLocksAt10kNodes simulates:
// 10,000, or $MIDFS_BENCH_FLEET (a machine busy with other work may not
// complete 10,000 TLS handshakes in time).
func fleetNodes(b *testing.B) int {
	if v := os.Getenv("MIDFS_BENCH_FLEET"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("bad MIDFS_BENCH_FLEET %q", v)
		}
		return n
	}
	return 10000
}

// connectRamp spreads the fleet's first connections (a TLS handshake
// each, on both sides) over this long, so that connecting is not what is
// measured.
const connectRamp = 2 * locksInterval

// simNode is one simulated node: its own kept-alive HTTPS connection, its
// own ETag, and when it first saw the lock it waits for.
type simNode struct {
	hc   *http.Client
	etag string
	saw  atomic.Int64 // unix ns; 0 until it fetched a list holding a lock
	got  string       // the ID of that lock
	seen atomic.Int64 // 1 once it fetched a list
}

// lockFleet polls GET /v1/locks from fleetNodes nodes, each every interval,
// their first polls spread evenly over one interval.
type lockFleet struct {
	b     *testing.B
	url   string
	ca    string
	nodes []*simNode
	armed atomic.Bool // a lock is being made: the first nodes may see it before its ID is known
	reqs  atomic.Int64
	fails atomic.Int64
	first atomic.Value // the first failure, for the report
	stop  chan struct{}
	wg    sync.WaitGroup
}

func startFleet(b *testing.B, a *authority, tlsCfg *tls.Config, n int, interval time.Duration) *lockFleet {
	f := &lockFleet{b: b, url: "https://" + a.addr + wire.PathLocks, ca: "https://" + a.addr + wire.PathCA, stop: make(chan struct{})}
	for i := range n {
		nd := &simNode{hc: &http.Client{Timeout: time.Minute, Transport: &http.Transport{
			TLSClientConfig: tlsCfg, MaxIdleConnsPerHost: 1, IdleConnTimeout: 2 * interval}}}
		f.nodes = append(f.nodes, nd)
		f.wg.Add(1)
		go f.run(nd, time.Duration(i)*connectRamp/time.Duration(n), interval)
	}
	b.Cleanup(func() {
		close(f.stop)
		f.wg.Wait()
		for _, nd := range f.nodes {
			nd.hc.CloseIdleConnections()
		}
	})
	return f
}

// run polls every interval, and half an interval after each poll makes
// the request that stands in for the node agent's heartbeat (GET /v1/ca,
// until heartbeats are simulated): the agent's connection never idles for
// longer than that, so it stays open (the authority closes connections
// idle for 30 s). A failed request is retried after a second, then two, up
// to the interval, as the node agent does.
func (f *lockFleet) run(nd *simNode, offset, interval time.Duration) {
	defer f.wg.Done()
	t := time.NewTimer(offset)
	defer t.Stop()
	backoff, beat := time.Second, false
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		}
		ok := false
		if beat {
			ok = f.heartbeat(nd)
		} else {
			ok = f.poll(nd)
		}
		if ok {
			backoff, beat = time.Second, !beat
			t.Reset(interval / 2)
		} else {
			t.Reset(backoff)
			backoff = min(2*backoff, interval)
		}
	}
}

// heartbeat stands in for the node agent's heartbeat.
func (f *lockFleet) heartbeat(nd *simNode) bool {
	resp, err := nd.hc.Get(f.ca)
	if err != nil {
		f.fail(err)
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (f *lockFleet) fail(err error) {
	f.fails.Add(1)
	f.first.CompareAndSwap(nil, err.Error())
}

func (f *lockFleet) poll(nd *simNode) bool {
	req, _ := http.NewRequest("GET", f.url, nil)
	if nd.etag != "" {
		req.Header.Set("If-None-Match", nd.etag)
	}
	resp, err := nd.hc.Do(req)
	f.reqs.Add(1)
	if err != nil {
		f.fail(err)
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotModified {
		return true
	}
	var list wire.LockList
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &list) != nil {
		f.fail(fmt.Errorf("%s: %.200s", resp.Status, body))
		return false
	}
	nd.etag = resp.Header.Get("ETag")
	nd.seen.Store(1)
	if f.armed.Load() && nd.saw.Load() == 0 && len(list.Locks) > 0 {
		nd.got = list.Locks[0].ID
		nd.saw.Store(time.Now().UnixNano())
	}
	return true
}

// count is how many nodes fetched the list at least once.
func (f *lockFleet) count() int {
	n := 0
	for _, nd := range f.nodes {
		n += int(nd.seen.Load())
	}
	return n
}

// connected says whether every node has fetched the list once.
func (f *lockFleet) connected() bool {
	for _, nd := range f.nodes {
		if nd.seen.Load() == 0 {
			return false
		}
	}
	return true
}

// BenchmarkLocksAt10kNodes runs the real authority with 10,000 simulated
// enforcing nodes, each on its own kept-alive HTTPS connection asking for
// the locks every 30 s (the node agent's default) and, half an interval
// later, making a cheap request (GET /v1/ca) where the agent heartbeats,
// and measures:
//
//	cpu-%           the authority's CPU time over one interval of steady polls
//	                (304 Not Modified, and the stand-ins), as a share of one core
//	lock-cpu-%      the same over the interval in which a new lock reaches the fleet
//	                (every node fetches the changed list once)
//	reach-s         from `midfs lock` returning to the last node holding the lock (a node
//	                may fetch it before the command returns: then its time is negative)
//	p50-reach-s     the median node
//	req/s           requests the authority answered per second, steady
//	failed-polls    polls that failed (retried after 1 s, 2 s, ... as the node agent does)
//
// The fleet runs in the benchmark's process, so its own CPU (10,000 TLS
// clients) is not counted. The real heartbeat (a database write) is not
// simulated yet: GET /v1/ca keeps the connection as busy, at less cost.
func BenchmarkLocksAt10kNodes(b *testing.B) {
	n := fleetNodes(b)
	a := startAuthority(b, fmt.Sprintf("--max-connections=%d", n+2000))
	a.addBot("victim", "access", "root")
	dir := newMountDir(b, publicDir(b), 0)
	ag := benchMount(b, a, dir, "fleet")
	waitServed(b, ag)
	tlsCfg := outputClient(b, ag, false).Transport.(*http.Transport).TLSClientConfig
	pid := a.cmd.Process.Pid

	for b.Loop() {
		f := startFleet(b, a, tlsCfg, n, locksInterval)
		deadline := time.Now().Add(connectRamp + 3*locksInterval)
		for !f.connected() {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d nodes connected after %v; %d requests, %d failed; the first: %v; connection limit reached: %v",
					f.count(), len(f.nodes), connectRamp+3*locksInterval, f.reqs.Load(), f.fails.Load(), f.first.Load(),
					strings.Contains(a.logs.String(), "connection limit reached"))
			}
			time.Sleep(time.Second)
		}
		time.Sleep(locksInterval)
		connectFails := f.fails.Load()
		reqs0, cpu0, t0 := f.reqs.Load(), cpuTime(b, pid), time.Now()
		time.Sleep(locksInterval)
		steady := float64(cpuTime(b, pid)-cpu0) / float64(time.Since(t0))
		rate := float64(f.reqs.Load()-reqs0) / time.Since(t0).Seconds()

		// The fleet knew no lock until now: the first list holding one
		// holds this one.
		f.armed.Store(true)
		cpu1 := cpuTime(b, pid)
		out := a.admin("lock", "--bot=victim", "--message=bench")
		locked := time.Now()
		m := regexp.MustCompile(`Created lock ([0-9a-f]+)`).FindStringSubmatch(out)
		if m == nil {
			b.Fatalf("lock printed:\n%s", out)
		}
		waitFor(b, "the lock at every node", 3*locksInterval, func() bool {
			for _, nd := range f.nodes {
				if nd.saw.Load() == 0 {
					return false
				}
			}
			return true
		})
		fanout := float64(cpuTime(b, pid)-cpu1) / float64(time.Since(locked))
		var reach []float64
		for _, nd := range f.nodes {
			if nd.got != m[1] {
				b.Fatalf("a node got lock %s, not %s", nd.got, m[1])
			}
			reach = append(reach, time.Unix(0, nd.saw.Load()).Sub(locked).Seconds())
		}
		if n := f.fails.Load(); n > 0 {
			b.Logf("%d of %d polls failed, %d of them while connecting (retried); the first: %v", n, f.reqs.Load(), connectFails, f.first.Load())
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(100*steady, "cpu-%")
		b.ReportMetric(100*fanout, "lock-cpu-%")
		b.ReportMetric(slices.Max(reach), "reach-s")
		b.ReportMetric(median(reach), "p50-reach-s")
		b.ReportMetric(rate, "req/s")
		b.ReportMetric(float64(f.fails.Load()), "failed-polls")
		b.ReportMetric(float64(n), "nodes")
		a.admin("rm", "locks/"+m[1])
	}
}
