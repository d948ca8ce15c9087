package e2e

// Three replicas of one authority on one real PostgreSQL server, on
// separate loopback ports, and a fleet renewing through them every few
// seconds while replicas are killed and the database goes away: 50 agents
// in this process (the joiner, as `midfs mount` runs it) and three real
// mounts that an ssh client logs in through all along.

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/seal"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/pgtest"
	"github.com/midfs/midfs/joiner"
)

// Lifetimes of the fleet: a renewal every few seconds, credentials that
// outlive a 30 s database outage with room to spare.
const (
	fleetRenew = 3 * time.Second
	fleetTTL   = 2 * time.Minute
)

// replica is one `midfs auth start` of the set, with its diagnostics.
type replica struct {
	*authority
	diag string
}

// startReplicas starts n replicas on the database at url, each with its
// own data dir (its admin socket), HTTPS port and diagnostics port.
func startReplicas(t *testing.T, n int, url string) []*replica {
	t.Helper()
	keyFile := sealKeyFile(t)
	var rs []*replica
	for range n {
		// Ports a restart can have again: outside the kernel's range for
		// outgoing connections, which the fleet's many connections would
		// take the freed ports from while a replica is down.
		diag := fmt.Sprintf("127.0.0.1:%d", fixedPort(t))
		a := startAuthorityAt(t, fmt.Sprintf("127.0.0.1:%d", fixedPort(t)), "--db="+url, "--ca-key-seal="+keyFile, "--diag-addr="+diag)
		rs = append(rs, &replica{authority: a, diag: diag})
	}
	for _, r := range rs[1:] {
		if r.pin != rs[0].pin {
			t.Fatalf("replicas on one database pin different CAs: %s and %s", rs[0].pin, r.pin)
		}
	}
	return rs
}

// fixedPort is a free loopback port below the ephemeral range (which starts
// at 32768 unless configured lower), so no outgoing connection takes it.
func fixedPort(t *testing.T) int {
	t.Helper()
	for range 100 {
		p := 20000 + rand.IntN(12000)
		if l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			l.Close()
			return p
		}
	}
	t.Fatal("no free port between 20000 and 32000")
	return 0
}

// dbUp reads the database component of a replica's /readyz.
func (r *replica) dbUp() (up bool, reason string, ok bool) {
	code, body, err := httpGet("http://" + r.diag + "/readyz")
	if err != nil {
		return false, err.Error(), false
	}
	var rz readyzBody
	if json.Unmarshal(body, &rz) != nil {
		return false, string(body), false
	}
	db := rz.Services["database"]
	return code == 200 && db.Status == "healthy", db.Reason, true
}

// fleet is the in-process agents and what a watcher saw of them.
type fleet struct {
	agents  []*joiner.Agent
	stops   []func()
	expired atomic.Int64 // times an agent was seen serving an expired identity
	mu      sync.Mutex
	seen    []string // what expired, for the failure message
	quit    chan struct{}
	done    chan struct{}
}

// joinFleet makes n bots (through the replicas' admin sockets in turn) and
// joins an agent for each with every replica listed.
func joinFleet(t *testing.T, rs []*replica, n int) *fleet {
	t.Helper()
	var addrs []string
	for _, r := range rs {
		addrs = append(addrs, r.addr)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f := &fleet{quit: make(chan struct{}), done: make(chan struct{})}
	for i := range n {
		tok := rs[i%len(rs)].addBot(fmt.Sprintf("fleet-%02d", i), "access", "root")
		ag, err := joiner.Join(t.Context(), joiner.Config{
			AuthServer: strings.Join(addrs, ","), Token: tok, CAPin: rs[0].pin,
			CertTTL: fleetTTL, RenewInterval: fleetRenew, JoinTimeout: 30 * time.Second, Logger: quiet,
		})
		if err != nil {
			t.Fatalf("agent %d: join: %v", i, err)
		}
		f.agents = append(f.agents, ag)
		f.stops = append(f.stops, ag.Start(func(*identity.Identity, []identity.Node) {}))
	}
	go f.watch()
	t.Cleanup(f.stop)
	return f
}

// watch looks at every agent's served identity ten times a second.
func (f *fleet) watch() {
	defer close(f.done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-f.quit:
			return
		case <-tick.C:
		}
		now := time.Now()
		for i, ag := range f.agents {
			if id, _ := ag.Current(); !now.Before(id.Expires()) {
				f.expired.Add(1)
				f.mu.Lock()
				f.seen = append(f.seen, fmt.Sprintf("agent %d at %s", i, now.Format(time.TimeOnly)))
				f.mu.Unlock()
			}
		}
	}
}

func (f *fleet) stop() {
	select {
	case <-f.quit:
		return
	default:
	}
	close(f.quit)
	<-f.done
	for _, stop := range f.stops {
		stop()
	}
}

// on counts the agents renewing through each address.
func (f *fleet) on() map[string]int {
	m := map[string]int{}
	for _, ag := range f.agents {
		m[ag.Status().AuthServer]++
	}
	return m
}

// settled says whether every agent renewed after since, through one of
// live, and its last attempt succeeded.
func (f *fleet) settled(since time.Time, live []string) (bool, string) {
	for i, ag := range f.agents {
		st := ag.Status()
		if st.Failing || !st.LastRenewal.After(since) || !slices.Contains(live, st.AuthServer) {
			return false, fmt.Sprintf("agent %d: %+v", i, st)
		}
	}
	return true, ""
}

// sshLoop logs in through the mounts in turn, again and again, until
// stopped: one ssh at a time, so the logins load the machine little.
type sshLoop struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	failures   []string
	lastOK     map[string]time.Time // per mount
	quit       chan struct{}
	wg         sync.WaitGroup
}

// loggedInSince says whether every mount had a login succeed after since.
func (l *sshLoop) loggedInSince(since time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, at := range l.lastOK {
		if !at.After(since) {
			return false
		}
	}
	return true
}

func startLogins(t *testing.T, mounts []string, target string) *sshLoop {
	l := &sshLoop{quit: make(chan struct{}), lastOK: map[string]time.Time{}}
	for _, mnt := range mounts {
		l.lastOK[mnt] = time.Time{}
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for i := 0; ; i++ {
			select {
			case <-l.quit:
				return
			default:
			}
			mnt := mounts[i%len(mounts)]
			out, err := sshLogin(mnt, target)
			l.mu.Lock()
			if err == nil {
				l.ok.Add(1)
				l.lastOK[mnt] = time.Now()
			} else {
				l.failed.Add(1)
				l.failures = append(l.failures, fmt.Sprintf("%s at %s: %v: %s", mnt, time.Now().Format(time.TimeOnly), err, strings.TrimSpace(out)))
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(l.stop)
	return l
}

// sshLogin is sshRun with room for a machine under load: a slow login is
// not a failed one, a refused or broken one is.
func sshLogin(mnt, target string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh", "-F", filepath.Join(mnt, "ssh_config"), "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "IdentityAgent=none", "-o", "ConnectTimeout=60", target, "true").CombinedOutput()
	return string(out), err
}

func (l *sshLoop) stop() {
	select {
	case <-l.quit:
		return
	default:
		close(l.quit)
	}
	l.wg.Wait()
}

// mountRenewedSince says whether a real mount renewed after since through
// one of live, from its /readyz.
func mountRenewedSince(diag string, since time.Time, live []string) (bool, string) {
	code, body, err := httpGet("http://" + diag + "/readyz")
	if err != nil {
		return false, err.Error()
	}
	var rz readyzBody
	if err := json.Unmarshal(body, &rz); err != nil {
		return false, string(body)
	}
	ren := rz.Services["renewal"]
	through := strings.TrimPrefix(ren.Reason, "renewing through the authority at ")
	return code == 200 && ren.UpdatedAt.After(since) && slices.Contains(live, through), string(body)
}

func TestReplicasOnPostgreSQLKeepAFleetServing(t *testing.T) {
	pg := pgtest.Start(t)
	rs := startReplicas(t, 3, pg.URL(pg.NewDB(t)))
	addrs := []string{rs[0].addr, rs[1].addr, rs[2].addr}

	// Admin commands through any replica's own socket: a node added
	// through one, its host certificate signed by another, every bot
	// listed by the third.
	sshd := startSSHD(t, rs[1].authority, "node."+cluster, "node")
	rs[2].admin("nodes", "add", "node", "--addr="+sshd.addr(), "--labels=env=test")

	// Three real mounts, the replicas given in each way the flag takes.
	var mounts, mountDiags []string
	for i, list := range [][]string{
		{"--auth-server=" + strings.Join(addrs, ",")},
		{"--auth-server=" + addrs[0], "--auth-server=" + addrs[1], "--auth-server=" + addrs[2]},
		{"--auth-server=" + addrs[2] + "," + addrs[0], "--auth-server=" + addrs[1]},
	} {
		dir := publicDir(t)
		diag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		tok := rs[i].addBot(fmt.Sprintf("mount-%d", i), "access", "root")
		args := append(list, "--token="+tok, "--ca-pin="+rs[0].pin, "--storage=memory", "--diag-addr="+diag,
			"--renewal-interval="+fleetRenew.String(), "--certificate-ttl="+fleetTTL.String())
		startMount(t, dir, args...)
		mounts, mountDiags = append(mounts, dir), append(mountDiags, diag)
	}
	for _, mnt := range mounts {
		waitFor(t, "the node in "+mnt+"/ssh_config", 30*time.Second, func() bool {
			b, _ := os.ReadFile(filepath.Join(mnt, "ssh_config"))
			return strings.Contains(string(b), "Host node."+cluster)
		})
		if out, err := sshRun(t, mnt, "node."+cluster, "true"); err != nil {
			t.Fatalf("first ssh login through %s: %v\n%s\nsshd:\n%s", mnt, err, out, tail(sshd.logs.String(), 20))
		}
	}

	fl := joinFleet(t, rs, 50)
	logins := startLogins(t, mounts, "node."+cluster)
	if on := fl.on(); len(on) != 3 {
		t.Errorf("the 50 agents started on %v; want them spread over the three replicas", on)
	}
	if out := rs[0].admin("bots", "ls"); strings.Count(out, "fleet-") != 50 || strings.Count(out, "mount-") != 3 {
		t.Errorf("`bots ls` through replica 0 does not list the bots made through the others:\n%s", out)
	}

	// settle waits for every agent, in this process and mounted, to have
	// renewed since a moment through a live replica.
	settle := func(what string, since time.Time, live []string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		var fleetDone time.Duration // when the 50 in-process agents had
		for {
			ok, why := fl.settled(since, live)
			if ok && fleetDone == 0 {
				fleetDone = time.Since(since)
			}
			for _, d := range mountDiags {
				if ok {
					ok, why = mountRenewedSince(d, since, live)
				}
			}
			if ok && !logins.loggedInSince(since) {
				ok, why = false, "an ssh login through every mount"
			}
			if ok {
				t.Logf("%s: the 50 agents within %v, the mounts and a login through each within %v", what,
					fleetDone.Round(100*time.Millisecond), time.Since(since).Round(100*time.Millisecond))
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out after 60s waiting for %s; still waiting for %s", what, why)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	settle("the fleet to renew", time.Now(), addrs)

	// kill -9 one replica, then another: everyone ends on the last.
	killed := time.Now()
	rs[0].kill()
	settle("every agent to move off the killed replica", killed, addrs[1:])
	killed = time.Now()
	rs[1].kill()
	settle("every agent to move to the last replica", killed, addrs[2:])

	// Bring them back; the fleet keeps renewing through live replicas.
	rs[0].start()
	rs[1].start()
	back := time.Now()
	settle("the fleet to renew after the replicas came back", back, addrs)
	for _, r := range rs {
		if up, reason, _ := r.dbUp(); !up {
			t.Fatalf("replica %s after its restart: database %s", r.addr, reason)
		}
	}

	// PostgreSQL down for 30 s: agents keep serving, replicas answer 503
	// (and say why in /readyz), and everything recovers by itself.
	pg.Stop(t)
	down := time.Now()
	for _, r := range rs {
		waitFor(t, "replica "+r.addr+" to report its database down", 20*time.Second, func() bool {
			up, reason, ok := r.dbUp()
			return ok && !up && strings.Contains(reason, "answering 503")
		})
	}
	waitFor(t, "agents to be told 503 by the replicas", 20*time.Second, func() bool {
		for _, ag := range fl.agents {
			if st := ag.Status(); st.Failing && strings.Contains(st.LastError, "cannot reach its database") {
				return true
			}
		}
		return false
	})
	// The outage is the scenario: it lasts 30 s, and until the mounts
	// have been logged in through without it.
	waitFor(t, "an ssh login through every mount without the database", 90*time.Second, func() bool { return logins.loggedInSince(down) })
	time.Sleep(time.Until(down.Add(30 * time.Second)))
	pg.Restart(t)
	restarted := time.Now()
	for _, r := range rs {
		waitFor(t, "replica "+r.addr+" to reach its database again", 30*time.Second, func() bool {
			up, _, _ := r.dbUp()
			return up
		})
	}
	settle("the fleet to renew after the database came back", restarted, addrs)

	logins.stop()
	fl.stop()
	if n := fl.expired.Load(); n != 0 {
		t.Errorf("an agent served an expired identity %d times: %v", n, fl.seen[:min(len(fl.seen), 10)])
	}
	if n := logins.failed.Load(); n != 0 {
		t.Errorf("%d of %d ssh logins failed: %v", n, n+logins.ok.Load(), logins.failures[:min(len(logins.failures), 5)])
	}
	for _, r := range rs {
		if out := r.admin("bots", "ls"); strings.Contains(out, "locked") {
			t.Errorf("a bot is locked, as `bots ls` through %s says:\n%s", r.addr, out)
		}
	}
	t.Logf("ssh logins: %d, none failed; agents per replica at the end: %v", logins.ok.Load(), fl.on())
}

// sealKeyFile writes a new key-encryption key for --ca-key-seal, as an
// operator would make one, into a file only its owner reads.
func sealKeyFile(t *testing.T) string {
	t.Helper()
	_, raw := seal.Generate()
	keyFile := filepath.Join(t.TempDir(), "ca-key-seal")
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(raw)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return keyFile
}
