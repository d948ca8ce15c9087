package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/internal/testenv"
)

// A node set up only with an iam token of nodes and `midfs node start
// --join-method=iam`, the AWS identity from its environment, verified by
// the STS stand-in: a bot (joined by IAM too) logs into it, it carries the token's labels, it
// joins again through IAM at every renewal (STS sees each) and stays
// online and reachable, and the trail records its joins as node.joined
// with method iam.
func TestNodeJoinsWithIAM(t *testing.T) {
	a, sts := iamAuthority(t)
	yaml := filepath.Join(t.TempDir(), "iam-nodes.yaml")
	if err := os.WriteFile(yaml, []byte(testenv.IAMNodeTokenYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	a.admin("create", "-f", yaml)
	iamEnv(t, iamE2ECaller)
	n := newNode(t, a, "web", "--join-method=iam", "--token=iam-nodes", "--labels=env=dev,team=web",
		"--certificate-ttl=1m", "--renewal-interval=2s")
	n.start("")
	n.startSSHD()

	if nodes := a.admin("get", "nodes/web"); !strings.Contains(nodes, "env=prod,team=web") || !strings.Contains(nodes, "online") {
		t.Fatalf("get nodes/web (the token's env=prod over the node's env=dev):\n%s", nodes)
	}
	dir := filepath.Join(publicDir(t), "machine-id") // bot robot of iamAuthority, by IAM too
	os.Mkdir(dir, 0o755)
	bot := startMount(t, dir, "--auth-server="+a.addr, "--join-method=iam", "--token=iam-token", "--ca-pin="+a.pin, "--storage=memory")
	if out, err := sshTo(t, bot, "web", "echo", "hello-from-web"); err != nil || !strings.Contains(out, "hello-from-web") {
		t.Fatalf("ssh root@web.%s: %v\n%s\nnode log:\n%s", cluster, err, out, tail(nodeLog(n.agent), 15))
	}
	verified := func() int {
		ok := 0
		for _, r := range sts.Results() {
			if r.Status == 200 {
				ok++
			}
		}
		return ok
	}
	base := verified() // the node's join and the bot's, and any join again of the node so far
	waitFor(t, "two joins again of the node through IAM", time.Minute, func() bool { return verified() >= base+2 })
	if out, err := sshTo(t, bot, "web", "true"); err != nil {
		t.Fatalf("ssh after the node joined again: %v\n%s", err, out)
	}
	if log := nodeLog(n.agent); strings.Contains(log, `"level":"ERROR"`) || strings.Contains(log, iamE2ECaller.SecretAccessKey) {
		t.Errorf("node agent log has errors or the AWS secret:\n%s", tail(log, 20))
	}
	events := a.admin("events", "--type=node.joined", "--format=json")
	if strings.Count(events, `"method":"iam"`) < 3 || !strings.Contains(events, `"aws_account":"111111111111"`) {
		t.Errorf("node.joined events:\n%s", events)
	}
}
