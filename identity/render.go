package identity

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/crypto/ssh"
)

// The files of the served tree, in the formats of a tbot destination
// directory so that scripts written for tbot work unchanged.
const (
	FileIdentity   = "identity"
	FileKey        = "key"
	FileSSHCert    = "key-cert.pub"
	FileSSHPub     = "key.pub"
	FileKnownHosts = "known_hosts"
	FileSSHConfig  = "ssh_config"
	FileDatabaseCA = "teleport-database-ca.crt"
	FileHostCA     = "teleport-host-ca.crt"
	FileUserCA     = "teleport-user-ca.crt"
	FileTLSCert    = "tlscert"
)

// File describes one served file.
type File struct {
	Name   string
	Secret bool // holds the private key: mode 0600 and only owner and readers may open it
}

// Files lists the served tree in the order `ls` shows it.
var Files = []File{
	{FileIdentity, true},
	{FileKey, true},
	{FileSSHCert, false},
	{FileSSHPub, false},
	{FileKnownHosts, false},
	{FileSSHConfig, false},
	{FileDatabaseCA, false},
	{FileHostCA, false},
	{FileUserCA, false},
	{FileTLSCert, false},
}

// Paths are where the rendered ssh_config points ssh.
type Paths struct {
	Dir string // absolute path the tree is served at; ssh_config names the files in it
	// Agent, if set, is the ssh-agent socket that serves the key: ssh_config
	// then names it (IdentityAgent) and names key.pub rather than key, so
	// ssh signs through the agent and never opens the private key.
	Agent string
}

// Render returns the bytes of one file. at says where ssh_config points
// ssh; nodes feed ssh_config. The caller owns the returned slice and should
// clear it when done, since for key and identity it holds the private key.
func Render(name string, id *Identity, nodes []Node, at Paths) ([]byte, error) {
	switch name {
	case FileKey:
		key, err := id.keyPEM()
		return bytes.Clone(key), err
	case FileSSHPub:
		return ssh.MarshalAuthorizedKey(id.SSHCert.Key), nil
	case FileSSHCert:
		return ssh.MarshalAuthorizedKey(id.SSHCert), nil
	case FileTLSCert:
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id.TLSCert.Raw}), nil
	case FileKnownHosts:
		return KnownHosts(id.ClusterName, id.CAs.Host)
	case FileUserCA:
		return CertsPEM(id.CAs.User), nil
	case FileHostCA:
		return CertsPEM(id.CAs.Host), nil
	case FileDatabaseCA:
		return CertsPEM(id.CAs.Database), nil
	case FileSSHConfig:
		return SSHConfig(id.ClusterName, nodes, at)
	case FileIdentity:
		return identityFile(id)
	}
	return nil, fmt.Errorf("no such file %q", name)
}

// CertsPEM concatenates the TLS certificates of CAs as PEM blocks.
func CertsPEM(cas []CA) []byte {
	var b bytes.Buffer
	for _, ca := range cas {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: ca.TLS.Raw})
	}
	return b.Bytes()
}

// ParseCertsPEM reads the certificates of a PEM file such as CertsPEM or
// Render's tlscert write, in order.
func ParseCertsPEM(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return out, nil
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
}

// KnownHosts is one @cert-authority line per SSH host CA key, matching the
// cluster name and every host under it. A cluster name that fails
// CheckClusterName is an error: it would change what the lines match.
func KnownHosts(cluster string, hostCAs []CA) ([]byte, error) {
	if err := CheckClusterName(cluster); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	for _, ca := range hostCAs {
		if ca.SSH == nil {
			continue
		}
		key := bytes.TrimSuffix(ssh.MarshalAuthorizedKey(ca.SSH), []byte("\n"))
		fmt.Fprintf(&b, "@cert-authority %s,*.%s %s type=host\n", cluster, cluster, key)
	}
	return b.Bytes(), nil
}

// SSHConfig renders the OpenSSH client configuration: one block for every
// host of the cluster with the credentials, then one block per node giving
// its inventory address. HostKeyAlias makes ssh check the node's host
// certificate under NAME.CLUSTER, which the @cert-authority line covers.
//
// With an agent socket (at.Agent), IdentityAgent names it and IdentityFile
// names key.pub: ssh reads the public key from there (where it would open
// key itself to look for one) and signs through the agent.
//
// Nothing is written that OpenSSH could read as more than the value meant:
// the cluster name and paths are checked (an error if they fail), a node
// that fails CheckNode is left out (the caller reports it), and file paths
// are quoted with '"', '\' and '%' escaped.
func SSHConfig(cluster string, nodes []Node, at Paths) ([]byte, error) {
	if err := CheckClusterName(cluster); err != nil {
		return nil, err
	}
	if err := CheckDir(at.Dir); err != nil {
		return nil, err
	}
	identityFile := FileKey
	if at.Agent != "" {
		if err := CheckAgentSocket(at.Agent); err != nil {
			return nil, err
		}
		identityFile = FileSSHPub
	}
	q := func(file string) string { return quotePath(filepath.Join(at.Dir, file)) }
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Begin generated midfs configuration for %s\n", cluster)
	fmt.Fprintf(&b, "# Common flags for all %s hosts\n", cluster)
	fmt.Fprintf(&b, "Host *.%s\n", cluster)
	fmt.Fprintf(&b, "    UserKnownHostsFile %s\n", q(FileKnownHosts))
	if at.Agent != "" {
		fmt.Fprintf(&b, "    IdentityAgent %s\n", quotePath(at.Agent))
	}
	fmt.Fprintf(&b, "    IdentityFile %s\n", q(identityFile))
	fmt.Fprintf(&b, "    CertificateFile %s\n", q(FileSSHCert))
	sorted := append([]Node(nil), nodes...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	for _, n := range sorted {
		if CheckNode(n) != nil {
			continue
		}
		host, port, _ := ParseAddr(n.Addr)
		alias := n.Name + "." + cluster
		fmt.Fprintf(&b, "# Node %s%s\n", n.Name, labelComment(n.Labels))
		fmt.Fprintf(&b, "Host %s\n", alias)
		fmt.Fprintf(&b, "    HostName %s\n", host)
		fmt.Fprintf(&b, "    Port %d\n", port)
		fmt.Fprintf(&b, "    HostKeyAlias %s\n", alias)
	}
	b.WriteString("# End generated midfs configuration\n")
	return b.Bytes(), nil
}

// quotePath quotes a file name for ssh_config. Inside double quotes OpenSSH
// takes \" and \\ as escapes, and it expands %-tokens in IdentityFile,
// CertificateFile, UserKnownHostsFile and IdentityAgent, where %% is a
// literal '%'.
func quotePath(p string) string {
	return `"` + pathEscaper.Replace(p) + `"`
}

var pathEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, `%`, `%%`)

func labelComment(labels map[string]string) string {
	if len(labels) == 0 {
		return ""
	}
	return " (" + FormatLabels(labels) + ")"
}

// FormatLabels prints labels as k=v pairs sorted by key, comma separated.
func FormatLabels(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + labels[k]
	}
	return strings.Join(parts, ",")
}

// identityFile is Teleport's identity file: key PEM, SSH certificate line,
// TLS certificate PEM, @cert-authority lines and host TLS CA PEMs, each
// section ending in a newline.
func identityFile(id *Identity) ([]byte, error) {
	key, err := id.keyPEM()
	if err != nil {
		return nil, err
	}
	knownHosts, err := KnownHosts(id.ClusterName, id.CAs.Host)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.Grow(len(key) + 8192) // one allocation: no stray copies of the key left behind by growth
	b.Write(key)
	b.Write(ssh.MarshalAuthorizedKey(id.SSHCert))
	pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: id.TLSCert.Raw})
	b.Write(knownHosts)
	b.Write(CertsPEM(id.CAs.Host))
	return b.Bytes(), nil
}
