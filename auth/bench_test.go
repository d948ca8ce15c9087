package auth

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/admin"
)

// The authority's throughput over real TLS on loopback: every renewal is a
// new TLS connection with the bot's current identity (the identity changes
// at each renewal, so connections cannot be reused), a fresh client key,
// a write transaction (synchronous=FULL) and a certificate signature.
// Client and server share the machine's cores, as on a 2-core VM.
//
//	go test -run '^$' -bench 'Renew|Join' ./auth/
//
// Reports renewals/s (or joins/s), p50-ms and p99-ms per client count.

var benchClients = []int{1, 8, 64}

func BenchmarkRenew(b *testing.B) {
	for _, n := range benchClients {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			s := startTest(b)
			ids := make([]*botID, n)
			for i := range ids {
				ids[i] = join(b, s, addBot(b, s, fmt.Sprintf("bot%d", i), []string{"access"}, []string{"root"}).Token)
			}
			lat := runLoad(b, n, func(i int) error {
				next, status, msg := ids[i].tryRenew(b, s)
				if status != 200 {
					return fmt.Errorf("renew: %d %s", status, msg)
				}
				ids[i] = next
				return nil
			})
			report(b, lat, "renewals/s")
		})
	}
}

// BenchmarkRenewPaced offers a steady 500 renewals/s from 64 concurrent
// clients, the goal's load, and measures each latency from the moment the
// renewal was due (so a backlog counts against the authority).
func BenchmarkRenewPaced(b *testing.B) {
	const clients, rate = 64, 500
	b.Run(fmt.Sprintf("clients=%d/rate=%d", clients, rate), func(b *testing.B) {
		s := startTest(b)
		ids := make([]*botID, clients)
		for i := range ids {
			ids[i] = join(b, s, addBot(b, s, fmt.Sprintf("bot%d", i), []string{"access"}, []string{"root"}).Token)
		}
		due := make(chan time.Time, clients)
		lat := make([]time.Duration, 0, b.N)
		var mu sync.Mutex
		var wg sync.WaitGroup
		b.ResetTimer()
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for at := range due {
					next, status, msg := ids[i].tryRenew(b, s)
					if status != 200 {
						b.Errorf("renew: %d %s", status, msg)
						return
					}
					ids[i] = next
					mu.Lock()
					lat = append(lat, time.Since(at))
					mu.Unlock()
				}
			}()
		}
		start := time.Now()
		for k := range b.N {
			at := start.Add(time.Duration(k) * time.Second / rate)
			time.Sleep(time.Until(at))
			due <- at
		}
		close(due)
		wg.Wait()
		b.StopTimer()
		report(b, lat, "renewals/s")
	})
}

func BenchmarkJoin(b *testing.B) {
	for _, n := range benchClients {
		b.Run(fmt.Sprintf("clients=%d", n), func(b *testing.B) {
			s := startTest(b)
			tokens := make(chan string, b.N)
			var wg sync.WaitGroup
			var next atomic.Int64
			for range 32 { // concurrent adds share commits
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
						bt, err := s.AddBot(context.Background(), admin.BotSpec{Name: fmt.Sprintf("bot%d", i), Roles: []string{"access"}})
						if err != nil {
							b.Error(err)
							return
						}
						tokens <- bt.Token
					}
				}()
			}
			wg.Wait()
			close(tokens)
			lat := runLoad(b, n, func(int) error {
				_, status, msg := tryJoin(b, s, <-tokens)
				if status != 200 {
					return fmt.Errorf("join: %d %s", status, msg)
				}
				return nil
			})
			report(b, lat, "joins/s")
		})
	}
}

// runLoad runs b.N calls of op from n concurrent clients (client i calls
// op(i) one after the other) and returns every call's latency.
func runLoad(b *testing.B, n int, op func(i int) error) []time.Duration {
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := next.Add(1) - 1; k < int64(b.N); k = next.Add(1) - 1 {
				start := time.Now()
				if err := op(i); err != nil {
					b.Error(err)
					return
				}
				lat[k] = time.Since(start)
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	return lat
}

func report(b *testing.B, lat []time.Duration, unit string) {
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), unit)
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
