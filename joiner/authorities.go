package joiner

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/midfs/midfs/identity/clock"
)

// ParseAuthServers reads --auth-server: one or more HOST:PORT separated by
// commas (a repeated flag arrives joined by commas). Errors are of kind
// ErrConfig, one line.
func ParseAuthServers(s string) ([]string, error) {
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return nil, &kindError{kind: ErrConfig, msg: fmt.Sprintf("bad --auth-server %q: want HOST:PORT, e.g. auth.example.com:3025 (several: repeat the flag or separate them with commas)", a)}
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		return nil, &kindError{kind: ErrConfig, msg: fmt.Sprintf("bad --auth-server %q: want HOST:PORT, e.g. auth.example.com:3025", s)}
	}
	return out, nil
}

// sameAuthority says whether two --auth-server lists name at least one
// address in common: a stored identity made through one replica is good
// for the others, and the list may grow or shrink between runs.
func sameAuthority(a, b string) bool {
	la, _ := ParseAuthServers(a)
	lb, _ := ParseAuthServers(b)
	for _, x := range la {
		if slices.Contains(lb, x) {
			return true
		}
	}
	return false
}

// resolveEvery bounds how long a resolved address list is kept while every
// address keeps failing: replicas replaced behind a DNS name are found
// again within it.
const resolveEvery = time.Minute

// authorities is the replicas of one authority that an agent talks to:
// the addresses of --auth-server, each name that resolves to several
// addresses expanded to one entry per address, since a replica may accept
// connections and still fail (no database). One entry is current; every
// request goes to it, and a failure that another replica may not have
// (the network, 5xx, 429) moves on to the next one. All of them answer
// for one cluster: the agent checks the CA pin once, and every later
// connection must present a server certificate of the pinned host CA,
// whichever replica it reaches.
type authorities struct {
	configured []string
	resolver   *net.Resolver
	log        *slog.Logger
	clock      clock.Clock

	mu         sync.Mutex
	addrs      []string  // resolved, in the order tried
	cur        int       // index in addrs
	failed     int       // failures in a row, on any replica
	resolvedAt time.Time // of addrs
}

// newAuthorities starts at a random entry, so that a fleet spreads over
// the replicas, and resolves names on first use.
func newAuthorities(configured []string, resolver *net.Resolver, log *slog.Logger, clk clock.Clock) *authorities {
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	return &authorities{configured: configured, resolver: resolver, log: log, clock: clk}
}

// current is the address to send the next request to.
func (a *authorities) current(ctx context.Context) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.addrs == nil || (a.failed >= len(a.addrs) && a.clock.Now().Sub(a.resolvedAt) >= resolveEvery) {
		a.resolve(ctx)
	}
	return a.addrs[a.cur]
}

// resolve expands names into their addresses. A name that does not
// resolve stays as it is: dialing it gives the error worth reporting.
// The entry in use stays current if it is still listed.
func (a *authorities) resolve(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var addrs []string
	for _, hp := range a.configured {
		host, port, _ := net.SplitHostPort(hp) // checked by ParseAuthServers
		if _, err := netip.ParseAddr(host); err == nil {
			addrs = appendNew(addrs, hp)
			continue
		}
		ips, err := a.resolver.LookupHost(ctx, host)
		if err != nil || len(ips) <= 1 {
			addrs = appendNew(addrs, hp) // one address: the dialer resolves it as usual
			continue
		}
		for _, ip := range ips {
			addrs = appendNew(addrs, net.JoinHostPort(ip, port))
		}
	}
	prev := ""
	if a.addrs != nil {
		prev = a.addrs[a.cur]
	}
	a.addrs, a.resolvedAt = addrs, a.clock.Now()
	a.cur = slices.Index(addrs, prev)
	if a.cur < 0 {
		a.cur = rand.IntN(len(addrs))
	}
	if len(addrs) > len(a.configured) {
		a.log.Debug("authority addresses resolved", "configured", strings.Join(a.configured, ","), "addresses", strings.Join(addrs, ","))
	}
}

func appendNew(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// fail records that a request to addr failed in a way another replica may
// not share, and moves on to the next address if addr is still current.
func (a *authorities) fail(addr string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.addrs == nil || a.addrs[a.cur] != addr {
		return // moved on already
	}
	a.failed++
	if len(a.addrs) == 1 {
		return
	}
	a.cur = (a.cur + 1) % len(a.addrs)
	a.log.Warn("authority failed; moving to another", "from", addr, "to", a.addrs[a.cur], "error", err)
}

// ok records that addr answered.
func (a *authorities) ok(addr string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.addrs != nil && a.addrs[a.cur] == addr {
		a.failed = 0
	}
}

// peek is the current address without resolving anything: "" before the
// first request.
func (a *authorities) peek() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.addrs == nil {
		return ""
	}
	return a.addrs[a.cur]
}

// count is how many addresses there are to try.
func (a *authorities) count(ctx context.Context) int {
	a.current(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.addrs)
}

// String is the list as configured, for messages and the stored identity.
func (a *authorities) String() string { return strings.Join(a.configured, ",") }
