package auth

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/internal/pgtest"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/wire"
)

// The authority's throughput over real TLS on loopback: every renewal is a
// new TLS connection with the bot's current identity (the identity changes
// at each renewal, so connections cannot be reused), a fresh client key,
// a durable write transaction and a certificate signature. Client,
// authorities and database share the machine's cores, as on a 2-core VM.
//
// Each is measured on SQLite (the embedded default) and, in the same run,
// on PostgreSQL with one and with three replicas (the clients spread over
// them), the server with its durable defaults (fsync, synchronous commit),
// as SQLite's synchronous=FULL is.
//
//	go test -run '^$' -bench 'Renew|Join|Herd' ./auth/
//
// Reports renewals/s (or joins/s), p50-ms and p99-ms per backend and
// client count; the herd reports how long 10,000 bots that start at once
// take until every one holds an identity.

var benchClients = []int{1, 8, 64}

// benchBackend is a state the authority is measured on.
type benchBackend struct {
	name     string
	replicas int
}

func (bb benchBackend) String() string {
	if bb.name == "sqlite" {
		return "sqlite"
	}
	return fmt.Sprintf("%s/replicas=%d", bb.name, bb.replicas)
}

var benchBackends = []benchBackend{{"sqlite", 1}, {"postgres", 1}, {"postgres", 3}}

// benchPG starts the PostgreSQL server of one benchmark, or returns nil
// where none can run (then only the SQLite parts run; under CI=true it
// fails instead).
func benchPG(b *testing.B) *pgtest.Server {
	if pgtest.Missing() != "" && !testenv.InCI() {
		return nil
	}
	return pgtest.Start(b, pgtest.Options{Durable: true})
}

// cpu is a meter for a measurement on bb, served by rs.
func (bb benchBackend) cpu(pg *pgtest.Server, rs []*Server) *cpu {
	if bb.name == "sqlite" {
		return &cpu{}
	}
	return &cpu{pg: pg, rs: rs}
}

// start starts the authorities of one measurement.
func (bb benchBackend) start(b *testing.B, pg *pgtest.Server) []*Server {
	b.Helper()
	if bb.name == "sqlite" {
		return []*Server{startTest(b)}
	}
	if pg == nil {
		b.Skip(pgtest.Missing())
	}
	return startReplicasOn(b, pg.NewURL(b), bb.replicas)
}

// addBots makes n bots (bot1..botN) through the authorities in turn, from
// 32 concurrent admins (concurrent adds share commits), and returns their
// one-time tokens.
func addBots(b *testing.B, rs []*Server, n int) []string {
	b.Helper()
	tokens := make([]string, n)
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := next.Add(1); i <= int64(n); i = next.Add(1) {
				bt, err := rs[int(i)%len(rs)].AddBot(context.Background(), admin.BotSpec{Name: fmt.Sprintf("bot%d", i), Roles: []string{"access"}})
				if err != nil {
					b.Error(err)
					return
				}
				tokens[i-1] = bt.Token
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	return tokens
}

func BenchmarkRenew(b *testing.B) {
	pg := benchPG(b)
	for _, bb := range benchBackends {
		for _, n := range benchClients {
			b.Run(fmt.Sprintf("%s/clients=%d", bb, n), func(b *testing.B) {
				rs := bb.start(b, pg)
				ids := make([]*botID, n)
				for i, tok := range addBots(b, rs, n) {
					ids[i] = join(b, rs[i%len(rs)], tok)
				}
				var turn atomic.Int64
				renew := func(i int) error {
					next, status, msg := ids[i].tryRenew(b, rs[int(turn.Add(1))%len(rs)])
					if status != 200 {
						return fmt.Errorf("renew: %d %s", status, msg)
					}
					ids[i] = next
					return nil
				}
				warmUp(b, n, renew)
				c := bb.cpu(pg, rs)
				lat := runLoad(b, n, c, renew)
				report(b, lat, "renewals/s")
				c.report(b, b.N)
			})
		}
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
	pg := benchPG(b)
	for _, bb := range benchBackends {
		for _, n := range benchClients {
			b.Run(fmt.Sprintf("%s/clients=%d", bb, n), func(b *testing.B) {
				rs := bb.start(b, pg)
				tokens := addBots(b, rs, b.N+n)
				var next atomic.Int64
				join := func(int) error {
					k := next.Add(1) - 1
					_, status, msg := tryJoin(b, rs[int(k)%len(rs)], tokens[k])
					if status != 200 {
						return fmt.Errorf("join: %d %s", status, msg)
					}
					return nil
				}
				warmUp(b, n, join)
				c := bb.cpu(pg, rs)
				lat := runLoad(b, n, c, join)
				report(b, lat, "joins/s")
				c.report(b, b.N)
			})
		}
	}
}

// joinOnce sends one join; transport errors are returned, not fatal.
func joinOnce(t testing.TB, s *Server, token string, pub []byte) (int, string, error) {
	return newClient(t, s, nil, nil).joinOnce(token, pub)
}

// joinOnce sends one join on a client of its own, and closes it.
func (c *client) joinOnce(token string, pub []byte) (int, string, error) {
	defer c.close()
	return c.do("POST", wire.PathJoin, wire.JoinRequest{Token: token, PublicKey: pub}, nil)
}

// cpu counts the processor time of a measurement: this process (the
// authorities and the clients) and the database server's processes. On a
// machine that others load too, time per operation says more than
// operations per second. On PostgreSQL it also counts the authorities'
// round trips to the server, which cost both sides.
type cpu struct {
	pg           *pgtest.Server // nil: SQLite, in this process
	rs           []*Server      // the authorities whose round trips count
	self, db     time.Duration
	selfT, dbT   time.Duration
	trips, tripT uint64
	retries      uint64 // Updates run again after a serialization conflict
	retryT       uint64
	faults       int64 // this process's page faults
	faultsT      int64
}

// counters sums the database round trips of c.rs, and their Updates run
// again.
func (c *cpu) counters() (trips, retries uint64) {
	for _, s := range c.rs {
		if r, ok := s.st.(interface {
			RoundTrips() uint64
			Retries() uint64
		}); ok {
			trips += r.RoundTrips()
			retries += r.Retries()
		}
	}
	return trips, retries
}

// processUsage says how much CPU this process has used, and how many page
// faults it took: under a virtual machine each costs microseconds, and a
// process that grows its memory takes one for every 4 KB it touches first.
func processUsage() (time.Duration, int64) {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Minflt + ru.Majflt
}

func (c *cpu) start() {
	c.selfT, c.faultsT = processUsage()
	if c.pg != nil {
		c.dbT = c.pg.CPU()
		c.tripT, c.retryT = c.counters()
	}
}

func (c *cpu) stop() {
	self, faults := processUsage()
	c.self += self - c.selfT
	c.faults += faults - c.faultsT
	if c.pg != nil {
		c.db += c.pg.CPU() - c.dbT
		trips, retries := c.counters()
		c.trips += trips - c.tripT
		c.retries += retries - c.retryT
	}
}

// report adds the CPU per operation: cpu-ms (this process: authority and
// clients) and db-cpu-ms (the database server), db-trips (round trips to
// it), db-retries (Updates run again after a serialization conflict), and
// faults (this process's page faults).
func (c *cpu) report(b *testing.B, ops int) {
	b.ReportMetric(float64(c.self)/float64(time.Millisecond)/float64(ops), "cpu-ms/op")
	b.ReportMetric(float64(c.faults)/float64(ops), "faults/op")
	if c.pg != nil {
		b.ReportMetric(float64(c.db)/float64(time.Millisecond)/float64(ops), "db-cpu-ms/op")
		b.ReportMetric(float64(c.trips)/float64(ops), "db-trips/op")
		b.ReportMetric(float64(c.retries)/float64(ops), "db-retries/op")
	}
}

// warmUp runs op once for each of n clients at once, before the
// measurement: the state's connections are open, as in an authority that
// has served a while.
func warmUp(b *testing.B, n int, op func(i int) error) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := op(i); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
}

// runLoad runs b.N calls of op from n concurrent clients (client i calls
// op(i) one after the other) and returns every call's latency.
func runLoad(b *testing.B, n int, c *cpu, op func(i int) error) []time.Duration {
	lat := make([]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	c.start()
	defer c.stop()
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
