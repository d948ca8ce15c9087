package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// addNodes stores n nodes named PREFIX-00000... with `midfs create -f`, a
// file of at most 2,000 nodes (about 200 KB) at a time.
func (a *authority) addNodes(prefix string, n int) {
	a.t.Helper()
	path := filepath.Join(a.t.TempDir(), "nodes.yaml")
	for start := 0; start < n; start += 2000 {
		var b strings.Builder
		for i := start; i < min(start+2000, n); i++ {
			fmt.Fprintf(&b, "---\nkind: node\nversion: v2\nmetadata:\n  name: %s-%05d\n  labels:\n    env: prod\nspec:\n  addr: 10.%d.%d.%d:22\n",
				prefix, i, 100+i>>16&127, i>>8&255, i&255)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
			a.t.Fatal(err)
		}
		a.admin("create", "-f", path)
	}
}

// countHosts counts the node blocks of an ssh_config.
func countHosts(cfg []byte, prefix string) int {
	return bytes.Count(cfg, []byte("\nHost "+prefix+"-"))
}

// An inventory far above what one small answer holds (3,000 nodes, about
// 240 KB of node list) reaches the mount whole; a node added later shows up
// in the mounted ssh_config without a restart; renewals go on. Until the
// node list was streamed, the agent spent its token and exited.
func TestLargeInventoryReachesTheMount(t *testing.T) {
	const n = 3000
	a := startAuthority(t)
	a.addNodes("node", n)
	ag := mountRobot(t, a, "access", "root")
	if got := countHosts(ag.read("ssh_config"), "node"); got != n {
		t.Fatalf("the mounted ssh_config lists %d of %d nodes", got, n)
	}

	a.admin("nodes", "add", "late-00000", "--addr=10.99.0.1:22")
	waitFor(t, "the added node in the mounted ssh_config", 2*time.Minute, func() bool {
		return bytes.Contains(ag.read("ssh_config"), []byte("\nHost late-00000."+cluster+"\n"))
	})

	before := ag.read("key.pub")
	ag.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "a renewal after SIGHUP", 30*time.Second, func() bool { return !bytes.Equal(ag.read("key.pub"), before) })
	if got := countHosts(ag.read("ssh_config"), "node"); got != n {
		t.Errorf("after the renewal the mounted ssh_config lists %d of %d nodes", got, n)
	}
	if strings.Contains(ag.logs.String(), "renewal failed") {
		t.Errorf("a renewal failed:\n%s", tail(ag.logs.String(), 20))
	}
}
