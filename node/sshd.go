package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
)

// sshdControl makes sure sshd presents the node's current host
// certificate. OpenSSH up to 9.7 reads HostKey and HostCertificate again
// for every connection (each is a fresh re-exec of sshd), so a new file is
// served at once; OpenSSH 9.8 and later read them when sshd starts or
// reloads. A reload briefly closes sshd's listening socket, refusing the
// connections that arrive meanwhile, so sshd is reloaded only when it does
// not already present the new certificate: the node asks it, with an SSH
// handshake to --addr, which certificate it presents.
type sshdControl struct {
	addr    string // where sshd listens (--addr)
	pidFile string // --sshd-pid-file: reload with SIGHUP
	unit    string // --sshd-unit: reload with systemctl reload
	log     *slog.Logger
}

// canReload says whether the node was told how to reload sshd.
func (c *sshdControl) canReload() bool { return c.pidFile != "" || c.unit != "" }

// ensure makes sshd present want, reloading it if it presents anything
// else and the node knows how; it logs what it could not do.
func (c *sshdControl) ensure(ctx context.Context, want *ssh.Certificate) {
	got, err := probe(ctx, c.addr, want.Key)
	if err == nil && sameCert(got, want) {
		c.log.Debug("sshd presents the current host certificate", "addr", c.addr, "serial", want.Serial)
		return
	}
	if !c.canReload() {
		c.log.Warn("sshd does not present the current host certificate, and neither --sshd-pid-file nor --sshd-unit says how to reload it; reload sshd (it reads the fragment's files at start)",
			"addr", c.addr, "probe", describe(got, err))
		return
	}
	if err := c.reload(ctx); err != nil {
		c.log.Error("cannot reload sshd; it keeps presenting what it presented", "err", err)
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err = probe(ctx, c.addr, want.Key)
		if err == nil && sameCert(got, want) {
			c.log.Info("sshd reloaded: it presents the current host certificate", "addr", c.addr, "serial", want.Serial)
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			c.log.Warn("sshd was reloaded but does not present the current host certificate at --addr; is the fragment included at the top of sshd_config?",
				"addr", c.addr, "probe", describe(got, err))
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func describe(got *ssh.Certificate, err error) string {
	switch {
	case err != nil:
		return err.Error()
	case got == nil:
		return "no certificate for this node's host key"
	}
	return fmt.Sprintf("certificate serial %d, valid until %s", got.Serial, time.Unix(int64(got.ValidBefore), 0).UTC().Format(time.RFC3339))
}

func sameCert(a, b *ssh.Certificate) bool {
	return a != nil && b != nil && bytes.Equal(a.Marshal(), b.Marshal())
}

// errProbed ends a probe's handshake once sshd has shown its host key.
var errProbed = errors.New("host key seen")

// probe asks sshd at addr, with an SSH handshake that stops before any
// authentication, which certificate it presents for key: nil if it
// presents the plain key, no certificate for it, or another key.
func probe(ctx context.Context, addr string, key ssh.PublicKey) (*ssh.Certificate, error) {
	algo := certAlgo(key.Type())
	if algo == "" {
		return nil, fmt.Errorf("no certificate algorithm for host key type %s", key.Type())
	}
	d := net.Dialer{Timeout: 5 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	var seen ssh.PublicKey
	_, _, _, err = ssh.NewClientConn(conn, addr, &ssh.ClientConfig{
		User:              "midfs-node-probe",
		HostKeyAlgorithms: []string{algo},
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			seen = k
			return errProbed
		},
	})
	if seen == nil {
		if err != nil && strings.Contains(err.Error(), "no common algorithm") {
			return nil, nil // sshd has no certificate of this type
		}
		return nil, fmt.Errorf("SSH handshake with %s: %v", addr, err)
	}
	cert, ok := seen.(*ssh.Certificate)
	if !ok || !bytes.Equal(cert.Key.Marshal(), key.Marshal()) {
		return nil, nil
	}
	return cert, nil
}

// certAlgo is the host key algorithm of a certificate over a key of type t.
func certAlgo(t string) string {
	switch t {
	case ssh.KeyAlgoECDSA256:
		return ssh.CertAlgoECDSA256v01
	case ssh.KeyAlgoECDSA384:
		return ssh.CertAlgoECDSA384v01
	case ssh.KeyAlgoED25519:
		return ssh.CertAlgoED25519v01
	case ssh.KeyAlgoRSA:
		return ssh.CertAlgoRSASHA256v01
	}
	return ""
}

// reload has sshd read its configuration and keys again: systemctl reload
// UNIT (whose ExecReload checks the configuration first, as Debian's
// does), or SIGHUP to the pid in the pid file once the sshd binary of that
// process accepts the configuration it was started with (`sshd -t`): an
// sshd that cannot read its configuration on reload exits, and with it
// every new login.
func (c *sshdControl) reload(ctx context.Context) error {
	if c.unit != "" {
		out, err := exec.CommandContext(ctx, "systemctl", "reload", c.unit).CombinedOutput()
		if err != nil {
			return fmt.Errorf("systemctl reload %s: %v: %s", c.unit, err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	pid, err := readPid(c.pidFile)
	if err != nil {
		return err
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fmt.Errorf("sshd pid %d from %s: %w", pid, c.pidFile, err)
	}
	if !strings.HasPrefix(filepath.Base(exe), "sshd") {
		return fmt.Errorf("pid %d from %s runs %s, not sshd", pid, c.pidFile, exe)
	}
	args, err := testArgs(pid)
	if err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, exe, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("not reloading sshd: `%s %s` refuses its configuration: %v: %s", exe, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("SIGHUP to sshd pid %d: %w", pid, err)
	}
	return nil
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("--sshd-pid-file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("--sshd-pid-file %s holds %q, not a pid", path, strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// testArgs are `sshd -t` with the -f (config file) and -o options of the
// running sshd's command line, so the test reads what a reload would.
func testArgs(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, fmt.Errorf("sshd pid %d: %w", pid, err)
	}
	argv := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	args := []string{"-t"}
	for i := 1; i < len(argv); i++ {
		switch a := argv[i]; {
		case (a == "-f" || a == "-o") && i+1 < len(argv):
			args = append(args, a, argv[i+1])
			i++
		case strings.HasPrefix(a, "-f") && len(a) > 2, strings.HasPrefix(a, "-o") && len(a) > 2:
			args = append(args, a)
		}
	}
	return args, nil
}
