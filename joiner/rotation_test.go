package joiner_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/wire"
)

func (a *authority) rotate(t *testing.T, kind, phase string) {
	t.Helper()
	if _, err := a.Rotate(context.Background(), admin.RotateRequest{Type: kind, Manual: true, Phase: phase}); err != nil {
		t.Fatalf("rotate %s to %s: %v", kind, phase, err)
	}
}

// signingKey is the SSH key of the user CA that signs now.
func (a *authority) signingKey(t *testing.T, kind string) string {
	t.Helper()
	res, err := a.Get(context.Background(), "cas", kind)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range res.CAs[0].Spec.Keys {
		if k.Signing {
			return k.SSH
		}
	}
	t.Fatal("no signing CA")
	return ""
}

func current(ag *joiner.Agent) *identity.Identity {
	id, _ := ag.Current()
	return id
}

// An agent follows each phase of a rotation at its next node list poll,
// not at its next renewal (20 minutes away): it serves both CAs from init,
// renews by itself when the user CA that signs changes, still reaches the
// authority once that presents a certificate of the new host CA, and
// restarts from its stored identity after the host CA's rotation with the
// --ca-pin it was first given.
func TestAgentFollowsCARotations(t *testing.T) {
	a := startAuth(t, "", "")
	oldPin := a.CAPin()
	store, err := joiner.OpenStore("dir:"+t.TempDir(), "robot")
	if err != nil {
		t.Fatal(err)
	}
	log, _ := newLog(t)
	clk := clock.NewFake(time.Now())
	cfg := config(a, a.addBot(t, "robot"), log)
	cfg.Clock, cfg.Store = clk, store
	ag := join(t, cfg)
	r := run(t, ag, clk)
	poll := func(what string, cond func(id *identity.Identity) bool) {
		t.Helper()
		// Within two node list polls (15 s each), never a renewal's 20 min.
		r.advanceUntil(5*time.Second, 30*time.Second, func() bool { return cond(current(ag)) })
	}

	a.rotate(t, "user", wire.PhaseInit)
	poll("both user CAs served", func(id *identity.Identity) bool { return len(id.CAs.User) == 2 })
	if gen := ag.Status().Generation; gen != 1 {
		t.Fatalf("init renewed the agent (generation %d): nothing signs with the new CA yet", gen)
	}
	a.rotate(t, "user", wire.PhaseUpdateClients)
	newUser := a.signingKey(t, "user")
	poll("a renewal by the new user CA", func(id *identity.Identity) bool {
		return string(ssh.MarshalAuthorizedKey(id.SSHCert.SignatureKey)) == newUser+"\n"
	})
	eventually(t, func() bool { return ag.Status().Generation == 2 }) // the bot identity too

	a.rotate(t, "host", wire.PhaseInit)
	poll("both host CAs served", func(id *identity.Identity) bool { return len(id.CAs.Host) == 2 })
	kh, err := identity.Render(identity.FileKnownHosts, current(ag), nil, identity.Paths{Dir: "/m"})
	if err != nil || strings.Count(string(kh), "@cert-authority") != 2 {
		t.Fatalf("known_hosts in init of the host CA:\n%s %v", kh, err)
	}
	a.rotate(t, "host", wire.PhaseUpdateClients)
	a.rotate(t, "host", wire.PhaseUpdateServers)
	gen := ag.Status().Generation
	ag.RenewNow()
	eventually(t, func() bool { return ag.Status().Generation == gen+1 })
	if st := ag.Status(); st.Failing {
		t.Fatalf("renewal against the new host CA's server certificate failed: %s", st.LastError)
	}
	a.rotate(t, "user", wire.PhaseUpdateServers)
	a.rotate(t, "user", wire.PhaseStandby)
	a.rotate(t, "host", wire.PhaseStandby)
	poll("one CA of each kind again", func(id *identity.Identity) bool { return len(id.CAs.User) == 1 && len(id.CAs.Host) == 1 })
	if a.CAPin() == oldPin {
		t.Fatal("the host CA's rotation kept the pin")
	}
	gen = ag.Status().Generation
	ag.RenewNow()
	eventually(t, func() bool { return ag.Status().Generation == gen+1 })
	r.stop()

	// A restart with the pin the mount was set up with, which no longer
	// matches the authority's CA, takes the stored identity.
	cfg.Token = ""
	again, err := joiner.Join(context.Background(), cfg)
	if err != nil {
		t.Fatalf("restart after the host CA's rotation with the first --ca-pin: %v", err)
	}
	if st := again.Status(); st.Generation != gen+2 {
		t.Fatalf("the restart did not renew the stored identity: %+v", st)
	}
	// Another pin, that vouches for neither, is not taken.
	other := cfg
	other.CAPin = "sha256:" + strings.Repeat("ab", 32)
	if _, err := joiner.Join(context.Background(), other); err == nil {
		t.Fatal("a restart with another --ca-pin took the stored identity")
	}
}
