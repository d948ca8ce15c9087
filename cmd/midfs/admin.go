package main

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/cmd/midfs/internal/output"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/atomicfile"
	"github.com/midfs/midfs/service/diag"
	"github.com/midfs/midfs/wire"
)

// adminCommands are the tctl-like commands of the authority.
func adminCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:  "auth",
			Usage: "run the authority, export its CAs, sign host keys",
			Subcommands: []*cli.Command{
				authStartCommand(),
				authMigrateCommand(),
				authRotateCommand(),
				{
					Name:  "export",
					Usage: "print a CA (both during a rotation): user (TrustedUserCAKeys), host (known_hosts), tls-user, tls-host, db (PEM)",
					Flags: []cli.Flag{dataDirFlag(), &cli.StringFlag{Name: "type", Value: admin.ExportUser, Usage: "`user|host|tls-user|tls-host|db`: which CA"},
						&cli.StringFlag{Name: "out", Usage: "`FILE` to replace in one rename (sshd reads it at every login), instead of printing"}},
					Action: withAdmin(authExport),
				},
				{
					Name:  "sign",
					Usage: "make an SSH host key and its host certificate for sshd (HostKey, HostCertificate); a key already at --out is kept and signed again",
					Flags: []cli.Flag{
						dataDirFlag(),
						&cli.StringFlag{Name: "host", Usage: "`NAME[,NAME]` the certificate is valid for (its principals)"},
						&cli.StringFlag{Name: "format", Value: "openssh", Usage: "`openssh`: the format of the output"},
						&cli.StringFlag{Name: "out", Usage: "`PREFIX` of the files: PREFIX (private key, kept if there), PREFIX.pub, PREFIX-cert.pub"},
						&cli.DurationFlag{Name: "ttl", Value: auth.DefaultHostCertTTL, Usage: "`DURATION` the host certificate is valid"},
						&cli.StringFlag{Name: "key-algorithm", Value: string(identity.DefaultAlgorithm), Usage: "`ecdsa|ed25519|rsa`: the algorithm of a new host key"},
					},
					Action: withAdmin(authSign),
				},
			},
		},
		{
			Name:   "status",
			Usage:  "print the cluster name, version, CA pin and where each CA's rotation is",
			Flags:  []cli.Flag{dataDirFlag()},
			Action: withAdmin(status),
		},
		{
			Name:  "bots",
			Usage: "add, list, remove and unlock bots",
			Subcommands: []*cli.Command{
				{
					Name:      "add",
					Usage:     "make a bot and a one-time join token (or bind it to a delegated iam token)",
					ArgsUsage: "NAME",
					Flags: []cli.Flag{
						dataDirFlag(),
						&cli.StringFlag{Name: "roles", Usage: "`ROLE[,ROLE]` the bot gets, e.g. access"},
						&cli.StringFlag{Name: "logins", Usage: "`LOGIN[,LOGIN]` filling {{internal.logins}} in its roles, e.g. root"},
						&cli.StringFlag{Name: "token", Usage: "`NAME` of an existing iam token to join with, instead of a one-time token"},
						&cli.DurationFlag{Name: "ttl", Value: auth.DefaultJoinTTL, Usage: "`DURATION` the one-time token stays valid"},
					},
					Action: withAdmin(botsAdd),
				},
				{
					Name:   "ls",
					Usage:  "list bots",
					Flags:  []cli.Flag{dataDirFlag(), formatFlag()},
					Action: withAdmin(func(c *cli.Context, ac *admin.Client) error { return getResources(c, ac, "bots") }),
				},
				{
					Name:      "rm",
					Usage:     "remove a bot: its identities and tokens are refused from then on, and it is locked until its certificates expire",
					ArgsUsage: "NAME",
					Flags:     []cli.Flag{dataDirFlag()},
					Action:    onName("bot", "removed", (*admin.Client).RemoveBot),
				},
				{
					Name:      "unlock",
					Usage:     "clear a bot's generation lock",
					ArgsUsage: "NAME",
					Flags:     []cli.Flag{dataDirFlag()},
					Action:    onName("bot", "unlocked", (*admin.Client).UnlockBot),
				},
			},
		},
		{
			Name:  "create",
			Usage: "create roles, tokens and nodes from a YAML file (- for standard input)",
			Flags: []cli.Flag{
				dataDirFlag(),
				&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "YAML `FILE` of one or more resources"},
				&cli.BoolFlag{Name: "force", Usage: "replace resources that exist"},
			},
			Action: withAdmin(create),
		},
		{
			Name:      "get",
			Usage:     "show roles, tokens, bots, nodes, locks or CAs",
			ArgsUsage: "roles|tokens|bots|nodes|locks|cas[/NAME]",
			Flags:     []cli.Flag{dataDirFlag(), formatFlag()},
			Action: withAdmin(func(c *cli.Context, ac *admin.Client) error {
				ref, err := oneArg(c, "roles|tokens|bots|nodes|locks|cas[/NAME]")
				if err != nil {
					return err
				}
				return getResources(c, ac, ref)
			}),
		},
		{
			Name:      "rm",
			Usage:     "remove a role, token, node or lock",
			ArgsUsage: "roles/NAME|tokens/NAME|nodes/NAME|locks/ID",
			Flags:     []cli.Flag{dataDirFlag()},
			Action:    withAdmin(remove),
		},
		tokensCommand(), // tokens.go
		{
			Name:  "nodes",
			Usage: "the inventory of SSH nodes",
			Subcommands: []*cli.Command{
				{
					Name:      "add",
					Usage:     "add or update a node",
					ArgsUsage: "NAME",
					Flags: []cli.Flag{
						dataDirFlag(),
						&cli.StringFlag{Name: "addr", Usage: "`HOST:PORT` of its sshd"},
						&cli.StringFlag{Name: "labels", Usage: "`k=v[,k=v]` roles select nodes by"},
					},
					Action: withAdmin(nodesAdd),
				},
				{
					Name:      "rm",
					Usage:     "remove a node",
					ArgsUsage: "NAME",
					Flags:     []cli.Flag{dataDirFlag()},
					Action:    onName("node", "removed", (*admin.Client).RemoveNode),
				},
				{
					Name:   "ls",
					Usage:  "list nodes",
					Flags:  []cli.Flag{dataDirFlag(), formatFlag()},
					Action: withAdmin(func(c *cli.Context, ac *admin.Client) error { return getResources(c, ac, "nodes") }),
				},
			},
		},
	}
}

func dataDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "data-dir", Value: defaultDataDir, Usage: "`DIR` of the authority's state and admin socket"}
}

func formatFlag() cli.Flag {
	return &cli.StringFlag{Name: "format", Value: "text", Usage: "`text|yaml|json`: how to print"}
}

// withAdmin connects to the admin socket before running action.
func withAdmin(action func(*cli.Context, *admin.Client) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		ac, err := admin.Dial(c.String("data-dir"))
		if err != nil {
			return fail(exitAuthority, err)
		}
		defer ac.Close()
		return action(c, ac)
	}
}

// onName runs do on the one NAME argument of a command, then says so:
// "bot NAME removed".
func onName(noun, done string, do func(*admin.Client, context.Context, string) error) cli.ActionFunc {
	return withAdmin(func(c *cli.Context, ac *admin.Client) error {
		name, err := oneArg(c, "NAME")
		if err != nil {
			return err
		}
		if err := do(ac, c.Context, name); err != nil {
			return fail(exitFailure, err)
		}
		fmt.Fprintf(c.App.Writer, "%s %s %s\n", noun, name, done)
		return nil
	})
}

// oneArg is the single positional argument of a command.
func oneArg(c *cli.Context, what string) (string, error) {
	switch c.NArg() {
	case 1:
		return c.Args().First(), nil
	case 0:
		return "", failf(exitUsage, "%s: give %s", c.Command.FullName(), what)
	}
	return "", failf(exitUsage, "%s: give one %s, not %q", c.Command.FullName(), what, strings.Join(c.Args().Slice(), " "))
}

// splitList reads a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func authStartCommand() *cli.Command {
	return &cli.Command{
		Name:  "start",
		Usage: "run the authority: HTTPS API for bots, admin socket for the commands above",
		Description: "Makes the CAs on first start (kept in --data-dir/midfs.db, or in the PostgreSQL database --db names, " +
			"which several replicas may share) and serves until SIGINT or SIGTERM.\n" +
			exitHelp(exitUsage, exitAuthority),
		Flags: []cli.Flag{
			dataDirFlag(),
			&cli.StringFlag{Name: "db", Usage: "`URL` of a PostgreSQL database that replicas of this authority share, postgres://USER@HOST:PORT/DB?OPTIONS " +
				"(a password is best in ~/.pgpass, PGPASSFILE, MIDFS_DB or the config file); default: SQLite in --data-dir"},
			&cli.StringFlag{Name: "listen", Value: auth.DefaultListen, Usage: "`HOST:PORT` of the HTTPS API"},
			&cli.StringFlag{Name: "advertise-addr", Usage: "`HOST:PORT` bots reach the API at, printed by `bots add` (default: the listen IP, or this host's name)"},
			&cli.StringFlag{Name: "cluster-name", Usage: "`NAME` of the cluster, fixed at first start (default: this host's name)"},
			&cli.DurationFlag{Name: "certificate-ttl", Value: auth.DefaultTTL, Usage: "`DURATION` output credentials live when a bot asks for none"},
			&cli.DurationFlag{Name: "max-ttl", Value: wire.MaxTTL, Usage: "`DURATION` no credential may outlive (at most 24h)"},
			&cli.DurationFlag{Name: "bot-ttl", Value: auth.DefaultBotTTL, Usage: "`DURATION` a bot's own renewable identity lives"},
			&cli.IntFlag{Name: "max-connections", Usage: fmt.Sprintf("`N` open API connections at most; at the cap the one idle longest is closed (0: %d, or half the open-file limit if lower)", auth.MaxConns)},
			&cli.DurationFlag{Name: "audit-retention", Value: auth.DefaultAuditRetention, Usage: "`DURATION` audit events are kept (`midfs events`); older ones are pruned (at least 1h)"},
			&cli.StringFlag{Name: "ca-key-seal", Usage: "seal the CA private keys in the state with the 32-byte key in `FILE` (chmod 600; `openssl rand -hex 32`), " +
				"the same on every replica; default: the systemd credential ca-key-seal if the service has one, else the keys are stored unsealed"},
			&cli.StringFlag{Name: "sts-endpoint", Usage: "`URL` replacing AWS STS for IAM joins; tests only, needs --insecure-test-mode"},
			&cli.BoolFlag{Name: "insecure-test-mode", Usage: "allow test-only settings such as --sts-endpoint; never in production"},
		},
		Action: authStart,
	}
}

func authMigrateCommand() *cli.Command {
	return &cli.Command{
		Name:  "migrate",
		Usage: "move a stopped authority's SQLite state into an empty PostgreSQL database, for replicas",
		Description: "Copies the CAs, roles, bots (at their generations), tokens (used or not), nodes and the audit trail as they are: " +
			"nothing is issued anew, so agents go on renewing through authorities started with --db. " +
			"Stop the authority first; the SQLite state is then marked moved, and an authority started on it refuses.\n" +
			exitHelp(exitUsage, exitFailure),
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "from", Usage: "`sqlite:PATH` of the state: the authority's data directory (or its midfs.db)"},
			&cli.StringFlag{Name: "to", Usage: "`URL` of the database, postgres://USER@HOST:PORT/DB?OPTIONS (a password is best in ~/.pgpass)"},
			&cli.StringFlag{Name: "ca-key-seal", Usage: "seal the CA private keys moved into the database with the 32-byte key in `FILE`, " +
				"the one the replicas start with (default: the systemd credential ca-key-seal)"},
		},
		Action: authMigrate,
	}
}

func authMigrate(c *cli.Context) error {
	if c.NArg() > 0 {
		return failf(exitUsage, "auth migrate takes no arguments, got %q", strings.Join(c.Args().Slice(), " "))
	}
	if c.String("from") == "" || c.String("to") == "" {
		return failf(exitUsage, "auth migrate needs --from=sqlite:PATH and --to=postgres://USER@HOST:PORT/DB")
	}
	warnPasswordInArgv(c.String("to"), slog.Default())
	m, err := auth.Migrate(c.Context, c.String("from"), c.String("to"), c.String("ca-key-seal"))
	if err != nil {
		return fail(exitFailure, err)
	}
	fmt.Fprintf(c.App.Writer, "moved cluster %s to %s: %d CAs, %d roles, %d bots, %d tokens, %d nodes, %d audit events\n", m.Cluster, m.To, m.CAs, m.Roles, m.Bots, m.Tokens, m.Nodes, m.Events)
	fmt.Fprintf(c.App.Writer, "start the replicas with --db=%s (and the password where ~/.pgpass or the config file gives it)\n", m.To)
	return nil
}

func authStart(c *cli.Context) error {
	if c.NArg() > 0 {
		return failf(exitUsage, "auth start takes no arguments, got %q", strings.Join(c.Args().Slice(), " "))
	}
	svc := serviceOf(c)
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	warnPasswordInArgv(c.String("db"), slog.Default())
	s, err := auth.Start(ctx, auth.Config{
		DataDir:          c.String("data-dir"),
		DB:               c.String("db"),
		Listen:           c.String("listen"),
		AdvertiseAddr:    c.String("advertise-addr"),
		ClusterName:      c.String("cluster-name"),
		DefaultTTL:       c.Duration("certificate-ttl"),
		MaxTTL:           c.Duration("max-ttl"),
		BotTTL:           c.Duration("bot-ttl"),
		MaxConns:         c.Int("max-connections"),
		AuditRetention:   c.Duration("audit-retention"),
		CAKeySeal:        c.String("ca-key-seal"),
		STSEndpoint:      c.String("sts-endpoint"),
		InsecureTestMode: c.Bool("insecure-test-mode"),
		Version:          version,
		Logger:           slog.Default().With("component", "auth"),
		Metrics:          svc.Metrics(),
	})
	if err != nil {
		return fail(exitAuthority, err)
	}
	svc.WatchAuthority(func() diag.Health {
		if err := s.Check(context.Background()); err != nil {
			return diag.Health{Status: diag.Unhealthy, Reason: err.Error(), UpdatedAt: time.Now()}
		}
		return diag.Health{Status: diag.Healthy, UpdatedAt: time.Now()}
	})
	svc.Diag().AddCheck("database", func() diag.Health {
		if h := s.DBHealth(); !h.Up {
			return diag.Health{Status: diag.Unhealthy, Reason: h.Reason + "; answering 503", UpdatedAt: h.Since}
		}
		return diag.Health{Status: diag.Healthy, Reason: "database answers", UpdatedAt: time.Now()}
	})
	svc.Ready("serving " + s.ClusterName() + " on " + s.Addr())
	<-ctx.Done()
	svc.Stopping()
	slog.Default().Info("stopping the authority", "cluster", s.ClusterName())
	if err := s.Close(); err != nil {
		return fail(exitFailure, err)
	}
	return nil
}

func status(c *cli.Context, ac *admin.Client) error {
	st, err := ac.Status(c.Context)
	if err != nil {
		return fail(exitAuthority, err)
	}
	var t output.Table
	t.Row("Cluster", st.ClusterName)
	t.Row("Version", st.Version)
	t.Row("Address", st.Addr+" (advertised as "+st.AdvertiseAddr+")")
	t.Row("CA pin", st.CAPin)
	for _, ca := range st.CAs {
		t.Row(caTitle(ca.Spec.Type)+" CA", output.CAPhase(ca))
	}
	return t.Print(c.App.Writer)
}

func botsAdd(c *cli.Context, ac *admin.Client) error {
	name, err := oneArg(c, "NAME")
	if err != nil {
		return err
	}
	roles := splitList(c.String("roles"))
	if len(roles) == 0 {
		return failf(exitUsage, "bots add %s: give its roles with --roles, e.g. --roles=access (see `midfs get roles`)", name)
	}
	bt, err := ac.AddBot(c.Context, admin.BotSpec{
		Name: name, Roles: roles, Logins: splitList(c.String("logins")),
		TokenName: c.String("token"), TTL: c.Duration("ttl"),
	})
	if err != nil {
		return fail(exitFailure, err)
	}
	output.BotToken(c.App.Writer, bt, time.Now())
	return nil
}

func create(c *cli.Context, ac *admin.Client) error {
	file := c.String("file")
	if file == "" {
		if c.NArg() != 1 {
			return failf(exitUsage, "create: give the resource file with -f FILE.yaml")
		}
		file = c.Args().First()
	}
	in := os.Stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return failf(exitUsage, "create: %v", err)
		}
		defer f.Close()
		in = f
	}
	data, err := policy.ReadResourceYAML(in)
	if err != nil {
		return failf(exitUsage, "create: %s: %v; nothing was stored", file, err)
	}
	done, err := ac.CreateYAML(c.Context, data, c.Bool("force"))
	if err != nil {
		return failf(exitFailure, "%s: %v; nothing was stored", file, err)
	}
	for _, line := range done {
		fmt.Fprintln(c.App.Writer, line)
	}
	return nil
}

// splitRef reads KIND[/NAME].
func splitRef(ref string) (kind, name string, err error) {
	kind, name, _ = strings.Cut(ref, "/")
	kind, err = policy.NormalizeKind(kind)
	return kind, name, err
}

func getResources(c *cli.Context, ac *admin.Client, ref string) error {
	kind, name, err := splitRef(ref)
	if err != nil {
		return fail(exitUsage, err)
	}
	format := c.String("format")
	if format != "text" && format != "yaml" && format != "json" {
		return failf(exitUsage, "bad --format %q: want text, yaml or json", format)
	}
	res, err := ac.Get(c.Context, kind, name)
	if err != nil {
		return fail(exitFailure, err)
	}
	return output.Resources(c.App.Writer, kind, res, format)
}

func remove(c *cli.Context, ac *admin.Client) error {
	ref, err := oneArg(c, "KIND/NAME")
	if err != nil {
		return err
	}
	kind, name, err := splitRef(ref)
	if err == nil && name == "" {
		err = fmt.Errorf("give the name too, as in roles/NAME or tokens/NAME")
	}
	if err != nil {
		return fail(exitUsage, fmt.Errorf("rm %s: %w", ref, err))
	}
	if err := ac.Remove(c.Context, kind, name); err != nil {
		return fail(exitFailure, err)
	}
	fmt.Fprintf(c.App.Writer, "%s %s removed\n", kind, name)
	return nil
}

func nodesAdd(c *cli.Context, ac *admin.Client) error {
	name, err := oneArg(c, "NAME")
	if err != nil {
		return err
	}
	if c.String("addr") == "" {
		return failf(exitUsage, "nodes add %s: give its sshd address with --addr=HOST:PORT", name)
	}
	labels, err := identity.ParseLabels(c.String("labels"))
	if err != nil {
		return failf(exitUsage, "bad --labels: %v", err)
	}
	if err := ac.AddNode(c.Context, identity.Node{Name: name, Addr: c.String("addr"), Labels: labels}); err != nil {
		return fail(exitFailure, err)
	}
	fmt.Fprintf(c.App.Writer, "node %s added at %s\n", name, c.String("addr"))
	return nil
}

func authExport(c *cli.Context, ac *admin.Client) error {
	text, err := ac.Export(c.Context, c.String("type"))
	if err != nil {
		return fail(exitUsage, err)
	}
	out := c.String("out")
	if out == "" {
		fmt.Fprint(c.App.Writer, text)
		return nil
	}
	// A shell's > empties the file first, and a login that reads it then
	// is refused: the file is replaced whole instead.
	if err := atomicfile.Write(out, []byte(text), 0o644); err != nil {
		return fail(exitFailure, err)
	}
	fmt.Fprintf(c.App.Writer, "wrote %s\n", out)
	return nil
}

// authSign makes the host key here, in the CLI, so the authority never
// sees it; only the public key travels over the admin socket. A key
// already at PREFIX is kept and signed again (as in a host CA rotation):
// sshd reads the key and the certificate as two files at every
// connection, and a new key renamed in before its certificate met
// logins that found the two unmatched, with no valid host certificate.
func authSign(c *cli.Context, ac *admin.Client) error {
	if f := c.String("format"); f != "openssh" {
		return failf(exitUsage, "auth sign: --format=%s not supported; use --format=openssh", f)
	}
	hosts := splitList(c.String("host"))
	if len(hosts) == 0 {
		return failf(exitUsage, "auth sign: give the host names with --host=NAME[,NAME]")
	}
	out := c.String("out")
	if out == "" {
		return failf(exitUsage, "auth sign: give where to write with --out=PREFIX, e.g. /etc/ssh/midfs_host")
	}
	key, kept, err := hostKey(out, c.String("key-algorithm"), c.IsSet("key-algorithm"))
	if err != nil {
		return err
	}
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return fail(exitFailure, err)
	}
	cert, err := ac.SignHost(c.Context, string(ssh.MarshalAuthorizedKey(pub)), hosts, c.Duration("ttl"))
	if err != nil {
		return fail(exitFailure, err)
	}
	type file struct {
		path string
		data []byte
		mode os.FileMode
	}
	var files []file
	if !kept {
		block, err := ssh.MarshalPrivateKey(key, "")
		if err != nil {
			return fail(exitFailure, err)
		}
		priv := pem.EncodeToMemory(block)
		defer clear(priv)
		files = append(files, file{out, priv, 0o600})
	}
	files = append(files, file{out + ".pub", ssh.MarshalAuthorizedKey(pub), 0o644}, file{out + "-cert.pub", []byte(cert), 0o644})
	for _, f := range files {
		if err := atomicfile.Write(f.path, f.data, f.mode); err != nil {
			return fail(exitFailure, err)
		}
	}
	if kept {
		fmt.Fprintf(c.App.Writer, "kept the host key in %s; wrote %s.pub and %s-cert.pub (host certificate for %s)\n", out, out, out, strings.Join(hosts, ", "))
		return nil
	}
	fmt.Fprintf(c.App.Writer, "wrote %s, %s.pub and %s-cert.pub (host certificate for %s)\n", out, out, out, strings.Join(hosts, ", "))
	return nil
}

// hostKey is the key at path when there is one (kept), else a new key of
// the algorithm asked for. A file there that is not an unencrypted
// OpenSSH private key, or a key of another algorithm than one asked for
// explicitly, is an error: nothing is replaced that was not asked for.
func hostKey(path, algorithm string, explicit bool) (key crypto.Signer, kept bool, err error) {
	alg, err := identity.ParseAlgorithm(algorithm)
	if err != nil {
		return nil, false, fail(exitUsage, err)
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key, err := identity.GenerateKey(alg)
		if err != nil {
			return nil, false, fail(exitFailure, err)
		}
		return key, false, nil
	}
	if err != nil {
		return nil, false, fail(exitFailure, err)
	}
	defer clear(data)
	raw, err := ssh.ParseRawPrivateKey(data)
	if err != nil {
		return nil, false, failf(exitUsage, "auth sign: %s is there but is not an unencrypted OpenSSH private key (%v); remove it to make a new host key", path, err)
	}
	if k, ok := raw.(*ed25519.PrivateKey); ok {
		raw = *k // ssh parses ed25519 keys to a pointer, which is no crypto.Signer
	}
	key, ok := raw.(crypto.Signer)
	if !ok {
		return nil, false, failf(exitUsage, "auth sign: %s holds a %T, not a host key midfs can sign", path, raw)
	}
	if have := identity.AlgorithmOf(key.Public()); explicit && have != alg {
		return nil, false, failf(exitUsage, "auth sign: %s holds an %s key, not %s; remove it to make a new host key", path, have, alg)
	}
	return key, true, nil
}
