package e2e

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestReadmeQuickStart runs the README's quick start, in order, as its
// reader would, then the steps it gives to stop what it started. It runs in
// private mount, network, UTS and PID namespaces, with empty /opt, /var/lib,
// /run, /etc/ssh and /usr/local/bin, so it meets no earlier state and leaves
// none. Two lines differ from the README: the packages are already installed
// and the binary under test is copied in instead of built; and the
// foreground `midfs mount` runs in the background, where the README says
// "in another terminal".
func TestReadmeQuickStart(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, qs, _ := strings.Cut(string(readme), "## Quick start")
	qs, _, _ = strings.Cut(qs, "To run the tests")
	var steps []string
	for _, l := range strings.Split(qs, "\n") {
		if s, ok := strings.CutPrefix(l, "    "); ok {
			steps = append(steps, s)
		}
	}
	script := strings.Join(steps, "\n")
	for old, repl := range map[string]string{
		"apt-get update && apt-get install -y fuse3 openssh-client openssh-server tree": "true",
		"go build -o /usr/local/bin/midfs ./cmd/midfs":                                  "cp " + midfsBin + " /usr/local/bin/midfs",
		"mkdir -p /opt/machine-id && midfs mount /opt/machine-id": "mkdir -p /opt/machine-id && { midfs mount /opt/machine-id 2>/dev/null & agent=$!; }\n" +
			"for i in $(seq 300); do test -e /opt/machine-id/key.pub && break; sleep 0.1; done",
	} {
		if !strings.Contains(script, old) {
			t.Fatalf("the README's quick start no longer has %q; update this test", old)
		}
		script = strings.Replace(script, old, repl, 1)
	}
	stop := regexp.MustCompile("To stop what the quick start started: the demo sshd with `([^`]+)`").FindStringSubmatch(qs)
	if stop == nil {
		t.Fatal("the README's quick start does not say how to stop the demo sshd")
	}
	script = "set -eu\nip link set lo up\nhostname quickstart\n" +
		"for d in /opt /var/lib /run /etc/ssh /usr/local/bin; do mount -t tmpfs tmpfs $d; done\n" +
		"export HOME=$(mktemp -d)\n" + script + "\n" +
		"echo STOP\n" + stop[1] + "\n" +
		"kill -INT $agent; wait $agent\n" + // Ctrl-C
		// Only the quick start's mount: the namespace starts with a copy of
		// every mount of the host, whatever else runs there.
		"! awk '$5 == \"/opt/machine-id\"' /proc/self/mountinfo | grep -q . || { echo still mounted; exit 1; }\n" +
		"for i in $(seq 100); do pgrep -x sshd >/dev/null || break; sleep 0.1; done\n" +
		"! pgrep -x sshd || { echo sshd still running; exit 1; }\n"

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--net", "--uts", "--pid", "--fork", "--mount-proc",
		"--propagation", "private", "bash", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the quick start failed: %v\n%s", err, out)
	}
	for _, want := range []string{"key-cert.pub", "renewed by agent", "\nroot\n", "127.0.0.1:2222  env=demo"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the quick start's output lacks %q:\n%s", want, out)
		}
	}
}
