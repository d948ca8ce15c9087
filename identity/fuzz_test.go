package identity

import (
	"bytes"
	"crypto/ed25519"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// unrelatedHost matches no Host line of a rendered ssh_config: every one
// of them ends in ".CLUSTER".
const unrelatedHost = "u@nodot"

// fixedNode is a good node rendered next to the fuzzed one: a bad node must
// neither hijack nor break it.
var fixedNode = Node{Name: "fixed-node", Addr: "192.0.2.1:2200"}

// optionsSSHConfigSets are the options a rendered ssh_config sets.
var optionsSSHConfigSets = []string{"hostname", "port", "hostkeyalias", "identityfile", "certificatefile", "userknownhostsfile", "identityagent"}

// FuzzRenderedFiles: for any cluster name, mountpoint and node (name,
// address, one label), what passes the checks is rendered so that the real
// ssh reads exactly what was meant (host name, port, host key alias, the
// three files, and with an agent socket beside the mountpoint that socket;
// nothing else: no ProxyCommand, LocalCommand, Match exec),
// known_hosts trusts the host CA for exactly the cluster and its hosts, and
// what fails the checks is never written. Seeds (run by every go test) are
// the attacks of issue 8 and their near misses.
func FuzzRenderedFiles(f *testing.F) {
	for _, s := range [][6]string{
		{"example.com", "/opt/machine-id", "web-1", "10.0.0.7:3022", "env", "prod"},
		{"example.com", "/opt/machine-id", "evil", "10.0.0.1\n    ProxyCommand touch /tmp/midfs-fuzz-pwned\n#:22", "", ""},
		{"example.com", "/opt/machine-id", "evil", "10.0.0.1\nMatch exec \"touch /tmp/midfs-fuzz-pwned\"\n#:22", "", ""},
		{"example.com", "/opt/machine-id", "spaced", "10.0.0.1 x:22", "", ""},
		{"example.com", "/opt/machine-id", "cr", "10.0.0.1:22\r", "", ""},
		{"example.com", "/opt/machine-id", "web\r", "10.0.0.1:22", "", ""},
		{"example.com", "/opt/machine-id", "web\nProxyCommand x", "10.0.0.1:22", "", ""},
		{"example.com", "/opt/machine-id", "root@web", "10.0.0.1:22", "", ""},
		{"example.com", "/opt/machine-id", "*", "10.0.0.1:22", "", ""},
		{"example.com", "/opt/machine-id", "!x", "10.0.0.1:22", "", ""},
		{"example.com", "/opt/machine-id", "a,b", "10.0.0.1:22", "", ""},
		{"example.com", "/opt/machine-id", "Web_1.eu", "web-1.eu.example.com:2222", "teleport.dev/origin", "config"},
		{"example.com", "/opt/machine-id", strings.Repeat("n", 63) + "." + strings.Repeat("m", 64), "10.0.0.1:22", "", ""},
		{"example.com", "/opt/machine-id", "v6", "[2001:DB8::1]:22", "", ""},
		{"example.com", "/opt/machine-id", "v6", "[::ffff:10.0.0.1]:65535", "", ""},
		{"example.com", "/opt/machine-id", "zone", "[fe80::1%eth0]:22", "", ""},
		{"example.com", "/opt/machine-id", "octal", "010.1.1.1:22", "", ""},
		{"example.com", "/opt/machine-id", "hex", "0x7f.1:22", "", ""},
		{"example.com", "/opt/machine-id", "num", "1234:22", "", ""},
		{"example.com", "/opt/machine-id", "port", "10.0.0.1:0", "", ""},
		{"example.com", "/opt/machine-id", "port", "10.0.0.1:022", "", ""},
		{"example.com", "/opt/machine-id", "port", "10.0.0.1:+22", "", ""},
		{"example.com", "/opt/machine-id", "opt", "-oProxyCommand=x:22", "", ""},
		{"example.com", "/opt/machine-id", "pct", "%h:22", "", ""},
		{"example.com", "/opt/machine-id", "lbl", "10.0.0.1:22", "a\"b#c", "%h'`$(x)"},
		{"example.com", "/opt/machine-id", "lbl", "10.0.0.1:22", "env", "prod\nProxyCommand x"},
		{"example.com", "/opt/machine-id", "lbl", "10.0.0.1:22", "a=b", "c"},
		{"example.com", "/mnt/my ids/%d", "web", "10.0.0.1:22", "", ""},
		{"example.com", `/mnt/a"b\c\"d'e`, "web", "10.0.0.1:22", "", ""},
		{"example.com", "/mnt/$HOME/~/#x %% %", "web", "10.0.0.1:22", "", ""},
		{"example.com", "/mnt/${HOME}", "web", "10.0.0.1:22", "", ""},
		{"example.com", "/mnt/a\nProxyCommand x", "web", "10.0.0.1:22", "", ""},
		{"example.com", "/mnt/\t/\xff", "web", "10.0.0.1:22", "", ""},
		{"example.com", "relative", "web", "10.0.0.1:22", "", ""},
		{"example.com", "/", "web", "10.0.0.1:22", "", ""},
		{"Example.COM", "/opt/machine-id", "Web", "Host.Example.COM:22", "", ""},
		{"_c", "/opt/machine-id", "web", "10.0.0.1:22", "", ""},
		{"example.com\n@cert-authority *", "/opt/machine-id", "web", "10.0.0.1:22", "", ""},
		{"example.com *", "/opt/machine-id", "web", "10.0.0.1:22", "", ""},
		{"*.example.com", "/opt/machine-id", "web", "10.0.0.1:22", "", ""},
		{"example.com.", "/opt/machine-id", "web", "10.0.0.1:22", "", ""},
		{"a-.b", "/opt/machine-id", "web", "10.0.0.1:22", "", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5])
	}
	hostCA := fuzzHostCA(f)
	baseline := sshG(f, "/dev/null", unrelatedHost)
	f.Fuzz(func(t *testing.T, cluster, dir, name, addr, labelKey, labelValue string) {
		if name == fixedNode.Name {
			return // node names are unique in the inventory
		}
		node := Node{Name: name, Addr: addr}
		if labelKey != "" || labelValue != "" {
			node.Labels = map[string]string{labelKey: labelValue}
		}
		clusterOK, dirOK, nodeOK := CheckClusterName(cluster) == nil, CheckDir(dir) == nil, CheckNode(node) == nil

		kh, err := KnownHosts(cluster, []CA{hostCA})
		if (err == nil) != clusterOK {
			t.Fatalf("KnownHosts(%q) error %v, but CheckClusterName says %v", cluster, err, CheckClusterName(cluster))
		}
		if err == nil {
			checkKnownHosts(t, kh, cluster, hostCA)
		}

		want := map[string]Node{fixedNode.Name + "." + cluster: fixedNode}
		if nodeOK {
			want[name+"."+cluster] = node
		}
		// Without an agent, and with one whose path shares the mountpoint's
		// characters.
		for _, at := range []Paths{{Dir: dir}, {Dir: dir, Agent: dir + ".agent"}} {
			cfg, err := SSHConfig(cluster, []Node{node, fixedNode}, at)
			if (err == nil) != (clusterOK && dirOK) {
				t.Fatalf("SSHConfig(%q, %+v) error %v, but the checks say cluster %v, dir %v", cluster, at, err, CheckClusterName(cluster), CheckDir(dir))
			}
			if err != nil {
				return
			}
			checkSSHConfigLines(t, cfg, cluster, want)
			path := writeFile(t, cfg)
			if got := sshG(t, path, unrelatedHost); !maps.EqualFunc(got, baseline, slices.Equal) {
				t.Fatalf("ssh_config changes options of a host outside the cluster:\n%s", cfg)
			}
			for alias, n := range want {
				checkNodeOptions(t, path, cfg, alias, n, at, baseline)
			}
		}
	})
}

func fuzzHostCA(t testing.TB) CA {
	pub, err := ssh.NewPublicKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)).Public())
	if err != nil {
		t.Fatal(err)
	}
	return CA{SSH: pub}
}

// checkKnownHosts: one @cert-authority line for exactly CLUSTER and
// *.CLUSTER, as Go and ssh-keygen read it.
func checkKnownHosts(t *testing.T, kh []byte, cluster string, ca CA) {
	t.Helper()
	marker, hosts, key, _, rest, err := ssh.ParseKnownHosts(kh)
	if err != nil || marker != "cert-authority" || !slices.Equal(hosts, []string{cluster, "*." + cluster}) ||
		!bytes.Equal(key.Marshal(), ca.SSH.Marshal()) || len(rest) != 0 {
		t.Fatalf("known_hosts for %q reads as marker %q hosts %q, %v, %d bytes more:\n%s", cluster, marker, hosts, err, len(rest), kh)
	}
	path := writeFile(t, kh)
	if out, err := exec.Command("ssh-keygen", "-F", "host."+cluster, "-f", path).Output(); err != nil || !bytes.Contains(out, []byte("found: line 1 CA")) {
		t.Fatalf("ssh-keygen -F host.%s finds no CA line (%v):\n%s", cluster, err, kh)
	}
	if err := exec.Command("ssh-keygen", "-F", "nodot", "-f", path).Run(); err == nil {
		t.Fatalf("ssh-keygen -F nodot found a line:\n%s", kh)
	}
}

// checkSSHConfigLines reads the file the way it is meant to be written:
// comments, Host lines for exactly the cluster and the wanted nodes, and
// indented options midfs sets; no control characters.
func checkSSHConfigLines(t *testing.T, cfg []byte, cluster string, want map[string]Node) {
	t.Helper()
	if i := bytes.IndexFunc(cfg, func(r rune) bool { return (r < ' ' && r != '\n') || r == 0x7f }); i >= 0 {
		t.Fatalf("ssh_config holds control character %q:\n%s", cfg[i], cfg)
	}
	hosts := map[string]bool{}
	for line := range strings.Lines(string(cfg)) {
		line = strings.TrimSuffix(line, "\n")
		kw, _, _ := strings.Cut(strings.TrimPrefix(line, "    "), " ")
		switch {
		case strings.HasPrefix(line, "# "):
		case strings.HasPrefix(line, "Host "):
			hosts[strings.TrimPrefix(line, "Host ")] = true
		case strings.HasPrefix(line, "    ") && slices.Contains(optionsSSHConfigSets, strings.ToLower(kw)):
		default:
			t.Fatalf("unexpected line %q in ssh_config:\n%s", line, cfg)
		}
	}
	wantHosts := map[string]bool{"*." + cluster: true}
	for alias := range want {
		wantHosts[alias] = true
	}
	if !maps.Equal(hosts, wantHosts) {
		t.Fatalf("Host lines %v, want %v:\n%s", slices.Sorted(maps.Keys(hosts)), slices.Sorted(maps.Keys(wantHosts)), cfg)
	}
}

// checkNodeOptions runs ssh -G for the node's NAME.CLUSTER: it must reach
// the inventory address with the mount's files and the alias, and have
// every other option as it would without the file.
func checkNodeOptions(t *testing.T, path string, cfg []byte, alias string, n Node, at Paths, baseline map[string][]string) {
	t.Helper()
	got := sshG(t, path, "u@"+alias)
	host, port, _ := ParseAddr(n.Addr)
	fold := func(want string) func(string) bool { return func(v string) bool { return strings.EqualFold(v, want) } }
	exact := func(want string) func(string) bool { return func(v string) bool { return v == want } }
	// ssh -G shows IdentityFile and CertificateFile before it expands
	// %-tokens (OpenSSH 9.2) and UserKnownHostsFile after.
	dir := at.Dir
	file := func(name string) func(string) bool {
		p := filepath.Join(dir, name)
		return func(v string) bool { return v == p || v == strings.ReplaceAll(p, "%", "%%") }
	}
	want := map[string]func(string) bool{
		"host":               exact(alias),
		"hostname":           fold(host),
		"port":               exact(strconv.Itoa(port)),
		"hostkeyalias":       fold(alias),
		"identityfile":       file(FileKey),
		"certificatefile":    file(FileSSHCert),
		"userknownhostsfile": exact(filepath.Join(dir, FileKnownHosts)),
		"updatehostkeys":     exact("false"), // ssh's default when UserKnownHostsFile or HostKeyAlias is set
	}
	if at.Agent != "" {
		want["identityfile"] = file(FileSSHPub)
		want["identityagent"] = exact(at.Agent) // shown expanded
	}
	for opt, ok := range want {
		if v := got[opt]; len(v) != 1 || !ok(v[0]) {
			t.Fatalf("ssh -G u@%s (node %q at %q, paths %+v): %s %q; ssh_config:\n%s", alias, n.Name, n.Addr, at, opt, v, cfg)
		}
	}
	for opt := range merged(got, baseline) {
		if _, set := want[opt]; !set && !slices.Equal(got[opt], baseline[opt]) {
			t.Fatalf("ssh -G u@%s: %s %q, want %q as without the file; ssh_config:\n%s", alias, opt, got[opt], baseline[opt], cfg)
		}
	}
}

func merged(a, b map[string][]string) map[string]bool {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	return keys
}
