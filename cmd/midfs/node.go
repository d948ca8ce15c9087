package main

import (
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/node"
	"github.com/midfs/midfs/service/diag"
	"github.com/midfs/midfs/service/harden"
	"github.com/midfs/midfs/wire"
)

// nodeCommands are the commands of an enforcing node. sshd's hook is not
// one: it is midfs-node-hook, a small program of its own (cmd/midfs-node-hook).
func nodeCommands() []*cli.Command {
	return []*cli.Command{{
		Name:        "node",
		Usage:       "run an enforcing SSH node",
		Subcommands: []*cli.Command{nodeStartCommand()},
	}}
}

func nodeStartCommand() *cli.Command {
	return &cli.Command{
		Name:  "start",
		Usage: "join as a node: serve sshd its host key and certificate from memory, and stay in the inventory",
		Description: "Joins the authority with a node token (`midfs tokens add --type=node`), or with\n" +
			"--join-method=iam by the machine's AWS identity and --token=NAME, an iam token with roles [Node]\n" +
			"(joining again before its identity expires, as iam bots do). Keeps the host private key\n" +
			"in memory (and the kernel keyring, for restarts), lets sshd sign with it through an ssh-agent socket in\n" +
			"--run-dir, writes there the host certificate (for NAME.CLUSTER and NAME, renewed before it expires) and the\n" +
			"user CAs, and writes the sshd_config fragment at --sshd-config, printing the Include line to add to\n" +
			"sshd_config. sshd's hook (AuthorizedPrincipalsCommand " + node.HookName + ", installed beside midfs) asks\n" +
			"this process at every certificate login whether the bot's roles allow this node and no lock holds it,\n" +
			"and the refusals are logged here. Heartbeats keep the node in what bots see. Runs until SIGINT or SIGTERM (SIGHUP renews now).\n" +
			exitHelp(exitUsage, exitJoinRefused, exitCAPin, exitUnreachable),
		Flags:  nodeStartFlags(),
		Action: runNodeStart,
	}
}

func nodeStartFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "auth-server", Usage: "`HOST:PORT` of the authority; repeat it, or separate with commas, for several replicas (a name may resolve to several)"},
		&cli.StringFlag{Name: "token", Usage: "node `TOKEN` printed by `midfs tokens add --type=node`, or - to read it from standard input " +
			"(for --join-method=iam: the name of an iam token with roles [Node]). A secret here is visible to every local user: " +
			"prefer --token-file, MIDFS_TOKEN or -. A node token is not needed to restart"},
		&cli.StringFlag{Name: "token-file", Usage: "read the node token from `FILE` (chmod 600; e.g. a systemd credential)"},
		&cli.StringFlag{Name: "join-method", Value: wire.JoinToken, Usage: "`token|iam`: how the node proves who it is"},
		&cli.BoolFlag{Name: "fips", Usage: "with --join-method=iam: sign for AWS's FIPS STS endpoints (sts-fips.REGION.amazonaws.com)"},
		&cli.StringFlag{Name: "ca-pin", Usage: "`sha256:HEX` of the authority's CA, as `midfs status` prints it; checked before the token is sent"},
		&cli.StringFlag{Name: "name", Usage: "`NAME` of the node: bots reach it as NAME.CLUSTER"},
		&cli.StringFlag{Name: "addr", Usage: "`HOST:PORT` where bots reach this node's sshd"},
		&cli.StringFlag{Name: "labels", Usage: "`k=v[,k=v]` roles select the node by (its token's labels override them)"},
		&cli.StringFlag{Name: "sshd-config", Usage: "`PATH` of the sshd_config fragment to write, e.g. /etc/ssh/sshd_config.d/midfs-node.conf"},
		&cli.StringFlag{Name: "run-dir", Value: node.DefaultRunDir, Usage: "`DIR` (a tmpfs) of what sshd reads: the agent socket, host key and certificate, user CAs"},
		&cli.StringFlag{Name: "sshd-pid-file", Usage: "reload sshd, when it must read a new host certificate, with SIGHUP to the pid in `FILE`"},
		&cli.StringFlag{Name: "sshd-unit", Usage: "reload sshd, when it must read a new host certificate, with systemctl reload `UNIT` (e.g. ssh)"},
		&cli.DurationFlag{Name: "heartbeat-interval", Value: node.DefaultHeartbeat, Usage: "`DURATION` between heartbeats; a node leaves the inventory 1.5 intervals after its last"},
		&cli.DurationFlag{Name: "locks-interval", Value: node.DefaultLocksInterval, Usage: "`DURATION` between fetches of the authority's locks"},
		&cli.DurationFlag{Name: "certificate-ttl", Value: joiner.DefaultCertTTL, Usage: "`DURATION` the host certificate lives (the authority caps it at 24h)"},
		&cli.DurationFlag{Name: "renewal-interval", Value: joiner.DefaultRenewInterval, Usage: "`DURATION` between renewals; shorter than --certificate-ttl"},
		&cli.DurationFlag{Name: "join-timeout", Value: joiner.DefaultJoinTimeout, Usage: "`DURATION` to keep retrying an unreachable authority at start before giving up"},
		&cli.StringFlag{Name: "storage", Value: "keyring", Usage: "`keyring|memory|dir:PATH`: where the node's identity and host key survive a restart " +
			"(keyring: never on disk, gone at reboot; memory: a restart needs a new token; dir:PATH puts the host key on disk)"},
		&cli.StringFlag{Name: "key-algorithm", Value: string(identity.DefaultAlgorithm), Usage: "`ecdsa|ed25519|rsa`: the algorithm of the host key and the node's identity"},
	}
}

// parseNodeStart reads and checks every flag; nothing is touched yet.
func parseNodeStart(c *cli.Context) (*node.Config, error) {
	if c.NArg() > 0 {
		return nil, failf(exitUsage, "node start takes no arguments, got %q", c.Args().Slice())
	}
	alg, err := identity.ParseAlgorithm(c.String("key-algorithm"))
	if err != nil {
		return nil, failf(exitUsage, "bad --key-algorithm: %v", err)
	}
	labels, err := identity.ParseLabels(c.String("labels"))
	if err != nil {
		return nil, failf(exitUsage, "bad --labels: %v", err)
	}
	authServers := strings.Join(c.StringSlice("auth-server"), ",")
	for _, f := range [][2]string{{"auth-server", authServers}, {"ca-pin", c.String("ca-pin")}, {"name", c.String("name")}, {"addr", c.String("addr")}} {
		if f[1] == "" {
			return nil, failf(exitUsage, "node start: give --%s (`midfs tokens add --type=node` prints the command)", f[0])
		}
	}
	cfg := &node.Config{
		Join: joiner.Config{
			AuthServer: authServers, JoinMethod: c.String("join-method"), FIPS: c.Bool("fips"), CAPin: c.String("ca-pin"), Algorithm: alg,
			CertTTL: c.Duration("certificate-ttl"), RenewInterval: c.Duration("renewal-interval"), JoinTimeout: c.Duration("join-timeout"),
			Logger: slog.Default(),
		},
		Name: c.String("name"), Addr: c.String("addr"), Labels: labels,
		RunDir: c.String("run-dir"), SSHDConfig: c.String("sshd-config"),
		SSHDPidFile: c.String("sshd-pid-file"), SSHDUnit: c.String("sshd-unit"),
		HeartbeatInterval: c.Duration("heartbeat-interval"), LocksInterval: c.Duration("locks-interval"),
	}
	if cfg.Join.Token, err = joinToken(c, cfg.Join.JoinMethod, slog.Default()); err != nil {
		return nil, err
	}
	if cfg.Join.FIPS && cfg.Join.JoinMethod != wire.JoinIAM {
		return nil, failf(exitUsage, "--fips applies only to --join-method=iam")
	}
	if err := cfg.Check(); err != nil {
		return nil, failf(exitUsage, "%v", err)
	}
	storage := c.String("storage")
	if cfg.Join.Store, err = joiner.OpenStore(storage, joiner.NodeStoreName(cfg.Join.AuthServer, cfg.Name)); err == nil {
		cfg.HostKeyStore, err = joiner.OpenStore(storage, joiner.NodeStoreName(cfg.Join.AuthServer, cfg.Name)+"-host")
	}
	if err != nil {
		return nil, failf(exitUsage, "%v", err)
	}
	return cfg, nil
}

// runNodeStart: flags, join, serve sshd, heartbeat until a signal.
func runNodeStart(c *cli.Context) error {
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	log := slog.Default()
	svc := serviceOf(c)
	cfg, err := parseNodeStart(c)
	if err != nil {
		return err
	}
	// Before the host key exists: no core dumps, no ptrace, locked memory.
	harden.Process(log)
	a, err := node.Start(ctx, *cfg)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("stopped before serving sshd")
			return nil
		}
		return joinFailure(err)
	}
	if a.Printed != "" {
		fmt.Fprintf(c.App.Writer, "Add this line at the top of sshd_config (Debian's includes /etc/ssh/sshd_config.d/*.conf already), then reload sshd:\n\n%s\n\n", a.Printed)
	}
	svc.WatchAgent(func() diag.AgentStatus { return nodeStatusOf(a.Status()) })
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	st := a.Status()
	svc.Ready(fmt.Sprintf("node %s.%s: sshd at %s", cfg.Name, st.Cluster, cfg.Addr))
	log.Info("node serving sshd", "node", cfg.Name, "cluster", st.Cluster, "addr", cfg.Addr, "run_dir", cfg.RunDir,
		"host_cert_expires", st.HostCertExpires.Format(time.RFC3339))
	harden.ReleaseStartupPages(log)
	for {
		select {
		case err := <-done:
			svc.Stopping()
			log.Info("node agent stopped; sshd keeps its files, and signs again once the node agent is back")
			return err
		case <-hup:
			log.Info("SIGHUP: renewing the host certificate now")
			a.RenewNow()
		}
	}
}

// nodeStatusOf adapts the node agent's status for diagnostics: the host
// certificate is what it serves.
func nodeStatusOf(st node.Status) diag.AgentStatus {
	a := diag.AgentStatus{Expires: st.HostCertExpires, LastRenewal: st.LastRenewal, LastAttempt: st.LastRenewal}
	if st.Failing {
		a.LastError = st.LastError
	}
	return a
}
