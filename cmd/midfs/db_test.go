package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// auth start --db (or MIDFS_DB, or db: in the config file) that names no
// usable database fails at once with one line that never shows the
// password, the authority's exit code, and nothing served.
func TestAuthStartWithABadDatabase(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	const secret = "s3cret-pw"
	// A good seal key, so that the refusal is the database's.
	sealFile := filepath.Join(t.TempDir(), "ca-key-seal")
	if err := os.WriteFile(sealFile, []byte(strings.Repeat("5a17", 16)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		what, db, env, want string
	}{
		{"another scheme", "mysql://midfs:" + secret + "@db/midfs", "", "bad --db"},
		{"nothing listening", "postgres://midfs:" + secret + "@" + closed + "/midfs", "", "connection refused"},
		{"MIDFS_DB, unparsable", "", "postgres://midfs:" + secret + "@127.0.0.1:port/midfs", "bad database URL"},
	} {
		args := []string{"auth", "start", "--listen=127.0.0.1:0", "--ca-key-seal=" + sealFile}
		if c.db != "" {
			args = append(args, "--db="+c.db)
		}
		t.Setenv("MIDFS_DB", c.env)
		r := runCLI(t, t.TempDir(), args...)
		if r.code != exitAuthority || strings.ContainsAny(r.err, "\r\n") || !strings.Contains(r.err, c.want) || strings.Contains(r.err+r.out, secret) {
			t.Errorf("%s: %s; want exit %d and one line with %q, without the password", c.what, r, exitAuthority, c.want)
		}
	}
}

// auth migrate says what it needs, and a source that holds no state is one
// line.
func TestAuthMigrateRefusals(t *testing.T) {
	if r := runCLI(t, "", "auth", "migrate", "--to=postgres://db/midfs"); r.code != exitUsage || !strings.Contains(r.err, "--from=sqlite:PATH") {
		t.Errorf("auth migrate without --from: %s", r)
	}
	empty := t.TempDir()
	r := runCLI(t, "", "auth", "migrate", "--from=sqlite:"+empty, "--to=postgres://midfs:pw@127.0.0.1:1/midfs")
	if r.code != exitFailure || strings.ContainsAny(r.err, "\r\n") || !strings.Contains(r.err, "no midfs state in "+empty) {
		t.Errorf("auth migrate from an empty dir: %s", r)
	}
}
