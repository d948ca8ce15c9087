package e2e

// CA rotation as a user sees it: logins through a mount go on while the
// CAs behind them are replaced.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/testenv"
)

// ca is one kind of CA as `midfs get cas/KIND --format=json` shows it.
func (a *authority) ca(kind string) policy.CAResource {
	a.t.Helper()
	var cas []policy.CAResource
	if err := json.Unmarshal([]byte(a.admin("get", "cas/"+kind, "--format=json")), &cas); err != nil || len(cas) != 1 {
		a.t.Fatalf("get cas/%s: %v %+v", kind, err, cas)
	}
	return cas[0]
}

// signing is the SSH key (authorized_keys form) of a kind's signing CA.
func (a *authority) signing(kind string) string {
	a.t.Helper()
	for _, k := range a.ca(kind).Spec.Keys {
		if k.Signing {
			return k.SSH
		}
	}
	a.t.Fatalf("no signing %s CA", kind)
	return ""
}

// rotate runs `midfs auth rotate --type=KIND args...`.
func (a *authority) rotate(kind string, args ...string) string {
	a.t.Helper()
	return a.admin(append([]string{"auth", "rotate", "--type=" + kind}, args...)...)
}

// certSigner is the CA key (authorized_keys form) that signed the mount's
// SSH certificate.
func certSigner(t testing.TB, ag *agent) string {
	t.Helper()
	pub, _, _, _, err := ssh.ParseAuthorizedKey(ag.read(identity.FileSSHCert))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub.(*ssh.Certificate).SignatureKey)))
}

// pemCount is how many certificates a served PEM file holds.
func pemCount(ag *agent, name string) int {
	return strings.Count(string(ag.read(name)), "BEGIN CERTIFICATE")
}

// A node whose sshd an operator keeps by hand, with `auth export` and
// `auth sign`, through a rotation of the user CA step by step and one of
// the host CA over a short grace period: logins through a mount, in a
// loop with StrictHostKeyChecking, never fail, and afterwards a
// certificate of the old user CA is refused.
func TestRotationWithAHandKeptSSHD(t *testing.T) {
	testenv.RequireFUSE(t)
	a := startAuthority(t)
	s := startSSHD(t, a, "web."+cluster, "web")
	a.admin("nodes", "add", "web", "--addr="+s.addr())
	bot := mountRobot(t, a, "access", "root")
	target := "root@web." + cluster
	waitFor(t, "web in the mount's ssh_config", 30*time.Second, func() bool {
		return strings.Contains(string(bot.read(identity.FileSSHConfig)), "Host web."+cluster)
	})
	if out, err := sshLoginNoShell(t, bot.dir, target); err != nil {
		t.Fatalf("first login: %v\n%s\nsshd:\n%s", err, out, tail(s.logs.String(), 10))
	}
	// The mount's credentials of the old user CA, kept to try after standby.
	old := t.TempDir()
	os.WriteFile(filepath.Join(old, "key"), bot.read(identity.FileKey), 0o600)
	os.WriteFile(filepath.Join(old, "key-cert.pub"), bot.read(identity.FileSSHCert), 0o644)
	// As the README says: --out, because sshd reads the file at every
	// login, and a login that met it emptied by a shell's > was refused.
	export := func() {
		a.admin("auth", "export", "--type=user", "--out="+filepath.Join(s.dir, "user_ca.pub"))
	}

	// A refused login names its ssh process, whose opens the agent logs
	// with the generation each got.
	var refusedPIDs sync.Map
	logins := startLoginLoop(t, func() (string, error) {
		cmd := exec.Command("ssh", append(sshOptions(bot.dir), "-o", "IdentityAgent=none", "-s", target, "sftp")...)
		cmd.Env = envWithout("SSH_AUTH_SOCK")
		out, err := cmd.CombinedOutput()
		if err != nil {
			refusedPIDs.Store(cmd.Process.Pid, true)
			return fmt.Sprintf("%s(ssh pid %d, %s)", out, cmd.Process.Pid, time.Now().Format(time.StampMicro)), err
		}
		return string(out), nil
	})
	// Every wait is for what the mount must show within one node list
	// poll (15 s) or one renewal it starts by itself.
	const poll = 45 * time.Second

	// The user CA, by hand.
	oldUser := a.signing("user")
	a.rotate("user", "--manual", "--phase=init")
	export() // sshd trusts both before anything is signed by the new one
	waitFor(t, "both user CAs in the mount", poll, func() bool { return pemCount(bot, identity.FileUserCA) == 2 })
	a.rotate("user", "--manual", "--phase=update_clients")
	newUser := a.signing("user")
	waitFor(t, "the mount to renew with the new user CA", poll, func() bool { return certSigner(t, bot) == newUser })
	logins.waitStartedBefore(t, "the login in flight at the renewal to end")
	a.rotate("user", "--manual", "--phase=update_servers")
	a.rotate("user", "--manual", "--phase=standby")
	export()
	waitFor(t, "one user CA in the mount", poll, func() bool { return pemCount(bot, identity.FileUserCA) == 1 })
	if newUser == oldUser {
		t.Fatal("the rotation kept the user CA")
	}
	if out, err := sshWithCert(t, bot, s.port, bot.dir); err != nil {
		t.Fatalf("the mount's own key and certificate, given alone: %v\n%s", err, out)
	}
	if out, err := sshWithCert(t, bot, s.port, old); err == nil {
		t.Fatalf("after standby a certificate of the old user CA still logs in:\n%s", out)
	}

	// The host CA, over a grace period of a minute: the operator signs the
	// host key again once the authority says update_servers.
	oldPin := a.pin
	a.rotate("host", "--grace-period=60s")
	waitFor(t, "both host CAs in the mount's known_hosts", poll, func() bool {
		return strings.Count(string(bot.read(identity.FileKnownHosts)), "@cert-authority") == 2
	})
	waitFor(t, "update_servers", time.Minute, func() bool { return a.ca("host").Spec.Rotation.Phase == "update_servers" })
	// The same sign as at the start: it keeps the host key and replaces
	// only the certificate, which sshd reads at every connection.
	a.admin("auth", "sign", "--host=web."+cluster+",web", "--format=openssh", "--out="+filepath.Join(s.dir, "host"))
	waitFor(t, "standby", time.Minute, func() bool { return a.ca("host").Spec.Rotation.Phase == "standby" })
	waitFor(t, "one host CA in the mount's known_hosts", poll, func() bool {
		return strings.Count(string(bot.read(identity.FileKnownHosts)), "@cert-authority") == 1
	})
	if pin := strings.TrimSpace(strings.TrimPrefix(grepLine(a.admin("status"), "CA pin"), "CA pin")); pin == oldPin || strings.Contains(pin, ",") {
		t.Fatalf("CA pin after the host CA's rotation: %q (was %s)", pin, oldPin)
	}
	// A few more logins with only the new CAs.
	n := logins.ok.Load()
	waitFor(t, "logins after the rotations", time.Minute, func() bool { return logins.ok.Load() >= n+3 })
	logins.finish(t, "during the rotations")
	if bad := logins.bad.Load(); bad != 0 || logins.ok.Load() < 10 {
		var agent []string
		pidField := regexp.MustCompile(`"pid":(\d+),`)
		for _, line := range strings.Split(bot.logs.String(), "\n") {
			pid := pidField.FindStringSubmatch(line)
			if pid == nil {
				agent = append(agent, line)
			} else if n, _ := strconv.Atoi(pid[1]); n != 0 {
				if _, refused := refusedPIDs.Load(n); refused {
					agent = append(agent, line)
				}
			}
		}
		t.Fatalf("%d logins failed and %d succeeded during the rotations\nsshd, but for the lines of logins that passed:\n%s\nagent, but for the opens of logins that passed:\n%s",
			bad, logins.ok.Load(), unusual(s.logs.String()), tail(strings.Join(agent, "\n"), 60))
	}
}

// A node joined with `midfs node start` follows the rotations by itself:
// logins through a mount, in a loop with StrictHostKeyChecking, never fail
// while the user CA rotates over a grace period, then the host CA, then
// the user CA again by hand up to update_clients and back (rollback). The
// node trusts both user CAs while both are trusted and signs its host key
// again with the new host CA at update_servers; after standby a
// certificate of the old user CA is refused.
func TestRotationThroughAJoinedNode(t *testing.T) {
	testenv.RequireFUSE(t)
	a := startAuthority(t)
	web := startNode(t, a, "web", "")
	bot := mountRobot(t, a, "access", "root")
	target := "root@web." + cluster
	waitFor(t, "web in the mount's ssh_config", 30*time.Second, func() bool {
		return strings.Contains(string(bot.read(identity.FileSSHConfig)), "Host web."+cluster)
	})
	if out, err := sshLoginNoShell(t, bot.dir, target); err != nil {
		t.Fatalf("first login: %v\n%s", err, out)
	}
	old := t.TempDir()
	os.WriteFile(filepath.Join(old, "key"), bot.read(identity.FileKey), 0o600)
	os.WriteFile(filepath.Join(old, "key-cert.pub"), bot.read(identity.FileSSHCert), 0o644)
	nodeUserCAs := func() int { return strings.Count(readFile(filepath.Join(web.runDir(), "user_ca.pub")), "\n") }

	logins := startLoginLoop(t, func() (string, error) { return sshLoginNoShell(t, bot.dir, target) })
	const poll = 45 * time.Second // a node list poll (15 s), a renewal it starts, at a loaded machine's pace
	const grace = "--grace-period=60s"

	// The user CA over a minute.
	oldUser := a.signing("user")
	a.rotate("user", grace)
	waitFor(t, "the node to trust both user CAs", poll, func() bool { return nodeUserCAs() == 2 })
	waitFor(t, "the mount to renew with the new user CA", 2*time.Minute, func() bool { return certSigner(t, bot) != oldUser })
	waitFor(t, "the user CA's standby", time.Minute, func() bool { return a.ca("user").Spec.Rotation.Phase == "standby" })
	waitFor(t, "the node to trust one user CA", poll, func() bool { return nodeUserCAs() == 1 })
	if out, err := sshWithCert(t, bot, web.port, old); err == nil {
		t.Fatalf("after standby a certificate of the old user CA still logs in:\n%s", out)
	}

	// The host CA over a minute: the node's sshd presents a certificate of
	// the new host CA from update_servers on.
	oldHost := a.signing("host")
	a.rotate("host", grace)
	waitFor(t, "update_servers", 2*time.Minute, func() bool { return a.ca("host").Spec.Rotation.Phase == "update_servers" })
	newHost := a.signing("host")
	var seen string
	defer func() {
		if t.Failed() {
			t.Logf("the node's sshd last presented a host certificate signed by %s; the new host CA is %s", seen, fingerprint(t, newHost))
		}
	}()
	waitFor(t, "the node's sshd to present a certificate of the new host CA", poll, func() bool {
		signer, err := presentedSigner(web.addr())
		seen = fmt.Sprint(signer, err)
		return err == nil && signer == fingerprint(t, newHost)
	})
	waitFor(t, "the host CA's standby", time.Minute, func() bool { return a.ca("host").Spec.Rotation.Phase == "standby" })
	waitFor(t, "one host CA in the mount's known_hosts", poll, func() bool {
		return strings.Count(string(bot.read(identity.FileKnownHosts)), "@cert-authority") == 1
	})
	if newHost == oldHost {
		t.Fatal("the rotation kept the host CA")
	}

	// The user CA by hand, up to update_clients, then back.
	before := a.signing("user")
	a.rotate("user", "--manual", "--phase=init")
	waitFor(t, "the node to trust both user CAs", poll, func() bool { return nodeUserCAs() == 2 })
	a.rotate("user", "--manual", "--phase=update_clients")
	waitFor(t, "the mount to renew with the new user CA", poll, func() bool { return certSigner(t, bot) != before })
	a.rotate("user", "--manual", "--phase=rollback")
	waitFor(t, "the mount to renew with the user CA it had", poll, func() bool { return certSigner(t, bot) == before })
	logins.waitStartedBefore(t, "the login in flight at the renewal to end")
	a.rotate("user", "--manual", "--phase=standby")
	waitFor(t, "the node to trust one user CA", poll, func() bool { return nodeUserCAs() == 1 })

	n := logins.ok.Load()
	waitFor(t, "logins after the rotations", time.Minute, func() bool { return logins.ok.Load() >= n+3 })
	logins.finish(t, "during three rotations")
}

// presentedSigner is the SHA256 fingerprint of the CA that signed the host
// certificate sshd at addr presents.
func presentedSigner(addr string) (string, error) {
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("ssh-keyscan", "-c", "-p", port, host).Output()
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(out), "\n") {
		// "[HOST]:PORT TYPE BASE64", the host only in some versions.
		f := strings.Fields(line)
		i := slicesIndexFunc(f, func(s string) bool { return strings.HasSuffix(s, "-cert-v01@openssh.com") })
		if strings.HasPrefix(line, "#") || i < 0 || i+1 >= len(f) {
			continue
		}
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(f[i] + " " + f[i+1]))
		if err != nil {
			return "", err
		}
		if c, ok := pub.(*ssh.Certificate); ok {
			return ssh.FingerprintSHA256(c.SignatureKey), nil
		}
	}
	return "", fmt.Errorf("sshd at %s presents no certificate", addr)
}

// fingerprint is the SHA256 fingerprint of an authorized_keys line.
func fingerprint(t testing.TB, line string) string {
	t.Helper()
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return ssh.FingerprintSHA256(pub)
}

// sshWithCert logs in to s with only the key and key-cert.pub of dir,
// checking the host against the mount's known_hosts: no ssh_config, so
// that the mount's own credentials are not offered too.
func sshWithCert(t testing.TB, bot *agent, port int, dir string) (string, error) {
	t.Helper()
	return sshWith(t, []string{"-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
		"-o", "UserKnownHostsFile=" + bot.file(identity.FileKnownHosts), "-o", "HostKeyAlias=web." + cluster,
		"-o", "IdentityAgent=none", "-o", "IdentitiesOnly=yes", "-i", filepath.Join(dir, identity.FileKey),
		"-o", "CertificateFile=" + filepath.Join(dir, identity.FileSSHCert), "-p", strconv.Itoa(port), "-s"}, "root@127.0.0.1", "sftp")
}

// grepLine is the first line of out that starts with prefix.
func grepLine(out, prefix string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return ""
}

// unusual is what sshd logged but for the lines every login that passes
// gives: what it said of the ones that did not.
func unusual(log string) string {
	usual := regexp.MustCompile(`^(Connection from|Certificate extension|Accepted (certificate|publickey)|Postponed publickey|Starting session|Close session|Received disconnect|Disconnected from|Server listening)`)
	var out []string
	for _, line := range strings.Split(log, "\n") {
		if line != "" && !usual.MatchString(line) {
			out = append(out, line)
		}
	}
	return tail(strings.Join(out, "\n"), 40)
}
