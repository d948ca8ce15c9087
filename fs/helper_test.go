package fs

// The tests serve the filesystem from a separate process (this test binary
// re-executed in "serve" mode), so that what they measure and check is what
// a real reader sees, and so no test can deadlock by touching a mount served
// by its own process. Extra readers (other processes, other uids) are the
// test binary again in "reader" mode.

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/internal/testenv"
)

const roleEnv = "MIDFS_FSTEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "serve":
		os.Exit(serveMain())
	case "reader":
		os.Exit(readerMain())
	}
	tmpMode := tempDirMode()
	code := m.Run()
	runBenchCleanup()
	if now := tempDirMode(); now != tmpMode {
		fmt.Printf("fs: the tests changed the mode of %s from %v to %v\n", os.TempDir(), tmpMode, now)
		code = 1
	}
	os.Exit(code)
}

// testCA signs test identities the way the authority would.
type testCA struct {
	key    *ecdsa.PrivateKey
	cert   *x509.Certificate
	signer ssh.Signer
	ca     identity.CA
}

func newTestCA() (*testCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test", Organization: []string{"test.example"}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	signer, err := ssh.NewSignerFromSigner(key)
	if err != nil {
		return nil, err
	}
	return &testCA{key: key, cert: cert, signer: signer, ca: identity.CA{TLS: cert, SSH: signer.PublicKey()}}, nil
}

var serial int64 = 100

// issue makes a fresh identity: new key, SSH and TLS certificates for it.
func (c *testCA) issue() (*identity.Identity, error) {
	key, err := identity.GenerateKey(identity.ECDSA)
	if err != nil {
		return nil, err
	}
	serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "bot-robot", Organization: []string{"access"}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		return nil, err
	}
	tlsCert, _ := x509.ParseCertificate(der)
	pub, err := ssh.NewPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	cert := &ssh.Certificate{
		Key: pub, Serial: uint64(serial), CertType: ssh.UserCert, KeyId: "bot-robot",
		ValidPrincipals: []string{"root"},
		ValidAfter:      uint64(time.Now().Add(-time.Minute).Unix()),
		ValidBefore:     uint64(time.Now().Add(time.Hour).Unix()),
	}
	if err := cert.SignCert(rand.Reader, c.signer); err != nil {
		return nil, err
	}
	return &identity.Identity{
		Key: key, SSHCert: cert, TLSCert: tlsCert, ClusterName: "test.example",
		CAs: identity.CAs{User: []identity.CA{c.ca}, Host: []identity.CA{c.ca}, Database: []identity.CA{{TLS: c.cert}}},
	}, nil
}

// serveConfig is what the test passes to the serving process.
type serveConfig struct {
	Dir     string
	UID     uint32
	GID     uint32
	Readers []Reader
	Xattrs  map[string]string
	Nodes   []identity.Node
	// ManyNodes adds that many made-up nodes (node-00000...) to Nodes: a
	// list too long to pass in the environment.
	ManyNodes int
	Debug     bool
	Quiet     bool // log at info level: no line per secret open
	// AttrTimeout, if set, replaces the kernel attribute timeout.
	AttrTimeout time.Duration
	// NoResend makes the kernel look as if it lacked FUSE_NOTIFY_RESEND.
	NoResend bool
	// StallRead makes reads of that file wait forever.
	StallRead string
	// FakeClock serves on a clock that moves only by the advance command.
	FakeClock bool
	// AgentSocket and NoKeyFiles are passed on as Options.
	AgentSocket string
	NoKeyFiles  bool
}

// serveMain mounts and then obeys one command per line on stdin:
//
//	publish              a new identity (new key and certificates)
//	nodes NAME=ADDR ...  the same identity with another node list
//	opens                print the OnOpen counts as JSON
//	advance DURATION     move the fake clock (FakeClock) forward
//	quit                 unmount and exit
func serveMain() int {
	var cfg serveConfig
	if err := json.Unmarshal([]byte(os.Getenv("MIDFS_FSTEST_CONFIG")), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "bad config:", err)
		return 2
	}
	if path := os.Getenv("MIDFS_FSTEST_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer pprof.StopCPUProfile()
		}
	}
	if cfg.AttrTimeout > 0 {
		attrTimeout = cfg.AttrTimeout
	}
	for i := range cfg.ManyNodes {
		cfg.Nodes = append(cfg.Nodes, identity.Node{Name: fmt.Sprintf("node-%05d", i),
			Addr: fmt.Sprintf("10.%d.%d.%d:22", i>>16&255, i>>8&255, i&255), Labels: map[string]string{"env": "prod"}})
	}
	level := slog.LevelDebug
	if cfg.Quiet {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ca, err := newTestCA()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	id, err := ca.issue()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var mu sync.Mutex
	opens := map[string]int{}
	var fake *clock.Fake
	var clk clock.Clock // nil: the real one
	if cfg.FakeClock {
		fake = clock.NewFake(time.Now())
		clk = fake
	}
	opts := Options{
		Dir: cfg.Dir, UID: cfg.UID, GID: cfg.GID, Readers: cfg.Readers, Xattrs: cfg.Xattrs, Logger: log, Debug: cfg.Debug, Clock: clk,
		AgentSocket: cfg.AgentSocket, NoKeyFiles: cfg.NoKeyFiles,
		OnOpen: func(file, result string) {
			mu.Lock()
			opens[file+" "+result]++
			mu.Unlock()
		},
	}
	if cfg.NoResend {
		noResend = true
	}
	if cfg.StallRead != "" {
		stallReads(cfg.StallRead)
	}
	if path := os.Getenv(storeEnv); path != "" {
		opts.Keep, opts.Drop = keepIn(path)
	}
	var srv *Server
	if names := os.Getenv(takeoverEnv); names != "" {
		srv, err = takeOver(opts, names)
	} else {
		srv, err = Mount(opts, &Snapshot{Identity: id, Nodes: cfg.Nodes})
	}
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "publish":
			if id, err = ca.issue(); err != nil {
				fmt.Println("error", err)
				continue
			}
			srv.Publish(&Snapshot{Identity: id, Nodes: cfg.Nodes})
			fmt.Println("ok")
		case "nodes":
			cfg.Nodes = nil
			for f := range strings.FieldsSeq(arg) {
				name, addr, _ := strings.Cut(f, "=")
				cfg.Nodes = append(cfg.Nodes, identity.Node{Name: name, Addr: addr})
			}
			srv.Publish(&Snapshot{Identity: id, Nodes: cfg.Nodes})
			fmt.Println("ok")
		case "advance":
			d, err := time.ParseDuration(arg)
			if err != nil || fake == nil {
				fmt.Println("error advance needs FakeClock and a duration:", arg, err)
				continue
			}
			fake.Advance(d)
			fmt.Println("ok")
		case "released": // waits until the kernel has released every handle
			deadline := time.Now().Add(10 * time.Second)
			for srv.pins.handles() > 0 && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			if n := srv.pins.handles(); n > 0 {
				fmt.Println("error", n, "handles still open after 10s")
				continue
			}
			fmt.Println("ok")
		case "done": // waits for Done, for as long as the test lets it
			<-srv.Done()
			fmt.Println("done")
		case "handover": // hands the mount to a new serving process, which answers
			if err := handOver(srv); err != nil {
				fmt.Println("error", err)
				continue
			}
			return 0
		case "opens":
			mu.Lock()
			b, _ := json.Marshal(opens)
			mu.Unlock()
			fmt.Println(string(b))
		case "quit":
			if err := srv.Unmount(); err != nil {
				fmt.Println("error", err)
				return 1
			}
			<-srv.Done()
			fmt.Println("bye")
			return 0
		default:
			fmt.Println("error unknown command", cmd)
		}
	}
	_ = srv.Unmount()
	return 0
}

// readerMain optionally drops to MIDFS_FSTEST_CRED (uid:gid[:g1,g2]) and then
// obeys one command per line, answering one line each:
//
//	open NAME    hold NAME open         -> ok | err ERRNO
//	read NAME    read the held handle   -> data HEX | err ERRNO
//	close NAME                          -> ok
//	cat NAME     open, read, close      -> data HEX | err ERRNO
//	access NAME  access(2) R_OK         -> ok | err ERRNO
//	pair         cat key, 30 ms, cat key-cert.pub and tlscert -> pair HEX HEX HEX
func readerMain() int {
	if cred := os.Getenv("MIDFS_FSTEST_CRED"); cred != "" {
		if err := dropPrivileges(cred); err != nil {
			fmt.Println("error", err)
			return 2
		}
	}
	dir := os.Getenv("MIDFS_FSTEST_DIR")
	held := map[string]int{}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, name, _ := strings.Cut(in.Text(), " ")
		path := filepath.Join(dir, name)
		switch cmd {
		case "open":
			fd, err := unix.Open(path, unix.O_RDONLY, 0)
			if err != nil {
				fmt.Println("err", errName(err))
				continue
			}
			held[name] = fd
			fmt.Println("ok")
		case "read":
			b, err := readAllFd(held[name])
			reply(b, err)
		case "close":
			unix.Close(held[name])
			delete(held, name)
			fmt.Println("ok")
		case "access":
			if err := unix.Access(path, unix.R_OK); err != nil {
				fmt.Println("err", errName(err))
				continue
			}
			fmt.Println("ok")
		case "pair":
			// What ssh does: key, then (a moment later) the certificate.
			k, err1 := catFile(filepath.Join(dir, "key"))
			time.Sleep(30 * time.Millisecond)
			c, err2 := catFile(filepath.Join(dir, "key-cert.pub"))
			x, err3 := catFile(filepath.Join(dir, "tlscert"))
			if err1 != nil || err2 != nil || err3 != nil {
				fmt.Println("err", err1, err2, err3)
				continue
			}
			fmt.Println("pair", hex.EncodeToString(k), hex.EncodeToString(c), hex.EncodeToString(x))
		case "cat":
			fd, err := unix.Open(path, unix.O_RDONLY, 0)
			if err != nil {
				fmt.Println("err", errName(err))
				continue
			}
			b, err := readAllFd(fd)
			unix.Close(fd)
			reply(b, err)
		default:
			fmt.Println("error unknown command", cmd)
		}
	}
	return 0
}

func catFile(path string) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return readAllFd(fd)
}

func reply(b []byte, err error) {
	if err != nil {
		fmt.Println("err", errName(err))
		return
	}
	fmt.Println("data", hex.EncodeToString(b))
}

// readAllFd reads from offset 0 to EOF with pread, so a held handle can be
// read again.
func readAllFd(fd int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Pread(fd, buf, int64(len(out)))
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		out = append(out, buf[:n]...)
	}
}

func errName(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	return err.Error()
}

func dropPrivileges(cred string) error {
	parts := strings.Split(cred, ":")
	uid, _ := strconv.Atoi(parts[0])
	gid, _ := strconv.Atoi(parts[1])
	var groups []int
	if len(parts) > 2 && parts[2] != "" {
		for g := range strings.SplitSeq(parts[2], ",") {
			v, _ := strconv.Atoi(g)
			groups = append(groups, v)
		}
	}
	if err := syscall.Setgroups(groups); err != nil {
		return err
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return err
	}
	return syscall.Setresuid(uid, uid, uid)
}

// server is a serving process as seen from a test.
type server struct {
	t      testing.TB
	dir    string
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	stderr *testenv.LogBuffer
}

// startServer mounts a tree in a fresh directory from a child process and
// unmounts it when the test ends.
func startServer(t testing.TB, cfg serveConfig) *server {
	t.Helper()
	return startServerWith(t, cfg, nil, nil)
}

// startServerWith starts a serving process with more environment and
// descriptors (fds 3 and up).
func startServerWith(t testing.TB, cfg serveConfig, env []string, files []*os.File) *server {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = filepath.Join(t.TempDir(), "mnt")
		if err := os.Mkdir(cfg.Dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// TempDir makes 0700 directories; readers of other uids must
		// reach the mount. Open up only what lies strictly below the
		// system's temp dir, never that dir itself.
		for d := filepath.Dir(cfg.Dir); strings.HasPrefix(d, os.TempDir()+"/"); d = filepath.Dir(d) {
			os.Chmod(d, 0o755)
		}
	}
	b, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(append(os.Environ(), roleEnv+"=serve", "MIDFS_FSTEST_CONFIG="+string(b)), env...)
	cmd.ExtraFiles = files
	s := &server{t: t, dir: cfg.Dir, cmd: cmd, stderr: &testenv.LogBuffer{}}
	cmd.Stderr = s.stderr
	// Pipes of our own rather than exec's: a successor the server starts
	// (handover) inherits them and goes on answering on them after the
	// server exits, which exec's pipes would not outlive.
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin, cmd.Stdout = inR, outW
	s.in, s.out = inW, bufio.NewReader(outR)
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.stop(); outR.Close() })
	if line := s.line(); line != "ready" {
		t.Fatalf("server did not mount: %s\n%s", line, s.stderr)
	}
	return s
}

func (s *server) line() string {
	l, err := s.out.ReadString('\n')
	if err != nil {
		return "error " + err.Error()
	}
	return strings.TrimSuffix(l, "\n")
}

// do sends one command and returns the answer line.
func (s *server) do(cmd string) string {
	s.t.Helper()
	fmt.Fprintln(s.in, cmd)
	return s.line()
}

func (s *server) publish() {
	s.t.Helper()
	if r := s.do("publish"); r != "ok" {
		s.t.Fatalf("publish: %s", r)
	}
}

func (s *server) stop() {
	if s.cmd.ProcessState != nil {
		CleanStale(s.dir) // killed: do not leave its dead mount behind
		return
	}
	fmt.Fprintln(s.in, "quit")
	done := make(chan error, 1)
	go func() {
		// Until whoever serves now (this process or a successor it handed
		// over to) has answered and exited.
		for l := ""; l != "bye"; {
			line, err := s.out.ReadString('\n')
			if err != nil {
				break
			}
			l = strings.TrimSpace(line)
		}
		done <- s.cmd.Wait()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-done
		CleanStale(s.dir)
		s.t.Errorf("server did not exit after quit:\n%s", s.stderr)
	}
	// The server's own failures (a panic in a handler, a race found by
	// -race) are the test's failures.
	if log := s.stderr.String(); strings.Contains(log, "DATA RACE") || strings.Contains(log, "panic") {
		s.t.Errorf("server reported a failure:\n%s", log)
	}
}

// kill ends the server with SIGKILL, leaving a dead mount behind.
func (s *server) kill() {
	s.cmd.Process.Kill()
	s.cmd.Wait()
}

func (s *server) path(name string) string { return filepath.Join(s.dir, name) }

// reader is a reading process as seen from a test.
type reader struct {
	t   testing.TB
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// startReader starts a reader process on dir; cred is "" (root) or
// "uid:gid[:g1,g2]".
func startReader(t testing.TB, dir, cred string) *reader {
	t.Helper()
	return startReaderWith(t, dir, cred, nil)
}

// startReaderWith is startReader with process attributes (namespaces).
func startReaderWith(t testing.TB, dir, cred string, attr *syscall.SysProcAttr) *reader {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), roleEnv+"=reader", "MIDFS_FSTEST_DIR="+dir, "MIDFS_FSTEST_CRED="+cred)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = attr
	r := &reader{t: t, cmd: cmd}
	var err error
	if r.in, err = cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	r.out = bufio.NewReader(stdout)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.in.Close()
		r.cmd.Wait()
	})
	return r
}

func (r *reader) do(cmd string) string {
	r.t.Helper()
	fmt.Fprintln(r.in, cmd)
	l, err := r.out.ReadString('\n')
	if err != nil {
		r.t.Fatalf("reader %q: %v", cmd, err)
	}
	return strings.TrimSuffix(l, "\n")
}

// data runs a command that answers "data HEX" and returns the bytes.
func (r *reader) data(cmd string) []byte {
	r.t.Helper()
	l := r.do(cmd)
	h, ok := strings.CutPrefix(l, "data ")
	if !ok {
		r.t.Fatalf("reader %q: %s", cmd, l)
	}
	b, _ := hex.DecodeString(h)
	return b
}

// privateKeyFP, sshCertFP and tlsCertFP return the SHA256 fingerprint of
// the public key in a private key file, an SSH certificate and a TLS
// certificate, so a test can tell whether they belong together.
func privateKeyFP(t testing.TB, pemBytes []byte) string {
	t.Helper()
	k, err := identity.ParsePrivateKeyPEM(pemBytes)
	if err != nil {
		t.Fatalf("key file does not parse: %v\n%q", err, pemBytes)
	}
	return pubFP(t, k.Public())
}

func sshCertFP(t testing.TB, line []byte) string {
	t.Helper()
	pk, _, _, _, err := ssh.ParseAuthorizedKey(line)
	if err != nil {
		t.Fatalf("key-cert.pub does not parse: %v\n%q", err, line)
	}
	cert, ok := pk.(*ssh.Certificate)
	if !ok {
		t.Fatalf("key-cert.pub holds a %T", pk)
	}
	return ssh.FingerprintSHA256(cert.Key)
}

func tlsCertFP(t testing.TB, pemBytes []byte) string {
	t.Helper()
	certs, err := identity.ParseCertsPEM(pemBytes)
	if err != nil || len(certs) != 1 {
		t.Fatalf("tlscert does not parse: %v\n%q", err, pemBytes)
	}
	return pubFP(t, certs[0].PublicKey.(crypto.PublicKey))
}

func pubFP(t testing.TB, k crypto.PublicKey) string {
	t.Helper()
	p, err := ssh.NewPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return ssh.FingerprintSHA256(p)
}

// tempDirMode is the mode of the system's temp dir, which tests must leave
// as they found it (1777: other users and apt need it).
func tempDirMode() os.FileMode {
	fi, err := os.Stat(os.TempDir())
	if err != nil {
		return 0
	}
	return fi.Mode()
}
