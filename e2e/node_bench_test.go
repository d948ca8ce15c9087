package e2e

// BenchmarkHeartbeatCost: what a node's heartbeat costs the authority (the
// real binary; its CPU time from /proc), beside GET /v1/ca, the cheapest
// call, on the same kind of connection:
//
//	us/req   authority CPU per request
//	x-ca     the same divided by that of GET /v1/ca
//
// for ca, heartbeat (a node that stays: one row's deadline written, no
// version moved) and, for comparison, locks when the authority serves
// them. conn=keep is how a node heartbeats (one kept-alive connection);
// conn=new pays a TLS handshake each time.

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// joinedNode joins a node over the HTTPS API, as `midfs node start` does,
// and returns a client that presents its identity.
func joinedNode(b *testing.B, a *authority, name string, fresh bool) *http.Client {
	b.Helper()
	roots := hostRoots(b, a)
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: wire.ServerName}}}
	defer anon.CloseIdleConnections()
	cert, err := joinNodeAPI(anon, a.addr, a.nodeToken("env=bench"), wire.NodeInfo{Name: name, Addr: "10.0.0.1:22"})
	if err != nil {
		b.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, ServerName: wire.ServerName, Certificates: []tls.Certificate{cert}},
		DisableKeepAlives: fresh,
	}}
}

// hostRoots holds the authority's TLS host CA, as `auth export
// --type=tls-host` prints it: what a node checks the authority by.
func hostRoots(b *testing.B, a *authority) *x509.CertPool {
	b.Helper()
	hostCA := regexp.MustCompile(`(?s)-----BEGIN CERTIFICATE-----.*-----END CERTIFICATE-----\n`).FindString(a.admin("auth", "export", "--type=tls-host"))
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(hostCA)) {
		b.Fatal("no host CA from auth export")
	}
	return roots
}

// joinNodeAPI joins node info with a node token through anon (a client
// without a certificate that trusts the host CA), with a new key, and
// returns the node's identity: its TLS client certificate and key.
func joinNodeAPI(anon *http.Client, authAddr, token string, info wire.NodeInfo) (tls.Certificate, error) {
	key, err := identity.GenerateKey(identity.ECDSA)
	if err != nil {
		return tls.Certificate{}, err
	}
	pub, _ := x509.MarshalPKIXPublicKey(key.Public())
	req, _ := json.Marshal(wire.JoinRequest{Token: token, PublicKey: pub, Node: &info})
	resp, err := anon.Post("https://"+authAddr+wire.PathJoin, "application/json", bytes.NewReader(req))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("node join of %s: %w", info.Name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var bi wire.BotIdentity
	if resp.StatusCode != http.StatusOK {
		return tls.Certificate{}, fmt.Errorf("node join of %s: %s %.200s", info.Name, resp.Status, body)
	}
	if err := json.Unmarshal(body, &bi); err != nil {
		return tls.Certificate{}, fmt.Errorf("node join of %s: %w", info.Name, err)
	}
	return tls.Certificate{Certificate: [][]byte{bi.TLSCert}, PrivateKey: key}, nil
}

func heartbeatOnce(b *testing.B, hc *http.Client, url string) int {
	body, _ := json.Marshal(wire.Heartbeat{Addr: "10.0.0.1:22", Labels: map[string]string{"team": "web"}, IntervalSeconds: 30})
	resp, err := hc.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func BenchmarkHeartbeatCost(b *testing.B) {
	a := startAuthority(b)
	pid := a.cmd.Process.Pid
	base := "https://" + a.addr
	for _, conn := range []string{"keep", "new"} {
		hc := joinedNode(b, a, "bench-"+conn, conn == "new")
		if status := heartbeatOnce(b, hc, base+wire.PathHeartbeat); status != 200 { // the node comes in
			b.Fatalf("first heartbeat: %d", status)
		}
		perReq := map[string]float64{}
		for _, kind := range []string{"ca", "heartbeat", "locks"} {
			b.Run("conn="+conn+"/"+kind, func(b *testing.B) {
				do := func() int {
					switch kind {
					case "heartbeat":
						return heartbeatOnce(b, hc, base+wire.PathHeartbeat)
					case "locks":
						status, _, _ := get(b, hc, base+wire.PathLocks, "")
						return status
					}
					status, _, _ := get(b, hc, base+wire.PathCA, "")
					return status
				}
				if status := do(); status != 200 { // warm; no locks API: nothing to measure
					b.Skipf("%s: %d", kind, status)
				}
				cpu0 := cpuTime(b, pid)
				start := time.Now()
				for b.Loop() {
					if status := do(); status != 200 {
						b.Fatalf("%s: %d", kind, status)
					}
				}
				us := float64(cpuTime(b, pid)-cpu0) / float64(time.Microsecond) / float64(b.N)
				perReq[kind] = us
				b.ReportMetric(us, "us/req")
				b.ReportMetric(float64(time.Since(start).Microseconds())/float64(b.N), "wall-us/req")
				if ca := perReq["ca"]; ca > 0 && kind != "ca" {
					b.ReportMetric(us/ca, "x-ca")
				}
			})
		}
		hc.CloseIdleConnections()
	}
	// Heartbeats of many nodes at once share the authority's commits.
	const nodes = 32
	clients := make([]*http.Client, nodes)
	for i := range clients {
		clients[i] = joinedNode(b, a, fmt.Sprintf("many-%d", i), false)
		heartbeatOnce(b, clients[i], base+wire.PathHeartbeat)
	}
	b.Run(fmt.Sprintf("conn=keep/heartbeat-nodes=%d", nodes), func(b *testing.B) {
		var next atomic.Int64
		var wg sync.WaitGroup
		cpu0 := cpuTime(b, pid)
		b.ResetTimer()
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for next.Add(1) <= int64(b.N) {
					if status := heartbeatOnce(b, clients[i], base+wire.PathHeartbeat); status != 200 {
						b.Errorf("heartbeat: %d", status)
						return
					}
				}
			}()
		}
		wg.Wait()
		b.StopTimer()
		b.ReportMetric(float64(cpuTime(b, pid)-cpu0)/float64(time.Microsecond)/float64(b.N), "us/req")
	})
}

// BenchmarkNodeLogin is what a node set up by `midfs node start` adds to a
// login, as an operator sees it: `ssh -F MNT/ssh_config root@NODE.CLUSTER
// true` to a stock sshd that includes the node's fragment (the host key
// signed through the agent socket, the enforcement hook
// AuthorizedPrincipalsCommand, the KRL), and the same login to an sshd set
// up by hand as before nodes joined (host key and certificate files,
// TrustedUserCAKeys only). The two alternate, in turns that swap which goes
// first, so machine noise hits both alike.
//
//	ms/login        median login to the joined node
//	plain-ms/login  median login to the hand-made one
//	x-plain         the ratio of the two medians
//	diff-ms         median of the paired differences (goal: <= 10 ms)
func BenchmarkNodeLogin(b *testing.B) {
	a := startAuthority(b)
	startNode(b, a, "joined", "env=dev")
	plain := startSSHD(b, a, "plain."+cluster, "plain")
	a.admin("nodes", "add", "plain", "--addr="+plain.addr(), "--labels=env=dev")
	dir := newMountDir(b, publicDir(b), 0)
	ag := benchMount(b, a, dir, "node-login")
	waitServed(b, ag)
	waitFor(b, "both nodes in ssh_config", 30*time.Second, func() bool {
		cfg := string(ag.read("ssh_config"))
		return strings.Contains(cfg, "joined."+cluster) && strings.Contains(cfg, "plain."+cluster)
	})
	login := func(node string) float64 {
		t0 := time.Now()
		out, err := sshRun(b, dir, "root@"+node+"."+cluster, "true")
		el := time.Since(t0)
		if err != nil {
			b.Fatalf("ssh to %s: %v\n%s", node, err, out)
		}
		return ms(el)
	}
	login("joined") // warm: the first connection pays for the page cache
	login("plain")
	var withNode, without []float64
	turn := 0
	for b.Loop() {
		for range loginPairs {
			turn++
			if turn%2 == 0 {
				withNode = append(withNode, login("joined"))
				without = append(without, login("plain"))
			} else {
				without = append(without, login("plain"))
				withNode = append(withNode, login("joined"))
			}
		}
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(withNode), "ms/login")
	b.ReportMetric(median(without), "plain-ms/login")
	b.ReportMetric(median(withNode)/median(without), "x-plain")
	diffs := make([]float64, len(withNode))
	for i := range withNode {
		diffs[i] = withNode[i] - without[i]
	}
	b.ReportMetric(median(diffs), "diff-ms")
}
