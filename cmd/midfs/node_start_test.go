package main

import (
	"strings"
	"testing"
)

// node start's join method comes from a flag or MIDFS_JOIN_METHOD, as
// every flag; what cannot work with it is refused with one line before
// anything is contacted.
func TestNodeStartJoinMethodRefusals(t *testing.T) {
	base := []string{"node", "start", "--auth-server=127.0.0.1:1", "--ca-pin=sha256:" + strings.Repeat("ab", 32),
		"--name=web", "--addr=127.0.0.1:22", "--sshd-config=" + t.TempDir() + "/midfs-node.conf"}
	for _, c := range []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"iam without a token name", "", []string{"--join-method=iam"}, "--join-method=iam needs --token=NAME"},
		{"iam from the environment", "iam", nil, "--join-method=iam needs --token=NAME"},
		{"fips with a node token", "", []string{"--fips", "--token=abc"}, "--fips applies only to --join-method=iam"},
	} {
		t.Setenv("MIDFS_JOIN_METHOD", c.env)
		r := runCLI(t, "", append(base, c.args...)...)
		if r.code != exitUsage || !strings.Contains(r.err, c.want) || strings.Contains(strings.TrimSpace(r.err), "\n") {
			t.Errorf("%s: %s; want exit %d with one line %q", c.name, r, exitUsage, c.want)
		}
	}
}
