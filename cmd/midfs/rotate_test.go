package main

import (
	"strings"
	"testing"
)

// auth rotate by hand through the CLI: each step prints the CA's keys and
// the next command; status, get cas and auth export follow; bad input
// gets one line and an exit code, and changes nothing.
func TestAuthRotateCLI(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	out := mustCLI(t, dir, "auth", "rotate", "--type=user", "--manual", "--phase=init")
	if strings.Count(out, "sha256:") != 2 || !strings.Contains(out, "user  init   manual") ||
		!strings.Contains(out, "next: midfs auth rotate --type=user --manual --phase=update_clients (or --phase=rollback)") {
		t.Fatalf("auth rotate --phase=init printed:\n%s", out)
	}
	if out := mustCLI(t, dir, "auth", "export", "--type=user"); strings.Count(out, "ecdsa-sha2-nistp256 ") != 2 {
		t.Fatalf("auth export --type=user during a rotation:\n%s", out)
	}
	if out := mustCLI(t, dir, "status"); !strings.Contains(out, "User CA  init (manual)") || !strings.Contains(out, "Host CA  standby") {
		t.Fatalf("status during a rotation:\n%s", out)
	}
	before := mustCLI(t, dir, "get", "cas", "--format=json")
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"--type=tls"}, exitUsage, `unknown CA type "tls": want --type=user, host or db`},
		{nil, exitUsage, "give the CA to rotate with --type=user, host or db"},
		{[]string{"--type=user"}, exitFailure, "the user CA is already rotating (phase init"},
		{[]string{"--type=user", "--manual", "--phase=update_servers"}, exitFailure, "the user CA is in phase init, which goes on to update_clients or rollback, not update_servers"},
		{[]string{"--type=host", "--manual", "--phase=standby"}, exitFailure, "the host CA is not rotating"},
		{[]string{"--type=host", "--phase=init"}, exitUsage, "--phase=init needs --manual"},
		{[]string{"--type=host", "--grace-period=1s"}, exitUsage, "bad --grace-period 1s"},
	} {
		r := runCLI(t, dir, append([]string{"auth", "rotate"}, c.args...)...)
		if r.code != c.code || !strings.Contains(r.err, c.says) || strings.Contains(r.err, "\n") {
			t.Errorf("auth rotate %s: %s; want exit %d saying %q", strings.Join(c.args, " "), r, c.code, c.says)
		}
	}
	if after := mustCLI(t, dir, "get", "cas", "--format=json"); after != before {
		t.Fatalf("bad input changed the CAs:\n%s\n%s", before, after)
	}
	mustCLI(t, dir, "auth", "rotate", "--type=user", "--manual", "--phase=rollback")
	out = mustCLI(t, dir, "auth", "rotate", "--type=user", "--manual", "--phase=standby")
	if strings.Count(out, "sha256:") != 1 || strings.Contains(out, "next:") {
		t.Fatalf("auth rotate --phase=standby printed:\n%s", out)
	}
	out = mustCLI(t, dir, "auth", "rotate", "--type=host", "--grace-period=3h")
	if !strings.Contains(out, "host  init   auto") || !strings.Contains(out, "update_clients at ") {
		t.Fatalf("an automatic rotation printed:\n%s", out)
	}
	if out := mustCLI(t, dir, "get", "cas/host"); strings.Count(out, "sha256:") != 2 || strings.Contains(out, "user") {
		t.Fatalf("get cas/host:\n%s", out)
	}
	if out := mustCLI(t, dir, "status"); !strings.Contains(out, ","+strings.Split(s.CAPin(), ",")[1]) {
		t.Fatalf("status during a rotation of the host CA must show both pins:\n%s", out)
	}
}
