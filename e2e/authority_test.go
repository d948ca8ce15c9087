package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/internal/testenv"
)

// TestAuthorityAsANewUserMeetsIt walks the authority's part of the README:
// bots add prints a token, its expiry, the pin and a mount command; the roles
// table has the built-ins; the pin survives a restart and a SIGKILL.
func TestAuthorityAsANewUserMeetsIt(t *testing.T) {
	a := startAuthority(t)
	status := a.admin("status")
	for _, want := range []string{cluster, a.pin} {
		if !strings.Contains(status, want) {
			t.Errorf("status lacks %q:\n%s", want, status)
		}
	}

	out := a.admin("bots", "add", "robot", "--roles=access", "--logins=root")
	for _, want := range []string{a.pin, "midfs mount", "--auth-server=", "--ca-pin=" + a.pin} {
		if !strings.Contains(out, want) {
			t.Errorf("bots add output lacks %q:\n%s", want, out)
		}
	}
	if m := tokenRe.FindStringSubmatch(out); m == nil || len(m[1]) < 32 {
		t.Errorf("bots add prints no token of at least 128 bits:\n%s", out)
	}
	if !regexp.MustCompile(`(?i)expire`).MatchString(out) {
		t.Errorf("bots add does not say when the token expires:\n%s", out)
	}

	roles := a.admin("get", "roles", "--format=text")
	for _, want := range []string{"Role", "Allowed to login as", "Node Labels", "Access to resources", "access", "editor", "auditor", "{{internal.logins}}"} {
		if !strings.Contains(roles, want) {
			t.Errorf("roles table lacks %q:\n%s", want, roles)
		}
	}
	if r := run(t, "bots", "add", "ghost", "--roles=nope", "--data-dir", a.dataDir); r.code == 0 || !strings.Contains(r.stderr, "nope") {
		t.Errorf("bots add with an unknown role: %s", r)
	}
	if strings.Contains(a.admin("bots", "ls"), "ghost") {
		t.Error("a bot was made although its role does not exist")
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("kind: role\nversion: v7\nmetadata:\n  name: broken\nspec:\n  allow: [unclosed\n"), 0o644)
	if r := run(t, "create", "-f", bad, "--data-dir", a.dataDir); r.code == 0 || !strings.Contains(r.stderr, "line") {
		t.Errorf("malformed YAML: want an error naming the line, got %s", r)
	}
	if strings.Contains(a.admin("get", "roles", "--format=text"), "broken") {
		t.Error("malformed YAML stored a role")
	}

	a.restart()
	if !strings.Contains(a.admin("status"), a.pin) {
		t.Error("restart changed the CA pin")
	}
	a.kill()
	a.start()
	if !strings.Contains(a.admin("status"), a.pin) {
		t.Error("SIGKILL and restart changed the CA pin")
	}
	if !strings.Contains(a.admin("bots", "ls"), "robot") {
		t.Error("SIGKILL and restart lost the bot")
	}
}

// TestAdminSocketOnlyForRoot: the admin API refuses other users.
func TestAdminSocketOnlyForRoot(t *testing.T) {
	a := startAuthority(t)
	os.Chmod(a.dataDir, 0o755) // let nobody reach the socket file, to see the socket itself refuse
	defer os.Chmod(a.dataDir, 0o700)
	nobody, nogroup := lookupID(t, "passwd", "nobody"), lookupID(t, "group", "nogroup")
	out, err := asUser(nobody, nogroup, midfsBin, "status", "--data-dir", a.dataDir)
	if err == nil {
		t.Fatalf("uid nobody used the admin socket:\n%s", out)
	}
	if strings.Contains(out, a.pin) {
		t.Fatalf("uid nobody got the status:\n%s", out)
	}
}

// TestStateFilesAreOwnerOnly: the database and the -wal and -shm files
// SQLite keeps beside it all hold the CA keys; none is readable by other
// users, whether the authority runs alone or inside `midfs mount`.
func TestStateFilesAreOwnerOnly(t *testing.T) {
	dbFiles := []string{"midfs.db", "midfs.db-wal", "midfs.db-shm"}
	a := startAuthority(t)
	a.addBot("robot", "access", "root")
	testenv.CheckOwnerOnly(t, a.dataDir, dbFiles...)

	dataDir := t.TempDir()
	dir := filepath.Join(publicDir(t), "mnt")
	os.Mkdir(dir, 0o755)
	startMount(t, dir, "--data-dir="+dataDir)
	testenv.CheckOwnerOnly(t, dataDir, dbFiles...)
}

// TestIdleConnectionFloodIsBounded: anyone who can reach the port can open
// connections and leave them idle, after a request or before the TLS
// handshake. The authority holds no more than --max-connections of them,
// closes each within its idle bound, and an agent still joins and renews
// in the middle of them.
func TestIdleConnectionFloodIsBounded(t *testing.T) {
	const maxConns, idleTLS, idleTCP = 100, 300, 100
	a := startAuthority(t, "--max-connections="+strconv.Itoa(maxConns))
	pid := a.cmd.Process.Pid
	fds, rss := openFiles(t, pid), rssKB(t, pid)
	var closed atomic.Int64
	hold := func(c net.Conn) {
		t.Cleanup(func() { c.Close() })
		go func() {
			c.Read(make([]byte, 1)) // returns once the authority closes it
			closed.Add(1)
		}()
	}
	for range idleTCP {
		c, err := net.Dial("tcp", a.addr)
		if err != nil {
			t.Fatal(err)
		}
		hold(c)
	}
	for range idleTLS {
		c, err := tls.Dial("tcp", a.addr, &tls.Config{InsecureSkipVerify: true}) // as a flood would
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "GET /v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		hold(c)
	}
	// Each connection past the cap closed another as it was accepted (the
	// one idle longest, else a silent one); the rest stay until the TLS
	// handshake timeout (silent) or the idle timeout.
	if n := openFiles(t, pid); n > fds+maxConns+1 {
		t.Errorf("the authority has %d files open with %d idle connections, %d before: more than --max-connections=%d",
			n, idleTLS+idleTCP, fds, maxConns)
	}
	t.Logf("%d idle connections: authority RSS %d kB -> %d kB, open files %d -> %d", idleTLS+idleTCP, rss, rssKB(t, pid), fds, openFiles(t, pid))

	ag := mountRobot(t, a, "access", "root")
	cert := ag.read("key-cert.pub")
	ag.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, "a renewal among idle connections", 30*time.Second, func() bool { return !bytes.Equal(ag.read("key-cert.pub"), cert) })
	waitFor(t, "the authority to close every idle connection", time.Minute, func() bool { return closed.Load() == idleTLS+idleTCP })
}

// openFiles counts the file descriptors of process pid.
func openFiles(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func rssKB(t *testing.T, pid int) int {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb
		}
	}
	return 0
}
