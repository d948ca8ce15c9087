package e2e

// Benchmarks of a large inventory (10,000 nodes) as the authority and an
// agent meet it, with the real binary:
//
//	BenchmarkNodeListCost   authority CPU per node list request: unchanged (304) and full, vs GET /v1/ca
//	BenchmarkNodeToMount    time from `midfs nodes add` to the node in the mounted ssh_config
//
// The cost of serving a 10,000-node ssh_config through FUSE is fs/bench_test.go's.

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/wire"
)

const benchNodes = 10000

// cpuTime is the user+system CPU time of process pid so far, from
// /proc/PID/stat (clock ticks of 10 ms; the benchmarks run long enough
// for that to be fine).
func cpuTime(b *testing.B, pid int) time.Duration {
	b.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after "(comm)": state is the 3rd field, utime the 14th.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// outputClient is an HTTPS client of the authority that presents the
// output identity served at the mount, as `midfs ls` does. With fresh, every
// request makes a new TLS connection; otherwise one is kept alive.
func outputClient(b *testing.B, ag *agent, fresh bool) *http.Client {
	b.Helper()
	pair, err := tls.X509KeyPair(ag.read("tlscert"), ag.read("key"))
	if err != nil {
		b.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ag.read("teleport-host-ca.crt")) {
		b.Fatal("no host CA at the mount")
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: wire.ServerName},
		DisableKeepAlives: fresh,
	}}
}

// get sends one GET and reads the whole answer; it returns the status,
// the ETag and the body's size.
func get(b *testing.B, hc *http.Client, url, ifNone string) (int, string, int64) {
	req, _ := http.NewRequest("GET", url, nil)
	if ifNone != "" {
		req.Header.Set("If-None-Match", ifNone)
	}
	resp, err := hc.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("ETag"), n
}

// benchInventory starts an authority with benchNodes nodes and an agent
// of a bot that may reach them all.
func benchInventory(b *testing.B) (*authority, *agent) {
	b.Helper()
	a := startAuthority(b)
	a.addNodes("node", benchNodes)
	dir := newMountDir(b, publicDir(b), 0)
	ag := benchMount(b, a, dir, "inventory")
	waitServed(b, ag)
	if got := countHosts(ag.read("ssh_config"), "node"); got != benchNodes {
		b.Fatalf("the mount lists %d of %d nodes", got, benchNodes)
	}
	return a, ag
}

// BenchmarkNodeListCost measures the authority process's CPU time per
// request (its /proc/PID/stat, so the client's work is not counted), one
// client after another, each presenting the agent's output identity:
//
//	us/req          authority CPU per request
//	x-ca            the same divided by that of GET /v1/ca on the same kind of connection
//	KB/req          answer body size
//
// for ca (GET /v1/ca, the cheapest call: baseline), unchanged (GET
// /v1/nodes with the current ETag: 304 Not Modified) and full (GET
// /v1/nodes without: all 10,000 nodes), over a kept-alive connection
// (conn=keep, how an agent polls) and over a new TLS connection each time
// (conn=new, where the handshake dominates).
func BenchmarkNodeListCost(b *testing.B) {
	a, ag := benchInventory(b)
	pid := a.cmd.Process.Pid
	base := "https://" + a.addr
	for _, conn := range []string{"keep", "new"} {
		hc := outputClient(b, ag, conn == "new")
		_, tag, _ := get(b, hc, base+wire.PathNodes, "")
		perReq := map[string]float64{}
		for _, kind := range []string{"ca", "unchanged", "full"} {
			url, ifNone, want := base+wire.PathCA, "", http.StatusOK
			switch kind {
			case "unchanged":
				url, ifNone, want = base+wire.PathNodes, tag, http.StatusNotModified
			case "full":
				url = base + wire.PathNodes
			}
			b.Run("conn="+conn+"/"+kind, func(b *testing.B) {
				_, _, size := get(b, hc, url, ifNone) // warm
				cpu0 := cpuTime(b, pid)
				for b.Loop() {
					if status, _, _ := get(b, hc, url, ifNone); status != want {
						b.Fatalf("GET %s: %d, want %d", url, status, want)
					}
				}
				us := float64(cpuTime(b, pid)-cpu0) / float64(time.Microsecond) / float64(b.N)
				perReq[kind] = us
				b.ReportMetric(us, "us/req")
				b.ReportMetric(float64(size)/1000, "KB/req")
				if ca := perReq["ca"]; ca > 0 {
					b.ReportMetric(us/ca, "x-ca")
				}
			})
		}
		hc.CloseIdleConnections()
	}
}

// nodeSamples is how many nodes one iteration of BenchmarkNodeToMount adds.
const nodeSamples = 4

// BenchmarkNodeToMount adds a node with `midfs nodes add` to an authority
// with 10,000 nodes, at a random moment of the agent's node list interval
// (the default, joiner.DefaultNodesInterval), and times until the agent's
// mounted ssh_config lists it (a new `grep` process every 20 ms, so no
// reader is pinned to an older issuance):
//
//	s/node          mean time from the add to the node in the mounted ssh_config
//	max-s/node      the longest
//	publish-ms      median from the agent's "node list changed" log line (the list of
//	                10,001 nodes fetched) to the node in the mounted ssh_config
//	x-interval      s/node divided by the interval: waiting for the next poll is
//	                half of it on average
func BenchmarkNodeToMount(b *testing.B) {
	a, ag := benchInventory(b)
	cfg := ag.file("ssh_config")
	interval := joiner.DefaultNodesInterval
	var total, published []float64
	i := 0
	for b.Loop() {
		for range nodeSamples {
			i++
			time.Sleep(rand.N(interval))
			name := fmt.Sprintf("late-%05d", i)
			a.admin("nodes", "add", name, "--addr=10.99.0."+strconv.Itoa(i%250+1)+":22")
			added := time.Now()
			seen := added
			waitFor(b, name+" in the mounted ssh_config", 5*time.Minute, func() bool {
				ok := exec.Command("grep", "-qF", "Host "+name+"."+cluster, cfg).Run() == nil
				seen = time.Now()
				return ok
			})
			total = append(total, seen.Sub(added).Seconds())
			if ts := logTimes(ag.logs.String(), "node list changed"); len(ts) > 0 && ts[len(ts)-1].After(added) {
				published = append(published, ms(seen.Sub(ts[len(ts)-1])))
			}
		}
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(mean(total), "s/node")
	b.ReportMetric(slices.Max(total), "max-s/node")
	b.ReportMetric(median(published), "publish-ms")
	b.ReportMetric(mean(total)/interval.Seconds(), "x-interval")
}
