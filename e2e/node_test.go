package e2e

// Nodes set up as an operator would: `midfs tokens add --type=node` on the
// authority, `midfs node start` on the node, a stock OpenSSH sshd that
// includes the fragment it writes.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/node"
)

var inviteRe = regexp.MustCompile(`The invite token: ([0-9a-f]+)`)

// nodeToken makes a node token with `midfs tokens add --type=node`.
func (a *authority) nodeToken(labels string) string {
	a.t.Helper()
	args := []string{"tokens", "add", "--type=node"}
	if labels != "" {
		args = append(args, "--labels="+labels)
	}
	out := a.admin(args...)
	m := inviteRe.FindStringSubmatch(out)
	if m == nil {
		a.t.Fatalf("no token in `tokens add` output:\n%s", out)
	}
	if strings.Contains(out, "--token="+m[1]) || !strings.Contains(out, "echo "+m[1]+" | midfs node start") {
		a.t.Fatalf("`tokens add` prints a command with the secret in argv:\n%s", out)
	}
	return m[1]
}

// testNode is a node: `midfs node start` and the sshd that includes its
// fragment, on a loopback port.
type testNode struct {
	t        testing.TB
	a        *authority
	name     string
	port     int
	dir      string // the node's own files: run dir, fragment, sshd config
	args     []string
	agent    *nodeAgent
	sshd     *exec.Cmd
	sshdLogs *testenv.LogBuffer
	sshdDone chan struct{}
}

func (n *testNode) bin() string         { return filepath.Join(n.dir, "midfs") }
func (n *testNode) addr() string        { return "127.0.0.1:" + strconv.Itoa(n.port) }
func (n *testNode) runDir() string      { return filepath.Join(n.dir, "run") }
func (n *testNode) fragment() string    { return filepath.Join(n.dir, "sshd_config.d", "midfs-node.conf") }
func (n *testNode) sshdPidFile() string { return filepath.Join(n.dir, "sshd.pid") }

// safeDir is a directory of a node's files that sshd accepts: sshd runs
// its AuthorizedPrincipalsCommand (midfs-node-hook) only from a path that
// root owns and no one else may write, which rules out /tmp, and the hook,
// as user nobody, must reach the run directory. It holds a copy of the
// binary under test and of the hook beside it, which `node start` names in
// the fragment.
func safeDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/run", "midfs-e2e-node-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	for name, src := range map[string]string{"midfs": midfsBin, node.HookName: hookBin} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// nodeAgent is one run of `midfs node start`.
type nodeAgent struct {
	cmd    *exec.Cmd
	logs   *testenv.LogBuffer // stderr: the JSON log
	stdout *testenv.LogBuffer
	done   chan struct{}
	err    error
}

// newNode prepares a node's directories and flags, with its keyring
// entries removed at the end of the test (the keyring is the machine's).
func newNode(t testing.TB, a *authority, name string, extra ...string) *testNode {
	t.Helper()
	n := &testNode{t: t, a: a, name: name, port: freePort(t), dir: safeDir(t)}
	os.MkdirAll(filepath.Dir(n.fragment()), 0o755)
	n.args = append([]string{"node", "start", "--auth-server=" + a.addr, "--ca-pin=" + a.pin, "--name=" + name,
		"--addr=" + n.addr(), "--sshd-config=" + n.fragment(), "--run-dir=" + n.runDir(),
		"--heartbeat-interval=2s", "--log-format=json", "--log-level=debug"}, extra...)
	for _, s := range []string{"", "-host"} {
		store, err := joiner.OpenStore("keyring", joiner.NodeStoreName(a.addr, name)+s)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := store.Delete(); err != nil {
				t.Errorf("cannot remove the node's key from the user keyring: %v", err)
			}
		})
	}
	return n
}

// start runs `midfs node start`, with the token (if any) on standard
// input, and waits until its fragment names files that all exist.
func (n *testNode) start(token string) *nodeAgent {
	n.t.Helper()
	args := n.args
	if token != "" {
		args = append(args, "--token=-")
	}
	ag := &nodeAgent{logs: &testenv.LogBuffer{}, stdout: &testenv.LogBuffer{}, done: make(chan struct{})}
	ag.cmd = exec.Command(n.bin(), args...)
	ag.cmd.Stdin = strings.NewReader(token + "\n")
	ag.cmd.Stdout, ag.cmd.Stderr = ag.stdout, ag.logs
	if err := ag.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	go func() { ag.err = ag.cmd.Wait(); close(ag.done) }()
	n.agent = ag
	n.t.Cleanup(func() {
		ag.stop(n.t)
		if n.t.Failed() && n.sshd == nil {
			n.t.Logf("node agent %s:\n%s\n%s", n.name, tail(nodeLog(ag), 25), ag.stdout)
		}
	})
	waitFor(n.t, "node "+n.name+" to serve sshd", 60*time.Second, func() bool {
		select {
		case <-ag.done:
			n.t.Fatalf("midfs node start exited (%v):\n%s", ag.err, tail(ag.logs.String(), 20))
		default:
		}
		return strings.Contains(ag.logs.String(), `"msg":"node serving sshd"`)
	})
	return ag
}

// nodeLog is the node agent's log without the debug lines of each
// connection and signature of sshd, which would bury the rest.
func nodeLog(ag *nodeAgent) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(ag.logs.String(), "\n") {
		if !strings.Contains(l, `"msg":"ssh-agent connection"`) && !strings.Contains(l, `"msg":"ssh-agent signature"`) {
			b.WriteString(l)
		}
	}
	return b.String()
}

// stop sends SIGTERM and checks the node agent exited 0.
func (ag *nodeAgent) stop(t testing.TB) {
	select {
	case <-ag.done:
		return
	default:
	}
	ag.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ag.done:
		if ag.err != nil {
			t.Errorf("midfs node start exited with %v after SIGTERM:\n%s", ag.err, tail(ag.logs.String(), 20))
		}
	case <-time.After(20 * time.Second):
		ag.cmd.Process.Kill()
		<-ag.done
		t.Errorf("midfs node start ignored SIGTERM for 20s")
	}
}

// startSSHD starts a stock sshd whose config includes the node's fragment
// first, as the printed Include line asks, with sshdArgs before -f.
func (n *testNode) startSSHD(sshdArgs ...string) {
	n.t.Helper()
	bin, err := exec.LookPath("sshd")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/sshd"); err != nil {
			n.t.Fatal("sshd not installed (.ci/run installs openssh-server)")
		}
	}
	os.MkdirAll("/run/sshd", 0o755)
	cfg := fmt.Sprintf(`Include %s
Port %d
ListenAddress 127.0.0.1
AuthorizedKeysFile none
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PidFile %s
LogLevel VERBOSE
Subsystem sftp internal-sftp
`, n.fragment(), n.port, n.sshdPidFile())
	path := filepath.Join(n.dir, "sshd_config")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		n.t.Fatal(err)
	}
	if out, err := exec.Command(bin, "-t", "-f", path).CombinedOutput(); err != nil {
		n.t.Fatalf("sshd -t rejects the config with the node's fragment: %v\n%s", err, out)
	}
	n.sshdLogs = &testenv.LogBuffer{}
	n.sshd = exec.Command(bin, append(append([]string{"-D", "-e"}, sshdArgs...), "-f", path)...)
	n.sshd.Stdout, n.sshd.Stderr = n.sshdLogs, n.sshdLogs
	if err := n.sshd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.sshdDone = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(n.sshd, n.sshdDone)
	n.t.Cleanup(func() {
		n.sshd.Process.Kill()
		<-n.sshdDone
		if n.t.Failed() {
			n.t.Logf("sshd of node %s:\n%s", n.name, tail(n.sshdLogs.String(), 25))
			if n.agent != nil {
				n.t.Logf("node agent %s:\n%s", n.name, tail(nodeLog(n.agent), 25))
			}
		}
	})
	waitFor(n.t, "sshd to listen", 10*time.Second, func() bool { return dialable(n.addr()) })
}

// noProdRole allows every node as the bot's logins, but denies env=prod.
const noProdRole = `kind: role
version: v7
metadata:
  name: no-prod
spec:
  allow:
    logins: ['{{internal.logins}}']
    node_labels:
      '*': '*'
  deny:
    node_labels:
      env: prod
`

// startNode joins a node with a fresh token carrying labels and starts
// its sshd.
func startNode(t testing.TB, a *authority, name, labels string, extra ...string) *testNode {
	t.Helper()
	n := newNode(t, a, name, extra...)
	n.start(a.nodeToken(labels))
	n.startSSHD()
	return n
}

// sshTo logs in as root to NAME.CLUSTER through the mount's ssh_config.
func sshTo(t testing.TB, ag *agent, node string, command ...string) (string, error) {
	t.Helper()
	return sshRun(t, ag.dir, "root@"+node+"."+cluster, command...)
}

// Two nodes joined only through `tokens add --type=node` and `node start`,
// labelled env=dev and env=prod by their tokens: a bot whose role denies
// env=prod logs into dev, checking dev's host certificate against the host
// CA, and does not see prod. Stopping prod's node agent takes prod out of
// the inventory (admin's get nodes, a bot's ls) within two heartbeats; its
// restart, without a token, brings it back, into ssh_config too.
func TestNodesJoinAndLeave(t *testing.T) {
	a := startAuthority(t)
	role := filepath.Join(t.TempDir(), "role.yaml")
	os.WriteFile(role, []byte(noProdRole), 0o644)
	a.admin("create", "-f", role)
	dev := startNode(t, a, "dev", "env=dev", "--labels=team=web")
	prod := startNode(t, a, "prod", "env=prod", "--labels=env=dev") // the token's env wins

	if !strings.Contains(dev.agent.stdout.String(), "Include "+dev.fragment()) {
		t.Errorf("node start printed no Include line:\n%s", dev.agent.stdout)
	}
	nodes := a.admin("get", "nodes")
	for _, want := range []string{"dev", "env=dev,team=web", "prod", "env=prod", "yes", "online"} {
		if !strings.Contains(nodes, want) {
			t.Fatalf("get nodes lacks %q:\n%s", want, nodes)
		}
	}
	if strings.Count(nodes, "env=dev") != 1 {
		t.Fatalf("prod's own env=dev should give way to its token's env=prod:\n%s", nodes)
	}

	bot := mountRobot(t, a, "no-prod", "root")
	if out, err := sshTo(t, bot, "dev", "echo", "hello-from-dev"); err != nil || !strings.Contains(out, "hello-from-dev") {
		t.Fatalf("ssh root@dev.%s: %v\n%s\nsshd log:\n%s\nnode log:\n%s", cluster, err, out, tail(dev.sshdLogs.String(), 15), tail(dev.agent.logs.String(), 10))
	}
	if cfg := string(bot.read("ssh_config")); !strings.Contains(cfg, "Host dev."+cluster) || strings.Contains(cfg, "prod") {
		t.Errorf("ssh_config should list dev and hide prod:\n%s", cfg)
	}

	// A bot that may see every node sees prod come and go.
	all := mountRobot(t, a, "access", "root")
	ls := func() string { return mustRun(t, "ls", "--mount="+all.dir) }
	if out := ls(); !strings.Contains(out, prod.addr()) {
		t.Fatalf("ls of a bot with access lacks prod:\n%s", out)
	}
	if out, err := sshTo(t, all, "prod", "true"); err != nil {
		t.Fatalf("ssh root@prod.%s as a bot with access: %v\n%s", cluster, err, out)
	}
	stopped := time.Now()
	prod.agent.stop(t)
	const heartbeat = 2 * time.Second
	waitFor(t, "prod to leave the inventory", time.Minute, func() bool {
		return !strings.Contains(ls(), prod.addr()) && strings.Contains(a.admin("get", "nodes/prod"), "offline")
	})
	if took := time.Since(stopped); took > 2*heartbeat+time.Second {
		t.Errorf("prod left the inventory %v after its node agent stopped; want within two heartbeats (%v) and a second for the commands", took.Round(time.Millisecond), 2*heartbeat)
	}
	waitFor(t, "prod to leave the ssh_config of a bot with access", 30*time.Second, func() bool {
		return !strings.Contains(string(all.read("ssh_config")), "Host prod.")
	})

	prod.start("") // from the keyring: no token
	waitFor(t, "prod back in the inventory and the ssh_config", 30*time.Second, func() bool {
		return strings.Contains(ls(), prod.addr()) && strings.Contains(string(all.read("ssh_config")), "Host prod.")
	})
	if out, err := sshTo(t, all, "prod", "true"); err != nil {
		t.Fatalf("ssh root@prod.%s after its node agent restarted: %v\n%s", cluster, err, out)
	}
}

// nodeLogins logs in to node again and again until stop is closed, and
// counts the logins and the failures (the first few kept).
type nodeLogins struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	done       chan struct{}
}

func startNodeLogins(t testing.TB, bot *agent, node string, stop <-chan struct{}) *nodeLogins {
	l := &nodeLogins{done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			out, err := sshTo(t, bot, node, "true")
			if err != nil {
				l.failed.Add(1)
				l.mu.Lock()
				if len(l.errs) < 5 {
					l.errs = append(l.errs, fmt.Sprintf("%s: %v: %s", time.Now().Format("15:04:05.000"), err, strings.TrimSpace(out)))
				}
				l.mu.Unlock()
				continue
			}
			l.ok.Add(1)
		}
	}()
	return l
}

func (l *nodeLogins) wait() { <-l.done }

// presented is the serial of the host certificate sshd at addr presents,
// as ssh-keyscan sees it.
func presented(t testing.TB, addr string) string {
	t.Helper()
	serial, err := tryPresented(addr)
	if err != nil {
		t.Fatal(err)
	}
	return serial
}

// tryPresented is presented for a moment when sshd may not answer (a
// reload closes its listening socket for a moment).
func tryPresented(addr string) (string, error) {
	host, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("ssh-keyscan", "-c", "-p", port, host).Output()
	if err != nil {
		return "", fmt.Errorf("ssh-keyscan -c %s: %v", addr, err)
	}
	// "[HOST] TYPE BASE64": a host name only in some versions.
	f := strings.Fields(string(out))
	i := slicesIndexFunc(f, func(s string) bool { return strings.HasSuffix(s, "-cert-v01@openssh.com") })
	if i < 0 || i+1 >= len(f) {
		return "", fmt.Errorf("ssh-keyscan -c %s printed no certificate: %q", addr, out)
	}
	cmd := exec.Command("ssh-keygen", "-L", "-f", "-")
	cmd.Stdin = strings.NewReader(f[i] + " " + f[i+1])
	info, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("ssh-keygen -L of the presented certificate: %v", err)
	}
	m := regexp.MustCompile(`Serial: (\d+)`).FindSubmatch(info)
	if m == nil || !strings.Contains(string(info), "host certificate") {
		return "", fmt.Errorf("sshd at %s presents no host certificate:\n%s", addr, info)
	}
	return string(m[1]), nil
}

// The host certificate renews every two seconds while a bot logs in
// again and again: sshd presents each new certificate, and no login fails.
// The host private key is nowhere on disk: no file written since the node
// started, on any disk or tmpfs the test can see, holds a piece of it.
func TestNodeCertRenewal(t *testing.T) {
	marker := time.Now()
	a := startAuthority(t)
	n := startNode(t, a, "web", "env=dev", "--certificate-ttl=1m", "--renewal-interval=2s")
	bot := mountRobot(t, a, "access", "root")

	stop := make(chan struct{})
	loop := startNodeLogins(t, bot, "web", stop)
	serials := map[string]bool{presented(t, n.addr()): true}
	waitFor(t, "sshd to present three renewed host certificates over 5 logins", 3*time.Minute, func() bool {
		serials[presented(t, n.addr())] = true
		return len(serials) >= 4 && loop.ok.Load()+loop.failed.Load() >= 5
	})
	close(stop)
	loop.wait()
	if loop.failed.Load() != 0 {
		t.Fatalf("%d logins failed and %d succeeded while the host certificate renewed; first failures:\n%s",
			loop.failed.Load(), loop.ok.Load(), strings.Join(loop.errs, "\n"))
	}
	t.Logf("%d logins, none failed, over %d host certificates", loop.ok.Load(), len(serials))
	if strings.Contains(n.agent.logs.String(), `"msg":"sshd reloaded`) {
		t.Errorf("sshd was reloaded, though OpenSSH before 9.8 reads the new certificate at every connection")
	}

	key := storedHostKey(t, a, "web")
	if hits := filesHolding(t, marker, keyFragments(t, key)); len(hits) > 0 {
		t.Fatalf("a piece of the host private key is on disk, in %s", strings.Join(hits, ", "))
	}
}

// storedHostKey reads the node's host private key from the kernel keyring,
// where it waits for a restart: the only place besides the process.
func storedHostKey(t testing.TB, a *authority, node string) *ecdsa.PrivateKey {
	t.Helper()
	store, err := joiner.OpenStore("keyring", joiner.NodeStoreName(a.addr, node)+"-host")
	if err != nil {
		t.Fatal(err)
	}
	der, err := store.Load()
	if err != nil {
		t.Fatalf("no host key in the keyring: %v", err)
	}
	k, err := identity.ParsePrivateKeyDER(der)
	if err != nil {
		t.Fatal(err)
	}
	ec, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		t.Fatalf("host key is a %T, want ECDSA", k)
	}
	return ec
}

// keyFragments are what any file holding the key would contain: the
// private scalar raw, in hex, and in base64 at each of the three offsets a
// base64 encoding of a longer encoding (PEM of PKCS#8 or SEC 1, OpenSSH's
// format) can put it at.
func keyFragments(t testing.TB, k *ecdsa.PrivateKey) [][]byte {
	d, err := k.Bytes() // the 32-byte scalar
	if err != nil {
		t.Fatal(err)
	}
	frags := [][]byte{d[4:28], []byte(hex.EncodeToString(d[4:28]))}
	for s := 0; s < 3; s++ {
		frags = append(frags, []byte(base64.StdEncoding.EncodeToString(d[s : s+27]))[4:32])
	}
	return frags
}

// filesHolding lists the regular files changed since since, on every
// disk-backed or tmpfs filesystem, that hold one of frags. A file that
// holds the key must have been written after the key was made, so older
// files need not be read.
func filesHolding(t testing.TB, since time.Time, frags [][]byte) []string {
	t.Helper()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var hits []string
	seen := map[string]bool{}
	read := 0
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		i := slicesIndex(f, "-")
		if i < 0 || i+1 >= len(f) {
			continue
		}
		switch f[i+1] {
		case "ext4", "ext3", "xfs", "btrfs", "overlay", "tmpfs", "vfat", "zfs", "f2fs":
		default:
			continue // proc, sysfs, cgroups, devices, FUSE (other tests' mounts)...
		}
		root := unescapeMount(f[4])
		if seen[root] {
			continue
		}
		seen[root] = true
		var rootDev uint64
		if st, err := os.Stat(root); err == nil {
			rootDev = st.Sys().(*syscall.Stat_t).Dev
		}
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			if d.IsDir() {
				if info.Sys().(*syscall.Stat_t).Dev != rootDev {
					return fs.SkipDir // another mount: walked on its own, if it is of a kind above
				}
				return nil
			}
			if !info.Mode().IsRegular() || info.ModTime().Before(since) {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			read++
			for _, fr := range frags {
				if bytes.Contains(b, fr) {
					hits = append(hits, path)
					break
				}
			}
			return nil
		})
	}
	t.Logf("searched %d files written since the test began, on %d filesystems", read, len(seen))
	return hits
}

func slicesIndex(s []string, v string) int {
	return slicesIndexFunc(s, func(x string) bool { return x == v })
}

func slicesIndexFunc(s []string, f func(string) bool) int {
	for i, x := range s {
		if f(x) {
			return i
		}
	}
	return -1
}

// An sshd that loads its host certificate only when it starts or reloads
// (OpenSSH 9.8 and later do; 9.2 does with -r, no re-exec) is reloaded by
// the node agent through --sshd-pid-file after each renewal: it then
// presents the new certificate, and a login in progress across the reload
// goes on to its end.
func TestNodeSSHDReload(t *testing.T) {
	a := startAuthority(t)
	n := newNode(t, a, "web", "--certificate-ttl=1m", "--renewal-interval=5s")
	n.args = append(n.args, "--sshd-pid-file="+n.sshdPidFile())
	n.start(a.nodeToken("env=dev"))
	n.startSSHD("-r")
	bot := mountRobot(t, a, "access", "root")

	first := presented(t, n.addr())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	long := exec.CommandContext(ctx, "ssh", "-F", filepath.Join(bot.dir, "ssh_config"), "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-o", "IdentityAgent=none", "root@web."+cluster, "sleep 8; echo still-here")
	var out bytes.Buffer
	long.Stdout, long.Stderr = &out, &out
	if err := long.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "sshd to present a renewed certificate after a reload", time.Minute, func() bool {
		serial, err := tryPresented(n.addr())
		return err == nil && serial != first
	})
	if !strings.Contains(n.agent.logs.String(), `"msg":"sshd reloaded`) {
		t.Errorf("the node agent did not say it reloaded sshd:\n%s", tail(n.agent.logs.String(), 10))
	}
	if err := long.Wait(); err != nil || !strings.Contains(out.String(), "still-here") {
		t.Fatalf("a login in progress across the reload: %v\n%s", err, out.String())
	}
	// Renewals go on every 5 s, each with a reload, and a reload closes
	// sshd's listening socket for a moment (documented): a connection
	// refused then is tried again, any other failure is one.
	for try := 1; ; try++ {
		o, err := sshTo(t, bot, "web", "true")
		if err == nil {
			break
		}
		if try == 3 || !strings.Contains(o, "Connection refused") {
			t.Fatalf("a login after the reload (try %d): %v\n%s", try, err, o)
		}
	}
}

// A restart of the node agent (SIGTERM, or kill -9) needs no new token:
// the node's identity and host key come back from the kernel keyring, and
// sshd, which kept its files, signs again as soon as the new process
// serves the key. Logins run in a loop across the restarts; the ones
// refused while no process served the key are counted and reported.
func TestNodeRestart(t *testing.T) {
	a := startAuthority(t)
	n := startNode(t, a, "web", "env=dev")
	bot := mountRobot(t, a, "access", "root")
	hostKey := storedHostKey(t, a, "web")

	stop := make(chan struct{})
	loop := startNodeLogins(t, bot, "web", stop)
	waitFor(t, "logins", 2*time.Minute, func() bool { return loop.ok.Load() >= 2 })
	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		before := loop.ok.Load()
		if how == "SIGTERM" {
			n.agent.stop(t)
		} else {
			n.agent.cmd.Process.Kill()
			<-n.agent.done
		}
		n.start("")
		if !strings.Contains(n.agent.logs.String(), "restarting from the stored bot identity") {
			t.Fatalf("after %s the node agent did not restart from the keyring:\n%s", how, tail(n.agent.logs.String(), 10))
		}
		waitFor(t, "logins after the restart", 2*time.Minute, func() bool { return loop.ok.Load() >= before+2 })
	}
	close(stop)
	loop.wait()
	t.Logf("%d logins succeeded and %d were refused across two restarts of the node agent; first refusals:\n%s",
		loop.ok.Load(), loop.failed.Load(), strings.Join(loop.errs, "\n"))
	if !storedHostKey(t, a, "web").Equal(hostKey) {
		t.Error("the host key changed across restarts: sshd would need a reload")
	}
	if o, err := sshTo(t, bot, "web", "true"); err != nil {
		t.Fatalf("login after the restarts: %v\n%s", err, o)
	}
}

// Bad input to `midfs node start`: one line naming what is wrong, and
// nothing half-configured (no fragment, no run directory), and the token
// is not spent: the same token then joins.
func TestNodeBadInput(t *testing.T) {
	a := startAuthority(t)
	tok := a.nodeToken("")
	n := newNode(t, a, "web")
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"wrong token", []string{"--token=-"}, 11, "token"},
		{"wrong pin", []string{"--token=-", "--ca-pin=sha256:" + strings.Repeat("ab", 32)}, 12, "pin"},
		{"sshd-config in a missing directory", []string{"--token=-", "--sshd-config=" + filepath.Join(n.dir, "nope", "midfs.conf")}, 3, "sshd-config"},
		{"sshd-config where no file can be made", []string{"--token=-", "--sshd-config=/proc/midfs-node.conf"}, 3, "sshd-config"},
		{"sshd-config with a space", []string{"--token=-", "--sshd-config=" + filepath.Join(n.dir, "a b.conf")}, 3, "sshd-config"},
		{"bad labels", []string{"--token=-", "--labels=env=prod,bad key=x"}, 3, "label"},
		{"bad name", []string{"--token=-", "--name=web;rm"}, 3, "name"},
		{"bad addr", []string{"--token=-", "--addr=localhost"}, 3, "addr"},
	}
	for _, c := range cases {
		stdin := tok
		if c.name == "wrong token" {
			stdin = strings.Repeat("0", 64)
		}
		cmd := exec.Command(n.bin(), append(append(append([]string{}, n.args...), "--storage=memory", "--join-timeout=5s"), c.args...)...)
		cmd.Stdin = strings.NewReader(stdin + "\n")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != c.code {
			t.Errorf("%s: %v, want exit %d\n%s", c.name, err, c.code, tail(stderr.String(), 5))
			continue
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		last := lines[len(lines)-1]
		if !strings.HasPrefix(last, "midfs: ") || !strings.Contains(strings.ToLower(last), c.want) {
			t.Errorf("%s: last line %q does not name %q", c.name, last, c.want)
		}
		for _, p := range []string{n.fragment(), n.runDir()} {
			if _, err := os.Stat(p); err == nil {
				t.Fatalf("%s: left %s behind", c.name, p)
			}
		}
	}
	n.start(tok)
	n.startSSHD()
	bot := mountRobot(t, a, "access", "root")
	if out, err := sshTo(t, bot, "web", "true"); err != nil {
		t.Fatalf("login after the bad starts: %v\n%s", err, out)
	}
}

var lockRe = regexp.MustCompile(`Created lock (\S+):`)

// The nodes enforce, with no call to the authority per login: a bot whose
// role allows every node but denies env=prod is refused by prod's sshd
// ("Permission denied (publickey)") even when it names prod's address
// itself; a lock refuses it on dev within the node's lock interval, with
// the certificate it held before the lock, and so does dev while the
// authority is down; removing the lock lets it in again.
func TestNodesEnforce(t *testing.T) {
	a := startAuthority(t)
	role := filepath.Join(t.TempDir(), "role.yaml")
	os.WriteFile(role, []byte(noProdRole), 0o644)
	a.admin("create", "-f", role)
	dev := startNode(t, a, "dev", "env=dev", "--locks-interval=2s")
	prod := startNode(t, a, "prod", "env=prod", "--locks-interval=2s")
	bot := mountRobot(t, a, "no-prod", "root")
	login := func(node *testNode, extra ...string) (string, error) {
		t.Helper()
		args := append([]string{"-F", filepath.Join(bot.dir, "ssh_config"), "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
			"-o", "IdentityAgent=none", "-o", "ConnectTimeout=10"}, extra...)
		args = append(args, "root@"+node.name+"."+cluster, "true")
		out, err := exec.Command("ssh", args...).CombinedOutput()
		return string(out), err
	}
	if out, err := login(dev); err != nil {
		t.Fatalf("login on dev: %v\n%s", err, out)
	}
	_, port, _ := strings.Cut(prod.addr(), ":")
	// HostKeyAlias: ssh checks the host key against the name it connects
	// to; a bot that wants in names prod's certificate's name.
	out, err := login(prod, "-o", "HostName=127.0.0.1", "-o", "Port="+port, "-o", "HostKeyAlias=prod."+cluster)
	if err == nil || !strings.Contains(out, "Permission denied (publickey)") {
		t.Fatalf("login on prod, whose labels the role denies, by its address: %v\n%s", err, out)
	}

	cert := bot.read("key-cert.pub") // issued before the lock
	m := lockRe.FindStringSubmatch(a.admin("lock", "--bot=robot", "--message=e2e"))
	if m == nil {
		t.Fatal("no lock ID in the output of `midfs lock`")
	}
	locked := time.Now()
	waitFor(t, "dev to refuse the locked bot", time.Minute, func() bool {
		out, err := login(dev)
		return err != nil && strings.Contains(out, "Permission denied (publickey)")
	})
	t.Logf("dev refused the locked bot %v after the lock", time.Since(locked).Round(time.Millisecond))
	if got := bot.read("key-cert.pub"); !bytes.Equal(got, cert) {
		t.Fatal("the bot's certificate changed: the test wants one issued before the lock")
	}
	a.stop()
	if out, err := login(dev); err == nil || !strings.Contains(out, "Permission denied (publickey)") {
		t.Fatalf("with the authority down, dev let the locked bot in: %v\n%s", err, out)
	}
	a.start()
	a.admin("rm", "locks/"+m[1])
	waitFor(t, "dev to let the bot in again", time.Minute, func() bool {
		_, err := login(dev)
		return err == nil
	})
}
