package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
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

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/wire"
)

// locksInterval is how often a simulated node asks for the locks, and how
// often it heartbeats: the node agent's defaults (node.DefaultLocksInterval,
// node.DefaultHeartbeat).
const locksInterval = 30 * time.Second

// fleetNodes is how many nodes BenchmarkLocksAt10kNodes simulates:
// 10,000, or $MIDFS_BENCH_FLEET (a few hundred to try the benchmark out; a
// machine busy with other work may not complete 10,000 TLS handshakes in
// time).
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

// joinWorkers is how many nodes join at once while the fleet is set up:
// enough to keep the authority's store busy (a join is a transaction, its
// node token another), few enough that no request waits long.
const joinWorkers = 16

// fleetID is a simulated node's identity, as `midfs node start` would
// hold it after its join.
type fleetID struct {
	name string
	tls  *tls.Config // presents the node's client certificate
	beat []byte      // its heartbeat, encoded: address, own labels, interval
}

// fleetLabels are the labels of the fleet's node tokens; fleetOwnLabels
// those the nodes give themselves, at the join and in every heartbeat.
var (
	fleetLabels    = map[string]string{"env": "bench"}
	fleetOwnLabels = map[string]string{"team": "fleet"}
)

// joinSimNodes joins n nodes, joinWorkers at a time, as `midfs node start`
// does: a node token each (over the admin socket, in this process: n CLI
// runs would take longer than the joins), then POST /v1/join with a new
// key. It returns their identities and how long that took.
func joinSimNodes(b *testing.B, a *authority, n int) ([]fleetID, time.Duration) {
	b.Helper()
	t0 := time.Now()
	roots := hostRoots(b, a)
	ids := make([]fleetID, n)
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(joinWorkers, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ac, err := admin.Dial(a.dataDir)
			if err != nil {
				cancel(err)
				return
			}
			defer ac.Close()
			// One kept-alive connection per worker: the joins pay no
			// handshake each.
			anon := &http.Client{Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: wire.ServerName}}}
			defer anon.CloseIdleConnections()
			for i := range next {
				if err := joinFleetNode(ctx, ac, anon, a.addr, roots, &ids[i], i); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		b.Fatalf("joining %d nodes: %v", n, err)
	}
	return ids, time.Since(t0)
}

// joinFleetNode joins the i-th node of the fleet into id.
func joinFleetNode(ctx context.Context, ac *admin.Client, anon *http.Client, authAddr string, roots *x509.CertPool, id *fleetID, i int) error {
	tok, err := ac.AddNodeToken(ctx, admin.NodeTokenSpec{Labels: fleetLabels})
	if err != nil {
		return fmt.Errorf("node token: %w", err)
	}
	info := wire.NodeInfo{Name: fmt.Sprintf("fleet-%05d", i), Addr: fmt.Sprintf("10.%d.%d.%d:22", 1+i>>16, i>>8&255, i&255), Labels: fleetOwnLabels}
	cert, err := joinNodeAPI(anon, authAddr, tok.Token, info)
	if err != nil {
		return err
	}
	beat, _ := json.Marshal(wire.Heartbeat{Addr: info.Addr, Labels: info.Labels, IntervalSeconds: int64(locksInterval / time.Second)})
	*id = fleetID{name: info.Name, beat: beat, tls: &tls.Config{RootCAs: roots, ServerName: wire.ServerName, Certificates: []tls.Certificate{cert}}}
	return nil
}

// simNode is one simulated node at work: its own kept-alive HTTPS
// connection, its own ETag, and when it first saw the lock it waits for.
type simNode struct {
	id   *fleetID
	hc   *http.Client
	etag string
	saw  atomic.Int64 // unix ns; 0 until it fetched a list holding a lock
	got  string       // the ID of that lock
	seen atomic.Bool  // it fetched the list once
	in   atomic.Bool  // the authority answered a heartbeat of it once
}

// lockFleet runs the fleet's nodes, each polling GET /v1/locks every
// interval and heartbeating half an interval after each poll, their first
// polls spread over connectRamp.
type lockFleet struct {
	b         *testing.B
	base      string // https://ADDR
	nodes     []*simNode
	armed     atomic.Bool // a lock is being made: the first nodes may see it before its ID is known
	polls     atomic.Int64
	beats     atomic.Int64
	pollFails atomic.Int64
	beatFails atomic.Int64
	first     atomic.Value // the first failure, for the report
	stop      chan struct{}
	stopOnce  sync.Once
	wg        sync.WaitGroup
}

func startFleet(b *testing.B, a *authority, ids []fleetID, interval time.Duration) *lockFleet {
	f := &lockFleet{b: b, base: "https://" + a.addr, stop: make(chan struct{})}
	for i := range ids {
		nd := &simNode{id: &ids[i], hc: &http.Client{Timeout: time.Minute, Transport: &http.Transport{
			TLSClientConfig: ids[i].tls, MaxIdleConnsPerHost: 1, IdleConnTimeout: 2 * interval}}}
		f.nodes = append(f.nodes, nd)
		f.wg.Add(1)
		go f.run(nd, time.Duration(i)*connectRamp/time.Duration(len(ids)), interval)
	}
	b.Cleanup(f.close)
	return f
}

// close stops every node and closes its connection.
func (f *lockFleet) close() {
	f.stopOnce.Do(func() {
		close(f.stop)
		f.wg.Wait()
		for _, nd := range f.nodes {
			nd.hc.CloseIdleConnections()
		}
	})
}

// run polls every interval, and heartbeats half an interval after each
// poll, as the node agent does with its defaults (node/run.go): on one
// connection, which never idles for more than half an interval and so
// stays open (the authority closes connections idle for 30 s). A failed
// request is retried after a second, then two, up to the interval, as the
// node agent does.
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

// heartbeat sends the node's heartbeat, as the node agent does.
func (f *lockFleet) heartbeat(nd *simNode) bool {
	resp, err := nd.hc.Post(f.base+wire.PathHeartbeat, "application/json", bytes.NewReader(nd.id.beat))
	if err != nil {
		f.fail(&f.beatFails, fmt.Errorf("heartbeat of %s: %w", nd.id.name, err))
		return false
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		f.fail(&f.beatFails, fmt.Errorf("heartbeat of %s: %s %.200s", nd.id.name, resp.Status, body))
		return false
	}
	f.beats.Add(1)
	nd.in.Store(true)
	return true
}

func (f *lockFleet) fail(count *atomic.Int64, err error) {
	count.Add(1)
	f.first.CompareAndSwap(nil, err.Error())
}

// fails is how many requests of either kind failed so far.
func (f *lockFleet) fails() int64 { return f.pollFails.Load() + f.beatFails.Load() }

func (f *lockFleet) poll(nd *simNode) bool {
	req, _ := http.NewRequest("GET", f.base+wire.PathLocks, nil)
	if nd.etag != "" {
		req.Header.Set("If-None-Match", nd.etag)
	}
	resp, err := nd.hc.Do(req)
	if err != nil {
		f.fail(&f.pollFails, fmt.Errorf("locks of %s: %w", nd.id.name, err))
		return false
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusNotModified {
		f.polls.Add(1)
		return true
	}
	var list wire.LockList
	if resp.StatusCode != http.StatusOK || json.Unmarshal(body, &list) != nil {
		f.fail(&f.pollFails, fmt.Errorf("locks of %s: %s %.200s", nd.id.name, resp.Status, body))
		return false
	}
	f.polls.Add(1)
	nd.etag = resp.Header.Get("ETag")
	nd.seen.Store(true)
	if f.armed.Load() && nd.saw.Load() == 0 && len(list.Locks) > 0 {
		nd.got = list.Locks[0].ID
		nd.saw.Store(time.Now().UnixNano())
	}
	return true
}

// connected is how many nodes fetched the list once and how many are in
// the inventory by their heartbeat.
func (f *lockFleet) connected() (polled, in int) {
	for _, nd := range f.nodes {
		if nd.seen.Load() {
			polled++
		}
		if nd.in.Load() {
			in++
		}
	}
	return polled, in
}

// fleetOnline asks `midfs get nodes` which of the fleet's nodes are
// online, and `midfs events` how many times one left the inventory
// (node.gone) since the fleet joined; it returns the count online and up
// to five of those that are not.
func fleetOnline(b *testing.B, a *authority, ids []fleetID, since time.Time) (online int, offline []string, gone int) {
	b.Helper()
	var nodes []policy.NodeResource
	if err := json.Unmarshal([]byte(a.admin("get", "nodes", "--format=json")), &nodes); err != nil {
		b.Fatalf("get nodes --format=json: %v", err)
	}
	state := map[string]bool{}
	for _, n := range nodes {
		state[n.Metadata.Name] = n.Status != nil && n.Status.Enforcing && n.Status.Online
	}
	for _, id := range ids {
		if state[id.name] {
			online++
		} else if len(offline) < 5 {
			offline = append(offline, id.name)
		}
	}
	events := strings.TrimSpace(a.admin("events", "--type=node.gone", "--format=json", "--since="+since.UTC().Format(time.RFC3339)))
	if events != "" {
		gone = strings.Count(events, "\n") + 1
	}
	return online, offline, gone
}

// BenchmarkLocksAt10kNodes runs the real authority with 10,000 simulated
// enforcing nodes (MIDFS_BENCH_FLEET=N for another count). Each joins as
// `midfs node start` does (a node token, POST /v1/join: its own node
// identity), then, on its own kept-alive HTTPS connection, asks for the
// locks every 30 s and heartbeats half an interval after each poll (the
// node agent's defaults). Then a bot is locked, and the benchmark waits
// until every node has the lock. It measures:
//
//	setup-s         the n joins (joinWorkers at a time), token and join each
//	idle-cpu-%      the authority's CPU time over one interval after the joins, before
//	                any node polls or heartbeats, as a share of one core: the baseline
//	cpu-%           the same over one interval of steady work (304 Not Modified
//	                polls, heartbeats that extend a stay)
//	us/req          cpu-% less idle-cpu-%, per request answered (poll or heartbeat)
//	lock-cpu-%      the same over the time in which a new lock reaches the fleet
//	                (every node fetches the changed list once)
//	reach-s         from `midfs lock` returning to the last node holding the lock (a node
//	                may fetch it before the command returns: then its time is negative)
//	p50-reach-s     the median node
//	polls/s         lock polls the authority answered per second, steady
//	heartbeats/s    heartbeats it answered per second, steady
//	failed-polls    polls that failed, and
//	failed-beats    heartbeats that failed, over the whole run (retried after 1 s,
//	                2 s, ... as the node agent does)
//	online          nodes online in `midfs get nodes` at the end, after the lock
//	gone-events     node.gone events since the fleet joined: a node that left the
//	                inventory at some point, even if it came back
//
// The authority's CPU time is from its /proc/PID/stat. The fleet runs in
// the benchmark's process, so its own CPU (n TLS clients) is not counted.
func BenchmarkLocksAt10kNodes(b *testing.B) {
	n := fleetNodes(b)
	a := startAuthority(b, fmt.Sprintf("--max-connections=%d", n+2000))
	a.addBot("victim", "access", "root")
	pid := a.cmd.Process.Pid
	joined := time.Now()
	ids, setup := joinSimNodes(b, a, n)
	b.Logf("%d nodes joined in %v, %d at a time (%.0f joins/s)", n, setup.Round(time.Millisecond), joinWorkers, float64(n)/setup.Seconds())
	// The baseline: the authority with the nodes joined, none of them
	// heartbeating or polling yet.
	idleCPU, idleT := cpuTime(b, pid), time.Now()
	time.Sleep(locksInterval)
	idle := float64(cpuTime(b, pid)-idleCPU) / float64(time.Since(idleT))

	for b.Loop() {
		f := startFleet(b, a, ids, locksInterval)
		deadline := time.Now().Add(connectRamp + 3*locksInterval)
		for {
			polled, in := f.connected()
			if polled == n && in == n {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("after %v, %d of %d nodes fetched the locks and %d heartbeat; %d polls, %d heartbeats answered, %d failed; the first: %v; connection limit reached: %v",
					connectRamp+3*locksInterval, polled, n, in, f.polls.Load(), f.beats.Load(), f.fails(), f.first.Load(),
					strings.Contains(a.logs.String(), "connection limit reached"))
			}
			time.Sleep(time.Second)
		}
		// One interval more: every node has sent the heartbeat that
		// brought it in (a database write each) before the steady one.
		time.Sleep(locksInterval)
		connectFails := f.fails()
		polls0, beats0, cpu0, t0 := f.polls.Load(), f.beats.Load(), cpuTime(b, pid), time.Now()
		time.Sleep(locksInterval)
		el := time.Since(t0)
		steady := float64(cpuTime(b, pid)-cpu0) / float64(el)
		pollRate := float64(f.polls.Load()-polls0) / el.Seconds()
		beatRate := float64(f.beats.Load()-beats0) / el.Seconds()
		perReq := (steady - idle) / (pollRate + beatRate) * 1e6

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
				b.Fatalf("node %s got lock %s, not %s", nd.id.name, nd.got, m[1])
			}
			reach = append(reach, time.Unix(0, nd.saw.Load()).Sub(locked).Seconds())
		}
		online, offline, gone := fleetOnline(b, a, ids, joined)
		f.close()
		if fails := f.fails(); fails > 0 {
			b.Logf("%d of %d polls and %d of %d heartbeats failed, %d of them while connecting (retried); the first: %v",
				f.pollFails.Load(), f.polls.Load()+f.pollFails.Load(), f.beatFails.Load(), f.beats.Load()+f.beatFails.Load(), connectFails, f.first.Load())
		}
		if online < n || gone > 0 {
			b.Logf("nodes dropped out: %d of %d online at the end (not: %s), %d node.gone events", online, n, strings.Join(offline, ", "), gone)
		}
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(setup.Seconds(), "setup-s")
		b.ReportMetric(100*idle, "idle-cpu-%")
		b.ReportMetric(100*steady, "cpu-%")
		b.ReportMetric(perReq, "us/req")
		b.ReportMetric(100*fanout, "lock-cpu-%")
		b.ReportMetric(slices.Max(reach), "reach-s")
		b.ReportMetric(median(reach), "p50-reach-s")
		b.ReportMetric(pollRate, "polls/s")
		b.ReportMetric(beatRate, "heartbeats/s")
		b.ReportMetric(float64(f.pollFails.Load()), "failed-polls")
		b.ReportMetric(float64(f.beatFails.Load()), "failed-beats")
		b.ReportMetric(float64(online), "online")
		b.ReportMetric(float64(gone), "gone-events")
		b.ReportMetric(float64(n), "nodes")
		a.admin("rm", "locks/"+m[1])
	}
}
