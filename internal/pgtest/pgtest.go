// Package pgtest starts real PostgreSQL servers for tests: initdb into a
// fresh directory, the server on a private loopback port and a socket in
// that directory, stopped and removed when the test (or, for the shared
// server, the test binary) ends. No mock and no shared machine-wide server:
// every test database is created for its test and dropped after it.
//
// Binaries come from Debian's packages (/usr/lib/postgresql/VERSION/bin,
// the newest) or from the directory of an initdb on the PATH. Without them
// a test skips, and fails under CI=true, like testenv.RequireFUSE.
//
// initdb and the server refuse to run as root; a test running as root runs
// them as the `postgres` user (the one Debian's package makes).
//
// Only _test.go files import it.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/midfs/midfs/internal/testenv"
)

// User is the login role test databases belong to: not a superuser, as an
// operator would give the authority. Its password is Server.Password.
const User = "midfs"

// Options tune a server.
type Options struct {
	// Durable keeps PostgreSQL's default fsync and synchronous commit
	// (benchmarks that compare with SQLite's durable commits); tests run
	// without them, which changes nothing they can observe.
	Durable bool
}

// Server is one running PostgreSQL server.
type Server struct {
	Dir      string // data directory; also holds the socket and log
	BinDir   string
	Port     int
	Password string // of User

	opts    Options
	uid     *syscall.Credential // nil: run as this process's user
	mu      sync.Mutex
	proc    *exec.Cmd
	exit    chan struct{} // closed when proc has exited
	dbSeq   int
	version int // server_version_num
}

// Start starts a server for t alone; it is stopped and its directory
// removed at t's Cleanup.
func Start(t testing.TB, opts ...Options) *Server {
	t.Helper()
	s, err := start(opts...)
	if errors.Is(err, errMissing) {
		if testenv.InCI() {
			t.Fatalf("%v; CI=true, so this fails instead of skipping", err)
		}
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.remove)
	return s
}

var shared struct {
	sync.Mutex
	inMain bool
	s      *Server
	err    error
}

// Main runs a package's tests (call it from TestMain: os.Exit(pgtest.Main(m)))
// and afterwards stops the server Shared started, if any.
func Main(m *testing.M) int {
	shared.Lock()
	shared.inMain = true
	shared.Unlock()
	defer func() {
		shared.Lock()
		defer shared.Unlock()
		if shared.s != nil {
			shared.s.remove()
		}
	}()
	return m.Run()
}

// Shared returns the package's server, started at its first use and
// stopped by Main. Tests that share it take a database each (NewDB) and
// must not stop it.
func Shared(t testing.TB) *Server {
	t.Helper()
	shared.Lock()
	defer shared.Unlock()
	if !shared.inMain {
		t.Fatal("pgtest.Shared needs the package's TestMain to run its tests through pgtest.Main, which stops the server")
	}
	if shared.s == nil && shared.err == nil {
		shared.s, shared.err = start()
	}
	if errors.Is(shared.err, errMissing) {
		if testenv.InCI() {
			t.Fatalf("%v; CI=true, so this fails instead of skipping", shared.err)
		}
		t.Skip(shared.err)
	}
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.s
}

var errMissing = errors.New("PostgreSQL server binaries not found")

// Missing says what keeps a server from starting here, or "" if nothing
// does; for benchmarks that measure PostgreSQL beside something else, and
// skip only their PostgreSQL part.
func Missing() string {
	if _, err := binDir(); err != nil {
		return err.Error()
	}
	if os.Geteuid() == 0 {
		if _, err := lookupUser("postgres"); err != nil {
			return "as root, initdb needs the postgres user: " + err.Error()
		}
	}
	return ""
}

// binDir finds initdb and postgres: the newest /usr/lib/postgresql/*/bin,
// else the directory of initdb on the PATH.
func binDir() (string, error) {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgVersion(dirs[i]) > pgVersion(dirs[j]) })
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
	}
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w (no initdb and postgres in /usr/lib/postgresql/*/bin or on the PATH; apt-get install postgresql)", errMissing)
}

func pgVersion(bin string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(bin)))
	return n
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

func start(opts ...Options) (*Server, error) {
	bin, err := binDir()
	if err != nil {
		return nil, err
	}
	s := &Server{BinDir: bin, Password: randomHex(16)}
	if len(opts) > 0 {
		s.opts = opts[0]
	}
	if os.Geteuid() == 0 {
		if s.uid, err = lookupUser("postgres"); err != nil {
			return nil, fmt.Errorf("%w: as root, initdb needs the postgres user: %v", errMissing, err)
		}
	}
	if s.Dir, err = os.MkdirTemp("", "midfs-pg-"); err != nil {
		return nil, err
	}
	if err := s.initdb(); err != nil {
		os.RemoveAll(s.Dir)
		return nil, err
	}
	for try := 0; ; try++ {
		if s.Port, err = freePort(); err == nil {
			err = s.run()
		}
		if err == nil {
			break
		}
		if try == 4 {
			os.RemoveAll(s.Dir)
			return nil, err
		}
	}
	if err := s.createUser(); err != nil {
		s.remove()
		return nil, err
	}
	if err := s.readVersion(); err != nil {
		s.remove()
		return nil, err
	}
	return s, nil
}

func lookupUser(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// command runs a server binary as the server's user.
func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.BinDir, name), args...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.uid}
	return cmd
}

// initdb makes the cluster: the superuser postgres reaches it over the
// socket without a password (trust), every TCP login needs one (SCRAM).
func (s *Server) initdb() error {
	if s.uid != nil {
		if err := os.Chown(s.Dir, int(s.uid.Uid), int(s.uid.Gid)); err != nil {
			return err
		}
	}
	data := filepath.Join(s.Dir, "data")
	out, err := s.command("initdb", "-D", data, "-U", "postgres", "-E", "UTF8", "--no-sync",
		"--auth-local=trust", "--auth-host=scram-sha-256").CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb: %v: %s", err, out)
	}
	return nil
}

// run starts the server in the foreground as this process's child; it
// gets SIGQUIT (immediate shutdown) if this process dies first, so a
// killed test binary leaves no server behind.
func (s *Server) run() error {
	settings := []string{
		"listen_addresses=127.0.0.1",
		"port=" + strconv.Itoa(s.Port),
		"unix_socket_directories=" + s.Dir,
		"max_connections=400",
		"log_min_messages=warning",
		"logging_collector=off",
	}
	if !s.opts.Durable {
		settings = append(settings, "fsync=off", "synchronous_commit=off", "full_page_writes=off")
	}
	args := []string{"-D", filepath.Join(s.Dir, "data")}
	for _, kv := range settings {
		args = append(args, "-c", kv)
	}
	cmd := s.command("postgres", args...)
	log, err := os.OpenFile(s.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr.Pdeathsig = syscall.SIGQUIT
	// The parent-death signal follows the thread that forked, not the
	// process: that thread stays locked to this goroutine until the
	// server has exited, so the Go runtime never ends it early.
	started, exit := make(chan error), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(exit)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	s.mu.Lock()
	s.proc, s.exit = cmd, exit
	s.mu.Unlock()
	if err := s.waitReady(exit); err != nil {
		cmd.Process.Signal(syscall.SIGQUIT)
		<-exit
		return err
	}
	return nil
}

func (s *Server) logPath() string { return filepath.Join(s.Dir, "postgres.log") }

// waitReady polls until the server accepts a connection, or it exits.
func (s *Server) waitReady(exit chan struct{}) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := pgx.Connect(ctx, s.adminURL("postgres"))
		cancel()
		if err == nil {
			c.Close(context.Background())
			return nil
		}
		select {
		case <-exit:
			return fmt.Errorf("postgres exited at start: %s", s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres did not accept connections within a minute: %v: %s", err, s.logTail())
		}
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.logPath())
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// adminURL reaches db as the superuser over the socket.
func (s *Server) adminURL(db string) string {
	q := url.Values{"host": {s.Dir}, "port": {strconv.Itoa(s.Port)}, "user": {"postgres"}, "dbname": {db}}
	return "postgres:///?" + q.Encode()
}

// Exec runs SQL as the superuser in database db.
func (s *Server) Exec(t testing.TB, db, sql string, args ...any) {
	t.Helper()
	if err := s.exec(db, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func (s *Server) exec(db, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, s.adminURL(db))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	_, err = c.Exec(ctx, sql, args...)
	return err
}

func (s *Server) readVersion() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := pgx.Connect(ctx, s.adminURL("postgres"))
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	var v string
	if err := c.QueryRow(ctx, `SHOW server_version_num`).Scan(&v); err != nil {
		return err
	}
	s.version, err = strconv.Atoi(v)
	return err
}

func (s *Server) createUser() error {
	return s.exec("postgres", fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", User, s.Password))
}

// URL is the address of database db on this server for User, over TCP
// with its password, as an operator would write it in --db.
func (s *Server) URL(db string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(User, s.Password),
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// NewDB creates an empty database owned by User, dropped at t's Cleanup,
// and returns its name.
func (s *Server) NewDB(t testing.TB) string {
	t.Helper()
	s.mu.Lock()
	s.dbSeq++
	name := fmt.Sprintf("t%d_%s", s.dbSeq, randomHex(4))
	s.mu.Unlock()
	create := "CREATE DATABASE " + name + " OWNER " + User
	if s.version >= 150000 {
		// A checkpoint (cheap without fsync) instead of copying the
		// template through the WAL: about half the time.
		create += " STRATEGY FILE_COPY"
	}
	s.Exec(t, "postgres", create)
	t.Cleanup(func() {
		if s.running() {
			s.exec("postgres", "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		}
	})
	return name
}

// NewURL is NewDB's database as a URL.
func (s *Server) NewURL(t testing.TB) string {
	t.Helper()
	return s.URL(s.NewDB(t))
}

// Dump returns what pg_dump writes for database db (plain SQL, data
// included), as a backup of it would hold.
func (s *Server) Dump(t testing.TB, db string) []byte {
	t.Helper()
	cmd := exec.Command(filepath.Join(s.BinDir, "pg_dump"), "-h", s.Dir, "-p", strconv.Itoa(s.Port), "-U", "postgres", db)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("pg_dump %s: %v: %s", db, err, stderr)
	}
	return out
}

func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.proc != nil
}

// Stop shuts the server down (fast shutdown: connections are closed) and
// returns once it has exited. Restart starts it again on the same port.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	s.stop()
}

func (s *Server) stop() {
	s.mu.Lock()
	proc, exit := s.proc, s.exit
	s.proc = nil
	s.mu.Unlock()
	if proc == nil {
		return
	}
	proc.Process.Signal(syscall.SIGINT)
	select {
	case <-exit:
	case <-time.After(30 * time.Second):
		proc.Process.Signal(syscall.SIGQUIT)
		<-exit
	}
}

// Restart starts a stopped server again, with its data, on its port.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if s.running() {
		t.Fatal("pgtest: Restart of a running server")
	}
	if err := s.run(); err != nil {
		t.Fatal(err)
	}
}

// CPU is the processor time the server's processes (the postmaster and
// the backends it runs now) have used: for benchmarks that count what the
// database costs beside what the test process does.
func (s *Server) CPU() time.Duration {
	s.mu.Lock()
	proc := s.proc
	s.mu.Unlock()
	if proc == nil {
		return 0
	}
	root := proc.Process.Pid
	entries, _ := os.ReadDir("/proc")
	var ticks int64
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime stime: fields after the
		// command, which may hold spaces, closed by the last ')'.
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if pid != root && ppid != root {
			continue
		}
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += ut + st
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}

// remove stops the server and removes its directory.
func (s *Server) remove() {
	s.stop()
	os.RemoveAll(s.Dir)
}
