package auth

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/seal"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/internal/pgtest"
	"github.com/midfs/midfs/wire"
)

func rotate(t testing.TB, s *Server, req admin.RotateRequest) *policy.CAResource {
	t.Helper()
	res, err := s.Rotate(context.Background(), req)
	if err != nil {
		t.Fatalf("Rotate %+v: %v", req, err)
	}
	return res
}

func manual(kind, phase string) admin.RotateRequest {
	return admin.RotateRequest{Type: kind, Manual: true, Phase: phase}
}

// nodeList asks for the node list with an ETag and returns the status, the
// CA set it carries and its ETag.
func nodeList(t testing.TB, s *Server, id *botID, etag string) (int, *wire.CASet, string) {
	t.Helper()
	c := clientTrusting(s, hostPool(s), id.key, id.cert)
	defer c.close()
	req, _ := http.NewRequest("GET", "https://"+c.addr+wire.PathNodes, nil)
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatalf("node list: %v", err)
	}
	defer resp.Body.Close()
	var list wire.NodeList
	if resp.StatusCode == 200 {
		if err := wire.DecodeStrict(resp.Body, &list); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, list.CAs, resp.Header.Get("ETag")
}

// clientTrusting is a client of s that trusts the host CAs of pool.
func clientTrusting(s *Server, pool *x509.CertPool, key crypto.Signer, certDER []byte) *client {
	conf := &tls.Config{ServerName: wire.ServerName, RootCAs: pool}
	if key != nil {
		conf.Certificates = []tls.Certificate{{Certificate: [][]byte{certDER}, PrivateKey: key}}
	}
	return &client{addr: s.Addr(), hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: conf}}}
}

// hostPool trusts every host CA of s, as an agent that followed its
// rotation does.
func hostPool(s *Server) *x509.CertPool {
	p := x509.NewCertPool()
	for _, a := range s.caSet().kinds[caHost].all {
		p.AddCert(a.cert)
	}
	return p
}

// signingSSH is the authorized_keys line of a kind's signing CA in a set.
func signingSSH(cas []wire.CA) string {
	for _, ca := range cas {
		if ca.Signing {
			return ca.SSH
		}
	}
	return ""
}

// issuerOf says which CA of s (by ID) signed a DER certificate.
func issuerOf(t testing.TB, s *Server, kind string, der []byte) string {
	t.Helper()
	c := mustParseCert(t, der)
	for _, a := range s.caSet().kinds[kind].all {
		if c.CheckSignatureFrom(a.cert) == nil {
			return a.id
		}
	}
	return "none"
}

func sshSigner(t testing.TB, line string) string {
	t.Helper()
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return string(sshAuthorizedKey(pub.(*ssh.Certificate).SignatureKey))
}

// A whole rotation of the user CA by hand, as a bot sees it: the new CA is
// announced before it signs, both are trusted until standby, and after
// standby an identity from the old CA is refused.
func TestRotateUserCAByHand(t *testing.T) {
	s := startTest(t)
	bt := addBot(t, s, "robot", []string{"access"}, []string{"root"})
	id := join(t, s, bt.Token)
	old := s.signer(caUser)
	_, before, etag := nodeList(t, s, id, "")
	if len(before.User) != 1 || before.Phases[caUser] != wire.PhaseStandby {
		t.Fatalf("node list CAs before a rotation: %+v", before)
	}

	res := rotate(t, s, manual(caUser, wire.PhaseInit))
	if res.Spec.Rotation.Phase != wire.PhaseInit || len(res.Spec.Keys) != 2 || !res.Spec.Keys[0].Signing || res.Spec.Keys[1].Signing {
		t.Fatalf("after init: %+v; want two keys, the old one signing", res.Spec)
	}
	// Agents polling with their ETag hear of it at once, with both CAs.
	status, cas, etag2 := nodeList(t, s, id, etag)
	if status != 200 || etag2 == etag || len(cas.User) != 2 || cas.Phases[caUser] != wire.PhaseInit || signingSSH(cas.User) != string(sshAuthorizedKey(old.signer.PublicKey())) {
		t.Fatalf("node list after init: %d %+v", status, cas)
	}
	if status, _, _ := nodeList(t, s, id, etag2); status != http.StatusNotModified {
		t.Fatalf("node list polled again without a change: %d, want 304", status)
	}
	if out, err := s.Export(context.Background(), admin.ExportUser); err != nil || strings.Count(out, "\n") != 2 {
		t.Fatalf("export --type=user during the rotation: %q, %v; want both CAs", out, err)
	}
	certs, _ := id.certs(t, s)
	if got := sshSigner(t, certs.SSHCert); got != string(sshAuthorizedKey(old.signer.PublicKey())) || len(certs.UserCAs) != 2 {
		t.Fatal("in init the old CA must still sign, and the identity must carry both user CAs")
	}

	rotate(t, s, manual(caUser, wire.PhaseUpdateClients))
	newCA := s.signer(caUser)
	if newCA.id == old.id {
		t.Fatal("update_clients left the old user CA signing")
	}
	certs, _ = id.certs(t, s) // the old bot identity still works
	if got := sshSigner(t, certs.SSHCert); got != string(sshAuthorizedKey(newCA.signer.PublicKey())) {
		t.Fatal("in update_clients the new user CA must sign output certificates")
	}
	renewed := id.renew(t, s)
	if issuerOf(t, s, caUser, renewed.cert) != newCA.id {
		t.Fatal("in update_clients the new user CA must sign bot identities")
	}
	stale := &botID{key: id.key, cert: id.cert} // an identity of the old CA, kept to try after standby

	rotate(t, s, manual(caUser, wire.PhaseUpdateServers))
	rotate(t, s, manual(caUser, wire.PhaseStandby))
	set := s.caSet()
	if k := set.kinds[caUser]; len(k.all) != 1 || k.signing.id != newCA.id || k.rot.LastRotated.IsZero() {
		t.Fatalf("after standby: %+v", k.rot)
	}
	if out, _ := s.Export(context.Background(), admin.ExportUser); out != string(ssh.MarshalAuthorizedKey(newCA.signer.PublicKey())) {
		t.Fatalf("export after standby: %q, want the new CA only", out)
	}
	renewed.renew(t, s)
	c := newClient(t, s, stale.key, stale.cert)
	defer c.close()
	if _, _, err := c.do("GET", wire.PathNodes, nil, nil); err == nil {
		t.Fatal("after standby, an identity from the old user CA was accepted")
	}
}

// The host CA: the authority's own HTTPS certificate switches at
// update_servers, so a client that learnt the new CA in init keeps
// talking to it, and one that trusts only the old CA is left behind only
// then; the CA pin lists both during the rotation.
func TestRotateHostCAByHand(t *testing.T) {
	s := startTest(t)
	bt := addBot(t, s, "robot", []string{"access"}, nil)
	id := join(t, s, bt.Token)
	oldPin := s.CAPin()
	oldOnly := x509.NewCertPool()
	oldOnly.AddCert(s.signer(caHost).cert)
	trusts := func(pool *x509.CertPool) bool {
		c := clientTrusting(s, pool, id.key, id.cert)
		defer c.close()
		status, _, err := c.do("GET", wire.PathNodes, nil, nil)
		return err == nil && status == 200
	}

	rotate(t, s, manual(caHost, wire.PhaseInit))
	pins := strings.Split(s.CAPin(), ",")
	if len(pins) != 2 || pins[0] != oldPin {
		t.Fatalf("CA pin during the rotation: %s, want the old and the new", s.CAPin())
	}
	var ca wire.CAResponse
	if status, _, err := newClient(t, s, nil, nil).do("GET", wire.PathCA, nil, &ca); err != nil || status != 200 || len(ca.HostCAs) != 2 {
		t.Fatalf("GET /v1/ca during the rotation: %d %v, %d CAs", status, err, len(ca.HostCAs))
	}
	kh, _ := s.Export(context.Background(), admin.ExportHost)
	if strings.Count(kh, "@cert-authority") != 2 {
		t.Fatalf("known_hosts during the rotation:\n%s", kh)
	}
	both := hostPool(s)
	rotate(t, s, manual(caHost, wire.PhaseUpdateClients))
	if !trusts(oldOnly) {
		t.Fatal("in update_clients the authority must still present the old host CA's certificate")
	}
	hostKey, _ := newKey(t)
	pub, _ := ssh.NewPublicKey(hostKey.Public())
	line, err := s.SignHost(context.Background(), string(ssh.MarshalAuthorizedKey(pub)), []string{"n1"}, time.Hour)
	if err != nil || sshSigner(t, line) != string(sshAuthorizedKey(s.caSet().kinds[caHost].other().signer.PublicKey())) {
		t.Fatalf("in update_clients host certificates must still come from the old host CA: %v", err)
	}
	rotate(t, s, manual(caHost, wire.PhaseUpdateServers))
	if trusts(oldOnly) || !trusts(both) {
		t.Fatal("in update_servers the authority must present the new host CA's certificate")
	}
	rotate(t, s, manual(caHost, wire.PhaseStandby))
	if pin := s.CAPin(); pin != pins[1] {
		t.Fatalf("CA pin after the rotation: %s, want the new one %s", pin, pins[1])
	}
	if !trusts(both) {
		t.Fatal("after standby the authority must go on with the new host CA")
	}
}

// A rollback from update_clients: the old CA signs again at once, the new
// one is trusted until standby drops it, and what it signed is refused
// from then on.
func TestRotateRollback(t *testing.T) {
	s := startTest(t)
	bt := addBot(t, s, "robot", []string{"access"}, nil)
	id := join(t, s, bt.Token)
	old := s.signer(caUser)
	rotate(t, s, admin.RotateRequest{Type: caUser, GracePeriod: time.Hour})
	rotate(t, s, manual(caUser, wire.PhaseUpdateClients))
	fromNew := id.renew(t, s)
	res := rotate(t, s, manual(caUser, wire.PhaseRollback))
	if res.Spec.Rotation.Mode != wire.RotationManual || s.signer(caUser).id != old.id || len(res.Spec.Keys) != 2 {
		t.Fatalf("after rollback: %+v; want the old CA signing, both trusted, manual", res.Spec)
	}
	fromOld := fromNew.renew(t, s) // still trusted in rollback
	if issuerOf(t, s, caUser, fromOld.cert) != old.id {
		t.Fatal("in rollback the old user CA must sign again")
	}
	if _, err := s.Rotate(context.Background(), manual(caUser, wire.PhaseUpdateServers)); admin.KindOf(err) != admin.Conflict {
		t.Fatalf("update_servers from rollback: %v, want a conflict", err)
	}
	rotate(t, s, manual(caUser, wire.PhaseStandby))
	if k := s.caSet().kinds[caUser]; len(k.all) != 1 || k.signing.id != old.id {
		t.Fatal("standby after a rollback must keep only the old CA")
	}
	fromOld.renew(t, s)
	c := newClient(t, s, fromNew.key, fromNew.cert)
	defer c.close()
	if _, _, err := c.do("GET", wire.PathNodes, nil, nil); err == nil {
		t.Fatal("after a rollback, an identity from the dropped CA was accepted")
	}
}

// waitPhase waits (in real time, for the rotator's goroutine) until a
// kind's rotation is in phase.
func waitPhase(t testing.TB, s *Server, kind, phase string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.caSet().kinds[kind].rot.Phase != phase {
		if time.Now().After(deadline) {
			t.Fatalf("the %s CA stayed in phase %s, want %s", kind, s.caSet().kinds[kind].rot.Phase, phase)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// An automatic rotation moves a phase every third of the grace period, on
// the authority's clock, and survives a restart in a phase: the phase it
// was in is kept, and the one it moves to after lasts its full third.
func TestRotateAutomaticallyAcrossARestart(t *testing.T) {
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	dir := t.TempDir()
	cfg := func(c *Config) { c.Clock, c.DataDir = clk, dir }
	s := startTest(t, cfg)
	res := rotate(t, s, admin.RotateRequest{Type: caHost, GracePeriod: 90 * time.Second})
	if res.Spec.Rotation.Mode != wire.RotationAuto || res.Spec.Rotation.Next != wire.PhaseUpdateClients || !res.Spec.Rotation.NextAt.Equal(clk.Now().Add(30*time.Second)) {
		t.Fatalf("an automatic rotation's start: %+v", res.Spec.Rotation)
	}
	clk.Advance(29 * time.Second)
	waitPhase(t, s, caHost, wire.PhaseInit)
	clk.Advance(time.Second)
	waitPhase(t, s, caHost, wire.PhaseUpdateClients)
	pins := s.CAPin()

	s.Close()
	clk.Advance(45 * time.Second) // down past update_servers' time
	s = startTest(t, cfg)
	if got := s.caSet().kinds[caHost].rot; got.Phase != wire.PhaseUpdateClients && got.Phase != wire.PhaseUpdateServers {
		t.Fatalf("after a restart the rotation is in phase %s", got.Phase)
	}
	if s.CAPin() != pins {
		t.Fatalf("a restart changed the CA pins from %s to %s", pins, s.CAPin())
	}
	waitPhase(t, s, caHost, wire.PhaseUpdateServers)
	clk.Advance(29 * time.Second)
	waitPhase(t, s, caHost, wire.PhaseUpdateServers)
	clk.Advance(time.Second)
	waitPhase(t, s, caHost, wire.PhaseStandby)
	if k := s.caSet().kinds[caHost]; len(k.all) != 1 || s.CAPin() != strings.Split(pins, ",")[1] {
		t.Fatalf("after the automatic rotation: %d host CAs, pin %s", len(k.all), s.CAPin())
	}
	// Each phase is recorded once, across the restart, in order.
	var phases []string
	for _, e := range ofType(trailOf(t, s), audit.RotationPhase) {
		if e.CA != caHost {
			t.Errorf("a rotation event of the %s CA: %+v", e.CA, e)
		}
		phases = append(phases, e.Phase+" "+e.Message)
	}
	want := []string{"init from standby, auto", "update_clients from init, auto", "update_servers from update_clients, auto", "standby from update_servers, auto"}
	if !slices.Equal(phases, want) {
		t.Errorf("the rotation's events: %q, want %q", phases, want)
	}
}

// Bad requests get one line that says what to do, and change nothing.
func TestRotateBadRequests(t *testing.T) {
	s := startTest(t)
	rotate(t, s, manual(caHost, wire.PhaseInit))
	state := func() string {
		d, err := store.DumpState(context.Background(), s.st)
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		for _, ca := range d.CAs {
			b.WriteString(ca.ID + "/" + ca.Kind + " ")
		}
		for _, r := range d.Rotations {
			b.WriteString(r.Kind + ":" + r.Phase + ":" + r.Mode + ":" + r.Active + " ")
		}
		return b.String()
	}
	before := state()
	for _, c := range []struct {
		req  admin.RotateRequest
		kind admin.Kind
		says string
	}{
		{admin.RotateRequest{Type: "tls"}, admin.Invalid, `unknown CA type "tls": want --type=user, host or db`},
		{admin.RotateRequest{Type: ""}, admin.Invalid, `unknown CA type ""`},
		{manual(caUser, "update_everything"), admin.Invalid, `unknown phase "update_everything"`},
		{admin.RotateRequest{Type: caUser, Manual: true}, admin.Invalid, "--manual needs --phase"},
		{admin.RotateRequest{Type: caUser, Phase: wire.PhaseInit}, admin.Invalid, "--phase=init needs --manual"},
		{admin.RotateRequest{Type: caUser, GracePeriod: time.Second}, admin.Invalid, "bad --grace-period 1s"},
		{admin.RotateRequest{Type: caUser, GracePeriod: 1500 * time.Millisecond * 3}, admin.Invalid, "whole seconds"},
		{admin.RotateRequest{Type: caUser, Manual: true, Phase: wire.PhaseUpdateClients, GracePeriod: time.Hour}, admin.Invalid, "--grace-period only goes with a rotation's start"},
		{manual(caUser, wire.PhaseUpdateServers), admin.Conflict, "the user CA is not rotating (phase standby)"},
		{manual(caUser, wire.PhaseStandby), admin.Conflict, "the user CA is not rotating"},
		{manual(caHost, wire.PhaseUpdateServers), admin.Conflict, "the host CA is in phase init, which goes on to update_clients or rollback, not update_servers"},
		{manual(caHost, wire.PhaseStandby), admin.Conflict, "which goes on to update_clients or rollback, not standby"},
		{manual(caHost, wire.PhaseInit), admin.Conflict, "the host CA is already rotating (phase init"},
		{admin.RotateRequest{Type: caHost}, admin.Conflict, "the host CA is already rotating"},
	} {
		_, err := s.Rotate(context.Background(), c.req)
		if err == nil || admin.KindOf(err) != c.kind || !strings.Contains(err.Error(), c.says) || strings.Contains(err.Error(), "\n") {
			t.Errorf("Rotate %+v: %v (%v); want one %v line saying %q", c.req, err, admin.KindOf(err), c.kind, c.says)
		}
		if after := state(); after != before {
			t.Fatalf("Rotate %+v changed the state:\n%s\n%s", c.req, before, after)
		}
	}
	if n := len(ofType(trailOf(t, s), audit.RotationPhase)); n != 1 {
		t.Errorf("%d rotation events after one move and refused ones, want 1", n)
	}
	if err := s.Remove(context.Background(), policy.KindCA, caUser); admin.KindOf(err) != admin.Invalid {
		t.Fatalf("rm cas/user: %v, want invalid", err)
	}
}

// get cas and status show each kind's phase and keys.
func TestGetCAs(t *testing.T) {
	s := startTest(t)
	rotate(t, s, admin.RotateRequest{Type: caDB, GracePeriod: 3 * time.Hour})
	res, err := s.Get(context.Background(), "cas", "")
	if err != nil || len(res.CAs) != 3 {
		t.Fatalf("get cas: %+v, %v", res, err)
	}
	got := map[string]policy.CAResource{}
	for _, ca := range res.CAs {
		got[ca.Metadata.Name] = ca
	}
	db := got[caDB].Spec
	if db.Rotation.Phase != wire.PhaseInit || db.Rotation.Mode != wire.RotationAuto || db.Rotation.GracePeriod != "3h0m0s" ||
		len(db.Keys) != 2 || db.Keys[0].SSH != "" || !strings.HasPrefix(db.Keys[1].Pin, "sha256:") || db.Rotation.Next != wire.PhaseUpdateClients {
		t.Fatalf("get cas/db during a rotation: %+v", db)
	}
	if u := got[caUser].Spec; u.Rotation.Phase != wire.PhaseStandby || len(u.Keys) != 1 || !u.Keys[0].Signing || !strings.HasPrefix(u.Keys[0].SSH, "ecdsa-sha2-nistp256 ") {
		t.Fatalf("get cas/user: %+v", u)
	}
	if one, err := s.Get(context.Background(), "cert_authority", caHost); err != nil || len(one.CAs) != 1 || one.CAs[0].Spec.Type != caHost {
		t.Fatalf("get cert_authority/host: %+v, %v", one, err)
	}
	st, _ := s.Status(context.Background())
	if len(st.CAs) != 3 || !slices.ContainsFunc(st.CAs, func(c policy.CAResource) bool { return c.Spec.Rotation.Phase == wire.PhaseInit }) {
		t.Fatalf("status CAs: %+v", st.CAs)
	}
}

// The rotation's steps are single transactions: a step that cannot be
// stored leaves the rotation where it was, in the store and in use.
func TestRotateStepFailsWhole(t *testing.T) {
	s := startTest(t)
	before := s.caSet()
	s.st.Close() // every write fails from here on
	_, err := s.Rotate(context.Background(), manual(caUser, wire.PhaseInit))
	if err == nil || !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Rotate on a closed store: %v", err)
	}
	if s.caSet() != before {
		t.Fatal("a failed rotation step changed the CAs in use")
	}
}

// The pure rules of plan: where each phase may go, and what each move
// stores.
func TestPlan(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	fresh := &store.CA{ID: "new", Kind: caUser}
	standby := store.Rotation{Kind: caUser, Active: "old", Phase: wire.PhaseStandby}
	st, err := plan(standby, []string{"old"}, wire.PhaseInit, wire.RotationAuto, now, time.Hour, fresh)
	if err != nil || st.add != fresh || st.rot.Active != "old" || !st.rot.Started.Equal(now) || st.rot.GracePeriod != time.Hour {
		t.Fatalf("init: %+v, %v", st, err)
	}
	init := st.rot
	st, _ = plan(init, []string{"old", "new"}, wire.PhaseUpdateClients, wire.RotationAuto, now, 0, nil)
	if st.rot.Active != "new" || st.rot.GracePeriod != time.Hour || !st.rot.Started.Equal(now) {
		t.Fatalf("update_clients: %+v", st.rot)
	}
	st, _ = plan(st.rot, []string{"old", "new"}, wire.PhaseUpdateServers, wire.RotationManual, now, 0, nil)
	if st.rot.Active != "new" || st.rot.Mode != wire.RotationManual {
		t.Fatalf("update_servers by hand: %+v", st.rot)
	}
	done, _ := plan(st.rot, []string{"old", "new"}, wire.PhaseStandby, wire.RotationManual, now, 0, nil)
	if done.remove != "old" || done.rot.Active != "new" || done.rot.Mode != "" || !done.rot.Started.IsZero() || !done.rot.LastRotated.Equal(now) {
		t.Fatalf("standby: %+v", done)
	}
	back, _ := plan(init, []string{"old", "new"}, wire.PhaseRollback, wire.RotationAuto, now, 0, nil)
	if back.rot.Active != "old" || back.rot.Mode != wire.RotationManual {
		t.Fatalf("rollback from init: %+v", back.rot)
	}
	end, _ := plan(back.rot, []string{"old", "new"}, wire.PhaseStandby, wire.RotationManual, now, 0, nil)
	if end.remove != "new" || end.rot.Active != "old" {
		t.Fatalf("standby after rollback: %+v", end)
	}
	if _, err := plan(standby, []string{"old", "new"}, wire.PhaseInit, wire.RotationAuto, now, time.Hour, fresh); err == nil {
		t.Fatal("a standby kind with two CAs went on")
	}
	if at := nextAt(init); !at.Equal(now.Add(20 * time.Minute)) {
		t.Fatalf("next phase of an automatic rotation at %v", at)
	}
	if at := nextAt(back.rot); !at.IsZero() {
		t.Fatal("a rollback moved on by itself")
	}
}

// Two replicas on one PostgreSQL database: a rotation one of them starts
// reaches the other, both move it on at once without moving it twice, and
// when the first goes away the other finishes it.
func TestRotationFailsOverToAnotherReplica(t *testing.T) {
	srv := pgtest.Start(t)
	url := srv.NewURL(t)
	clk := clock.NewFake(time.Now().Truncate(time.Second))
	key := sealKeyFile(t)
	replica := func() *Server {
		return startTest(t, func(c *Config) { c.DB, c.Clock, c.CAKeySeal = url, clk, key })
	}
	a, b := replica(), replica()
	rotate(t, a, admin.RotateRequest{Type: caUser, GracePeriod: 90 * time.Second})
	waitPhase(t, b, caUser, wire.PhaseInit)
	if a.CAPin() != b.CAPin() || len(b.caSet().kinds[caUser].all) != 2 {
		t.Fatal("the other replica does not trust the new user CA")
	}
	clk.Advance(30 * time.Second)
	waitPhase(t, a, caUser, wire.PhaseUpdateClients)
	waitPhase(t, b, caUser, wire.PhaseUpdateClients)
	if a.signer(caUser).id != b.signer(caUser).id {
		t.Fatal("the replicas sign with different user CAs")
	}
	a.Close()
	clk.Advance(30 * time.Second)
	waitPhase(t, b, caUser, wire.PhaseUpdateServers)
	clk.Advance(30 * time.Second)
	waitPhase(t, b, caUser, wire.PhaseStandby)
	cas, err := b.st.CAs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var users int
	for _, ca := range cas {
		if ca.Kind == caUser {
			users++
		}
	}
	if users != 1 || b.caSet().kinds[caUser].all[0].id != b.signer(caUser).id {
		t.Fatalf("after the rotation the state holds %d user CAs", users)
	}
}

// With a seal key, the CA a rotation makes is stored sealed like the
// others, and an authority restarted in the middle of the rotation opens
// it.
func TestRotationSealsTheNewCA(t *testing.T) {
	dir, key := t.TempDir(), sealKeyFile(t)
	cfg := func(c *Config) { c.DataDir, c.CAKeySeal = dir, key }
	s := startTest(t, cfg)
	rotate(t, s, manual(caUser, wire.PhaseInit))
	cas, err := s.st.CAs(context.Background())
	if err != nil || len(cas) != 4 {
		t.Fatalf("CAs during a rotation: %d, %v", len(cas), err)
	}
	for _, ca := range cas {
		if !seal.IsSealed(ca.KeyDER) {
			t.Fatalf("the %s CA %s is stored unsealed", ca.Kind, ca.ID)
		}
	}
	pins := s.caResources()[0].Spec.Keys
	s.Close()
	s = startTest(t, cfg)
	if got := s.caResources()[0].Spec.Keys; len(got) != 2 || got[1].Pin != pins[1].Pin {
		t.Fatalf("after a restart: %+v, want %+v", got, pins)
	}
	rotate(t, s, manual(caUser, wire.PhaseUpdateClients))
	bt := addBot(t, s, "robot", []string{"access"}, nil)
	certs, _ := join(t, s, bt.Token).certs(t, s)
	if sshSigner(t, certs.SSHCert) != pins[1].SSH {
		t.Fatal("the new CA, opened with the seal key, does not sign")
	}
}

// A restart in any phase comes back in that phase, with the same CAs
// trusted and the same one signing each kind of certificate, and the
// rotation goes on from there.
func TestRestartInEveryPhase(t *testing.T) {
	dir := t.TempDir()
	cfg := func(c *Config) { c.DataDir = dir }
	s := startTest(t, cfg)
	bt := addBot(t, s, "robot", []string{"access"}, nil)
	id := join(t, s, bt.Token)
	for _, step := range []struct{ kind, phase string }{
		{caUser, wire.PhaseInit}, {caHost, wire.PhaseInit},
		{caUser, wire.PhaseUpdateClients}, {caHost, wire.PhaseUpdateClients},
		{caUser, wire.PhaseUpdateServers}, {caHost, wire.PhaseUpdateServers},
		{caUser, wire.PhaseRollback}, {caHost, wire.PhaseStandby},
		{caUser, wire.PhaseStandby},
	} {
		rotate(t, s, manual(step.kind, step.phase))
		before, pin, hostCert := s.caResources(), s.CAPin(), s.caSet().hostCertBy
		s.Close()
		s = startTest(t, cfg)
		after := s.caResources()
		for i := range before {
			b, a := before[i].Spec, after[i].Spec
			if b.Rotation.Phase != a.Rotation.Phase || len(b.Keys) != len(a.Keys) {
				t.Fatalf("after %s %s and a restart: %s is %+v, was %+v", step.kind, step.phase, a.Type, a, b)
			}
			for j := range b.Keys {
				if b.Keys[j].Pin != a.Keys[j].Pin || b.Keys[j].Signing != a.Keys[j].Signing {
					t.Fatalf("after %s %s and a restart: %s keys %+v, were %+v", step.kind, step.phase, a.Type, a.Keys, b.Keys)
				}
			}
		}
		if s.CAPin() != pin || s.caSet().hostCertBy != hostCert {
			t.Fatalf("after %s %s and a restart: pin %s (was %s), HTTPS certificate by %s (was %s)", step.kind, step.phase, s.CAPin(), pin, s.caSet().hostCertBy, hostCert)
		}
		id = id.renew(t, s) // the bot goes on with the restarted authority
	}
}
