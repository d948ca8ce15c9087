package e2e

// midfs as a system service: mount(8) and fstab through the real helper,
// sd_notify to a real unixgram socket, the diagnostics endpoints through an
// authority outage, config files, the capability set the systemd unit
// grants, and the .deb on this machine.

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/internal/testenv"
)

// agentConfig writes an agent config file (0600, as it holds a token).
func agentConfig(t *testing.T, a *authority, token string, extra ...string) string {
	t.Helper()
	body := fmt.Sprintf("auth_server: %s\nca_pin: %s\ntoken: %s\nstorage: memory\nlog_level: debug\nlog_format: json\n",
		a.addr, a.pin, token)
	for _, e := range extra {
		body += e + "\n"
	}
	path := filepath.Join(t.TempDir(), "robot.yaml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// agentPIDs finds the background agents serving dir, by their command line.
func agentPIDs(dir string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(argv) >= 3 && argv[1] == "mount" && argv[2] == dir {
			pid, _ := strconv.Atoi(strings.Split(p, "/")[2])
			pids = append(pids, pid)
		}
	}
	return pids
}

// cleanupMount unmounts dir and ends its agents if a test left them.
func cleanupMount(t *testing.T, dir string) {
	t.Cleanup(func() {
		if mounted(dir) {
			t.Errorf("%s still mounted at the end of the test", dir)
			exec.Command("umount", dir).Run()
		}
		for _, pid := range agentPIDs(dir) {
			syscall.Kill(pid, syscall.SIGTERM)
		}
		waitFor(t, "agents of "+dir+" to exit", 20*time.Second, func() bool { return len(agentPIDs(dir)) == 0 })
		if mounted(dir) {
			exec.Command("umount", "-l", dir).Run()
		}
	})
}

// installHelper puts /sbin/mount.fuse.midfs (where mount(8) looks, and only
// there) pointing at the binary under test for the rest of the test, holding
// a lock so concurrent test runs do not trade helpers.
func installHelper(t *testing.T) {
	t.Helper()
	lock, err := os.OpenFile("/run/midfs-e2e-helper.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	const helper = "/sbin/mount.fuse.midfs"
	if _, err := os.Lstat(helper); err == nil {
		lock.Close()
		t.Skipf("%s is installed already (make install or the .deb); not replacing it with the binary under test", helper)
	}
	if err := os.Symlink(midfsBin, helper); err != nil {
		lock.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		os.Remove(helper)
		lock.Close()
	})
}

// checkReadyNow asserts the tree is readable the moment the helper returned:
// no polling, that is the helper's promise.
func checkReadyNow(t *testing.T, dir string) {
	t.Helper()
	if !mounted(dir) {
		t.Fatalf("%s is not mounted after the helper returned", dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 10 {
		t.Fatalf("the tree is not complete after the helper returned: %v %d entries", err, len(entries))
	}
	if b, err := os.ReadFile(filepath.Join(dir, "key-cert.pub")); err != nil || !strings.Contains(string(b), "-cert-v01@openssh.com") {
		t.Fatalf("key-cert.pub is not readable after the helper returned: %v %q", err, b)
	}
}

func runCmd(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out), 0
}

// An fstab line of type fuse.midfs, mounted and unmounted by the real
// mount(8) and umount(8).
func TestFstabMountAndUmount(t *testing.T) {
	installHelper(t)
	a := startAuthority(t)
	token := a.addBot("robot", "access", "root")
	dir := publicDir(t)
	cleanupMount(t, dir)
	logFile := filepath.Join(t.TempDir(), "agent.log")
	// The token comes from the config file; owner= and reader= map to flags.
	cfg := agentConfig(t, a, token)
	fstab := filepath.Join(t.TempDir(), "fstab")
	line := fmt.Sprintf("%s %s fuse.midfs defaults,_netdev,nofail,x-systemd.requires=network-online.target,owner=nobody,reader=@root,log=%s 0 0\n", cfg, dir, logFile)
	os.WriteFile(fstab, []byte(line), 0o644)

	out, code := runCmd(t, "mount", "-T", fstab, dir)
	if code != 0 {
		t.Fatalf("mount -T %s %s: exit %d\n%s\nagent log:\n%s", fstab, dir, code, out, readFile(logFile))
	}
	checkReadyNow(t, dir)
	var st unix.Stat_t
	unix.Stat(filepath.Join(dir, "key"), &st)
	if uid := lookupID(t, "passwd", "nobody"); st.Uid != uid {
		t.Errorf("owner=nobody did not reach --owner: key is owned by uid %d", st.Uid)
	}
	pids := agentPIDs(dir)
	if len(pids) != 1 {
		t.Fatalf("want one background agent for %s, found %v", dir, pids)
	}
	if sid, _ := unix.Getsid(pids[0]); sid != pids[0] {
		t.Errorf("the agent must lead its own session (setsid), sid %d pid %d", sid, pids[0])
	}
	if cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pids[0])); cwd != "/" {
		t.Errorf("the agent's cwd is %q, want /", cwd)
	}

	out, code = runCmd(t, "umount", dir)
	if code != 0 {
		t.Fatalf("umount %s: exit %d\n%s", dir, code, out)
	}
	waitFor(t, "the agent to exit after umount", 20*time.Second, func() bool { return len(agentPIDs(dir)) == 0 })
	if mounted(dir) {
		t.Fatal("still mounted after umount")
	}
	logs := readFile(logFile)
	if !strings.Contains(logs, `"msg":"mounted"`) || !strings.Contains(logs, "unmounted from outside") {
		t.Errorf("the background agent's log (log=) lacks its start or stop:\n%s", tail(logs, 20))
	}
	if strings.Contains(logs, token) || strings.Contains(logs, "PRIVATE KEY") {
		t.Error("the agent's log holds the token or a private key")
	}
}

// `mount -t fuse.midfs CONFIG DIR -o ...` and the token given as an option:
// it must not show in the long-running agent's argv.
func TestMountTypeWithOptions(t *testing.T) {
	installHelper(t)
	a := startAuthority(t)
	token := a.addBot("robot", "access", "root")
	dir := publicDir(t)
	cleanupMount(t, dir)
	cfg := agentConfig(t, a, "not-this-one") // the option beats the file
	out, code := runCmd(t, "mount", "-t", "fuse.midfs", cfg, dir, "-o", "token="+token+",certificate_ttl=30m,renewal_interval=10m")
	if code != 0 {
		t.Fatalf("mount -t fuse.midfs: exit %d\n%s", code, out)
	}
	checkReadyNow(t, dir)
	for _, pid := range agentPIDs(dir) {
		argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(argv), token) {
			t.Errorf("the token is in the agent's argv, readable by every user: %q", argv)
		}
		if !strings.Contains(string(argv), "--certificate-ttl=30m") {
			t.Errorf("certificate_ttl=30m did not become a flag: %q", argv)
		}
	}
	if out, code := runCmd(t, "umount", dir); code != 0 {
		t.Fatalf("umount: %d %s", code, out)
	}
	waitFor(t, "the agent to exit after umount", 20*time.Second, func() bool { return len(agentPIDs(dir)) == 0 })
}

// With only fuse3's helper, mount(8) runs mount.fuse3, which runs
// `midfs SOURCE DIR -o OPTS,dev,suid`. mount(8) resets PATH for it, so a
// test cannot slip the binary under test in; mount.fuse3 itself is run
// here, with the arguments mount(8) gives it.
func TestViaMountFuse3(t *testing.T) {
	fuse3, err := exec.LookPath("mount.fuse3")
	if err != nil {
		if fuse3, err = exec.LookPath("/sbin/mount.fuse3"); err != nil {
			t.Skip("mount.fuse3 not installed (apt-get install fuse3)")
		}
	}
	a := startAuthority(t)
	dir := publicDir(t)
	cleanupMount(t, dir)
	cfg := agentConfig(t, a, a.addBot("robot", "access", "root"))
	bin := filepath.Join(t.TempDir(), "midfs")
	if err := os.Symlink(midfsBin, bin); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(fuse3, cfg, dir, "-t", "fuse.midfs", "-o", "rw,_netdev")
	cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+":/usr/sbin:/usr/bin:/sbin:/bin")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mount.fuse3: %v\n%s", err, out)
	}
	checkReadyNow(t, dir)
	if out, code := runCmd(t, "umount", dir); code != 0 {
		t.Fatalf("umount: %d %s", code, out)
	}
	waitFor(t, "the agent to exit after umount", 20*time.Second, func() bool { return len(agentPIDs(dir)) == 0 })
}

// A bad token: mount(8) fails with the agent's own one-line error and exit
// code, and nothing is left mounted or running.
func TestHelperFailureLeavesNothing(t *testing.T) {
	installHelper(t)
	a := startAuthority(t)
	a.addBot("robot", "access", "root")
	dir := publicDir(t)
	cleanupMount(t, dir)
	cfg := agentConfig(t, a, strings.Repeat("ab", 32))
	out, code := runCmd(t, "mount", "-t", "fuse.midfs", cfg, dir)
	if code != 11 {
		t.Fatalf("want the agent's exit code 11 (join refused) through mount(8), got %d\n%s", code, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "midfs: ") || !strings.Contains(lines[0], "join") {
		t.Fatalf("want one line of error from the agent, got:\n%s", out)
	}
	if mounted(dir) {
		t.Fatal("a failed join left a mount")
	}
	if pids := agentPIDs(dir); len(pids) > 0 {
		t.Fatalf("a failed join left agents running: %v", pids)
	}

	// A config file that does not parse: the error names its line.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("auth_server: "+a.addr+"\ntokn: x\n"), 0o600)
	out, code = runCmd(t, "mount", "-t", "fuse.midfs", bad, dir)
	if code != 3 || !strings.Contains(out, "line 2") || !strings.Contains(out, `"tokn"`) {
		t.Fatalf("want exit 3 naming line 2 of the config, got %d:\n%s", code, out)
	}
	if mounted(dir) || len(agentPIDs(dir)) > 0 {
		t.Fatal("a bad config left something behind")
	}
}

// notifyListener is systemd's end of NOTIFY_SOCKET.
type notifyListener struct {
	addr string
	conn *net.UnixConn
	msgs chan string
}

func listenNotify(t *testing.T) *notifyListener {
	t.Helper()
	n := &notifyListener{addr: fmt.Sprintf("@midfs-e2e-notify-%d-%d", os.Getpid(), time.Now().UnixNano()), msgs: make(chan string, 100)}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n.conn = conn
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				close(n.msgs)
				return
			}
			n.msgs <- string(buf[:k])
		}
	}()
	return n
}

// next waits for a datagram containing want and returns it.
func (n *notifyListener) next(t *testing.T, want string, d time.Duration) string {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m, ok := <-n.msgs:
			if !ok {
				t.Fatalf("notify socket closed before %q", want)
			}
			if strings.Contains(m, want) {
				return m
			}
		case <-deadline:
			t.Fatalf("no sd_notify %q within %v", want, d)
		}
	}
}

// Under systemd (Type=notify): READY=1 only once the tree is readable,
// STATUS= with the expiry, SIGHUP renews, STOPPING=1 at SIGTERM. The
// mount point comes from the config file, as in midfs@.service.
func TestSystemdNotifyAgent(t *testing.T) {
	a := startAuthority(t)
	n := listenNotify(t)
	dir := publicDir(t)
	cleanupMount(t, dir)
	diag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := agentConfig(t, a, a.addBot("robot", "access", "root"), "mountpoint: "+dir, "diag_addr: "+diag)
	logs := &testenv.LogBuffer{}
	cmd := exec.Command(midfsBin, "mount", "--config="+cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+n.addr)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })

	ready := n.next(t, "READY=1", 60*time.Second)
	checkReadyNow(t, dir) // readable when READY=1 arrives, not some time after
	if code, r := readyz(t, diag); code != 200 {
		t.Errorf("/readyz right after READY=1 (default lifetimes, no renewal yet): %d %+v", code, r)
	}
	if !strings.Contains(ready, "STATUS=mounted at "+dir) {
		t.Errorf("READY=1 came without STATUS: %q", ready)
	}
	if st := n.next(t, "STATUS=identity expires at ", 15*time.Second); st == "" {
		t.Error("no STATUS with the expiry")
	}
	before := metricValue(t, diag, "midfs_agent_renewals_total")
	cmd.Process.Signal(syscall.SIGHUP) // systemctl reload
	waitFor(t, "SIGHUP to renew", 20*time.Second, func() bool { return metricValue(t, diag, "midfs_agent_renewals_total") > before })

	cmd.Process.Signal(syscall.SIGTERM)
	n.next(t, "STOPPING=1", 20*time.Second)
	if err := <-done; err != nil {
		t.Fatalf("agent exit after SIGTERM: %v\n%s", err, tail(logs.String(), 20))
	}
	if mounted(dir) {
		t.Fatal("still mounted after SIGTERM")
	}
}

func TestSystemdNotifyAuthority(t *testing.T) {
	n := listenNotify(t)
	logs := &testenv.LogBuffer{}
	dataDir := t.TempDir()
	cmd := exec.Command(midfsBin, "auth", "start", "--data-dir", dataDir, "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+n.addr)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Signal(syscall.SIGTERM)
	n.next(t, "READY=1", 30*time.Second)
	// Ready means serving: the admin socket answers at once.
	if r := run(t, "status", "--data-dir", dataDir); r.code != 0 {
		t.Fatalf("READY=1 before the admin socket answers: %s", r)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	n.next(t, "STOPPING=1", 20*time.Second)
}

// httpGet fetches url; a refused connection is an error, not a status.
func httpGet(url string) (int, []byte, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

type readyzBody struct {
	Status   string `json:"status"`
	Services map[string]struct {
		Status    string    `json:"status"`
		Reason    string    `json:"reason"`
		UpdatedAt time.Time `json:"updated_at"`
	} `json:"services"`
}

func readyz(t *testing.T, addr string) (int, readyzBody) {
	t.Helper()
	code, body, err := httpGet("http://" + addr + "/readyz")
	if err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	var r readyzBody
	if err := json.Unmarshal(body, &r); err != nil {
		t.Fatalf("/readyz is not JSON: %v: %s", err, body)
	}
	return code, r
}

// scrape parses /metrics with Prometheus's own text parser.
func scrape(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	code, body, err := httpGet("http://" + addr + "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("/metrics: %d %v", code, err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("/metrics does not parse as Prometheus text: %v", err)
	}
	out := map[string]float64{}
	for name, f := range fams {
		for _, m := range f.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += fmt.Sprintf(",%s=%s", l.GetName(), l.GetValue())
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				out[key+",count"] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return out
}

func metricValue(t *testing.T, addr, key string) float64 {
	t.Helper()
	return scrape(t, addr)[key]
}

// renewals is the number of successful renewals the agent serving
// diagnostics at addr counts.
func renewals(t *testing.T, addr string) float64 {
	t.Helper()
	m := scrape(t, addr)
	return m["midfs_agent_renewals_total"] - m["midfs_agent_renewals_failed_total"]
}

// /readyz goes 200 -> 503 when the authority is gone and the identity
// expires -> 200 when the authority is back; /metrics parses throughout
// and counts what happened. Short lifetimes make the outage visible.
func TestReadyzThroughAnAuthorityOutage(t *testing.T) {
	authDiag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := startAuthority(t, "--diag-addr="+authDiag)
	dir := publicDir(t)
	diag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ag := startMount(t, dir, append(a.mountArgs(a.addBot("robot", "access", "root")),
		"--storage=memory", "--certificate-ttl=12s", "--renewal-interval=4s", "--diag-addr="+diag)...)

	waitFor(t, "/readyz 200", 30*time.Second, func() bool { c, _ := readyz(t, diag); return c == 200 })
	if c, body, _ := httpGet("http://" + diag + "/livez"); c != 200 || strings.TrimSpace(string(body)) != "OK" {
		t.Fatalf("/livez: %d %q", c, body)
	}
	ag.read("key") // counted by file and result
	m := scrape(t, diag)
	if m["midfs_agent_opens_total,file=key,result=ok"] < 1 || m["midfs_agent_identity_expiry_timestamp_seconds"] < float64(time.Now().Unix()) {
		t.Fatalf("agent metrics do not reflect the mount: %v", pick(m, "midfs_agent_"))
	}
	am := scrape(t, authDiag)
	if am["midfs_auth_joins_total,method=token,result=ok"] < 1 {
		t.Errorf("authority metrics lack the join: %v", pick(am, "midfs_auth_"))
	}
	if c, r := readyz(t, authDiag); c != 200 || r.Services["authority"].Status != "healthy" {
		t.Errorf("authority /readyz: %d %+v", c, r)
	}

	a.stop()
	waitFor(t, "/readyz 503 with the identity expired", 60*time.Second, func() bool {
		c, r := readyz(t, diag)
		return c == 503 && r.Services["identity"].Status == "unhealthy" && strings.Contains(r.Services["identity"].Reason, "expired")
	})
	_, r := readyz(t, diag)
	if r.Services["renewal"].Status != "unhealthy" {
		t.Errorf("renewals fail while the authority is away: %+v", r.Services["renewal"])
	}
	if failed := metricValue(t, diag, "midfs_agent_renewals_failed_total"); failed < 1 {
		t.Errorf("renewals_failed_total = %v during the outage", failed)
	}

	a.start() // same data dir, same address
	waitFor(t, "/readyz 200 after the authority returns", 60*time.Second, func() bool { c, _ := readyz(t, diag); return c == 200 })
	if b := ag.read("key-cert.pub"); len(b) == 0 {
		t.Fatal("no certificate after recovery")
	}
}

func pick(m map[string]float64, prefix string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if strings.HasPrefix(k, prefix) {
			out[k] = v
		}
	}
	return out
}

// ExecStopPost: after SIGKILL the kernel keeps a dead mount; `midfs
// cleanup --config` clears it (and leaves a live mount alone).
func TestCleanupAfterKill(t *testing.T) {
	a := startAuthority(t)
	dir := publicDir(t)
	cfg := agentConfig(t, a, a.addBot("robot", "access", "root"), "mountpoint: "+dir)
	ag := startMount(t, dir, "--config="+cfg)
	mustRun(t, "cleanup", "--config="+cfg)
	if !mounted(dir) {
		t.Fatal("cleanup unmounted a live mount")
	}
	ag.kill()
	// stat may be answered from the kernel's attribute cache; an open must
	// reach the dead daemon.
	if _, err := os.ReadFile(filepath.Join(dir, "key.pub")); !errors.Is(err, syscall.ENOTCONN) {
		exec.Command("umount", "-l", dir).Run()
		t.Fatalf("want ENOTCONN from the dead mount, got %v", err)
	}
	mustRun(t, "cleanup", "--config="+cfg)
	if mounted(dir) {
		t.Fatal("cleanup left the dead mount")
	}
}

// midfs@.service keeps only CAP_SYS_ADMIN and CAP_IPC_LOCK and sets
// NoNewPrivileges. Run the agent exactly so (setpriv) and use the mount
// from another uid.
func TestAgentRunsWithTheUnitsCapabilities(t *testing.T) {
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("setpriv not installed (util-linux)")
	}
	unit, err := os.ReadFile("../contrib/midfs@.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "\nCapabilityBoundingSet=CAP_SYS_ADMIN CAP_IPC_LOCK CAP_CHOWN\n") || !strings.Contains(string(unit), "\nNoNewPrivileges=yes\n") {
		t.Fatal("the unit's capability set changed; update this test with it")
	}
	a := startAuthority(t)
	dir := publicDir(t)
	cleanupMount(t, dir)
	logs := &testenv.LogBuffer{}
	nobody := lookupID(t, "passwd", "nobody")
	sock := filepath.Join(publicDir(t), "robot.agent")
	cmd := exec.Command(setpriv, "--bounding-set=-all,+sys_admin,+ipc_lock,+chown", "--inh-caps=-all", "--no-new-privs",
		midfsBin, "mount", dir, "--storage=keyring", "--log-format=json", "--owner=nobody", "--ssh-agent="+sock)
	cmd.Args = append(cmd.Args, a.mountArgs(a.addBot("robot", "access", "root"))...)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitFor(t, "the mount with the unit's capabilities", 60*time.Second, func() bool {
		select {
		case err := <-done:
			t.Fatalf("agent with CAP_SYS_ADMIN+CAP_IPC_LOCK+CAP_CHOWN only exited: %v\n%s", err, logs)
		default:
		}
		return mounted(dir)
	})
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if !regexp.MustCompile(`CapBnd:\s+0*204001\b`).Match(status) {
		t.Errorf("the agent's bounding set is not CAP_SYS_ADMIN|CAP_IPC_LOCK|CAP_CHOWN:\n%s", status)
	}
	if out, err := asUser(nobody, nobody, "cat", filepath.Join(dir, "key.pub")); err != nil || !strings.HasPrefix(out, "ecdsa-") {
		t.Fatalf("another uid cannot read key.pub: %v %q", err, out)
	}
	// The socket is the owner's, who may use it.
	var st syscall.Stat_t
	if err := syscall.Lstat(sock, &st); err != nil || st.Uid != nobody || st.Mode&0o777 != 0o600 {
		t.Errorf("the --ssh-agent socket: uid %d mode %o (%v), want nobody's, 0600", st.Uid, st.Mode&0o777, err)
	}
	if out, err := asUser(nobody, nobody, "env", "SSH_AUTH_SOCK="+sock, "ssh-add", "-L"); err != nil || !strings.HasPrefix(out, "ecdsa-") {
		t.Errorf("the owner cannot use the --ssh-agent socket: %v %q", err, out)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := <-done; err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, tail(logs.String(), 10))
	}
	if mounted(dir) {
		t.Fatal("still mounted")
	}
}

// A full run at debug level, authority and agent, with joins, renewals,
// SIGHUP, reads of every file, signatures through the agent socket (and a
// refused one), a restart and shutdown: no log line holds the token or any
// private key.
func TestLogsHoldNoSecrets(t *testing.T) {
	a := startAuthority(t)
	token := a.addBot("robot", "access", "root")
	dir := publicDir(t)
	sock := filepath.Join(publicDir(t), "robot.agent")
	ag := startMount(t, dir, append(a.mountArgs(token), "--storage=keyring", "--certificate-ttl=6s", "--renewal-interval=2s",
		"--ssh-agent="+sock)...)
	data := filepath.Join(publicDir(t), "data")
	os.WriteFile(data, []byte("data"), 0o644)
	var keys [][]byte
	for i := 0; i < 3; i++ {
		keys = append(keys, ag.read("key"))
		for _, f := range []string{"identity", "key-cert.pub", "tlscert", "ssh_config", "known_hosts"} {
			ag.read(f)
		}
		for _, args := range [][]string{{"ssh-keygen", "-Y", "sign", "-n", "file", "-f", ag.file("key.pub"), data}, {"ssh-add", "-D"}} {
			os.Remove(data + ".sig")
			cmd := exec.Command(args[0], args[1:]...)
			cmd.Env = append(envWithout("SSH_AUTH_SOCK"), "SSH_AUTH_SOCK="+sock)
			cmd.Run() // ssh-add -D is refused; only the logs matter here
		}
		ag.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, "a new key after SIGHUP", 30*time.Second, func() bool { return !bytes.Equal(ag.read("key"), keys[i]) })
	}
	ag.stop()
	ag2 := startMount(t, dir, append(a.mountArgs(token), "--storage=keyring")...) // restart from the keyring
	keys = append(keys, ag2.read("key"))
	ag2.stop()
	a.stop()
	// Each key scanned for must be another one, or the scan proves less
	// than it claims.
	for i := range keys {
		for j := range i {
			if bytes.Equal(keys[i], keys[j]) {
				t.Fatalf("key %d is key %d again: the renewals did not happen", i, j)
			}
		}
	}

	all := a.logs.String() + ag.logs.String() + ag2.logs.String()
	if !strings.Contains(all, `"level":"DEBUG"`) || !strings.Contains(all, `"msg":"ssh-agent signature"`) || !strings.Contains(all, "read-only") {
		t.Fatal("the run did not log at debug level, or nothing of the agent socket; the scan would prove little")
	}
	secrets := map[string]string{"token": token}
	for i, k := range keys {
		block, _ := pem.Decode(k)
		if block == nil {
			t.Fatalf("key %d is not PEM", i)
		}
		b64 := base64.StdEncoding.EncodeToString(block.Bytes)
		// Any 24-character stretch of the key's encodings.
		secrets[fmt.Sprintf("key %d base64", i)] = b64[len(b64)/2 : len(b64)/2+24]
		secrets[fmt.Sprintf("key %d hex", i)] = hex.EncodeToString(block.Bytes)[40:72]
	}
	sc := bufio.NewScanner(strings.NewReader(all))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	lines := 0
	for sc.Scan() {
		lines++
		line := sc.Text()
		if strings.Contains(line, "PRIVATE KEY") {
			t.Errorf("a log line holds a PEM private key: %.200s", line)
		}
		for what, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("a log line holds the %s: %.200s", what, line)
			}
		}
	}
	t.Logf("scanned %d log lines for %d secrets", lines, len(secrets))
}

// The .deb installs and works on this machine, and removes cleanly.
func TestDebInstallsAndRemoves(t *testing.T) {
	for _, tool := range []string{"dpkg", "dpkg-deb", "make", "man"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed; .deb not tested", tool)
		}
	}
	if out, err := exec.Command("dpkg-query", "-W", "midfs").CombinedOutput(); err == nil {
		t.Skipf("a midfs package is installed already (%s); not replacing it", strings.TrimSpace(string(out)))
	}
	for _, p := range []string{"/usr/bin/midfs", "/sbin/mount.fuse.midfs"} {
		if _, err := os.Lstat(p); err == nil {
			t.Skipf("%s exists and belongs to no package; not overwriting it", p)
		}
	}
	out := t.TempDir()
	build := exec.Command("make", "-C", "..", "deb", "DEB_OUT="+out)
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "midfs_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %q", debs)
	}
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "midfs").Run() })
	if b, err := exec.Command("dpkg", "-i", debs[0]).CombinedOutput(); err != nil {
		t.Fatalf("dpkg -i: %v\n%s", err, b)
	}
	// Another midfs may come first on PATH (the README's quick start puts
	// one in /usr/local/bin). Everything below names the package's own
	// files by path; this stand-in, first on PATH, keeps it that way.
	shadow := t.TempDir()
	if err := os.WriteFile(filepath.Join(shadow, "midfs"), []byte("#!/bin/sh\necho 'midfs version 0.0.0 (commit 0000000)'\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", shadow+":"+os.Getenv("PATH"))
	// The package version names the commit it was built from
	// (0.0.0+gitN.COMMIT); --version must say the same.
	pkgVersion, _ := exec.Command("dpkg-query", "-W", "-f=${Version}", "midfs").Output()
	v, err := exec.Command("/usr/bin/midfs", "--version").CombinedOutput()
	m := regexp.MustCompile(`\(commit ([0-9a-f]{7,})\)`).FindStringSubmatch(string(v))
	if err != nil || m == nil || !strings.HasSuffix(string(pkgVersion), "."+m[1]) {
		t.Errorf("midfs --version after install: %v %q; package version %q", err, v, pkgVersion)
	}
	manOut, err := exec.Command("sh", "-c", "MANPAGER=cat MANWIDTH=100 man -M /usr/share/man midfs").CombinedOutput()
	if err != nil || !strings.Contains(string(manOut), "CONFIGURATION FILE") {
		t.Errorf("man midfs: %v\n%.500s", err, manOut)
	}
	if target, err := os.Readlink("/sbin/mount.fuse.midfs"); err != nil || target != "/usr/bin/midfs" {
		t.Errorf("mount helper: %q %v", target, err)
	}
	// sshd's hook, where `midfs node start` looks for it: beside midfs.
	if out, err := exec.Command("/usr/bin/midfs-node-hook").CombinedOutput(); !strings.Contains(string(out), "usage: midfs-node-hook") {
		t.Errorf("/usr/bin/midfs-node-hook: %v %q", err, out)
	}
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		// With the man page installed, verify checks Documentation= too.
		b, err := exec.Command(analyze, "verify", "/lib/systemd/system/midfs-auth.service", "/lib/systemd/system/midfs@robot.service").CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(b))) > 0 {
			t.Errorf("installed units do not verify: %v\n%s", err, b)
		}
	}
	if b, err := exec.Command("bash", "-c", "source /usr/share/bash-completion/completions/midfs && complete -p midfs").CombinedOutput(); err != nil {
		t.Errorf("bash completion not installed: %v %s", err, b)
	}
	if b, err := exec.Command("dpkg", "-r", "midfs").CombinedOutput(); err != nil {
		t.Fatalf("dpkg -r: %v\n%s", err, b)
	}
	for _, p := range []string{"/usr/bin/midfs", "/usr/bin/midfs-node-hook", "/sbin/mount.fuse.midfs", "/lib/systemd/system/midfs@.service", "/usr/share/man/man1/midfs.1.gz"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s remains after dpkg -r", p)
		}
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// unitSyscalls reads a unit's SystemCallFilter= lines and expands them with
// systemd-analyze into the syscalls the unit allows.
func unitSyscalls(t *testing.T, analyze, unit string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		v, ok := strings.CutPrefix(line, "SystemCallFilter=")
		if !ok {
			continue
		}
		deny := strings.HasPrefix(v, "~")
		for _, name := range strings.Fields(strings.TrimPrefix(v, "~")) {
			for _, s := range expandSyscalls(t, analyze, name) {
				allowed[s] = !deny
			}
		}
	}
	if len(allowed) == 0 {
		t.Fatalf("%s has no SystemCallFilter=", unit)
	}
	return allowed
}

func expandSyscalls(t *testing.T, analyze, name string) []string {
	t.Helper()
	if !strings.HasPrefix(name, "@") {
		return []string{name}
	}
	out, err := exec.Command(analyze, "syscall-filter", name).Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter %s: %v", name, err)
	}
	var list []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.TrimSpace(line)
		switch {
		case f == "" || f == name || strings.HasPrefix(f, "#"):
		case strings.HasPrefix(f, "@"):
			list = append(list, expandSyscalls(t, analyze, f)...)
		default:
			list = append(list, f)
		}
	}
	return list
}

// tracedSyscalls lists the syscalls in an strace -f log from the exec of
// midfs on; before it, setpriv does what systemd does for a unit.
func tracedSyscalls(t *testing.T, path string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	start := strings.Index(string(data), `execve("`+midfsBin+`"`)
	if start < 0 {
		t.Fatalf("%s: no execve of %s", path, midfsBin)
	}
	data = data[start:]
	re := regexp.MustCompile(`(?m)^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]`)
	seen := map[string]bool{}
	for _, m := range re.FindAllStringSubmatch(string(data), -1) {
		seen[m[1]] = true
	}
	return seen
}

// The units' sandboxes fit what midfs does: the authority runs as an
// unprivileged user with no capabilities (as DynamicUser= and the empty
// CapabilityBoundingSet= make it), the agent with the unit's two
// capabilities, both under strace through a join, reads, renewals, SIGHUP
// and shutdown; every syscall either makes must be one its unit's
// SystemCallFilter= allows.
func TestUnitsSandboxFitsWhatMidfsDoes(t *testing.T) {
	strace, err1 := exec.LookPath("strace")
	setpriv, err2 := exec.LookPath("setpriv")
	analyze, err3 := exec.LookPath("systemd-analyze")
	if err1 != nil || err2 != nil || err3 != nil {
		t.Skip("needs strace, setpriv and systemd-analyze (apt-get install strace systemd)")
	}
	work := publicDir(t) // the unprivileged authority must reach its data dir
	dataDir := filepath.Join(work, "data")
	os.Mkdir(dataDir, 0o700)
	nobody := lookupID(t, "passwd", "nobody")
	os.Chown(dataDir, int(nobody), int(nobody))
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))

	authLogs := &testenv.LogBuffer{}
	authTrace := filepath.Join(work, "auth.trace")
	auth := exec.Command(strace, "-f", "-qq", "-o", authTrace, setpriv,
		fmt.Sprintf("--reuid=%d", nobody), fmt.Sprintf("--regid=%d", nobody), "--clear-groups",
		"--bounding-set=-all", "--inh-caps=-all", "--no-new-privs",
		midfsBin, "auth", "start", "--data-dir", dataDir, "--listen", addr, "--cluster-name", cluster,
		"--diag-addr", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	auth.Stdout, auth.Stderr = authLogs, authLogs
	if err := auth.Start(); err != nil {
		t.Fatal(err)
	}
	authDone := make(chan error, 1)
	go func() { authDone <- auth.Wait() }()
	t.Cleanup(func() { auth.Process.Kill() })
	waitFor(t, "the unprivileged authority", 30*time.Second, func() bool {
		select {
		case err := <-authDone:
			t.Fatalf("authority as uid %d without capabilities exited: %v\n%s", nobody, err, authLogs)
		default:
		}
		return run(t, "status", "--data-dir", dataDir).code == 0
	})
	out := mustRun(t, "bots", "add", "robot", "--roles=access", "--logins=root", "--data-dir", dataDir)
	token := tokenRe.FindStringSubmatch(out)[1]
	pin := regexp.MustCompile(`sha256:[0-9a-f]{64}`).FindString(mustRun(t, "status", "--data-dir", dataDir))

	dir := publicDir(t)
	cleanupMount(t, dir)
	agentTrace := filepath.Join(work, "agent.trace")
	agentLogs := &testenv.LogBuffer{}
	agentDiag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	sock := filepath.Join(publicDir(t), "robot.agent")
	ag := exec.Command(strace, "-f", "-qq", "-o", agentTrace, setpriv,
		"--bounding-set=-all,+sys_admin,+ipc_lock,+chown", "--inh-caps=-all", "--no-new-privs",
		midfsBin, "mount", dir, "--auth-server="+addr, "--token="+token, "--ca-pin="+pin,
		"--storage=keyring", "--certificate-ttl=6s", "--renewal-interval=2s",
		"--diag-addr", agentDiag, "--ssh-agent="+sock, "--owner=nobody", "--reader=daemon")
	ag.Stdout, ag.Stderr = agentLogs, agentLogs
	ag.Env = append(os.Environ(), "NOTIFY_SOCKET="+listenNotify(t).addr)
	if err := ag.Start(); err != nil {
		t.Fatal(err)
	}
	agDone := make(chan error, 1)
	go func() { agDone <- ag.Wait() }()
	waitFor(t, "the mount", 60*time.Second, func() bool {
		select {
		case err := <-agDone:
			t.Fatalf("agent exited: %v\n%s", err, agentLogs)
		default:
		}
		return mounted(dir)
	})
	// Reads between timed renewals, then a SIGHUP renewal: each path is
	// waited for in the agent's metrics, so the trace holds them all.
	for i := 0; i < 3; i++ {
		for _, f := range []string{"key", "identity", "key-cert.pub", "ssh_config"} {
			if _, err := os.ReadFile(filepath.Join(dir, f)); err != nil {
				t.Fatal(err)
			}
		}
		// The agent socket: a reader lists the key, a stranger is refused.
		daemon := lookupID(t, "passwd", "daemon")
		if out, err := asUser(daemon, daemon, "env", "SSH_AUTH_SOCK="+sock, "ssh-add", "-L"); err != nil {
			t.Fatalf("ssh-add -L through the agent socket: %v %s", err, out)
		}
		if out, err := asUser(4242, 4242, "env", "SSH_AUTH_SOCK="+sock, "ssh-add", "-L"); err == nil {
			t.Fatalf("a stranger listed the agent's keys: %s", out)
		}
		before := renewals(t, agentDiag)
		waitFor(t, "a timed renewal", 30*time.Second, func() bool { return renewals(t, agentDiag) > before })
	}
	agentPID := agentPIDs(dir)
	if len(agentPID) != 1 {
		t.Fatalf("agent pid: %v", agentPID)
	}
	before := renewals(t, agentDiag)
	syscall.Kill(agentPID[0], syscall.SIGHUP)
	waitFor(t, "the SIGHUP renewal", 30*time.Second, func() bool { return renewals(t, agentDiag) > before })
	syscall.Kill(agentPID[0], syscall.SIGTERM)
	if err := <-agDone; err != nil {
		t.Fatalf("agent: %v\n%s", err, tail(agentLogs.String(), 10))
	}
	// strace's child is setpriv, which execs midfs in place: the first pid
	// in the trace is the authority.
	syscall.Kill(tracedPIDs(authTrace)[0], syscall.SIGTERM)
	if err := <-authDone; err != nil {
		t.Fatalf("authority: %v\n%s", err, tail(authLogs.String(), 10))
	}

	for _, tc := range []struct{ name, unit, trace string }{
		{"agent", "../contrib/midfs@.service", agentTrace},
		{"authority", "../contrib/midfs-auth.service", authTrace},
	} {
		allowed := unitSyscalls(t, analyze, tc.unit)
		used := tracedSyscalls(t, tc.trace)
		if len(used) < 20 {
			t.Fatalf("%s: only %d syscalls traced; the trace is broken", tc.name, len(used))
		}
		for s := range used {
			if !allowed[s] {
				t.Errorf("%s calls %s, which %s's SystemCallFilter= denies", tc.name, s, filepath.Base(tc.unit))
			}
		}
		t.Logf("%s: %d distinct syscalls checked against %s", tc.name, len(used), filepath.Base(tc.unit))
	}
}

// tracedPIDs lists the process ids in an strace -f log.
func tracedPIDs(path string) []int {
	var pids []int
	seen := map[int]bool{}
	for _, line := range strings.Split(readFile(path), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if pid, err := strconv.Atoi(f[0]); err == nil && !seen[pid] {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	return pids
}

// make install puts everything where the tools look: the helper where
// mount(8) finds it, units naming the installed binary.
func TestMakeInstallLayout(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	dest := t.TempDir()
	if b, err := exec.Command("make", "-C", "..", "install", "DESTDIR="+dest).CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, b)
	}
	if target, err := os.Readlink(filepath.Join(dest, "sbin/mount.fuse.midfs")); err != nil || target != "/usr/local/bin/midfs" {
		t.Errorf("helper link: %q %v", target, err)
	}
	for _, f := range []string{"usr/local/bin/midfs", "usr/local/bin/midfs-node-hook", "usr/local/share/man/man1/midfs.1.gz",
		"usr/local/share/bash-completion/completions/midfs", "usr/local/share/zsh/site-functions/_midfs",
		"usr/local/share/doc/midfs/examples/agent.yaml", `usr/local/lib/systemd/system/opt-machine\x2did.mount`} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("make install did not install %s: %v", f, err)
		}
	}
	// The man page comes from the checkout; its generator (md2man,
	// blackfriday) is not linked into the binary.
	if b, err := exec.Command("go", "version", "-m", filepath.Join(dest, "usr/local/bin/midfs")).CombinedOutput(); err != nil {
		t.Errorf("go version -m: %v\n%s", err, b)
	} else if m := regexp.MustCompile(`(?m)^\s*dep\s+\S*(md2man|blackfriday)\S*`).Find(b); m != nil {
		t.Errorf("the installed binary links the man-page generator: %s", bytes.TrimSpace(m))
	}
	for _, u := range []string{"midfs-auth.service", "midfs@.service"} {
		unit := readFile(filepath.Join(dest, "usr/local/lib/systemd/system", u))
		if !strings.Contains(unit, "ExecStart=/usr/local/bin/midfs ") || strings.Contains(unit, "/usr/bin/midfs") {
			t.Errorf("%s does not name the installed binary:\n%s", u, unit)
		}
	}
}
