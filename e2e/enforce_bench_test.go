package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/node/enforce"
)

// BenchmarkNodeAuthorize is what enforcement at the node adds to a login:
// `ssh -F MNT/ssh_config root@NODE.CLUSTER true` to a real sshd that runs
// midfs-node-hook (AuthorizedPrincipalsCommand, answered by the node
// agent's code on its socket) and reads the KRL (RevokedKeys), and the
// same login to an sshd configured as before enforcement
// (TrustedUserCAKeys only). The two alternate, in turns that swap which
// goes first, so machine noise hits both alike.
//
//	ms/login        median login to the enforcing sshd
//	plain-ms/login  median login to the sshd without the hook
//	x-plain         the ratio of the two medians
//	diff-ms         median of the paired differences (goal: <= 10 ms)
//	hook-ms         median run of the hook alone, as sshd starts it (sshd runs it twice a login)
//	true-ms         median run of /bin/true: what starting any program costs
func BenchmarkNodeAuthorize(b *testing.B) {
	a := startAuthority(b)
	hn := newHookNode(b)
	hn.publish(b, nodeState(b, a, "hooked", map[string]string{"env": "dev"}))
	hooked := startSSHDWith(b, a, hn.sshdConfig(false), "hooked."+cluster, "hooked")
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
	nobody := lookupID(b, "passwd", enforce.HookUser)
	run := func(want string, name string, args ...string) float64 {
		cmd := exec.Command(name, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		t0 := time.Now()
		out, err := cmd.Output()
		el := time.Since(t0)
		if err != nil || string(out) != want {
			b.Fatalf("%s: %v, printed %q", name, err, out)
		}
		return ms(el)
	}
	hook := func() float64 {
		return run("root\n", hn.hook, filepath.Join(hn.runDir, enforce.HookSocket), "root", certB64)
	}
	trueRun := func() float64 { return run("", "/bin/true") }

	var withHook, without, hookRuns, trueRuns []float64
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
			trueRuns = append(trueRuns, trueRun())
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
	b.ReportMetric(median(trueRuns), "true-ms")
}
