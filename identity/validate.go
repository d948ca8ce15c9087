package identity

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// The checks below cover every value that reaches a rendered file
// (ssh_config, known_hosts, identity) or a certificate principal. The
// authority runs them when a value enters (admin API, YAML), and the
// renderers run them again, so that a value stored before they existed is
// skipped, never written. They live here because the renderers live here.

// Length limits of the checked values.
const (
	MaxHostLen       = 253 // a DNS name
	MaxNodeNameLen   = 128 // as every resource name
	MaxLabelKeyLen   = 63
	MaxLabelValueLen = 255
	MaxLoginLen      = 32 // useradd's limit
)

// What the errors tell the user to give instead.
const (
	dnsNameRule = "dot-separated labels of 1-63 letters, digits, '-' or '_', not starting or ending with '-'"
	loginRule   = "1-32 letters, digits, '.', '_' or '-', not starting with '-' or '.' (a POSIX user name like root or ubuntu)"
)

// CheckClusterName says what is wrong with a cluster name, or nil. It names
// hosts in ssh_config and known_hosts, so it is a DNS name.
func CheckClusterName(name string) error {
	if !isDNSName(name, MaxHostLen) {
		return fmt.Errorf("bad cluster name %q: use a DNS name of at most %d characters: %s", name, MaxHostLen, dnsNameRule)
	}
	return nil
}

// CheckNodeName says what is wrong with a node name, or nil. NAME.CLUSTER
// is the host bots type after ssh, so a node name is a DNS name too.
func CheckNodeName(name string) error {
	if !isDNSName(name, MaxNodeNameLen) {
		return fmt.Errorf("bad node name %q: use at most %d characters of %s", name, MaxNodeNameLen, dnsNameRule)
	}
	return nil
}

// ParseAddr splits a node address HOST:PORT and checks both parts: HOST is
// a DNS name or an IP address (IPv6 in brackets, no zone), PORT 1-65535.
func ParseAddr(addr string) (host string, port int, err error) {
	bad := func(why string) (string, int, error) {
		return "", 0, fmt.Errorf("bad address %q: %s; want HOST:PORT, like 10.0.0.1:22, node1.example.com:22 or [2001:db8::1]:22", addr, why)
	}
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return bad("not HOST:PORT")
	}
	if port, err = parsePort(p); err != nil {
		return bad(err.Error())
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if ip.Zone() != "" {
			return bad("an IPv6 zone cannot be given")
		}
		return host, port, nil
	}
	if !isDNSName(host, MaxHostLen) {
		return bad(fmt.Sprintf("the host is neither an IP address nor a DNS name (%s, at most %d characters)", dnsNameRule, MaxHostLen))
	}
	if looksNumeric(host) {
		// The resolver would read it as an address in octal, hex or a
		// shortened form ("010.1.1.1" is 8.1.1.1), which is not what
		// the user typed.
		return bad("the host looks like an IPv4 address but is not a plain dotted quad")
	}
	return host, port, nil
}

func parsePort(p string) (int, error) {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != p {
		return 0, errors.New("the port must be a number from 1 to 65535")
	}
	return n, nil
}

// CheckLabel says what is wrong with a node label, or nil. Labels are
// printed k=v,k=v; keys and values are printable ASCII without spaces.
func CheckLabel(key, value string) error {
	if len(key) == 0 || len(key) > MaxLabelKeyLen || !isGraphicASCII(key) || strings.ContainsAny(key, "=,") {
		return fmt.Errorf("bad label key %q: use 1-%d printable ASCII characters other than space, '=' and ','", key, MaxLabelKeyLen)
	}
	if len(value) > MaxLabelValueLen || !isGraphicASCII(value) || strings.Contains(value, ",") {
		return fmt.Errorf("bad value %q of label %s: use up to %d printable ASCII characters other than space and ','", value, key, MaxLabelValueLen)
	}
	return nil
}

// CheckLogin says what is wrong with a login (an SSH certificate principal,
// a user name on the nodes), or nil.
func CheckLogin(login string) error {
	if !isLogin(login) {
		return fmt.Errorf("bad login %q: use %s", login, loginRule)
	}
	return nil
}

func isLogin(s string) bool {
	if len(s) == 0 || len(s) > MaxLoginLen || s[0] == '-' || s[0] == '.' {
		return false
	}
	for _, c := range []byte(s) {
		if !isAlnum(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// CheckNode says what is wrong with a node, or nil: the checks the
// authority runs when a node is added and the renderer runs before it
// writes one.
func CheckNode(n Node) error {
	if err := CheckNodeName(n.Name); err != nil {
		return err
	}
	if _, _, err := ParseAddr(n.Addr); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	for k, v := range n.Labels {
		if err := CheckLabel(k, v); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

// CheckDir says what is wrong with a directory that ssh_config names files
// in, or nil. Quotes, backslashes and '%' are escaped when rendered; line
// breaks and other control characters cannot be, and neither can "${",
// which OpenSSH expands as an environment variable in file names.
func CheckDir(dir string) error { return checkConfigPath("directory", dir) }

// CheckAgentSocket says what is wrong with an ssh-agent socket path that
// ssh_config names (IdentityAgent), or nil: the same rules as CheckDir, as
// OpenSSH expands the same tokens in it.
func CheckAgentSocket(path string) error { return checkConfigPath("ssh-agent socket", path) }

func checkConfigPath(what, p string) error {
	switch {
	case !filepath.IsAbs(p):
		return fmt.Errorf("%s %q is not an absolute path", what, p)
	case strings.ContainsFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return fmt.Errorf("%s %q contains a control character (a line break, tab, ...), which ssh_config cannot name: pick another %s", what, p, what)
	case strings.Contains(p, "${"):
		return fmt.Errorf("%s %q contains \"${\", which ssh expands as an environment variable: pick another %s", what, p, what)
	}
	return nil
}

// isDNSName: dot-separated labels of 1-63 letters, digits, '-' or '_', not
// starting or ending with '-'; no empty label, no trailing dot.
func isDNSName(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if len(label) == 0 || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !isAlnum(c) && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

// looksNumeric reports whether the C resolver (inet_aton) would read s as
// an IPv4 address: one to four parts, each decimal, octal or 0x-hex.
func looksNumeric(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return false
	}
	for _, p := range parts {
		digits, hex := p, false
		if len(p) >= 2 && p[0] == '0' && (p[1] == 'x' || p[1] == 'X') {
			digits, hex = p[2:], true
		}
		for _, c := range []byte(digits) {
			isHexLetter := (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
			if !(c >= '0' && c <= '9') && !(hex && isHexLetter) {
				return false
			}
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

// isGraphicASCII: printable ASCII, no space.
func isGraphicASCII(s string) bool {
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// ParseLabels reads labels written k=v[,k=v] (as FormatLabels writes them
// and --labels takes them) and checks each with CheckLabel. Empty items
// are skipped; a key given twice is an error.
func ParseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		k, v, ok := strings.Cut(item, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("bad label %q: want k=v[,k=v]", item)
		}
		if _, dup := labels[k]; dup {
			return nil, fmt.Errorf("label %s is given twice", k)
		}
		if err := CheckLabel(k, v); err != nil {
			return nil, err
		}
		labels[k] = v
	}
	return labels, nil
}
