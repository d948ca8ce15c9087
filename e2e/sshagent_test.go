package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	sshagent "golang.org/x/crypto/ssh/agent"
)

// agentMount makes a bot and mounts it with its ssh-agent socket in a
// fresh directory; extra flags follow.
func agentMount(t *testing.T, a *authority, extra ...string) (ag *agent, sock string) {
	t.Helper()
	sock = filepath.Join(publicDir(t), "robot.agent")
	return mountRobot(t, a, "access", "root", append([]string{"--ssh-agent=" + sock}, extra...)...), sock
}

// lookTool finds a tool the test drives, or fails naming where it comes from.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not installed (.ci/run installs it)", name)
	}
	return p
}

// command runs name with args and env added, failing the test with its
// output unless it exits 0.
func command(t *testing.T, env []string, dir, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(envWithout("SSH_AUTH_SOCK"), env...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestSSHAgentToolsWithKeyFilesHidden: with --ssh-agent and
// --key-files=false the tree has no private key at all, and ssh, scp,
// rsync, git and ansible still reach a node through ssh_config alone, each
// signing through the agent socket.
func TestSSHAgentToolsWithKeyFilesHidden(t *testing.T) {
	for _, tool := range []string{"scp", "rsync", "git", "ansible"} {
		lookTool(t, tool)
	}
	a := startAuthority(t)
	s := startSSHD(t, a, "node-name."+cluster, "node-name")
	a.admin("nodes", "add", "node-name", "--addr="+s.addr())
	diag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ag, _ := agentMount(t, a, "--key-files=false", "--diag-addr="+diag)
	host := "node-name." + cluster
	target := "root@" + host
	opts := sshOptions(ag.dir)
	sshCmd := "ssh " + strings.Join(quoteAll(opts), " ")

	entries, err := os.ReadDir(ag.dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() == "key" || e.Name() == "identity" {
			t.Errorf("--key-files=false serves %s", e.Name())
		}
	}
	if len(entries) != len(servedFiles)-2 {
		t.Errorf("tree has %d files, want the %d public ones", len(entries), len(servedFiles)-2)
	}
	if _, err := os.Stat(ag.file("key")); !os.IsNotExist(err) {
		t.Errorf("stat key as root: %v, want it not to exist", err)
	}

	t.Run("ssh", func(t *testing.T) {
		if out, err := sshWith(t, opts, target, "echo", "hello-through-the-agent"); err != nil || !strings.Contains(out, "hello-through-the-agent") {
			t.Fatalf("ssh: %v\n%s\nsshd:\n%s", err, out, tail(s.logs.String(), 10))
		}
	})

	work := publicDir(t)
	t.Run("scp", func(t *testing.T) {
		src, back := filepath.Join(work, "scp-src"), filepath.Join(work, "scp-back")
		os.WriteFile(src, []byte("scp through the agent\n"), 0o644)
		command(t, nil, work, "scp", append(opts, src, target+":"+filepath.Join(work, "scp-remote"))...)
		command(t, nil, work, "scp", append(opts, target+":"+filepath.Join(work, "scp-remote"), back)...)
		if b, _ := os.ReadFile(back); string(b) != "scp through the agent\n" {
			t.Errorf("scp round trip gave %q", b)
		}
	})

	t.Run("rsync", func(t *testing.T) {
		src, dst := filepath.Join(work, "rsync-src"), filepath.Join(work, "rsync-dst")
		os.MkdirAll(filepath.Join(src, "sub"), 0o755)
		os.WriteFile(filepath.Join(src, "sub", "file"), []byte("rsync through the agent\n"), 0o644)
		command(t, nil, work, "rsync", "-a", "-e", sshCmd, src+"/", target+":"+dst+"/")
		if b, _ := os.ReadFile(filepath.Join(dst, "sub", "file")); string(b) != "rsync through the agent\n" {
			t.Errorf("rsync copied %q", b)
		}
	})

	t.Run("git", func(t *testing.T) {
		home := t.TempDir() // no user config of the machine's
		env := []string{"HOME=" + home, "GIT_CONFIG_NOSYSTEM=1", "GIT_SSH_COMMAND=" + sshCmd,
			"GIT_AUTHOR_NAME=robot", "GIT_AUTHOR_EMAIL=robot@" + cluster, "GIT_COMMITTER_NAME=robot", "GIT_COMMITTER_EMAIL=robot@" + cluster}
		bare := filepath.Join(work, "repo.git")
		command(t, env, work, "git", "init", "-q", "--bare", bare)
		one, two := filepath.Join(work, "clone-1"), filepath.Join(work, "clone-2")
		command(t, env, work, "git", "clone", "-q", target+":"+bare, one)
		os.WriteFile(filepath.Join(one, "README"), []byte("pushed through the agent\n"), 0o644)
		command(t, env, one, "git", "add", "README")
		command(t, env, one, "git", "commit", "-q", "-m", "first")
		command(t, env, one, "git", "push", "-q", "origin", "HEAD")
		command(t, env, work, "git", "clone", "-q", target+":"+bare, two)
		if b, _ := os.ReadFile(filepath.Join(two, "README")); string(b) != "pushed through the agent\n" {
			t.Errorf("a clone of what was pushed holds %q", b)
		}
	})

	t.Run("ansible", func(t *testing.T) {
		home := t.TempDir()
		// Ansible's ControlMaster sockets, in a directory short enough for
		// a socket path (108 bytes).
		cp, err := os.MkdirTemp("/tmp", "cp")
		if err != nil {
			t.Fatal(err)
		}
		// Ansible keeps a ControlMaster per host for 60 s; end it with the test.
		t.Cleanup(func() {
			defer os.RemoveAll(cp)
			masters, _ := filepath.Glob(filepath.Join(cp, "*"))
			for _, m := range masters {
				exec.Command("ssh", "-o", "ControlPath="+m, "-O", "exit", host).Run()
			}
		})
		env := []string{"HOME=" + home, "ANSIBLE_LOCAL_TEMP=" + filepath.Join(home, "tmp"),
			"ANSIBLE_REMOTE_TEMP=" + filepath.Join(home, "remote-tmp"), "ANSIBLE_SSH_CONTROL_PATH_DIR=" + cp,
			"ANSIBLE_NOCOLOR=1", "ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3", "ANSIBLE_CONFIG=" + filepath.Join(home, "ansible.cfg")}
		os.WriteFile(filepath.Join(home, "ansible.cfg"), nil, 0o644) // none of the machine's
		// Ansible splits these itself and takes no quotes; the paths hold no spaces.
		args := []string{"all", "-i", host + ",", "-u", "root", "--ssh-common-args", strings.Join(opts, " ")}
		// ping runs Python on the node: copied there over sftp, run over ssh.
		if out := command(t, env, home, "ansible", append(args, "-m", "ping")...); !strings.Contains(out, `"ping": "pong"`) {
			t.Errorf("ansible -m ping:\n%s", out)
		}
	})

	m := scrape(t, diag)
	if m["midfs_agent_ssh_signatures_total,result=ok"] < 5 || m["midfs_agent_opens_total,file=ssh-agent,result=ok"] < 5 {
		t.Errorf("the agent counts too few connections or signatures for the logins above: %v", pick(m, "midfs_agent_"))
	}
}

// quoteAll single-quotes each argument for a shell (GIT_SSH_COMMAND,
// rsync -e and ansible's ssh arguments are split like a shell's).
func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return out
}

// TestSSHAgentNeverOpensKeyAndAdmitsOnlyReaders: with the key files still
// served, a login through ssh_config signs through the agent and never
// opens key. The socket admits root and a --reader and refuses any other
// uid (its mode lets everyone reach it, as the tree's does: the peer's
// credentials decide), counting both; nothing can add, remove or lock keys.
func TestSSHAgentNeverOpensKeyAndAdmitsOnlyReaders(t *testing.T) {
	a := startAuthority(t)
	s := startSSHD(t, a, "node-name."+cluster, "node-name")
	a.admin("nodes", "add", "node-name", "--addr="+s.addr())
	diag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ag, sock := agentMount(t, a, "--reader=daemon", "--diag-addr="+diag)
	nobody, nogroup := lookupID(t, "passwd", "nobody"), lookupID(t, "group", "nogroup")
	daemon := lookupID(t, "passwd", "daemon")

	var st syscall.Stat_t
	if err := syscall.Lstat(sock, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFSOCK || st.Mode&0o777 != 0o666 || st.Uid != 0 {
		t.Errorf("socket %s: mode %o uid %d (%v), want a socket 0666 of root", sock, st.Mode, st.Uid, err)
	}
	if out, err := sshWith(t, sshOptions(ag.dir), "root@node-name."+cluster, "echo", "hello"); err != nil || !strings.Contains(out, "hello") {
		t.Fatalf("ssh through the agent: %v\n%s", err, out)
	}
	m := scrape(t, diag)
	if m["midfs_agent_opens_total,file=key,result=ok"] != 0 || m["midfs_agent_opens_total,file=identity,result=ok"] != 0 {
		t.Errorf("a login through the agent opened the private key: %v", pick(m, "midfs_agent_opens"))
	}
	if m["midfs_agent_ssh_signatures_total,result=ok"] < 1 {
		t.Errorf("the login made no signature through the agent: %v", pick(m, "midfs_agent_"))
	}

	sshAdd := func(uid, gid uint32, args ...string) (string, error) {
		cmd := exec.Command("ssh-add", args...)
		cmd.Env = append(envWithout("SSH_AUTH_SOCK"), "SSH_AUTH_SOCK="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	cert := strings.Fields(string(ag.read("key-cert.pub")))[1]
	if out, err := sshAdd(daemon, nogroup, "-L"); err != nil || !strings.Contains(out, cert) {
		t.Errorf("ssh-add -L as the reader daemon: %v\n%s", err, out)
	}
	if out, err := sshAdd(nobody, nogroup, "-L"); err == nil || strings.Contains(out, cert) {
		t.Errorf("ssh-add -L as nobody, not a reader: %v\n%s", err, out)
	}
	if out, err := sshAdd(0, 0, "-D"); err == nil {
		t.Errorf("ssh-add -D succeeded:\n%s", out)
	}
	if out, err := sshAdd(0, 0, "-L"); err != nil || !strings.Contains(out, cert) {
		t.Errorf("after ssh-add -D the agent no longer lists its certificate: %v\n%s", err, out)
	}
	m = scrape(t, diag)
	if m["midfs_agent_opens_total,file=ssh-agent,result=denied"] != 1 {
		t.Errorf("refused connections counted: %v", pick(m, "midfs_agent_opens"))
	}
	logs := ag.logs.String()
	if !strings.Contains(logs, `"msg":"ssh-agent connection"`) || !strings.Contains(logs, fmt.Sprintf(`"uid":%d`, nobody)) {
		t.Errorf("the refused connection of uid %d is not in the agent's log", nobody)
	}
}

// TestSSHAgentSocketLifecycle: the socket goes with the agent on SIGTERM;
// a second agent on the same path is refused with one line and mounts
// nothing; the stale socket a SIGKILL leaves is replaced by the next start.
func TestSSHAgentSocketLifecycle(t *testing.T) {
	a := startAuthority(t)
	ag, sock := agentMount(t, a)
	var st syscall.Stat_t
	if err := syscall.Lstat(sock, &st); err != nil || st.Mode&0o777 != 0o600 {
		t.Errorf("socket without readers: mode %o (%v), want 0600", st.Mode&0o777, err)
	}

	other := filepath.Join(publicDir(t), "other")
	os.Mkdir(other, 0o755)
	tok := a.addBot("second", "access", "root")
	r := run(t, append([]string{"mount", other, "--storage=memory", "--ssh-agent=" + sock}, a.mountArgs(tok)...)...)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if r.code != 3 || !strings.Contains(lines[len(lines)-1], "another process serves "+sock) {
		t.Errorf("a second agent on the same socket: %s", r)
	}
	if mounted(other) {
		t.Errorf("the refused agent mounted %s", other)
	}
	startMount(t, other, append(a.mountArgs(tok), "--storage=memory")...) // the refusal spent no token

	ag.kill()
	if err := syscall.Lstat(sock, &st); err != nil {
		t.Fatalf("SIGKILL left no socket to replace: %v", err)
	}
	again := startMount(t, ag.dir, append(a.mountArgs(a.addBot("again", "access", "root")), "--storage=memory", "--ssh-agent="+sock)...)
	cmd := exec.Command("ssh-add", "-L")
	cmd.Env = append(envWithout("SSH_AUTH_SOCK"), "SSH_AUTH_SOCK="+sock)
	if out, err := cmd.CombinedOutput(); err != nil || !bytes.Contains(out, bytes.Fields(again.read("key-cert.pub"))[1]) {
		t.Errorf("the agent started over a stale socket does not serve it: %v\n%s", err, out)
	}
	again.stop()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after SIGTERM: %v", err)
	}
}

// TestSSHAgentRenewalsCostNoLogin: two loops log in through the agent with
// the key files hidden while 20 renewals (SIGHUP) swap key and certificate
// under them: not one login fails.
func TestSSHAgentRenewalsCostNoLogin(t *testing.T) {
	const rounds = 20
	a := startAuthority(t)
	s := startSSHD(t, a, "node-name."+cluster, "node-name")
	a.admin("nodes", "add", "node-name", "--addr="+s.addr())
	diag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ag, _ := agentMount(t, a, "--key-files=false", "--diag-addr="+diag)
	opts := sshOptions(ag.dir)

	var logins, failures atomic.Int64
	var firstFailure atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				out, err := sshWith(t, opts, "root@node-name."+cluster, "true")
				logins.Add(1)
				if err != nil {
					failures.Add(1)
					firstFailure.CompareAndSwap(nil, fmt.Sprintf("%v: %s", err, out))
				}
			}
		}()
	}
	stopLogins := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopLogins()
	for r := range rounds {
		before, n := renewals(t, diag), logins.Load()
		ag.cmd.Process.Signal(syscall.SIGHUP)
		waitFor(t, fmt.Sprintf("renewal %d counted", r+1), 30*time.Second, func() bool { return renewals(t, diag) > before })
		waitFor(t, fmt.Sprintf("logins after renewal %d", r+1), 30*time.Second, func() bool { return logins.Load() >= n+2 })
	}
	stopLogins()
	t.Logf("%d logins through the agent over %d renewals", logins.Load(), rounds)
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d logins failed; the first: %v\nsshd:\n%s", f, logins.Load(), firstFailure.Load(), tail(s.logs.String(), 20))
	}
}

// TestSSHAgentNeverSignsWithAnExpiredCertificate: once the certificate has
// expired (the authority is down, renewals fail), the agent no longer
// lists its key, so ssh-keygen -Y sign (which signs through the agent with
// the key in key.pub) fails with the key files hidden; and a client that
// asks for a signature anyway is refused, logged and counted.
func TestSSHAgentNeverSignsWithAnExpiredCertificate(t *testing.T) {
	a := startAuthority(t)
	diag := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	ag, sock := agentMount(t, a, "--key-files=false", "--certificate-ttl=12s", "--renewal-interval=4s", "--diag-addr="+diag)
	data := filepath.Join(publicDir(t), "data")
	os.WriteFile(data, []byte("signed by the agent\n"), 0o644)
	sign := func() error {
		os.Remove(data + ".sig")
		cmd := exec.Command("ssh-keygen", "-Y", "sign", "-n", "file", "-f", ag.file("key.pub"), data)
		cmd.Env = append(envWithout("SSH_AUTH_SOCK"), "SSH_AUTH_SOCK="+sock)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := sign(); err != nil {
		t.Fatalf("ssh-keygen -Y sign through the agent: %v", err)
	}
	a.stop()
	var key ssh.PublicKey
	var expires time.Time
	waitFor(t, "the certificate to expire", 30*time.Second, func() bool {
		pub, _, _, _, err := ssh.ParseAuthorizedKey(ag.read("key-cert.pub"))
		if err != nil {
			t.Fatal(err)
		}
		key, expires = pub.(*ssh.Certificate).Key, time.Unix(int64(pub.(*ssh.Certificate).ValidBefore), 0)
		return time.Now().After(expires.Add(time.Second))
	})
	if err := sign(); err == nil {
		t.Fatalf("ssh-keygen signed with a key whose certificate expired at %v", expires)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	client := sshagent.NewClient(c)
	if keys, err := client.List(); err != nil || len(keys) != 0 {
		t.Errorf("after expiry the agent lists %d keys (%v), want none", len(keys), err)
	}
	if _, err := client.Sign(key, []byte("data")); err == nil {
		t.Errorf("the agent signed with a key whose certificate expired at %v", expires)
	}
	if m := scrape(t, diag); m["midfs_agent_ssh_signatures_total,result=expired"] != 1 || m["midfs_agent_ssh_signatures_total,result=ok"] != 1 {
		t.Errorf("signatures counted: %v", pick(m, "midfs_agent_ssh"))
	}
	if !strings.Contains(ag.logs.String(), "ssh-agent refused to sign: the certificate has expired") {
		t.Errorf("the refusal is not logged")
	}
}
