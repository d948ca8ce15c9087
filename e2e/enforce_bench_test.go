package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/node/enforce"
)

// BenchmarkNodeAuthorize is what enforcement at the node adds to a login:
// `ssh -F MNT/ssh_config root@NODE.CLUSTER true` to a real sshd that runs
// `midfs node authorize` (AuthorizedPrincipalsCommand) and reads the KRL
// (RevokedKeys), and the same login to an sshd configured as before
// enforcement (TrustedUserCAKeys only). The two alternate, in turns that
// swap which goes first, so machine noise hits both alike.
//
//	ms/login        median login to the enforcing sshd
//	plain-ms/login  median login to the sshd without the hook
//	x-plain         the ratio of the two medians
//	diff-ms         median of the paired differences (goal: <= 10 ms)
//	hook-ms         median run of `midfs node authorize` alone, as sshd starts it
//	version-ms      median run of `midfs --version`: what starting the binary costs
func BenchmarkNodeAuthorize(b *testing.B) {
	a := startAuthority(b)
	bin, runDir := hookDir(b)
	if err := enforce.Write(runDir, nodeState(b, a, "hooked", map[string]string{"env": "dev"})); err != nil {
		b.Fatal(err)
	}
	hooked := startSSHDWith(b, a, enforcingConfig(bin, runDir), "hooked."+cluster, "hooked")
	plain := startSSHD(b, a, "plain."+cluster, "plain")
	a.admin("nodes", "add", "hooked", "--addr="+hooked.addr(), "--labels=env=dev")
	a.admin("nodes", "add", "plain", "--addr="+plain.addr(), "--labels=env=dev")
	dir := newMountDir(b, publicDir(b), 0)
	ag := benchMount(b, a, dir, "hook")
	waitServed(b, ag)
	waitFor(b, "both nodes in ssh_config", 30*time.Second, func() bool {
		cfg := string(ag.read("ssh_config"))
		return strings.Contains(cfg, "hooked."+cluster) && strings.Contains(cfg, "plain."+cluster)
	})

	login := func(node string, s *sshd) float64 {
		t0 := time.Now()
		out, err := sshRun(b, dir, "root@"+node+"."+cluster, "true")
		el := time.Since(t0)
		if err != nil {
			b.Fatalf("ssh to %s: %v\n%s\nsshd:\n%s", node, err, out, tail(s.logs.String(), 10))
		}
		return ms(el)
	}
	login("hooked", hooked) // warm: the first connection pays for the page cache
	login("plain", plain)

	certB64 := strings.Fields(string(ag.read("key-cert.pub")))[1]
	hook := func() float64 {
		cmd := exec.Command(bin, "node", "authorize", "--run-dir="+runDir, "root", certB64)
		t0 := time.Now()
		out, err := cmd.Output()
		el := time.Since(t0)
		if err != nil || string(out) != "root\n" {
			b.Fatalf("%s node authorize: %v, printed %q", bin, err, out)
		}
		return ms(el)
	}

	version := func() float64 {
		t0 := time.Now()
		if err := exec.Command(bin, "--version").Run(); err != nil {
			b.Fatal(err)
		}
		return ms(time.Since(t0))
	}

	var withHook, without, hookRuns, versionRuns []float64
	turn := 0
	for b.Loop() {
		for range loginPairs {
			turn++
			if turn%2 == 0 {
				withHook = append(withHook, login("hooked", hooked))
				without = append(without, login("plain", plain))
			} else {
				without = append(without, login("plain", plain))
				withHook = append(withHook, login("hooked", hooked))
			}
			hookRuns = append(hookRuns, hook())
			versionRuns = append(versionRuns, version())
		}
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(withHook), "ms/login")
	b.ReportMetric(median(without), "plain-ms/login")
	b.ReportMetric(median(withHook)/median(without), "x-plain")
	diffs := make([]float64, len(withHook))
	for i := range withHook {
		diffs[i] = withHook[i] - without[i]
	}
	b.ReportMetric(median(diffs), "diff-ms")
	b.ReportMetric(median(hookRuns), "hook-ms")
	b.ReportMetric(median(versionRuns), "version-ms")
}
