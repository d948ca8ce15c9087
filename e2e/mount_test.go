package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/internal/testenv"
)

var servedFiles = []string{"identity", "key", "key-cert.pub", "key.pub", "known_hosts", "ssh_config",
	"teleport-database-ca.crt", "teleport-host-ca.crt", "teleport-user-ca.crt", "tlscert"}

// mountRobot makes a bot with the given roles and logins and mounts it in
// a fresh directory with nothing stored between runs.
func mountRobot(t *testing.T, a *authority, roles, logins string, extra ...string) *agent {
	t.Helper()
	a.bots++
	name := "robot"
	if a.bots > 1 {
		name += strconv.Itoa(a.bots)
	}
	tok := a.addBot(name, roles, logins)
	dir := filepath.Join(publicDir(t), "machine-id")
	os.Mkdir(dir, 0o755)
	args := append(a.mountArgs(tok), "--storage=memory")
	return startMount(t, dir, append(args, extra...)...)
}

func TestTreeListsExactlyTheTenFiles(t *testing.T) {
	a := startAuthority(t)
	ag := mountRobot(t, a, "access", "root")

	out, err := exec.Command("tree", "-a", "--noreport", "-i", ag.dir).CombinedOutput()
	if err != nil {
		t.Fatalf("tree: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if got, want := strings.Join(lines[1:], " "), strings.Join(servedFiles, " "); got != want {
		t.Fatalf("tree %s lists\n  %s\nwant\n  %s", ag.dir, got, want)
	}
	for _, name := range servedFiles {
		fi, err := os.Stat(ag.file(name))
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o644)
		if name == "key" || name == "identity" {
			want = 0o600
		}
		if fi.Mode().Perm() != want || !fi.Mode().IsRegular() {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), want)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Uid != 0 || st.Gid != 0 {
			t.Errorf("%s: owner %d:%d, want the user running midfs (0:0)", name, st.Uid, st.Gid)
		}
		// stat's size is what a read returns.
		if b := ag.read(name); int64(len(b)) != fi.Size() {
			t.Errorf("%s: stat size %d, read %d bytes", name, fi.Size(), len(b))
		}
	}
}

func TestOwnerFlagOwnsTheTree(t *testing.T) {
	a := startAuthority(t)
	ag := mountRobot(t, a, "access", "root", "--owner=nobody:nogroup")
	nobody, nogroup := lookupID(t, "passwd", "nobody"), lookupID(t, "group", "nogroup")
	for _, name := range []string{"key", "key.pub"} {
		st, err := os.Stat(ag.file(name))
		if err != nil {
			t.Fatal(err)
		}
		if s := st.Sys().(*syscall.Stat_t); s.Uid != nobody || s.Gid != nogroup {
			t.Errorf("%s owned by %d:%d, want nobody:nogroup (%d:%d)", name, s.Uid, s.Gid, nobody, nogroup)
		}
	}
	// The owner reads its key; OpenSSH would refuse a key others can read.
	if out, err := asUser(nobody, nogroup, "cat", ag.file("key")); err != nil {
		t.Fatalf("owner cannot read key: %v\n%s", err, out)
	}
}

func TestCredentialsReadByRealTools(t *testing.T) {
	a := startAuthority(t)
	ag := mountRobot(t, a, "access", "root,ubuntu")

	out, err := exec.Command("ssh-keygen", "-L", "-f", ag.file("key-cert.pub")).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -L: %v\n%s", err, out)
	}
	for _, want := range []string{"user certificate", `Key ID: "bot-robot"`, "root", "ubuntu", "Valid: from "} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ssh-keygen -L lacks %q:\n%s", want, out)
		}
	}
	y, err := exec.Command("ssh-keygen", "-y", "-f", ag.file("key")).CombinedOutput()
	if err != nil {
		t.Fatalf("ssh-keygen -y: %v\n%s", err, y)
	}
	if strings.Fields(string(y))[1] != strings.Fields(string(ag.read("key.pub")))[1] {
		t.Errorf("ssh-keygen -y of key does not match key.pub")
	}
	if out, err := exec.Command("openssl", "verify", "-CAfile", ag.file("teleport-user-ca.crt"), ag.file("tlscert")).CombinedOutput(); err != nil {
		t.Errorf("openssl verify: %v\n%s", err, out)
	}
	subj, _ := exec.Command("openssl", "x509", "-in", ag.file("tlscert"), "-noout", "-subject", "-issuer").CombinedOutput()
	for _, want := range []string{"CN = bot-robot", "O = access", "O = " + cluster} {
		if !strings.Contains(string(subj), want) {
			t.Errorf("tlscert subject/issuer lacks %q:\n%s", want, subj)
		}
	}
}

// TestSSHThroughTheMount logs in to a real sshd with the mount's ssh_config
// and strict host key checking, and checks what roles hide.
func TestSSHThroughTheMount(t *testing.T) {
	a := startAuthority(t)
	s := startSSHD(t, a, "node-name."+cluster, "node-name")
	hidden := startSSHD(t, a, "prod-db."+cluster)
	a.admin("nodes", "add", "node-name", "--addr="+s.addr(), "--labels=arch=x86_64,group=api-servers")
	a.admin("nodes", "add", "prod-db", "--addr="+hidden.addr(), "--labels=env=prod")
	role := filepath.Join(t.TempDir(), "role.yaml")
	os.WriteFile(role, []byte(noProdRole), 0o644)
	a.admin("create", "-f", role)
	ag := mountRobot(t, a, "no-prod", "root")

	if out, err := sshRun(t, ag.dir, "root@node-name."+cluster, "echo", "hello-from-sshd"); err != nil || !strings.Contains(out, "hello-from-sshd") {
		t.Fatalf("ssh root@node-name.%s: %v\n%s\nsshd log:\n%s", cluster, err, out, tail(s.logs.String(), 15))
	}
	out, err := sshRun(t, ag.dir, "daemon@node-name."+cluster, "true")
	if err == nil || !strings.Contains(out, "Permission denied (publickey)") {
		t.Errorf("ssh as a login the role does not allow: err=%v\n%s", err, out)
	}
	cfg := string(ag.read("ssh_config"))
	if !strings.Contains(cfg, "Host node-name."+cluster) || strings.Contains(cfg, "prod-db") {
		t.Errorf("ssh_config should list node-name and hide prod-db:\n%s", cfg)
	}
	ls := mustRun(t, "ls", "--mount="+ag.dir)
	if !strings.Contains(ls, "node-name") || !strings.Contains(ls, s.addr()) || strings.Contains(ls, "prod-db") {
		t.Errorf("midfs ls should list node-name at %s and hide prod-db:\n%s", s.addr(), ls)
	}
	if !strings.Contains(ls, "group=api-servers") {
		t.Errorf("midfs ls lacks the labels:\n%s", ls)
	}
}

// TestSSHConfigInjectionAndAnOddMountpoint: a node address that would add a
// `Match exec` to every bot's ssh_config is refused by `nodes add` with one
// line; and a bot mounted at a directory with a space and %d (which ssh
// would expand to the home directory) still logs in through its ssh_config.
func TestSSHConfigInjectionAndAnOddMountpoint(t *testing.T) {
	a := startAuthority(t)
	s := startSSHD(t, a, "node-name."+cluster, "node-name")
	pwned := filepath.Join(t.TempDir(), "pwned")
	r := run(t, "nodes", "add", "evil", "--addr=127.0.0.1\nMatch exec \"touch "+pwned+"\"\n#:22", "--data-dir", a.dataDir)
	if msg := strings.TrimSuffix(r.stderr, "\n"); r.code == 0 || strings.Contains(msg, "\n") || !strings.Contains(msg, "HOST:PORT") {
		t.Errorf("nodes add with a line break in --addr: %s", r)
	}
	a.admin("nodes", "add", "node-name", "--addr="+s.addr())
	tok := a.addBot("robot", "access", "root")
	dir := filepath.Join(publicDir(t), "machine id %d")
	os.Mkdir(dir, 0o755)
	ag := startMount(t, dir, append(a.mountArgs(tok), "--storage=memory")...)
	if out, err := sshRun(t, ag.dir, "root@node-name."+cluster, "echo", "hello-from-sshd"); err != nil || !strings.Contains(out, "hello-from-sshd") {
		t.Errorf("ssh through the mount at %q: %v\n%s\nssh_config:\n%s", dir, err, out, ag.read("ssh_config"))
	}
	if _, err := os.Stat(pwned); err == nil {
		t.Errorf("ssh ran the command injected through a node address")
	}
}

// TestWritesFailWithEROFS tries every write-type call, as root, and checks
// that each fails with EROFS and that the tree is unchanged afterwards.
func TestWritesFailWithEROFS(t *testing.T) {
	a := startAuthority(t)
	ag := mountRobot(t, a, "access", "root")
	key, pub := ag.file("key"), ag.file("key.pub")
	before := ag.read("key.pub")
	calls := map[string]func() error{
		"create":        func() error { _, err := os.Create(ag.file("new")); return err },
		"open O_WRONLY": func() error { _, err := os.OpenFile(pub, os.O_WRONLY, 0); return err },
		"open O_RDWR":   func() error { _, err := os.OpenFile(key, os.O_RDWR, 0); return err },
		"open O_TRUNC":  func() error { _, err := os.OpenFile(pub, os.O_RDONLY|os.O_TRUNC, 0); return err },
		"truncate":      func() error { return os.Truncate(pub, 0) },
		"unlink":        func() error { return os.Remove(key) },
		"rmdir":         func() error { return unix.Rmdir(key) }, // rmdir of the mountpoint itself is the parent fs's EBUSY
		"rename":        func() error { return os.Rename(pub, ag.file("moved")) },
		"mkdir":         func() error { return os.Mkdir(ag.file("d"), 0o755) },
		"symlink":       func() error { return os.Symlink("key", ag.file("ln")) },
		"link":          func() error { return os.Link(key, ag.file("hard")) },
		"mknod":         func() error { return unix.Mknod(ag.file("fifo"), unix.S_IFIFO|0o644, 0) },
		"chmod":         func() error { return os.Chmod(key, 0o644) },
		"chown":         func() error { return os.Chown(key, 65534, 65534) },
		"setxattr":      func() error { return unix.Setxattr(key, "user.x", []byte("y"), 0) },
		"removexattr":   func() error { return unix.Removexattr(key, "user.x") },
		"utimes":        func() error { return os.Chtimes(key, time.Now(), time.Now()) },
	}
	names := make([]string, 0, len(calls))
	for n := range calls {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := calls[n](); !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: got %v, want EROFS", n, err)
		}
	}
	ents, _ := os.ReadDir(ag.dir)
	if len(ents) != len(servedFiles) {
		t.Errorf("tree changed: %d entries after the write attempts", len(ents))
	}
	if fi, _ := os.Stat(key); fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode changed to %v", fi.Mode())
	}
	if !bytes.Equal(ag.read("key.pub"), before) {
		t.Errorf("key.pub changed")
	}
}

func TestReadersAndOthers(t *testing.T) {
	a := startAuthority(t)
	nobody, nogroup := lookupID(t, "passwd", "nobody"), lookupID(t, "group", "nogroup")
	ag := mountRobot(t, a, "access", "root")
	for _, f := range []string{"key", "identity"} {
		out, err := asUser(nobody, nogroup, "cat", ag.file(f))
		if err == nil || !strings.Contains(out, "Permission denied") {
			t.Errorf("uid nobody reading %s: err=%v out=%q, want Permission denied", f, err, out)
		}
	}
	if out, err := asUser(nobody, nogroup, "cat", ag.file("key.pub")); err != nil {
		t.Errorf("uid nobody cannot read key.pub: %v %s", err, out)
	}
	ag.stop()

	byUser := mountRobot(t, a, "access", "root", "--reader=nobody")
	if out, err := asUser(nobody, nogroup, "cat", byUser.file("key")); err != nil || !strings.Contains(out, "PRIVATE KEY") {
		t.Errorf("--reader=nobody cannot read key: %v %s", err, out)
	}
	if out, err := asUser(lookupID(t, "passwd", "daemon"), nogroup, "cat", byUser.file("key")); err == nil {
		t.Errorf("uid daemon (not a reader) read key: %s", out)
	}
	byUser.stop()

	byGroup := mountRobot(t, a, "access", "root", "--reader=@nogroup")
	if out, err := asUser(lookupID(t, "passwd", "daemon"), nogroup, "cat", byGroup.file("identity")); err != nil {
		t.Errorf("member of @nogroup cannot read identity: %v %s", err, out)
	}
}

// TestPairsStayConsistentUnderRenewal forces renewals back to back (SIGHUP,
// then SIGHUP again as soon as the agent's metrics count the renewal) while
// readers load key and key-cert.pub the ways programs do: one short process
// reading both files in turn (`cat key key-cert.pub`, like ssh), and a
// long-lived process holding key open while it opens key-cert.pub. No reader
// may ever see a certificate for a different key, and after each renewal the
// short readers must come to see its certificate (renewals reach new opens).
func TestPairsStayConsistentUnderRenewal(t *testing.T) {
	const rounds = 30
	a := startAuthority(t)
	diag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ag := mountRobot(t, a, "access", "root", "--diag-addr="+diag)

	stop := make(chan struct{})
	var pairs, mismatches atomic.Int64
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	check := func(key, cert []byte) {
		pairs.Add(1)
		if !pairMatches(key, cert) {
			mismatches.Add(1)
		}
	}
	for i := 0; i < 2; i++ {
		wg.Add(2)
		go func() { // short processes, sequential opens
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				out, err := exec.Command("cat", ag.file("key"), ag.file("key-cert.pub")).Output()
				if err != nil {
					t.Errorf("cat: %v", err)
					return
				}
				i := bytes.Index(out, []byte("-----END"))
				j := bytes.IndexByte(out[i:], '\n')
				key, cert := out[:i+j+1], out[i+j+1:]
				check(key, cert)
				mu.Lock()
				seen[string(cert[len(cert)-40:])] = true
				mu.Unlock()
			}
		}()
		go func() { // one long process, overlapping handles
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				key, cert, err := readPairOverlapping(ag.file("key"), ag.file("key-cert.pub"))
				if err != nil {
					t.Errorf("reading the pair: %v", err)
					return
				}
				check(key, cert)
			}
		}()
	}
	stopReaders := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopReaders() // also when a wait below fails the test
	distinct := func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
	waitFor(t, "the short readers' first certificate", 30*time.Second, func() bool { return distinct() > 0 })
	for r := range rounds {
		before, n := renewals(t, diag), distinct()
		ag.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, fmt.Sprintf("renewal %d counted in the agent's metrics", r+1), 30*time.Second, func() bool { return renewals(t, diag) > before })
		waitFor(t, fmt.Sprintf("renewal %d to reach new opens", r+1), 30*time.Second, func() bool { return distinct() > n })
	}
	stopReaders()
	t.Logf("%d pairs read over %d renewals; short readers saw %d distinct certificates", pairs.Load(), rounds, len(seen))
	if m := mismatches.Load(); m != 0 {
		t.Fatalf("%d of %d pairs had a certificate for another key", m, pairs.Load())
	}
}

// SIGTERM while renewals and heavy reads are under way unmounts and ends the
// agent at once, 100 rounds in a row. Each round a new agent mounts; two
// shell loops read key and key-cert.pub as fast as they can; a third loop
// reads them through a mount namespace of its own, made while the tree is
// mounted, as a container or `unshare` started on the machine would be;
// SIGHUP forces renewals; SIGTERM comes at a random moment among them. The
// loop over there must end with the connection ("midfs mount ignored
// SIGTERM for 20s" before: its copy of the mount kept the FUSE connection
// alive, and the agent waited for it).
func TestSIGTERMDuringRenewalsAndReads(t *testing.T) {
	a := startAuthority(t)
	dir := filepath.Join(publicDir(t), "machine-id")
	os.Mkdir(dir, 0o755)
	const rounds = 100
	start := time.Now()
	for round := 1; round <= rounds && !t.Failed(); round++ {
		token := a.addBot("robot"+strconv.Itoa(round), "access", "root")
		ag := startMount(t, dir, append(a.mountArgs(token), "--storage=memory", "--renewal-interval=1s")...)
		here := []*exec.Cmd{readLoop(t, dir, false, nil), readLoop(t, dir, false, nil)}
		thereErr := &testenv.LogBuffer{}
		there := readLoop(t, dir, true, thereErr)
		thereDone := make(chan error, 1)
		go func() { thereDone <- there.Wait() }()

		for range 1 + rand.IntN(5) {
			ag.cmd.Process.Signal(syscall.SIGHUP)
			time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond)
		}
		select {
		case err := <-thereDone:
			t.Fatalf("round %d: the reader in its own mount namespace stopped while the agent served: %v %s", round, err, thereErr.String())
		default:
		}
		ag.stop() // SIGTERM; fails unless the agent exits 0 within 20s, unmounted
		select {
		case <-thereDone:
			if msg := thereErr.String(); !strings.Contains(msg, "not connected") && !strings.Contains(msg, "connection abort") {
				t.Errorf("round %d: the copy of the mount failed with %q, want ENOTCONN or ECONNABORTED", round, msg)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("round %d: the copy of the mount still serves 20s after the agent stopped", round)
			syscall.Kill(-there.Process.Pid, syscall.SIGKILL)
			<-thereDone
		}
		for _, c := range here {
			syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			c.Wait()
		}
		if t.Failed() {
			t.Logf("round %d of %d failed; agent log:\n%s", round, rounds, tail(ag.logs.String(), 30))
		}
	}
	t.Logf("%d rounds in %v", rounds, time.Since(start).Round(time.Second))
}

// readLoop starts a shell that reads key and key-cert.pub of dir until a
// read fails, in a process group of its own, and with newNS in a mount
// namespace of its own (made now, so with a copy of every mount there is).
func readLoop(t *testing.T, dir string, newNS bool, stderr io.Writer) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sh", "-c", `while cat "$0/key" "$0/key-cert.pub" >/dev/null; do :; done`, dir)
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if newNS {
		cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func readPairOverlapping(keyPath, certPath string) (key, cert []byte, err error) {
	kf, err := os.Open(keyPath)
	if err != nil {
		return nil, nil, err
	}
	defer kf.Close()
	cf, err := os.Open(certPath)
	if err != nil {
		return nil, nil, err
	}
	defer cf.Close()
	var kb, cb bytes.Buffer
	if _, err := kb.ReadFrom(kf); err != nil {
		return nil, nil, err
	}
	if _, err := cb.ReadFrom(cf); err != nil {
		return nil, nil, err
	}
	return kb.Bytes(), cb.Bytes(), nil
}

func pairMatches(keyPEM, certLine []byte) bool {
	k, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return false
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(certLine)
	if err != nil {
		return false
	}
	c, ok := pub.(*ssh.Certificate)
	return ok && bytes.Equal(c.Key.Marshal(), k.PublicKey().Marshal())
}

func TestSIGKILLLeavesNothingTheNextMountCannotFix(t *testing.T) {
	a := startAuthority(t)
	dir := filepath.Join(publicDir(t), "mnt")
	os.Mkdir(dir, 0o755)
	ag := startMount(t, dir, append(a.mountArgs(a.addBot("robot", "access", "root")), "--storage=memory")...)
	ag.kill()
	// A reader of the dead mount must get an error at once, not hang: a
	// child of the agent that inherited /dev/fuse would keep it alive.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "cat", filepath.Join(dir, "key.pub")).CombinedOutput(); err == nil || ctx.Err() != nil {
		t.Fatalf("reading the mount after SIGKILL: err=%v ctx=%v out=%s", err, ctx.Err(), out)
	}
	next := startMount(t, dir, append(a.mountArgs(a.addBot("robot2", "access", "root")), "--storage=memory")...)
	if !strings.Contains(string(next.read("key-cert.pub")), "cert-v01@openssh.com") {
		t.Fatal("the new mount over the dead one does not serve a certificate")
	}
}

// TestRestartFromKeyringNeedsNoNewToken restarts an agent with the same,
// already used token: the bot identity kept in the kernel keyring renews.
func TestRestartFromKeyringNeedsNoNewToken(t *testing.T) {
	a := startAuthority(t)
	dir := filepath.Join(publicDir(t), "mnt")
	os.Mkdir(dir, 0o755)
	args := a.mountArgs(a.addBot("robot", "access", "root")) // default storage: keyring
	ag := startMount(t, dir, args...)
	firstKey := ag.read("key.pub")
	ag.stop()

	ag = startMount(t, dir, args...)
	if bytes.Equal(ag.read("key.pub"), firstKey) {
		t.Error("restart served the old key; want a fresh issuance")
	}
	ag.stop()

	// With nothing stored, the used token is refused and nothing is mounted.
	r := run(t, append([]string{"mount", dir, "--storage=memory"}, args...)...)
	if r.code == 0 || mounted(dir) {
		t.Fatalf("a used token with --storage=memory mounted: %s", r)
	}
	if n := strings.Count(strings.TrimSpace(r.stderr), "\n"); !strings.Contains(r.stderr, "token") {
		t.Errorf("want a one-line error about the token, got (%d extra lines):\n%s", n, r.stderr)
	}
}

// TestBadInputMountsNothing: each mistake exits non-zero with one line and
// leaves no mount; a wrong pin does not spend the token.
func TestBadInputMountsNothing(t *testing.T) {
	a := startAuthority(t)
	base := publicDir(t)
	dir := filepath.Join(base, "mnt")
	os.Mkdir(dir, 0o755)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o644)
	tok := a.addBot("robot", "access", "root")
	wrongPin := "sha256:" + strings.Repeat("ab", 32)

	cases := []struct {
		name string
		args []string
		want string
	}{
		{"wrong token", []string{"mount", dir, "--auth-server=" + a.addr, "--token=" + strings.Repeat("0", 64), "--ca-pin=" + a.pin}, "token"},
		{"wrong pin", []string{"mount", dir, "--auth-server=" + a.addr, "--token=" + tok, "--ca-pin=" + wrongPin}, "pin"},
		{"missing mountpoint", []string{"mount", filepath.Join(base, "nope"), "--auth-server=" + a.addr, "--token=" + tok, "--ca-pin=" + a.pin}, "nope"},
		{"mountpoint is a file", []string{"mount", file, "--auth-server=" + a.addr, "--token=" + tok, "--ca-pin=" + a.pin}, "directory"},
		{"unreachable", []string{"mount", dir, "--auth-server=127.0.0.1:" + strconv.Itoa(freePort(t)), "--token=" + tok, "--ca-pin=" + a.pin, "--join-timeout=2s"}, "127.0.0.1"},
	}
	for _, c := range cases {
		r := run(t, append(c.args, "--storage=memory")...)
		if r.code == 0 {
			t.Errorf("%s: exit 0, want failure", c.name)
		}
		lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
		last := lines[len(lines)-1]
		if !strings.Contains(strings.ToLower(last), c.want) {
			t.Errorf("%s: last line %q does not mention %q\n%s", c.name, last, c.want, r)
		}
		if len(midfsMountsUnder(base)) > 0 || mounted(dir) {
			t.Fatalf("%s: left a mount behind", c.name)
		}
	}
	// None of the failures spent the token.
	ag := startMount(t, dir, append(a.mountArgs(tok), "--storage=memory")...)

	// A live midfs already serves dir: refused, and the live mount survives.
	r := run(t, append([]string{"mount", dir, "--storage=memory"}, a.mountArgs(a.addBot("robot2", "access", "root"))...)...)
	if r.code == 0 || !strings.Contains(strings.ToLower(r.stderr), "already") {
		t.Errorf("second mount on a live mount: %s", r)
	}
	if len(ag.read("key")) == 0 {
		t.Error("live mount stopped serving after the refused second mount")
	}
}

func TestEmbeddedAuthority(t *testing.T) {
	dataDir := t.TempDir()
	dir := filepath.Join(publicDir(t), "mnt")
	os.Mkdir(dir, 0o755)
	ag := startMount(t, dir, "--data-dir="+dataDir)
	if !strings.Contains(string(ag.read("key-cert.pub")), "cert-v01@openssh.com") {
		t.Fatal("embedded default serves no certificate")
	}
	user := mustRun(t, "auth", "export", "--type=user", "--data-dir="+dataDir)
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(user)); err != nil {
		t.Errorf("auth export --type=user against the embedded authority: %v\n%s", err, user)
	}
	// The mount's TLS certificate chains to the exported user CA.
	ca := mustRun(t, "auth", "export", "--type=tls-user", "--data-dir="+dataDir)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(ca)) {
		t.Fatalf("tls-user export is not PEM:\n%s", ca)
	}
	blk, _ := pem.Decode(ag.read("tlscert"))
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("mount's tlscert does not chain to the embedded authority's user CA: %v", err)
	}
	out := filepath.Join(t.TempDir(), "host")
	mustRun(t, "auth", "sign", "--host=node-name", "--format=openssh", "--out="+out, "--data-dir="+dataDir)
	if l, err := exec.Command("ssh-keygen", "-L", "-f", out+"-cert.pub").CombinedOutput(); err != nil || !strings.Contains(string(l), "host certificate") {
		t.Errorf("auth sign against the embedded authority: %v\n%s", err, l)
	}
}

func lookupID(t testing.TB, db, name string) uint32 {
	t.Helper()
	out, err := exec.Command("getent", db, name).Output()
	if err != nil {
		t.Fatalf("getent %s %s: %v", db, name, err)
	}
	id, err := strconv.Atoi(strings.Split(string(out), ":")[2])
	if err != nil {
		t.Fatal(err)
	}
	return uint32(id)
}

// asUser runs a command as uid:gid with no supplementary groups.
func asUser(uid, gid uint32, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestNoFUSEAccessSpendsNoToken: a user who cannot open /dev/fuse is told so
// before the agent joins, so the one-time token still works afterwards.
func TestNoFUSEAccessSpendsNoToken(t *testing.T) {
	nobody, nogroup := lookupID(t, "passwd", "nobody"), lookupID(t, "group", "nogroup")
	if out, err := asUser(nobody, nogroup, "sh", "-c", "exec 3<>/dev/fuse"); err == nil {
		t.Skipf("every user may open /dev/fuse on this machine: %s", out)
	}
	a := startAuthority(t)
	base := publicDir(t)
	bin := filepath.Join(base, "midfs")
	if out, err := exec.Command("cp", midfsBin, bin).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	dir := filepath.Join(base, "mnt")
	os.Mkdir(dir, 0o755)
	os.Chown(dir, int(nobody), int(nogroup))
	tok := a.addBot("robot", "access", "root")
	// The token in the environment, not argv: the one line to check is the
	// /dev/fuse error, not the warning about a token on the command line.
	t.Setenv("MIDFS_TOKEN", tok)
	out, err := asUser(nobody, nogroup, bin, "mount", dir, "--storage=memory", "--auth-server="+a.addr, "--ca-pin="+a.pin)
	os.Unsetenv("MIDFS_TOKEN")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 14 || !strings.Contains(out, "/dev/fuse") {
		t.Fatalf("mount as a user without /dev/fuse: err=%v, want exit 14 naming /dev/fuse:\n%s", err, out)
	}
	if strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("want one line of error, got:\n%s", out)
	}
	startMount(t, dir, append(a.mountArgs(tok), "--storage=memory")...) // the token was not spent
}
