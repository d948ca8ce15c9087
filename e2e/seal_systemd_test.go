package e2e

import (
	"strings"
	"testing"
)

// The seal key reaches the authority as a systemd credential: the commented
// LoadCredential= line of midfs-auth.service, uncommented by a drop-in, is
// all it takes, with systemd's own ownership and ACLs on the file under the
// unit's dynamic user. Without the key a sealed authority refuses to start,
// in one line in the journal.
func TestAuthUnitReadsTheSealKeyCredential(t *testing.T) {
	m := bootWithUnits(t)
	m.writeFile("/etc/midfs/ca-key-seal", strings.Repeat("5a17", 16)+"\n", 0o600)
	m.writeFile("/etc/systemd/system/midfs-auth.service.d/seal.conf",
		"[Service]\nLoadCredential=ca-key-seal:/etc/midfs/ca-key-seal\n", 0o644)
	m.mustRun("systemctl", "daemon-reload")
	startAuthUnit(t, m)
	const unit = "midfs-auth.service"
	if j := m.journal(unit); !strings.Contains(j, `"ca_keys_sealed":true`) {
		t.Fatalf("the authority did not seal its CA keys with the credential; its log:\n%s", tail(j, 20))
	}

	// The state is sealed now: a start without the credential is refused.
	m.mustRun("systemctl", "stop", unit)
	m.mustRun("rm", "/etc/systemd/system/midfs-auth.service.d/seal.conf")
	m.mustRun("systemctl", "daemon-reload")
	if out, err := m.run("systemctl", "start", unit); err == nil {
		t.Fatalf("a sealed authority started without its seal key: %s", out)
	}
	if j := m.journal(unit); !strings.Contains(j, "are sealed (seal key id") {
		t.Fatalf("no line saying the keys are sealed in the journal:\n%s", tail(j, 20))
	}
}
