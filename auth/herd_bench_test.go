package auth

import (
	"bufio"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/midfs/midfs/identity"
)

// herdSize is how many bots start at once in BenchmarkHerd: a fleet that
// boots together after an outage.
const herdSize = 10000

// herdEnv makes the test binary run the herd's bots (runHerd) instead of
// the tests. The bots run in a process of their own, as they run on
// machines of their own: the authority's runtime (its garbage collector,
// its scheduler) then serves only the authority, not 10,000 clients'
// goroutines too. They still share the machine's 2 cores with it.
const herdEnv = "MIDFS_AUTH_TEST_HERD"

// herdPlan is what the herd's process is given on its standard input.
type herdPlan struct {
	Addrs  []string `json:"addrs"` // bot i joins through Addrs[i%len]
	HostCA []byte   `json:"host_ca"`
	Tokens []string `json:"tokens"`
}

// herdResult is what it prints when every bot holds an identity.
type herdResult struct {
	Retries int64         `json:"retries"`
	Refused []string      `json:"refused"` // joins refused for good
	CPU     time.Duration `json:"cpu"`     // the bots' CPU from "go" on
	Faults  int64         `json:"faults"`  // and their page faults
}

// BenchmarkHerd starts herdSize bots at once, each joining with its own
// one-time token and, as the agent does, trying again after a failure
// (a connection refused or closed under the load) with backoff and
// jitter. It reports the time until every bot holds an identity
// (herd-s), the joins that had to be tried again, and the CPU per join of
// the authorities (cpu-ms), the database (db-cpu-ms) and the bots
// (bots-cpu-ms), all on the same cores, and the page faults per join of
// the authorities' process (faults) and the bots' (bots-faults).
func BenchmarkHerd(b *testing.B) {
	pg := benchPG(b)
	for _, bb := range benchBackends {
		b.Run(bb.String(), func(b *testing.B) {
			var total, bots time.Duration
			var retries, botFaults int64
			c := bb.cpu(pg, nil)
			for range b.N {
				b.StopTimer()
				rs := bb.start(b, pg)
				plan := herdPlan{HostCA: rs[0].signer(caHost).cert.Raw, Tokens: addBots(b, rs, herdSize)}
				for _, s := range rs {
					plan.Addrs = append(plan.Addrs, s.Addr())
				}
				if c.pg != nil {
					c.rs = rs
				}
				h := startHerd(b, plan)
				b.StartTimer()
				c.start()
				start := time.Now()
				res := h.run(b)
				total += time.Since(start)
				c.stop()
				b.StopTimer()
				for _, s := range rs {
					s.Close()
				}
				for _, r := range res.Refused {
					b.Error(r)
				}
				retries += res.Retries
				bots += res.CPU
				botFaults += res.Faults
			}
			b.ReportMetric(total.Seconds()/float64(b.N), "herd-s")
			b.ReportMetric(float64(herdSize*b.N)/total.Seconds(), "joins/s")
			b.ReportMetric(float64(retries)/float64(b.N), "retries")
			b.ReportMetric(float64(bots)/float64(time.Millisecond)/float64(herdSize*b.N), "bots-cpu-ms/op")
			b.ReportMetric(float64(botFaults)/float64(herdSize*b.N), "bots-faults/op")
			c.report(b, herdSize*b.N)
		})
	}
}

// herd is a running herd process, its keys made, waiting for "go".
type herd struct {
	cmd *exec.Cmd
	in  *os.File
	out *bufio.Reader
}

func startHerd(b *testing.B, plan herdPlan) *herd {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), herdEnv+"=1")
	cmd.Stderr = os.Stderr
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stdin = r
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	r.Close()
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	h := &herd{cmd: cmd, in: w, out: bufio.NewReader(out)}
	if err := json.NewEncoder(w).Encode(plan); err != nil {
		b.Fatal(err)
	}
	if line, err := h.out.ReadString('\n'); err != nil || line != "ready\n" {
		b.Fatalf("the herd's process did not get ready: %q %v", line, err)
	}
	return h
}

// run says "go" and waits until every bot holds an identity.
func (h *herd) run(b *testing.B) herdResult {
	b.Helper()
	if _, err := h.in.WriteString("go\n"); err != nil {
		b.Fatal(err)
	}
	var res herdResult
	line, err := h.out.ReadBytes('\n')
	if err != nil {
		b.Fatalf("the herd's process ended without its result: %v", err)
	}
	if err := json.Unmarshal(line, &res); err != nil {
		b.Fatal(err)
	}
	h.in.Close()
	h.cmd.Wait()
	return res
}

// runHerd is the herd's process: it reads the plan, makes every bot's key
// (on a bot's own machine, before it starts), says "ready", and on "go"
// starts every bot at once.
func runHerd() {
	in := bufio.NewReader(os.Stdin)
	var plan herdPlan
	line, err := in.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &plan)
	}
	ca, err2 := x509.ParseCertificate(plan.HostCA)
	if err != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "herd: bad plan:", err, err2)
		os.Exit(1)
	}
	pubs := make([][]byte, len(plan.Tokens))
	for i := range pubs {
		k, err := identity.GenerateKey(identity.ECDSA)
		if err == nil {
			pubs[i], err = x509.MarshalPKIXPublicKey(k.Public())
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "herd:", err)
			os.Exit(1)
		}
	}
	fmt.Println("ready")
	if l, err := in.ReadString('\n'); err != nil || l != "go\n" {
		os.Exit(1)
	}
	cpu, faults := processUsage()
	var res herdResult
	var retries atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, tok := range plan.Tokens {
		wg.Go(func() {
			addr := plan.Addrs[i%len(plan.Addrs)]
			// One key for every try, as the agent keeps it: a try whose
			// answer was lost is answered again.
			for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
				status, msg, err := newClientAt(nil, addr, ca, nil, nil).joinOnce(tok, pubs[i])
				if err == nil && status == 200 {
					return
				}
				if err == nil && status < 500 && status != 429 {
					mu.Lock()
					res.Refused = append(res.Refused, fmt.Sprintf("join of bot %d refused: %d %s", i, status, msg))
					mu.Unlock()
					return
				}
				retries.Add(1)
				time.Sleep(wait/2 + rand.N(wait/2))
			}
		})
	}
	wg.Wait()
	cpuEnd, faultsEnd := processUsage()
	res.Retries, res.CPU, res.Faults = retries.Load(), cpuEnd-cpu, faultsEnd-faults
	json.NewEncoder(os.Stdout).Encode(res)
}
