package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/joiner"
)

// midfs-node.service under systemd as PID 1: started with a node token in
// its config, it is ready (Type=notify) only once sshd can use what it
// serves; an sshd that includes the fragment presents the node's host
// certificate, signed through the unit's agent socket. Restarts (systemctl
// restart, kill -9 answered by Restart=) need no token: the identity and
// host key come back from the kernel keyring, and sshd presents a
// certificate for the same host key. Stopped, the node leaves the
// inventory; the run directory stays for sshd.
func TestNodeUnit(t *testing.T) {
	m := bootWithUnits(t)
	addr, pin := startAuthUnit(t, m)
	out := m.mustRun("midfs", "tokens", "add", "--type=node", "--labels=env=prod")
	tok := inviteRe.FindStringSubmatch(out)
	if tok == nil {
		t.Fatalf("no token in `tokens add` output:\n%s", out)
	}
	name := m.name // unique: the keyring is the host's
	for _, s := range []string{"", "-host"} {
		store, err := joiner.OpenStore("keyring", joiner.NodeStoreName(addr, name)+s)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := store.Delete(); err != nil {
				t.Errorf("cannot remove the node's key from the user keyring: %v", err)
			}
		})
	}
	const sshdPort = "2222"
	cfg := fmt.Sprintf("auth_server: %s\nca_pin: %s\nname: %s\naddr: 127.0.0.1:%s\nlabels: team=web\n"+
		"sshd_config: /etc/ssh/sshd_config.d/midfs-node.conf\nheartbeat_interval: 2s\nlog_level: debug\n", addr, pin, name, sshdPort)
	m.writeFile("/etc/midfs/node.yaml", cfg+"token: "+tok[1]+"\n", 0o600)

	const unit = "midfs-node.service"
	if out, err := m.run("systemctl", "start", unit); err != nil {
		t.Fatalf("systemctl start %s: %v\n%s\n%s", unit, err, out, m.journal(unit))
	}
	for _, f := range []string{"agent.sock", "host_key.pub", "host_key-cert.pub", "user_ca.pub", "state.json", "revoked.krl"} {
		m.mustRun("test", "-e", "/run/midfs-node/"+f)
	}
	frag := m.mustRun("cat", "/etc/ssh/sshd_config.d/midfs-node.conf")
	hook := "AuthorizedPrincipalsCommand /usr/bin/midfs-node-hook /run/midfs-node/authorize.sock %u %k"
	if !strings.Contains(frag, "HostKeyAgent /run/midfs-node/agent.sock") || !strings.Contains(frag, hook) {
		t.Fatalf("fragment:\n%s", frag)
	}
	// The sandboxed service answers sshd's hook, run as sshd runs it (as
	// nobody): a key that is no certificate gets nothing, and the reason
	// is in the service's journal.
	if out, err := m.run("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
		"/usr/bin/midfs-node-hook", "/run/midfs-node/authorize.sock", "root", "QUFBQQ=="); err != nil || out != "" {
		t.Fatalf("the hook as nobody: %v, printed %q", err, out)
	}
	waitFor(t, "the refusal in the journal", 30*time.Second, func() bool {
		return strings.Contains(m.journal(unit), "refused login")
	})
	if nodes := m.mustRun("midfs", "get", "nodes"); !strings.Contains(nodes, name) || !strings.Contains(nodes, "env=prod,team=web") || !strings.Contains(nodes, "online") {
		t.Fatalf("get nodes:\n%s", nodes)
	}
	m.writeFile("/etc/midfs/node.yaml", cfg, 0o600) // the token is spent

	// A stock sshd that includes the fragment, as the printed line asks.
	m.writeFile("/etc/midfs/sshd_config", "Include /etc/ssh/sshd_config.d/midfs-node.conf\nPort "+sshdPort+
		"\nListenAddress 127.0.0.1\nPidFile /run/midfs-test-sshd.pid\nUsePAM no\n", 0o600)
	m.mustRun("mkdir", "-p", "/run/sshd")
	m.mustRun("/usr/sbin/sshd", "-f", "/etc/midfs/sshd_config")
	hostKey := ""
	presents := func(how string) {
		t.Helper()
		var out string
		waitFor(t, "sshd in the container to present the node's host certificate after "+how, 30*time.Second, func() bool {
			out, _ = m.run("ssh-keyscan", "-c", "-p", sshdPort, "127.0.0.1")
			return strings.Contains(out, "-cert-v01@openssh.com")
		})
		cert := m.mustRun("sh", "-c", "ssh-keyscan -c -p "+sshdPort+" 127.0.0.1 2>/dev/null | awk '{print $(NF-1), $NF}' | ssh-keygen -L -f -")
		if !strings.Contains(cert, name+"."+cluster) {
			t.Fatalf("after %s sshd presents a certificate not for %s.%s:\n%s", how, name, cluster, cert)
		}
		key := m.mustRun("cat", "/run/midfs-node/host_key.pub")
		if hostKey != "" && key != hostKey {
			t.Fatalf("after %s the host key changed", how)
		}
		hostKey = key
	}
	presents("the first start")

	restarts := 0
	restarted := func(how, oldPID string) {
		t.Helper()
		st := m.unit(unit, "ActiveState", "MainPID")
		if st["ActiveState"] != "active" || st["MainPID"] == oldPID || st["MainPID"] == "0" {
			t.Fatalf("after %s: %s is %v; its log:\n%s", how, unit, st, tail(m.journal(unit), 20))
		}
		restarts++
		if n := strings.Count(m.journal(unit), "restarting from the stored bot identity"); n != restarts {
			t.Fatalf("after %s the node agent did not restart from the keyring (%d of %d starts did):\n%s", how, n, restarts, tail(m.journal(unit), 20))
		}
		presents(how)
	}
	pid := m.unit(unit, "MainPID")["MainPID"]
	if out, err := m.run("systemctl", "restart", unit); err != nil {
		t.Fatalf("systemctl restart %s: %v\n%s\n%s", unit, err, out, tail(m.journal(unit), 20))
	}
	restarted("systemctl restart", pid)

	st := m.unit(unit, "MainPID", "NRestarts")
	m.mustRun("kill", "-KILL", st["MainPID"])
	waitFor(t, "systemd to restart the killed node agent", 60*time.Second, func() bool {
		now := m.unit(unit, "ActiveState", "MainPID", "NRestarts")
		return now["NRestarts"] != st["NRestarts"] && now["ActiveState"] == "active"
	})
	restarted("kill -9", st["MainPID"])

	if out, err := m.run("systemctl", "stop", unit); err != nil {
		t.Fatalf("systemctl stop %s: %v\n%s", unit, err, out)
	}
	waitFor(t, "the stopped node to leave the inventory", 30*time.Second, func() bool {
		return strings.Contains(m.mustRun("midfs", "get", "nodes/"+name), "offline")
	})
	m.mustRun("test", "-e", "/run/midfs-node/host_key-cert.pub")
	m.run("sh", "-c", "kill $(cat /run/midfs-test-sshd.pid)")
}
