package e2e

// The units of contrib/ under a real systemd as PID 1 (nspawn_test.go).

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/node"
)

// bootWithUnits boots a container with the binary under test as
// /usr/bin/midfs (where the units look) and the units of contrib/.
func bootWithUnits(t *testing.T, extra ...map[string]string) *machine {
	t.Helper()
	binds := map[string]string{"/usr/bin/midfs": midfsBin, "/usr/bin/" + node.HookName: hookBin}
	for _, e := range extra {
		for inside, host := range e {
			binds[inside] = host
		}
	}
	for _, u := range []string{"midfs@.service", "midfs-auth.service", "midfs-node.service"} {
		abs, err := filepath.Abs(filepath.Join("..", "contrib", u))
		if err != nil {
			t.Fatal(err)
		}
		binds["/etc/systemd/system/"+u] = abs
	}
	return bootMachine(t, machineOptions{Binds: binds})
}

// startAuthUnit starts midfs-auth.service in m and returns the HOST:PORT it
// listens on (loopback of the container's own network) and its CA pin.
func startAuthUnit(t *testing.T, m *machine) (addr, pin string) {
	t.Helper()
	addr = "127.0.0.1:3025"
	m.writeFile("/etc/midfs/auth.yaml", "listen: "+addr+"\ncluster_name: "+cluster+"\n", 0o600)
	m.mustRun("systemctl", "start", "midfs-auth.service")
	pin = regexp.MustCompile(`sha256:[0-9a-f]{64}`).FindString(m.mustRun("midfs", "status"))
	if pin == "" {
		t.Fatal("no CA pin in `midfs status` inside the container")
	}
	return addr, pin
}

// midfs@.service under systemd as PID 1 keeps the bot identity across
// restarts of the service: `systemctl restart`, and kill -9 of the agent,
// which Restart= answers. The join token works once and is taken out of
// the config after the first start, so every later mount comes from the
// bot identity in the kernel keyring. (A reboot empties the keyring by
// design and needs a new token; not tested.)
func TestAgentUnitKeepsIdentityAcrossRestarts(t *testing.T) {
	m := bootWithUnits(t)
	addr, pin := startAuthUnit(t, m)
	tok := addRobot(t, m)

	// The keyring is the host's: a mount point named after the machine
	// names the key uniquely. Remove it at the end.
	mnt := "/opt/" + m.name
	store, err := joiner.OpenStore("keyring", joiner.StoreName(addr, mnt))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := store.Delete(); err != nil {
			t.Errorf("cannot remove the test's key from the user keyring: %v", err)
		}
	})
	if err := os.MkdirAll(m.path(mnt), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("mountpoint: %s\nauth_server: %s\nca_pin: %s\nlog_level: debug\n", mnt, addr, pin)
	m.writeFile("/etc/midfs/robot.yaml", cfg+"token: "+tok+"\n", 0o600)

	const unit = "midfs@robot.service"
	// Type=notify: start returns once the tree is mounted and readable.
	if out, err := m.run("systemctl", "start", unit); err != nil {
		t.Fatalf("systemctl start %s: %v\n%s\n%s", unit, err, out, m.journal(unit))
	}
	cert := m.mustRun("cat", mnt+"/key-cert.pub")
	if b, err := store.Load(); err != nil || len(b) == 0 {
		t.Fatalf("the first start kept no bot identity in the user keyring (%v); its log:\n%s", err, tail(m.journal(unit), 20))
	}
	m.writeFile("/etc/midfs/robot.yaml", cfg, 0o600) // the token is spent

	// served checks the unit came back with a new process that restarted
	// from the stored bot identity, and took the mount over: it serves the
	// issuance of before (a restart changes nothing readers see) until a
	// renewal, which it makes.
	restarts := 0
	served := func(how string, oldPID string) {
		t.Helper()
		st := m.unit(unit, "ActiveState", "MainPID")
		if st["ActiveState"] != "active" || st["MainPID"] == oldPID || st["MainPID"] == "0" {
			t.Fatalf("after %s: %s is %v; its log:\n%s", how, unit, st, tail(m.journal(unit), 20))
		}
		now, err := m.run("cat", mnt+"/key-cert.pub")
		if err != nil || now != cert {
			t.Fatalf("after %s the mount does not serve the certificate of before: %v %q", how, err, now)
		}
		m.mustRun("midfs", "renew", mnt)
		if now, _ = m.run("cat", mnt+"/key-cert.pub"); now == cert || !strings.Contains(now, "-cert-v01@openssh.com") {
			t.Fatalf("after %s the agent does not renew: %q", how, now)
		}
		cert = now
		restarts++
		if n := strings.Count(m.journal(unit), "restarting from the stored bot identity"); n != restarts {
			t.Fatalf("after %s the agent did not restart from the stored bot identity (%d of %d starts did):\n%s", how, n, restarts, tail(m.journal(unit), 20))
		}
	}

	pid := m.unit(unit, "MainPID")["MainPID"]
	if out, err := m.run("systemctl", "restart", unit); err != nil {
		t.Fatalf("systemctl restart %s: %v\n%s\n%s", unit, err, out, tail(m.journal(unit), 20))
	}
	served("systemctl restart", pid)

	// A crash: Restart=on-failure brings it back after RestartSec=, and it
	// takes the mount over from the unit's file descriptor store.
	st := m.unit(unit, "MainPID", "NRestarts")
	m.mustRun("kill", "-KILL", st["MainPID"])
	waitFor(t, "systemd to restart the killed agent", 60*time.Second, func() bool {
		now := m.unit(unit, "ActiveState", "MainPID", "NRestarts")
		return now["NRestarts"] != st["NRestarts"] && now["ActiveState"] == "active"
	})
	served("kill -9", st["MainPID"])

	if out, err := m.run("systemctl", "stop", unit); err != nil {
		t.Fatalf("systemctl stop %s: %v\n%s", unit, err, out)
	}
	if out, _ := m.run("findmnt", "-n", mnt); out != "" {
		t.Fatalf("still mounted after systemctl stop: %s", out)
	}
	if _, err := store.Load(); errors.Is(err, joiner.ErrNotStored) {
		t.Error("stopping the service lost the bot identity")
	}
}
