package node

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/midfs/midfs/internal/atomicfile"
	"github.com/midfs/midfs/node/enforce"
)

// Files of the run directory that this package writes (node/enforce
// writes state.json and revoked.krl beside them). None holds a secret: the
// host key never leaves the process, sshd signs through agent.sock.
const (
	FileAgentSocket = "agent.sock"          // HostKeyAgent
	FileHostKey     = "host_key.pub"        // HostKey (the public half: the agent signs)
	FileHostCert    = "host_key-cert.pub"   // HostCertificate
	FileUserCAs     = "user_ca.pub"         // TrustedUserCAKeys
	DefaultRunDir   = enforce.DefaultRunDir // a tmpfs: gone at reboot, kept across restarts of the node agent
	fragmentMode    = 0o644                 // sshd reads it as root; nothing in it is secret
	runFileMode     = 0o644
	runDirMode      = 0o755
)

// checkConfigPath says what is wrong with a path that sshd_config will
// name, or nil. sshd_config splits on spaces, reads quotes and backslashes
// and expands '%' in some keywords; rather than escape for each keyword,
// only plain paths are taken.
func checkConfigPath(flag, path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("bad %s %q: give an absolute path", flag, path)
	}
	for _, c := range []byte(path) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("/._-+@,=", c) >= 0) {
			return fmt.Errorf("bad %s %q: sshd_config names it, so use only letters, digits and / . _ - + @ , =", flag, path)
		}
	}
	return nil
}

// checkWritable says, before anything is written, whether the fragment
// can be written at path: its directory exists and takes a new file, and
// path is not a directory.
func checkWritable(path string) error {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return fmt.Errorf("--sshd-config %s is a directory; give the path of the file to write, e.g. %s/midfs-node.conf", path, path)
	}
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".midfs-node-check-*")
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return fmt.Errorf("cannot write --sshd-config %s: %v in %s", path, err, dir)
	}
	f.Close()
	os.Remove(f.Name())
	return nil
}

// runDir is the directory sshd reads the node's files from.
type runDir string

func (d runDir) path(name string) string { return filepath.Join(string(d), name) }

// make creates the directory (a tmpfs under /run by default).
func (d runDir) make() error {
	if err := os.MkdirAll(string(d), runDirMode); err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	return os.Chmod(string(d), runDirMode)
}

// write replaces one file in one rename: sshd, reading it at any moment,
// sees the old content or the new, never a mix.
func (d runDir) write(name string, data []byte) error {
	if old, err := os.ReadFile(d.path(name)); err == nil && bytes.Equal(old, data) {
		return nil
	}
	return atomicfile.Write(d.path(name), data, runFileMode)
}

// fragment is the sshd_config fragment that points sshd at the run
// directory, with the lines that name each file in order: HostKeyAgent,
// HostKey, HostCertificate, TrustedUserCAKeys, then extra (enforcement).
func fragment(node, cluster string, d runDir, extra []fragmentLine) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# midfs node %s of cluster %s: written by `midfs node start` at every start; do not edit.\n", node, cluster)
	fmt.Fprintf(&b, "# Include it at the top of sshd_config: sshd keeps the first value it reads of most keywords.\n")
	for _, l := range append(baseLines(d), extra...) {
		fmt.Fprintf(&b, "%s %s\n", l.keyword, l.value)
	}
	return b.Bytes()
}

// fragmentLine is one keyword of the fragment; file, if set, is the file
// the line names, which must exist before the fragment is written.
type fragmentLine struct {
	keyword, value, file string
}

func baseLines(d runDir) []fragmentLine {
	line := func(kw, name string) fragmentLine { return fragmentLine{kw, d.path(name), d.path(name)} }
	// HostKey names the private key, which is not there: sshd, finding
	// no file, reads NAME.pub and signs through HostKeyAgent. Naming the
	// .pub itself works too, but sshd then first reads it as a private
	// key and logs, at every connection, that it is unprotected (0644) or
	// unreadable as a private key (0600).
	hostKey := fragmentLine{"HostKey", strings.TrimSuffix(d.path(FileHostKey), ".pub"), d.path(FileHostKey)}
	return []fragmentLine{
		line("HostKeyAgent", FileAgentSocket),
		hostKey,
		line("HostCertificate", FileHostCert),
		line("TrustedUserCAKeys", FileUserCAs),
	}
}

// writeFragment writes the fragment at path, once every file it names
// exists (a fragment naming a missing file would make sshd refuse every
// login, or not start), and says whether it changed.
func writeFragment(path string, content []byte, lines []fragmentLine) (bool, error) {
	for _, l := range lines {
		if l.file == "" {
			continue
		}
		if _, err := os.Stat(l.file); err != nil {
			return false, fmt.Errorf("not writing %s: %s names %s, which is missing: %v", path, l.keyword, l.file, err)
		}
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, content) {
		return false, nil
	}
	if err := atomicfile.Write(path, content, fragmentMode); err != nil {
		return false, fmt.Errorf("write --sshd-config: %w", err)
	}
	return true, nil
}
