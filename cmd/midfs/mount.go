package main

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/fs"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/service"
	"github.com/midfs/midfs/service/diag"
	"github.com/midfs/midfs/service/harden"
	"github.com/midfs/midfs/sshagent"
	"github.com/midfs/midfs/wire"
)

// agentCommands are the commands of the agent: mount, ls and renew.
func agentCommands() []*cli.Command {
	return []*cli.Command{mountCommand(), lsCommand(), renewCommand(), upgradeCommand()}
}

// XattrAuthServer on the mount's root names the authority that issued the
// tree, so that `midfs ls` finds it without being told.
const XattrAuthServer = "user.midfs.auth_server"

// defaultDataDir is where the embedded authority keeps its state.
const defaultDataDir = "/var/lib/midfs"

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "join the authority and serve this machine's identity as a read-only FUSE mount",
		ArgsUsage: "MOUNTPOINT",
		Description: "Joins the authority (--auth-server, --token, --ca-pin), keeps the credentials in memory,\n" +
			"serves them at MOUNTPOINT and renews them until SIGINT or SIGTERM (SIGHUP, or `midfs renew`, renews now).\n" +
			"SIGUSR2 (`midfs upgrade`) hands the mount to a new agent process; under systemd, SIGUSR1 (RestartKillSignal=)\n" +
			"leaves it to the unit's file descriptor store for the next start, which a restart after a crash takes over too.\n" +
			"Without --auth-server an authority runs inside this process, with its state in --data-dir.\n" +
			"With --ssh-agent=PATH the key also signs through an ssh-agent socket, which ssh_config names;\n" +
			"add --key-files=false to leave key and identity out of the tree, so no process can ever read the key.\n" +
			exitHelp(exitUsage, exitMountPoint, exitJoinRefused, exitCAPin, exitUnreachable, exitFUSE, exitAuthority),
		Flags:  mountFlags(),
		Action: runMount,
	}
}

// mountFlags is every flag of `midfs mount` but --config and --diag-addr,
// which wrapService (service_wiring.go) adds to each long-running command.
func mountFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "auth-server", Usage: "`HOST:PORT` of the authority; repeat it, or separate with commas, for several replicas (a name may resolve to several); " +
			"without it, an authority runs inside this process"},
		&cli.StringFlag{Name: "token", Usage: "join `TOKEN` printed by `midfs bots add`, or - to read it from standard input " +
			"(for --join-method=iam: the iam token's name). A secret here is visible to every local user: " +
			"prefer --token-file, MIDFS_TOKEN or -. Not needed to restart from a stored bot identity"},
		&cli.StringFlag{Name: "token-file", Usage: "read the join token from `FILE` (chmod 600; e.g. a systemd credential)"},
		&cli.StringFlag{Name: "join-method", Value: wire.JoinToken, Usage: "`token|iam`: how the bot proves who it is"},
		&cli.BoolFlag{Name: "fips", Usage: "with --join-method=iam: sign for AWS's FIPS STS endpoints (sts-fips.REGION.amazonaws.com)"},
		&cli.StringFlag{Name: "ca-pin", Usage: "`sha256:HEX` of the authority's CA, as `midfs status` prints it; checked before the token is sent"},
		&cli.StringFlag{Name: "owner", Usage: "`USER[:GROUP]` owning the tree (default: the user running midfs)"},
		&cli.StringSliceFlag{Name: "reader", Aliases: []string{"readers"}, Usage: "`USER|@GROUP` that may also open key and identity (and use the --ssh-agent socket)"},
		&cli.StringFlag{Name: "ssh-agent", Usage: "also serve the key through the ssh-agent protocol on a Unix socket at `PATH` " +
			"(e.g. /run/midfs-robot.agent, in a directory only root or this user can write); ssh_config names it, " +
			"so ssh signs without opening key. --owner, root and --reader may connect; it only lists and signs"},
		&cli.BoolFlag{Name: "key-files", Value: true, Usage: "serve key and identity in the tree (default true). " +
			"--key-files=false leaves them out, so the private key is never readable: ssh signs through --ssh-agent, which it needs"},
		&cli.DurationFlag{Name: "certificate-ttl", Value: joiner.DefaultCertTTL, Usage: "`DURATION` the served credentials live (the authority caps it at 24h)"},
		&cli.DurationFlag{Name: "renewal-interval", Value: joiner.DefaultRenewInterval, Usage: "`DURATION` between renewals; shorter than --certificate-ttl"},
		&cli.DurationFlag{Name: "join-timeout", Value: joiner.DefaultJoinTimeout, Usage: "`DURATION` to keep retrying an unreachable authority at start before giving up (after taking a mount over: for as long as the identity it serves is valid)"},
		&cli.StringFlag{Name: "storage", Value: "keyring", Usage: "`keyring|memory|dir:PATH`: where the renewable bot identity survives a restart. " +
			"keyring: the kernel user keyring (never on disk, gone at reboot); memory: nowhere (a restart needs a new token); " +
			"dir:PATH: a 0600 file in PATH (the bot's key on disk)"},
		&cli.StringFlag{Name: "key-algorithm", Value: string(identity.DefaultAlgorithm), Usage: "`ecdsa|ed25519|rsa`: the algorithm of every key"},
		&cli.StringFlag{Name: "data-dir", Value: defaultDataDir, Usage: "`DIR` of the embedded authority's state (only without --auth-server)"},
		&cli.BoolFlag{Name: "debug-fuse", Usage: "log every FUSE request at debug level"},
	}
}

// mountPlan is what the flags ask for, checked before anything happens.
type mountPlan struct {
	dir      string // absolute mountpoint
	uid, gid uint32
	readers  []fs.Reader
	embedded bool   // no --auth-server: run the authority in this process
	dataDir  string // of the embedded authority
	storage  string
	debug    bool
	join     joiner.Config
	agent    string // --ssh-agent socket path, absolute; "" for none
	keyFiles bool   // serve key and identity
}

// parseMount reads and checks every flag; errors are usage errors, and
// nothing has been touched yet.
func parseMount(c *cli.Context, mountpoint string, takeover bool) (*mountPlan, error) {
	if mountpoint == "" {
		return nil, failf(exitUsage, "give the MOUNTPOINT, e.g. `midfs mount /opt/machine-id --auth-server=HOST:3025 --token-file=FILE --ca-pin=sha256:...`")
	}
	if c.NArg() > 1 {
		return nil, failf(exitUsage, "mount takes one MOUNTPOINT, got %q", c.Args().Slice())
	}
	dir, err := filepath.Abs(mountpoint)
	if err != nil {
		return nil, failf(exitUsage, "bad mountpoint %q: %v", mountpoint, err)
	}
	p := &mountPlan{dir: dir, dataDir: c.String("data-dir"), storage: c.String("storage"), debug: c.Bool("debug-fuse")}
	if p.uid, p.gid, err = fs.ParseOwner(c.String("owner")); err != nil {
		return nil, failf(exitUsage, "bad --owner %q: %v", c.String("owner"), err)
	}
	for _, r := range c.StringSlice("reader") {
		rd, err := fs.ParseReader(r)
		if err != nil {
			return nil, failf(exitUsage, "bad --reader %q: %v", r, err)
		}
		p.readers = append(p.readers, rd)
	}
	if err := parseAgentFlags(c, p); err != nil {
		return nil, err
	}
	alg, err := identity.ParseAlgorithm(c.String("key-algorithm"))
	if err != nil {
		return nil, failf(exitUsage, "bad --key-algorithm: %v", err)
	}
	p.join = joiner.Config{
		AuthServer:    strings.Join(c.StringSlice("auth-server"), ","),
		JoinMethod:    c.String("join-method"),
		FIPS:          c.Bool("fips"),
		CAPin:         c.String("ca-pin"),
		Algorithm:     alg,
		CertTTL:       c.Duration("certificate-ttl"),
		RenewInterval: c.Duration("renewal-interval"),
		JoinTimeout:   c.Duration("join-timeout"),
		Logger:        slog.Default(),
	}
	if p.join.AuthServer == "" {
		p.embedded = true
		for _, f := range []string{"token", "token-file", "ca-pin"} {
			if c.IsSet(f) {
				return nil, failf(exitUsage, "--%s needs --auth-server: without it midfs runs its own authority and joins it by itself", f)
			}
		}
		if p.join.JoinMethod != wire.JoinToken {
			return nil, failf(exitUsage, "--join-method=%s needs --auth-server", p.join.JoinMethod)
		}
		p.join.AuthServer = "127.0.0.1:1" // placeholder for Validate; the real port is known once the authority listens
	} else if takeover && p.join.JoinMethod == wire.JoinToken {
		// The agent before had joined: the bot identity is in --storage,
		// and a --token=- would read a standard input that is not a user's.
		os.Unsetenv("MIDFS_TOKEN")
	} else if p.join.Token, err = joinToken(c, p.join.JoinMethod, slog.Default()); err != nil {
		return nil, err
	}
	if p.join.FIPS && p.join.JoinMethod != wire.JoinIAM {
		return nil, failf(exitUsage, "--fips applies only to --join-method=iam")
	}
	if err := p.join.Validate(); err != nil {
		return nil, failf(exitUsage, "%v", err)
	}
	if _, err := joiner.OpenStore(p.storage, "check"); err != nil && !p.embedded {
		return nil, failf(exitUsage, "%v", err)
	}
	return p, nil
}

// parseAgentFlags reads --ssh-agent and --key-files.
func parseAgentFlags(c *cli.Context, p *mountPlan) error {
	p.keyFiles = c.Bool("key-files")
	if path := c.String("ssh-agent"); path != "" {
		abs, err := filepath.Abs(path)
		if err == nil {
			err = identity.CheckAgentSocket(abs)
		}
		if err != nil {
			return failf(exitUsage, "bad --ssh-agent %q: %v", path, err)
		}
		// The agent must never touch its own mount, and the tree is
		// read-only anyway.
		if abs == p.dir || strings.HasPrefix(abs, p.dir+"/") {
			return failf(exitUsage, "bad --ssh-agent %q: it is inside the mountpoint %s; put the socket elsewhere, e.g. /run/midfs-robot.agent", path, p.dir)
		}
		p.agent = abs
	}
	if !p.keyFiles && p.agent == "" {
		return failf(exitUsage, "--key-files=false needs --ssh-agent=PATH: without the key files, ssh can only sign through the agent socket")
	}
	return nil
}

// sshAgentFile is the name connections to the --ssh-agent socket are
// counted under in midfs_agent_opens_total: each one is a use of the key,
// as an open of key is.
const sshAgentFile = "ssh-agent"

// listenAgent serves id's key on the --ssh-agent socket, admitting
// connections by the rule that decides opens of key (fs.Access). A socket
// the agent before kept (takeover.go) is adopted: clients that connected
// while no agent ran are served now. The socket is kept in the service
// manager's store, like the mount.
func listenAgent(p *mountPlan, svc *running, id *identity.Identity, from *takeover) (*sshagent.Server, error) {
	acc := fs.Access{UID: p.uid, GID: p.gid, Readers: p.readers}
	opts := sshagent.Options{
		Path: p.agent, UID: p.uid, GID: p.gid, Mode: acc.SocketMode(),
		Allow: func(peer sshagent.Peer) bool {
			return acc.Allows(peer.UID, peer.GID, func() []uint32 { return peer.Groups })
		},
		Logger:    slog.Default(),
		OnConnect: func(result string) { svc.OnOpen(sshAgentFile, result) },
		OnSign:    svc.OnSign,
		// The socket at the path is the agent's before, whose mount this
		// one took over.
		Replace: from.any(),
	}
	var s *sshagent.Server
	var err error
	if ln := from.agentSocket(); ln != nil {
		defer ln.Close()
		if s, err = sshagent.Adopt(opts, ln, id.Key, id.SSHCert); err != nil {
			slog.Warn("cannot adopt the ssh-agent socket of the agent before; making a new one", "err", err)
		}
	}
	if s == nil {
		if s, err = sshagent.Listen(opts, id.Key, id.SSHCert); err != nil {
			return nil, failf(exitUsage, "--ssh-agent: %v", err)
		}
	}
	if svc.FDStore() {
		if ln, err := s.Listener(); err == nil {
			svc.Keep(sshAgentFile, ln)
			ln.Close()
		}
	}
	return s, nil
}

// runMount: flags, mountpoint check, join, mount, renew until a signal.
// Nothing half-done: whatever fails after the mount unmounts it. A mount
// handed over by the agent before (takeover.go) is served first, and
// renewed once joined.
func runMount(c *cli.Context) error {
	// Signals first: a SIGTERM while checking or joining stops cleanly
	// (exit 0, nothing mounted), and an early SIGHUP must not kill the
	// process, which is its default action.
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	handover := make(chan os.Signal, 1)
	signal.Notify(handover, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(handover)

	log := slog.Default()
	svc := serviceOf(c)
	pred := service.PredecessorFromEnv()
	p, err := parseMount(c, svc.mountpoint(c), pred != nil)
	if err != nil {
		if pred != nil {
			pred.Failed(err)
		}
		return err
	}
	exe, _ := os.Executable() // before a new binary replaces it: what `midfs upgrade` starts
	from := takeoverOf(svc, pred)
	// Before joining: a bad mountpoint must not cost a one-time token.
	if !from.any() {
		if err := fs.CheckMountpoint(p.dir); err != nil {
			return fail(exitMountPoint, err)
		}
	}
	if err := fs.CheckCanMount(); err != nil {
		return fail(exitFUSE, err)
	}
	// Taking over, the socket there is the agent before's: still open in
	// the service manager's store or handed over, and adopted or replaced.
	if p.agent != "" && !from.any() {
		if err := sshagent.CheckPath(p.agent); err != nil {
			return failf(exitUsage, "bad --ssh-agent: %v", err)
		}
	}
	// Before the first key exists.
	harden.Process(log)

	opts := fs.Options{
		Dir: p.dir, UID: p.uid, GID: p.gid, Readers: p.readers,
		Xattrs: map[string]string{XattrAuthServer: p.join.AuthServer, fs.XattrPID: strconv.Itoa(os.Getpid()),
			XattrVersion: version, XattrUpgrade: upgradeProto},
		Logger: log, OnOpen: svc.OnOpen, Debug: p.debug, Keep: svc.Keep, Drop: svc.Drop,
		AgentSocket: p.agent, NoKeyFiles: !p.keyFiles,
	}
	srv, err := from.resume(opts, svc, log)
	if err != nil {
		return failf(exitFUSE, "cannot take the mount at %s over: %v", p.dir, err)
	}
	if srv == nil && from.any() {
		if err := fs.CheckMountpoint(p.dir); err != nil {
			return fail(exitMountPoint, err)
		}
	}
	defer func() {
		if srv == nil {
			return
		}
		select {
		case <-srv.Done():
			return // unmounted from outside: nothing left to undo
		default:
		}
		if err := srv.Unmount(); err != nil {
			log.Error("unmount failed", "dir", p.dir, "error", err)
		}
	}()

	if p.embedded {
		authority, err := startEmbedded(ctx, p, svc)
		if err != nil {
			return err
		}
		defer authority.Close()
		// Its port is a new one at every start.
		if srv != nil {
			srv.SetXattr(XattrAuthServer, p.join.AuthServer)
		}
		opts.Xattrs[XattrAuthServer] = p.join.AuthServer
	} else {
		store, err := joiner.OpenStore(p.storage, joiner.StoreName(p.join.AuthServer, p.dir))
		if err != nil {
			return failf(exitUsage, "%v", err)
		}
		p.join.Store = store
	}

	if srv != nil {
		// The issuance taken over serves on while the authority is out of
		// reach: ending the mount after --join-timeout would take a valid
		// identity away from its readers. Retry for as long as it holds,
		// and be ready now (systemd's start timeout is shorter).
		if left := time.Until(srv.Expires()); left > p.join.JoinTimeout {
			log.Debug("joining; an unreachable authority is retried until the issuance taken over expires",
				"dir", p.dir, "expires", srv.Expires().Format(time.RFC3339))
			p.join.JoinTimeout = left
		}
		if err := svc.Mounted(p.dir); err != nil {
			return failf(exitFUSE, "%v", err)
		}
	}
	// The ssh-agent socket too signs with the issuance taken over while
	// joining, when the tree has its key (not under --key-files=false).
	var sock *sshagent.Server
	if srv != nil && p.agent != "" {
		if taken, ok := srv.Issuance(); ok {
			if sock, err = listenAgent(p, svc, taken, from); err != nil {
				return err
			}
			defer sock.Close()
		}
	}
	var watch chan os.Signal // nil, never ready, without a mount to hand on
	if srv != nil {
		watch = handover
	}
	var agent *joiner.Agent
	for {
		var sig os.Signal
		agent, sig, err = joinWatching(ctx, p.join, watch)
		if sig == nil {
			break
		}
		// A restart or an upgrade while joining: the mount taken over goes
		// on to the next agent, which joins in turn.
		if handOn(sig, srv, sock, svc, p, exe, log) {
			return nil
		}
	}
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before mounting")
			return nil
		}
		return joinFailure(err)
	}
	id, nodes := agent.Current()
	st := agent.Status()
	snap := &fs.Snapshot{Identity: id, Nodes: nodes}
	// After a takeover, the issuance taken over serves on while it is
	// valid through the next renewal and one more should that fail:
	// readers see nothing change (see fs.Server.Keeps). The agent socket
	// then signs with its key, which key.pub names.
	served := id
	keep := srv != nil && srv.Keeps(snap, st.NextRenewal.Add(p.join.RenewInterval))
	if keep && p.agent != "" {
		if served, keep = srv.Issuance(); !keep {
			served = id
		}
	}
	// The socket first: once the tree is visible, its ssh_config names it.
	switch {
	case sock != nil: // listening since the takeover
		if !keep {
			sock.Publish(id.Key, id.SSHCert)
		}
	case p.agent != "":
		if sock, err = listenAgent(p, svc, served, from); err != nil {
			return err
		}
		defer sock.Close()
	default:
		if ln := from.agentSocket(); ln != nil {
			ln.Close() // the agent before had a socket; this one has none
			svc.Drop(sshAgentFile)
		}
	}
	switch {
	case srv == nil:
		if srv, err = fs.Mount(opts, snap); err != nil {
			return failf(exitFUSE, "%v", err)
		}
	case keep:
		log.Info("serving on the issuance taken over until the next renewal", "dir", p.dir)
	default:
		srv.Publish(snap)
	}

	svc.WatchAgent(func() diag.AgentStatus { return agentStatusOf(agent.Status()) })
	stopRenewing := agent.Start(func(id *identity.Identity, nodes []identity.Node) {
		// The socket before the tree: an ssh that reads key.pub from the
		// tree then finds that key listed by the agent (which keeps the
		// previous one for a while too).
		if sock != nil {
			sock.Publish(id.Key, id.SSHCert)
		}
		srv.Publish(&fs.Snapshot{Identity: id, Nodes: nodes})
	})
	defer stopRenewing()

	if err := svc.Mounted(p.dir); err != nil {
		return failf(exitFUSE, "%v", err)
	}
	log.Info("mounted", "dir", p.dir, "bot", st.BotName, "cluster", st.ClusterName,
		"expires", st.Expires.Format(time.RFC3339), "nodes", len(nodes), "auth_server", p.join.AuthServer)
	// Start-up is over: give back the pages of code only it used.
	harden.ReleaseStartupPages(log)

	for {
		select {
		case <-ctx.Done():
			log.Info("stopping: unmounting", "dir", p.dir)
			svc.Stopping()
			return nil
		case <-srv.Done():
			log.Warn("unmounted from outside; stopping", "dir", p.dir)
			svc.Stopping()
			return nil
		case <-hup:
			log.Info("SIGHUP: renewing now")
			agent.RenewNow()
		case sig := <-handover:
			if handOn(sig, srv, sock, svc, p, exe, log) {
				return nil
			}
		}
	}
}

// joinFailure maps the joiner's error kinds to exit codes.
// handOn answers a SIGUSR1 or SIGUSR2 (handOver) and says whether the
// agent is to stop, unmounting. When another process has the mount, it
// exits here: readers wait until this process is gone (the next one serves
// only then, fs/takeover.go), and nothing in the deferred goodbyes is
// needed (the mount is the next process's, and a renewal cut short is
// sent again from --storage).
func handOn(sig os.Signal, srv *fs.Server, sock *sshagent.Server, svc *running, p *mountPlan, exe string, log *slog.Logger) bool {
	done, keep := handOver(sig, srv, sock, svc, p, exe, log)
	if done || keep {
		svc.Stopping()
	}
	if keep {
		os.Exit(exitOK)
	}
	return done
}

// joinWatching joins as joiner.Join does, but a SIGUSR1 or SIGUSR2 on
// handover (nil: none) ends the join early, and is returned for the caller
// to hand the mount on. One that comes once joined goes back on handover,
// for the serving loop.
func joinWatching(ctx context.Context, cfg joiner.Config, handover chan os.Signal) (*joiner.Agent, os.Signal, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan os.Signal, 1)
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case sig := <-handover:
			got <- sig
			cancel()
		case <-ctx.Done():
		}
	}()
	agent, err := joiner.Join(ctx, cfg)
	cancel()
	<-watched
	select {
	case sig := <-got:
		if err == nil {
			handover <- sig // joined all the same: the serving loop answers it
			return agent, nil, nil
		}
		return nil, sig, err
	default:
		return agent, nil, err
	}
}

func joinFailure(err error) error {
	switch {
	case errors.Is(err, joiner.ErrConfig):
		return failf(exitUsage, "%v", err)
	case errors.Is(err, joiner.ErrRefused):
		return failf(exitJoinRefused, "%v", err)
	case errors.Is(err, joiner.ErrPinMismatch):
		return failf(exitCAPin, "%v", err)
	case errors.Is(err, joiner.ErrUnreachable):
		return failf(exitUnreachable, "%v", err)
	}
	return failf(exitFailure, "%v", err)
}

// agentStatusOf adapts the joiner's status for diagnostics.
func agentStatusOf(st joiner.Status) diag.AgentStatus {
	a := diag.AgentStatus{
		Expires: st.Expires, LastRenewal: st.LastRenewal, LastAttempt: st.LastRenewal,
		Renewals: st.Renewals, Failures: st.RenewalsFailed, AuthServer: st.AuthServer,
	}
	if st.LastErrorAt.After(a.LastAttempt) {
		a.LastAttempt = st.LastErrorAt
	}
	if st.Failing {
		a.LastError = st.LastError
	}
	return a
}

// startEmbedded runs an authority in this process, makes (or refreshes) a
// bot for this machine and points the join at it over loopback. The bot
// joins with a fresh token at every start, so nothing is stored.
func startEmbedded(ctx context.Context, p *mountPlan, svc *running) (*auth.Server, error) {
	s, err := auth.Start(ctx, auth.Config{
		DataDir: p.dataDir, Listen: "127.0.0.1:0", Version: version,
		Logger: slog.Default().With("component", "auth"), Metrics: svc.Metrics(),
	})
	if err != nil {
		return nil, failf(exitAuthority, "cannot start the embedded authority in %s: %v; give --data-dir=DIR to use another directory, or --auth-server=HOST:PORT to join a running authority", p.dataDir, err)
	}
	login := "root"
	if u, err := user.Current(); err == nil {
		login = u.Username
	}
	name := machineBotName()
	tok, err := s.AddBot(ctx, admin.BotSpec{Name: name, Roles: []string{"access"}, Logins: []string{login}, Replace: true})
	if err != nil {
		s.Close()
		return nil, failf(exitAuthority, "embedded authority: cannot make bot %s: %v", name, err)
	}
	p.join.AuthServer, p.join.CAPin, p.join.Token = s.Addr(), s.CAPin(), tok.Token
	p.join.Store = joiner.MemoryStore()
	slog.Info("embedded authority started", "data_dir", p.dataDir, "cluster", s.ClusterName(), "bot", name, "login", login, "ca_pin", s.CAPin())
	return s, nil
}

// machineBotName is the hostname made into a valid bot name.
func machineBotName() string {
	h, _ := os.Hostname()
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.', r == '_':
			b.WriteRune(r)
		default:
			b.WriteRune('-')
		}
	}
	name := strings.TrimLeft(b.String(), "-._")
	if name == "" {
		return "machine"
	}
	if len(name) > 128 {
		name = name[:128]
	}
	return name
}
