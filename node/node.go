// Package node is the node side of midfs (`midfs node start`): a node
// joins the authority with a node token, or by IAM with an iam token of
// role Node, as a bot does, and then keeps its stock OpenSSH sshd supplied:
//
//   - the host private key lives in this process only (and in the kernel
//     keyring, for restarts); sshd signs with it through an ssh-agent
//     socket (HostKeyAgent), so it is never on disk;
//   - a short-lived host certificate for NAME.CLUSTER and NAME, renewed
//     before it expires, and the user CAs, are files of a run directory
//     (a tmpfs), which sshd reads;
//   - an sshd_config fragment, written once every file it names exists,
//     points sshd at them;
//   - heartbeats keep the node in the inventory bots see.
//
// The run directory is a tmpfs rather than a FUSE mount, though the agent
// serves bots from FUSE: sshd must keep working while this process
// restarts (an upgrade, a crash that systemd answers), and files on a
// tmpfs outlive the process, where a FUSE mount dies with it. Nothing in
// it is secret, so nothing is lost by letting it outlive the process.
//
// It imports identity, wire and joiner (the Session that joins and renews,
// and its Store for the keyring), never auth.
package node

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/node/enforce"
	"github.com/midfs/midfs/sshagent"
	"github.com/midfs/midfs/wire"
)

// DefaultHeartbeat is how often a node tells the authority it is alive.
// It sets how fast a dead node leaves bots' ssh_config: the authority
// keeps a node for 1.5 intervals after its last heartbeat and agents poll
// every 15 s, so a node that stops is gone everywhere within 60 s, two
// intervals. Each heartbeat costs the authority a kept-alive HTTPS request
// and one row written: 10,000 nodes make 333 a second (README, Scale).
const DefaultHeartbeat = 30 * time.Second

// DefaultLocksInterval is how often the node asks for the authority's
// locks (an unchanged list is a 304). With the heartbeats half an interval
// apart, the node's connection is never idle for long enough that either
// side closes it.
const DefaultLocksInterval = 30 * time.Second

// Config says how the node joins and what it serves sshd.
type Config struct {
	// Join is how to reach and join the authority: AuthServer, Token,
	// JoinMethod (and FIPS), CAPin, Store (the node's identity), CertTTL
	// (of the host certificate), RenewInterval, JoinTimeout, Algorithm,
	// Logger, Clock.
	// Node is filled in from Name, Addr and Labels.
	Join   joiner.Config
	Name   string            // NAME of NAME.CLUSTER
	Addr   string            // HOST:PORT where bots reach sshd
	Labels map[string]string // the node's own; its token's override them

	RunDir      string // default DefaultRunDir
	SSHDConfig  string // where the fragment goes
	SSHDPidFile string // reload sshd with SIGHUP to this pid
	SSHDUnit    string // or with systemctl reload UNIT

	// Hook is what sshd runs as its AuthorizedPrincipalsCommand
	// (midfs-node-hook); default: HookName beside this process's
	// executable.
	Hook string

	HeartbeatInterval time.Duration // default DefaultHeartbeat
	LocksInterval     time.Duration // default DefaultLocksInterval
	// HostKeyStore keeps the host key across restarts (the keyring); with
	// another key after a restart, sshd would ask the agent for a key it
	// no longer has until it is reloaded.
	HostKeyStore joiner.Store
}

// Check says what is wrong with cfg before anything is contacted or
// written (one line, for the command to print).
func (c *Config) Check() error {
	if err := c.setDefaults(); err != nil {
		return err
	}
	if c.Join.JoinMethod == wire.JoinIAM && c.Join.Token == "" {
		return errors.New("--join-method=iam needs --token=NAME, the name of an iam token with roles [Node] (midfs get tokens), also to restart: the node joins again with it")
	}
	if err := identity.CheckNodeName(c.Name); err != nil {
		return fmt.Errorf("--name: %w", err)
	}
	if _, _, err := identity.ParseAddr(c.Addr); err != nil {
		return fmt.Errorf("--addr: %w", err)
	}
	for k, v := range c.Labels {
		if err := identity.CheckLabel(k, v); err != nil {
			return fmt.Errorf("--labels: %w", err)
		}
	}
	if c.SSHDConfig == "" {
		return errors.New("give --sshd-config=PATH, the sshd_config fragment to write (e.g. /etc/ssh/sshd_config.d/midfs-node.conf)")
	}
	for flag, p := range map[string]string{"--run-dir": c.RunDir, "--sshd-config": c.SSHDConfig} {
		if err := checkConfigPath(flag, p); err != nil {
			return err
		}
	}
	if err := checkHookPath(c.Hook); err != nil {
		return err
	}
	if c.SSHDPidFile != "" && c.SSHDUnit != "" {
		return errors.New("give --sshd-pid-file or --sshd-unit, not both: one way to reload sshd")
	}
	if c.HeartbeatInterval < time.Second || c.LocksInterval < time.Second {
		return errors.New("--heartbeat-interval and --locks-interval must be at least 1s")
	}
	return c.Join.Validate()
}

func (c *Config) setDefaults() error {
	if c.RunDir == "" {
		c.RunDir = DefaultRunDir
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeat
	}
	if c.LocksInterval == 0 {
		c.LocksInterval = DefaultLocksInterval
	}
	if c.HostKeyStore == nil {
		c.HostKeyStore = joiner.MemoryStore()
	}
	if c.Hook == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("cannot tell where this midfs is, to find sshd's hook beside it: %v", err)
		}
		c.Hook = filepath.Join(filepath.Dir(exe), HookName)
	}
	if c.Join.Logger == nil {
		c.Join.Logger = slog.Default()
	}
	if c.Join.Clock == nil {
		c.Join.Clock = clock.Real()
	}
	c.Join.Node = &wire.NodeInfo{Name: c.Name, Addr: c.Addr, Labels: c.Labels}
	return nil
}

// Agent is a running node agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	clock clock.Clock
	dir   runDir
	sshd  *sshdControl

	hostKey crypto.Signer
	hostPub ssh.PublicKey
	agent   *sshagent.Server

	// Owned by Start, then by Run.
	sess     *joiner.Session
	hostCert *ssh.Certificate
	cluster  string
	labels   map[string]string // as the authority sees the node (the token's over its own)
	userCAs  []string          // authorized_keys lines, as user_ca.pub holds them
	botDue   bool              // the next renewal round starts with the node's identity

	// Enforcement (enforcement.go).
	locks        []wire.Lock
	locksTag     string // ETag of the locks held
	locksFetched time.Time
	stateWritten bool          // by this process, since it started
	hook         *enforce.Hook // answers sshd's hook
	// Printed is the Include line, once the fragment was written anew:
	// for the command to show the operator.
	Printed string

	status   status
	renewNow chan struct{}
}

// RenewNow asks Run to renew the host certificate at once (SIGHUP). It
// never blocks.
func (a *Agent) RenewNow() {
	select {
	case a.renewNow <- struct{}{}:
	default:
	}
}

// Start checks that the fragment can be written, joins (or restarts from
// the stored identity, without a token), gets a host certificate, writes
// the run directory, heartbeats and writes the fragment. A node restarting
// with its host key in HostKeyStore serves it to sshd at once, before the
// authority is asked anything, so sshd signs again within a moment of the
// restart. On error nothing new names a missing file: the fragment is
// written last.
func Start(ctx context.Context, cfg Config) (*Agent, error) {
	if err := cfg.Check(); err != nil {
		return nil, &joinerConfigError{err}
	}
	if err := checkWritable(cfg.SSHDConfig); err != nil {
		return nil, &joinerConfigError{err}
	}
	a := &Agent{
		cfg: cfg, log: cfg.Join.Logger.With("component", "node", "node", cfg.Name), clock: cfg.Join.Clock,
		dir: runDir(cfg.RunDir), botDue: true, renewNow: make(chan struct{}, 1),
	}
	a.sshd = &sshdControl{addr: cfg.Addr, pidFile: cfg.SSHDPidFile, unit: cfg.SSHDUnit, log: a.log}
	ok := false
	defer func() {
		if !ok {
			a.Close()
		}
	}()
	key, err := loadHostKey(cfg.HostKeyStore)
	if err != nil {
		a.log.Warn("cannot read the stored host key; making a new one (sshd needs a reload to use it)", "store", cfg.HostKeyStore.String(), "err", err)
	}
	if key != nil {
		if err := a.setHostKey(key); err != nil {
			return nil, err
		}
		a.serveEarly()
		a.answerEarly()
	}
	if a.sess, err = joiner.OpenSession(ctx, cfg.Join); err != nil {
		return nil, err
	}
	if a.hostKey == nil {
		if key, err = identity.GenerateKey(cfg.Join.Algorithm); err != nil {
			return nil, err
		}
		if err := saveHostKey(cfg.HostKeyStore, key); err != nil {
			a.log.Warn("cannot keep the host key for restarts; a restart will make a new one, and sshd needs a reload then", "store", cfg.HostKeyStore.String(), "err", err)
		}
		if err := a.setHostKey(key); err != nil {
			return nil, err
		}
	}
	if err := a.dir.make(); err != nil {
		return nil, err
	}
	// The authority just answered: what fails now is a refusal, or the
	// network for as long as a join may take.
	deadline := a.clock.Now().Add(cfg.Join.JoinTimeout)
	if err := a.sess.Retry(ctx, deadline, a.refreshHostCert); err != nil {
		return nil, err
	}
	if err := a.sess.Retry(ctx, deadline, a.heartbeat); err != nil {
		return nil, err
	}
	a.restoreLocks()
	if err := a.sess.Retry(ctx, deadline, a.fetchLocks); err != nil {
		// Enforce what is known (the last locks, or none at a first
		// start) rather than leave sshd without a decision: Run asks again.
		a.log.Error("cannot fetch the locks; enforcing the last ones known", "err", err, "locks", len(a.locks))
	}
	if err := a.writeStateIfChanged(false); err != nil {
		return nil, err
	}
	if err := a.writeFragment(); err != nil {
		return nil, err
	}
	a.sshd.ensure(ctx, a.hostCert)
	now := a.clock.Now()
	a.status.st = Status{Cluster: a.cluster, HostCertExpires: time.Unix(int64(a.hostCert.ValidBefore), 0), LastRenewal: now, LastHeartbeat: now}
	ok = true
	return a, nil
}

// joinerConfigError marks a configuration error found by this package
// (bad flags, an unwritable --sshd-config) as joiner.ErrConfig, the kind
// the command maps to its usage exit code.
type joinerConfigError struct{ err error }

func (e *joinerConfigError) Error() string        { return e.err.Error() }
func (e *joinerConfigError) Is(target error) bool { return target == joiner.ErrConfig }

// setHostKey takes the host key this process serves.
func (a *Agent) setHostKey(key crypto.Signer) error {
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return fmt.Errorf("host key: %w", err)
	}
	a.hostKey, a.hostPub = key, pub
	return nil
}

// serveEarly serves the host key at once on a restart, with the
// certificate the process before left in the run directory (while it is
// valid): sshd signs again before the authority is asked anything.
func (a *Agent) serveEarly() {
	b, err := os.ReadFile(a.dir.path(FileHostCert))
	if err != nil {
		return
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(b)
	cert, ok := pub.(*ssh.Certificate)
	if err != nil || !ok || !bytes.Equal(cert.Key.Marshal(), a.hostPub.Marshal()) || !a.clock.Now().Before(time.Unix(int64(cert.ValidBefore), 0)) {
		return
	}
	if err := a.serveHostKey(cert); err != nil {
		a.log.Warn("cannot serve the stored host key before joining; it is served once the node has joined", "err", err)
		return
	}
	a.log.Info("serving the stored host key to sshd", "store", a.cfg.HostKeyStore.String())
}

// serveHostKey writes the host public key and serves the private key to
// sshd on the agent socket (sshagent: read-only, only root connects),
// with cert, its current host certificate: the agent signs with the key
// only while a certificate for it is valid.
func (a *Agent) serveHostKey(cert *ssh.Certificate) error {
	if a.agent != nil {
		a.agent.Publish(a.hostKey, cert)
		return nil
	}
	if err := a.dir.make(); err != nil {
		return err
	}
	if err := a.dir.write(FileHostKey, ssh.MarshalAuthorizedKey(a.hostPub)); err != nil {
		return err
	}
	srv, err := sshagent.Listen(sshagent.Options{
		Path: a.dir.path(FileAgentSocket), Mode: 0o600,
		Allow:  func(p sshagent.Peer) bool { return p.UID == 0 }, // sshd's monitor, which signs
		Logger: a.log, Clock: a.clock,
	}, a.hostKey, cert)
	if err != nil {
		return fmt.Errorf("host key agent socket: %w", err)
	}
	a.agent = srv
	return nil
}

// refreshHostCert gets a host certificate for the host key and the user
// CAs, and writes them to the run directory.
func (a *Agent) refreshHostCert(ctx context.Context) error {
	var hc wire.HostCerts
	req := wire.HostCertRequest{PublicKey: string(ssh.MarshalAuthorizedKey(a.hostPub)), TTLSeconds: int64(a.cfg.Join.CertTTL / time.Second)}
	if err := a.sess.Call(ctx, http.MethodPost, wire.PathHostCert, req, &hc); err != nil {
		return fmt.Errorf("host certificate: %w", err)
	}
	cert, err := a.checkHostCert(&hc)
	if err != nil {
		return err
	}
	// The CAs first: a new CA must be trusted before a certificate
	// signed by it could be presented (rotation.go).
	a.cluster = hc.ClusterName
	if err := a.setUserCAs(hc.UserCAs); err != nil {
		return err
	}
	if err := a.dir.write(FileHostCert, ssh.MarshalAuthorizedKey(cert)); err != nil {
		return err
	}
	if err := a.serveHostKey(cert); err != nil {
		return err
	}
	a.hostCert = cert
	a.log.Info("host certificate", "principals", strings.Join(cert.ValidPrincipals, ","), "serial", cert.Serial,
		"expires", time.Unix(int64(cert.ValidBefore), 0).UTC().Format(time.RFC3339))
	return nil
}

// checkHostCert refuses a host certificate that sshd could not use or
// that is not for this node: never served, as a broken issuance is never
// served by the agent either.
func (a *Agent) checkHostCert(hc *wire.HostCerts) (*ssh.Certificate, error) {
	bad := func(format string, args ...any) (*ssh.Certificate, error) {
		return nil, fmt.Errorf("the authority sent a bad host certificate: "+format, args...)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hc.HostCert))
	if err != nil {
		return bad("%v", err)
	}
	cert, ok := pub.(*ssh.Certificate)
	switch {
	case !ok:
		return bad("a plain %s key", pub.Type())
	case cert.CertType != ssh.HostCert:
		return bad("not a host certificate")
	case string(cert.Key.Marshal()) != string(a.hostPub.Marshal()):
		return bad("for another key")
	case identity.CheckClusterName(hc.ClusterName) != nil:
		return bad("cluster name %q", hc.ClusterName)
	}
	want := []string{a.cfg.Name + "." + hc.ClusterName, a.cfg.Name}
	if !slices.Equal(cert.ValidPrincipals, want) {
		return bad("principals %v, want %v", cert.ValidPrincipals, want)
	}
	return cert, nil
}

// heartbeat tells the authority the node is alive, where and with which
// labels, and learns the labels it is seen (and must enforce) by.
func (a *Agent) heartbeat(ctx context.Context) error {
	var ans wire.HeartbeatAnswer
	hb := wire.Heartbeat{Addr: a.cfg.Addr, Labels: a.cfg.Labels, IntervalSeconds: int64(a.cfg.HeartbeatInterval / time.Second)}
	if err := a.sess.Call(ctx, http.MethodPost, wire.PathHeartbeat, hb, &ans); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	if err := a.followCAs(ans.CAs); err != nil {
		return err
	}
	if !maps.Equal(ans.Labels, a.labels) {
		if a.labels != nil || !maps.Equal(ans.Labels, a.cfg.Labels) {
			a.log.Info("labels as the authority sees the node", "labels", identity.FormatLabels(ans.Labels))
		}
		a.labels = ans.Labels
		if a.stateWritten {
			return a.writeState()
		}
	}
	return nil
}

// writeFragment writes the sshd_config fragment, and the Include line to
// print when it changed.
func (a *Agent) writeFragment() error {
	extra := enforcementLines(a.dir, a.cfg.Hook)
	lines := append(baseLines(a.dir), extra...)
	content := fragment(a.cfg.Name, a.cluster, a.dir, extra)
	changed, err := writeFragment(a.cfg.SSHDConfig, content, lines)
	if err != nil {
		return err
	}
	if changed {
		a.Printed = "Include " + a.cfg.SSHDConfig
		a.log.Info("wrote the sshd_config fragment; sshd_config must include it (at the top), and sshd be reloaded once", "fragment", a.cfg.SSHDConfig, "line", a.Printed)
	}
	return nil
}

// Close stops serving the host key. The run directory and the fragment
// stay: sshd keeps reading them, and a restart serves the same key again.
func (a *Agent) Close() {
	if a.agent != nil {
		a.agent.Close()
	}
	if a.hook != nil {
		a.hook.Close()
	}
	if a.sess != nil {
		a.sess.Close()
	}
}

// loadHostKey reads the host key kept for restarts, or nil.
func loadHostKey(store joiner.Store) (crypto.Signer, error) {
	blob, err := store.Load()
	if errors.Is(err, joiner.ErrNotStored) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer clear(blob)
	return identity.ParsePrivateKeyDER(blob)
}

// saveHostKey keeps the host key for restarts; it never expires by itself.
func saveHostKey(store joiner.Store, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	defer clear(der)
	return store.Save(der, time.Time{})
}
