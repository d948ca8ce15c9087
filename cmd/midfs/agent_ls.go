package main

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/cmd/midfs/internal/output"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/joiner"
)

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:  "ls",
		Usage: "list the nodes the identity of a mount may reach",
		Description: "Authenticates to the authority with the mount's own credentials (tlscert, key), trusting\n" +
			"its teleport-host-ca.crt, and prints Node Name, Address and Labels.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "mount", Value: "/opt/machine-id", Usage: "`DIR` where `midfs mount` serves the identity"},
			&cli.StringFlag{Name: "auth-server", Usage: "`HOST:PORT[,HOST:PORT..]` of the authority (default: the ones the mount names)"},
		},
		Action: runLs,
	}
}

func runLs(c *cli.Context) error {
	if c.NArg() > 0 {
		return failf(exitUsage, "ls takes no arguments; give the mount with --mount=DIR")
	}
	dir := c.String("mount")
	key, cert, cas, err := readMountIdentity(dir)
	if err != nil {
		return err
	}
	addr := c.String("auth-server")
	if addr == "" {
		if addr, err = mountAuthServer(dir); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(c.Context, time.Minute)
	defer cancel()
	nodes, err := joiner.ListNodes(ctx, addr, key, cert, cas)
	if err != nil {
		switch {
		case errors.Is(err, joiner.ErrUnreachable):
			return failf(exitUnreachable, "%v", err)
		case errors.Is(err, joiner.ErrPinMismatch):
			return failf(exitCAPin, "%v", err)
		}
		return failf(exitFailure, "the authority at %s refused to list nodes: %v", addr, err)
	}
	return output.Nodes(c.App.Writer, nodes)
}

// readMountIdentity reads the output identity the way any client of the
// mount does: through the files.
func readMountIdentity(dir string) (key crypto.Signer, cert *x509.Certificate, cas []*x509.Certificate, err error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil, failf(exitMountPoint, "%s has no %s: is `midfs mount %s` running?", dir, name, dir)
		case errors.Is(err, os.ErrPermission):
			return nil, failf(exitFailure, "cannot read %s: permission denied; run midfs ls as the mount's owner or one of its --reader users", filepath.Join(dir, name))
		case err != nil:
			return nil, failf(exitMountPoint, "cannot read %s: %v", filepath.Join(dir, name), err)
		}
		return b, nil
	}
	keyPEM, err := read(identity.FileKey)
	if err != nil {
		if _, perr := os.Stat(filepath.Join(dir, identity.FileSSHPub)); perr == nil {
			return nil, nil, nil, failf(exitFailure, "%s serves no key (mounted with --key-files=false), and midfs ls authenticates with it; "+
				"the nodes this identity may reach are the Host blocks of %s", dir, filepath.Join(dir, identity.FileSSHConfig))
		}
		return nil, nil, nil, err
	}
	k, err := identity.ParsePrivateKeyPEM(keyPEM)
	clear(keyPEM)
	if err != nil {
		return nil, nil, nil, failf(exitFailure, "%s: %v", filepath.Join(dir, identity.FileKey), err)
	}
	certPEM, err := read(identity.FileTLSCert)
	if err != nil {
		return nil, nil, nil, err
	}
	certs, err := identity.ParseCertsPEM(certPEM)
	if err != nil || len(certs) != 1 {
		return nil, nil, nil, failf(exitFailure, "%s does not hold one certificate", filepath.Join(dir, identity.FileTLSCert))
	}
	caPEM, err := read(identity.FileHostCA)
	if err != nil {
		return nil, nil, nil, err
	}
	if cas, err = identity.ParseCertsPEM(caPEM); err != nil || len(cas) == 0 {
		return nil, nil, nil, failf(exitFailure, "%s holds no host CA certificate", filepath.Join(dir, identity.FileHostCA))
	}
	return k, certs[0], cas, nil
}

// mountAuthServer reads the authority's address from the mount's root.
func mountAuthServer(dir string) (string, error) {
	buf := make([]byte, 4096) // a list of replicas
	n, err := unix.Getxattr(dir, XattrAuthServer, buf)
	if err != nil {
		return "", failf(exitUsage, "%s does not name its authority (%s: %v): give --auth-server=HOST:PORT", dir, XattrAuthServer, err)
	}
	return string(buf[:n]), nil
}
