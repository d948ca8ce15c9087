package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// --ca-key-seal comes from the flag, MIDFS_CA_KEY_SEAL or the config file;
// a bad key file is one line, and no state is made.
func TestAuthStartRefusesABadSealKeyFromEverySource(t *testing.T) {
	tmp := t.TempDir()
	open := filepath.Join(tmp, "open.key")
	if err := os.WriteFile(open, []byte(strings.Repeat("ab", 32)), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o644)
	conf := filepath.Join(tmp, "auth.yaml")
	if err := os.WriteFile(conf, []byte("ca_key_seal: "+open+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		env  string
		args []string
		want string
	}{
		{"flag", "", []string{"--ca-key-seal", filepath.Join(tmp, "missing.key")}, "missing.key: no such file"},
		{"environment", open, nil, "run chmod 600"},
		{"config file", "", []string{"--config", conf}, "run chmod 600"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.env != "" {
				t.Setenv("MIDFS_CA_KEY_SEAL", c.env)
			}
			dir := filepath.Join(t.TempDir(), "state")
			r := runCLI(t, "", append([]string{"auth", "start", "--data-dir", dir, "--listen=127.0.0.1:0"}, c.args...)...)
			if r.code != exitAuthority || strings.ContainsAny(r.err, "\r\n") || !strings.Contains(r.err, c.want) {
				t.Errorf("auth start: %s; want exit %d and one line with %q", r, exitAuthority, c.want)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("the refused start made its data dir (%v)", err)
			}
		})
	}
}
