package e2e

// A real systemd as PID 1, for testing the units: a throw-away container
// booted with systemd-nspawn over an overlay of this machine's own root (so
// the tools and libraries are the host's), with a tmpfs upper layer and a
// mount namespace of its own, so nothing of it outlives the test and no
// host file is written. See bootMachine.

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/midfs/midfs/internal/testenv"
)

// machine is a booted container: systemd is its PID 1.
type machine struct {
	t       testing.TB
	name    string // machine name and hostname, unique per test
	leader  int    // host pid of the container's systemd
	booted  bool   // boot finished: systemd handles a poweroff request
	nspawn  *exec.Cmd
	console *testenv.LogBuffer
	done    chan struct{}
}

// machineOptions say what goes into the container.
type machineOptions struct {
	// Binds are host paths made visible read-only in the container, keyed
	// by the path inside: the binary under test, units from contrib/.
	Binds map[string]string
}

// launcher runs inside `unshare --mount --propagation private`, so that
// every mount it makes ends with it. Arguments: work dir, machine name,
// cgroup dir, then extra systemd-nspawn arguments.
const launcher = `set -eu
W=$1 NAME=$2 CG=$3
shift 3
# FUSE mounts of other programs were copied into this namespace with the
# rest; a copy would keep their connections alive for as long as the
# container runs. Drop them here (lazily: they may be busy, or dead).
sed -n 's/^[^ ]* [^ ]* [^ ]* [^ ]* \([^ ]*\) .* - fuse[^ ]* .*/\1/p' /proc/self/mountinfo | sort -r |
while read -r mp; do umount -l "$(printf '%b' "$mp")" 2>/dev/null || true; done
# The root: the host's own, with a tmpfs upper layer.
mount -t tmpfs tmpfs "$W/t"
mkdir "$W/t/upper" "$W/t/work" "$W/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/t/upper,workdir=$W/t/work" "$W/root"
R=$W/root
systemd-id128 new >"$R/etc/machine-id"
echo "$NAME" >"$R/etc/hostname"
# None of the host's services; nothing of midfs that the host may have
# installed (units, state, config, fstab lines, the mount helper).
rm -f "$R"/etc/systemd/system/*.wants/*
for u in ssh.service ssh.socket postgresql.service cron.service systemd-networkd-wait-online.service; do
	ln -sf /dev/null "$R/etc/systemd/system/$u"
done
rm -rf "$R/etc/midfs" "$R/var/lib/midfs" "$R/var/lib/private/midfs"
rm -f "$R"/etc/systemd/system/midfs* "$R"/lib/systemd/system/midfs* "$R"/usr/lib/systemd/system/midfs* \
	"$R"/usr/local/lib/systemd/system/midfs* "$R"/etc/systemd/system/*machine*id.mount \
	"$R"/lib/systemd/system/*machine*id.mount "$R"/usr/local/lib/systemd/system/*machine*id.mount \
	"$R/sbin/mount.fuse.midfs" "$R/usr/sbin/mount.fuse.midfs" "$R/usr/local/bin/midfs"
if [ -f "$R/etc/fstab" ]; then sed -i '/fuse\.midfs/d' "$R/etc/fstab"; fi
# nspawn's own state stays in this namespace.
mkdir -p /run/systemd/nspawn
mount -t tmpfs tmpfs /run/systemd/nspawn
echo $$ >"$CG/cgroup.procs"
# Without it, on a host with hybrid cgroups, the container gets read-only
# v1 controllers and DeviceAllow= is silently not enforced.
export SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1
# nspawn's default seccomp filter denies the keyring calls, bpf() (which
# DeviceAllow= needs) and memfd_secret (the agent's key memory); CAP_IPC_LOCK
# is not in its default set.
exec systemd-nspawn --boot -D "$R" --machine="$NAME" --register=no --keep-unit \
	--private-network --bind=/dev/fuse --capability=CAP_IPC_LOCK \
	--system-call-filter='bpf add_key keyctl request_key memfd_secret' --console=read-only "$@"
`

// bootMachine boots a container with systemd as PID 1 and returns once
// boot is done. It is powered off and every trace removed at the end of
// the test. The kernel keyring is not namespaced: the container's root
// shares the host root's user keyring, so tests name their keys uniquely
// and remove them.
func bootMachine(t testing.TB, opts machineOptions) *machine {
	t.Helper()
	for _, tool := range []string{"systemd-nspawn", "unshare", "nsenter", "systemd-id128"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (apt-get install systemd-container util-linux); units are not booted", tool)
		}
	}
	cg, err := unifiedCgroup()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy to boot systemd in: %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	m := &machine{t: t, name: "midfs-e2e-" + hex.EncodeToString(b), console: &testenv.LogBuffer{}, done: make(chan struct{})}

	// A cgroup of its own under ours: nspawn hands the container the
	// subtree it runs in.
	cgDir := filepath.Join(cg, m.name)
	if err := os.Mkdir(cgDir, 0o755); err != nil {
		t.Fatalf("cgroup for the container: %v", err)
	}
	t.Cleanup(func() { removeCgroup(t, cgDir) })

	work := t.TempDir()
	os.Mkdir(filepath.Join(work, "t"), 0o700)
	args := []string{"--mount", "--propagation", "private", "/bin/sh", "-c", launcher, "launcher", work, m.name, cgDir}
	for inside, host := range opts.Binds {
		args = append(args, "--bind-ro="+host+":"+inside)
	}
	m.nspawn = exec.Command("unshare", args...)
	m.nspawn.Stdout, m.nspawn.Stderr = m.console, m.console
	if err := m.nspawn.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.nspawn.Wait(); close(m.done) }()
	t.Cleanup(m.poweroff)

	// unshare and sh exec in place: the nspawn process keeps this pid, and
	// the container's systemd is its child.
	waitFor(t, "systemd to start in the container", 60*time.Second, func() bool {
		select {
		case <-m.done:
			t.Fatalf("the container exited while booting:\n%s", tail(m.console.String(), 30))
		default:
		}
		m.leader = containerInit(m.nspawn.Process.Pid)
		return m.leader != 0
	})
	// Until systemd listens on its bus, systemctl cannot ask.
	var out string
	waitFor(t, "systemd in the container to answer", 60*time.Second, func() bool {
		out, err = m.run("systemctl", "is-system-running", "--wait")
		return !strings.Contains(out, "Failed to connect to bus") && !strings.Contains(out, "offline")
	})
	m.booted = true
	switch state := strings.TrimSpace(out); {
	case state == "running":
	case state == "degraded":
		failed, _ := m.run("systemctl", "--failed", "--no-legend")
		t.Logf("container %s booted degraded; failed units:\n%s", m.name, failed)
	default:
		t.Fatalf("container %s did not boot: %q %v\n%s", m.name, state, err, tail(m.console.String(), 30))
	}
	return m
}

// unifiedCgroup is the cgroup v2 directory this process runs in.
func unifiedCgroup() (string, error) {
	mnt := "/sys/fs/cgroup"
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		return "", err
	}
	const cgroup2Magic = 0x63677270
	if st.Type != cgroup2Magic {
		mnt = "/sys/fs/cgroup/unified" // hybrid hierarchy
		if err := syscall.Statfs(mnt, &st); err != nil || st.Type != cgroup2Magic {
			return "", errors.New("neither /sys/fs/cgroup nor /sys/fs/cgroup/unified is cgroup2")
		}
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(mnt, path), nil
		}
	}
	return "", errors.New("no cgroup v2 line in /proc/self/cgroup")
}

// containerInit finds the child of nspawnPID that is the container's
// PID 1, running systemd; 0 until there is one.
func containerInit(nspawnPID int) int {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", nspawnPID, nspawnPID))
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if strings.TrimSpace(string(comm)) == "systemd" && strings.Contains(string(status), fmt.Sprintf("NSpid:\t%d\t1\n", pid)) {
			return pid
		}
	}
	return 0
}

// removeCgroup removes dir and the cgroups nspawn and systemd made in it,
// deepest first, once no process is left in them.
func removeCgroup(t testing.TB, dir string) {
	populated := func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		return strings.Contains(string(b), "populated 1")
	}
	if populated() {
		t.Errorf("processes of the container outlived it; killing them")
		os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		waitFor(t, "the container's processes to die", 10*time.Second, func() bool { return !populated() })
	}
	var dirs []string
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, path)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left behind: %v", dirs[i], err)
		}
	}
}

// poweroff shuts the container down cleanly (SIGTERM to nspawn, which asks
// systemd to power off) and waits. A container that does not go, or that
// never finished booting (systemd ignores the request until it has set up
// its signal handlers), is killed: SIGKILL to a PID namespace's init ends
// every process in it.
func (m *machine) poweroff() {
	select {
	case <-m.done:
		return
	default:
	}
	m.nspawn.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
		return
	case <-time.After(30 * time.Second):
	}
	if m.booted {
		m.t.Errorf("container %s did not power off within 30s; killing it:\n%s", m.name, tail(m.console.String(), 30))
	}
	if m.leader != 0 {
		syscall.Kill(m.leader, syscall.SIGKILL)
	}
	select {
	case <-m.done:
	case <-time.After(10 * time.Second):
		m.nspawn.Process.Kill()
		<-m.done
	}
}

// command is a command run inside the container, in all its namespaces,
// with a plain environment.
func (m *machine) command(args ...string) *exec.Cmd {
	ns := []string{"-t", strconv.Itoa(m.leader), "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "--"}
	cmd := exec.Command("nsenter", append(ns, args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER="}
	return cmd
}

// run runs a command inside the container and returns its output.
func (m *machine) run(args ...string) (string, error) {
	out, err := m.command(args...).CombinedOutput()
	return string(out), err
}

// mustRun runs a command inside the container and fails the test unless
// it succeeds.
func (m *machine) mustRun(args ...string) string {
	m.t.Helper()
	out, err := m.run(args...)
	if err != nil {
		m.t.Fatalf("in container %s: %s: %v\n%s", m.name, strings.Join(args, " "), err, out)
	}
	return out
}

// path is where a path inside the container is reachable from the host.
func (m *machine) path(inside string) string {
	return fmt.Sprintf("/proc/%d/root%s", m.leader, inside)
}

// writeFile writes a file inside the container (to the overlay's tmpfs
// layer), making its directory if needed.
func (m *machine) writeFile(inside, content string, mode os.FileMode) {
	m.t.Helper()
	p := m.path(inside)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		m.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		m.t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		m.t.Fatal(err)
	}
}

// unit is what systemctl show says of a unit: property -> value.
func (m *machine) unit(name string, props ...string) map[string]string {
	m.t.Helper()
	out := m.mustRun("systemctl", "show", name, "--property="+strings.Join(props, ","))
	v := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if k, val, ok := strings.Cut(line, "="); ok {
			v[k] = val
		}
	}
	return v
}

// journal is a unit's log in this boot, message text only.
func (m *machine) journal(unit string) string {
	out, _ := m.run("journalctl", "--no-pager", "-o", "cat", "-u", unit)
	return out
}
