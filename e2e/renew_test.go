package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestRenewSignalsOnlyThatMount: `midfs renew DIR` renews the agent serving
// DIR and returns once its certificate changed; another agent on the same
// machine, and the shell around the command, are left alone.
func TestRenewSignalsOnlyThatMount(t *testing.T) {
	a := startAuthority(t)
	one := mountRobot(t, a, "access", "root")
	two := mountRobot(t, a, "access", "root")
	oneCert, twoCert := one.read("key-cert.pub"), two.read("key-cert.pub")

	// Through a shell whose command line says `midfs mount`, which pkill -f
	// would have killed along with both agents.
	sh := exec.Command("sh", "-c", `: midfs mount; "$0" renew "$1"`, midfsBin, one.dir)
	out, err := sh.CombinedOutput()
	if err != nil {
		t.Fatalf("midfs renew %s: %v\n%s", one.dir, err, out)
	}
	if bytes.Equal(one.read("key-cert.pub"), oneCert) {
		t.Errorf("midfs renew returned before %s served a new certificate", one.dir)
	}
	if !bytes.Equal(two.read("key-cert.pub"), twoCert) {
		t.Errorf("midfs renew %s also renewed %s", one.dir, two.dir)
	}
	for _, ag := range []*agent{one, two} {
		select {
		case <-ag.done:
			t.Errorf("the agent of %s exited: %v", ag.dir, ag.err)
		default:
		}
	}
}

// TestRenewFailsWithOneLine: a renewal that cannot happen (the authority
// is down) and a directory no agent serves each end in one line, non-zero.
func TestRenewFailsWithOneLine(t *testing.T) {
	a := startAuthority(t)
	ag := mountRobot(t, a, "access", "root")
	a.stop()
	r := run(t, "renew", ag.dir, "--timeout=2s")
	if r.code != 1 || !strings.Contains(r.stderr, "did not renew within 2s") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("renew with the authority down: want exit 1 and one line: %s", r)
	}

	plain := filepath.Join(publicDir(t), "plain")
	os.Mkdir(plain, 0o755)
	r = run(t, "renew", plain)
	if r.code != 10 || !strings.Contains(r.stderr, "is not a midfs mount") || strings.Count(r.stderr, "\n") != 1 {
		t.Errorf("renew of a plain directory: want exit 10 and one line: %s", r)
	}
}
