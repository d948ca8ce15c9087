package auth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/auth/seal"
	"github.com/midfs/midfs/auth/store"
	"github.com/midfs/midfs/auth/store/postgres"
	"github.com/midfs/midfs/auth/store/sqlite"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// Server is a running authority.
type Server struct {
	cfg     Config
	log     *slog.Logger
	st      store.Store
	cluster string
	metrics *metrics
	inv     *inventory
	dbw     *dbWatch // the database connection; the API waits for it
	// seal, if set, seals the CA keys in the state; sealPath is its file.
	seal     *seal.Key
	sealPath string
	locks    *lockSet
	trail    *trail // the audit trail's writers (events.go)

	https     *http.Server
	httpsLn   net.Listener
	adminSrv  *http.Server
	advertise string

	lastDropWarn atomic.Int64 // unix ns

	stopping chan struct{} // closed by Close: background work ends

	// The CAs in use (cas.go), swapped whole by loadCAs under caMu;
	// rotations moves them on (rotate.go).
	caset     atomic.Pointer[caSet]
	caMu      sync.Mutex
	listening net.Addr // the HTTPS API's address, for its certificate
	rotations rotator

	closeOnce sync.Once
	closeErr  error
	wg        sync.WaitGroup
}

// Start opens (or on first start creates) the state in cfg.DataDir, and
// serves the HTTPS API and the admin socket. It returns once both accept
// connections; they serve until Close.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	// Before the state is opened: a bad key file changes nothing.
	sk, skPath, err := loadSealKey(cfg.CAKeySeal)
	if err != nil {
		return nil, err
	}
	if sk == nil && cfg.DB != "" {
		return nil, fmt.Errorf("--db: a shared database needs --ca-key-seal=FILE (or the systemd credential %s), so that whoever reads the database or its backups gets no CA key; make one with `openssl rand -hex 32 > FILE && chmod 600 FILE` and give every replica the same", seal.CredentialName)
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, st: st, metrics: newMetrics(cfg.Metrics), locks: &lockSet{}, stopping: make(chan struct{}), seal: sk, sealPath: skPath,
		rotations: newRotator()}
	s.trail = newTrail(&cfg)
	if err := s.loadOrInit(ctx); err != nil {
		st.Close()
		return nil, err
	}
	id, err := st.ClusterID(ctx)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("read authority state: %w", err)
	}
	s.inv = newInventory(ctx, st, id, s.log, cfg.Clock.Now, s.record)
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.inv.follow(st.Changed(store.TopicInventory), s.stopping)
	}()
	go func() {
		defer s.wg.Done()
		s.flushStays(s.stopping) // with a last write of the heartbeats' stays
	}()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.locks.follow(st.Changed(store.TopicLocks), s.stopping)
	}()
	s.dbw = newDBWatch(st, cfg.Clock, s.log, func() { s.inv.changed(); s.locks.changed() })
	s.registerDBMetric(cfg.Metrics)
	if err := s.serveHTTPS(ctx); err != nil {
		close(s.stopping)
		s.wg.Wait()
		st.Close()
		return nil, err
	}
	if err := s.serveAdmin(); err != nil {
		s.https.Close()
		close(s.stopping)
		s.wg.Wait()
		st.Close()
		return nil, err
	}
	go s.dbw.run()
	s.startTrail()
	s.startRotations()
	s.log.Info("authority started", "cluster", s.cluster, "addr", s.Addr(), "advertise", s.advertise,
		"ca_pin", s.CAPin(), "state", stateName(cfg), "admin_socket", admin.SocketPath(cfg.DataDir), "ca_keys_sealed", s.seal != nil)
	return s, nil
}

// Addr is the address the HTTPS API listens on (the real port after ":0").
func (s *Server) Addr() string { return s.httpsLn.Addr().String() }

// AdvertiseAddr is the address printed for clients.
func (s *Server) AdvertiseAddr() string { return s.advertise }

// DataDir is where the state and the admin socket are.
func (s *Server) DataDir() string { return s.cfg.DataDir }

// ClusterName is fixed at first start.
func (s *Server) ClusterName() string { return s.cluster }

// CAPin is the pin over the host CA's certificate, as --ca-pin takes it:
// during a rotation of the host CA, the pins of both, comma-separated (a
// joining agent checks every host CA the authority presents). It changes
// when a rotation of the host CA ends.
func (s *Server) CAPin() string { return strings.Join(s.caSet().pins(), ",") }

// Close stops serving and closes the state. In-flight requests get a few
// seconds to finish.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.stopRotations()
		err1 := s.https.Shutdown(ctx)
		err2 := s.adminSrv.Shutdown(ctx)
		close(s.stopping)
		s.wg.Wait()
		s.stopTrail()
		s.dbw.close()
		os.Remove(admin.SocketPath(s.cfg.DataDir))
		err3 := s.st.Close()
		s.closeErr = errors.Join(err1, err2, err3)
		s.log.Info("authority stopped", "cluster", s.cluster)
	})
	return s.closeErr
}

// openStore opens the state cfg.DB names: SQLite in the data directory by
// default, or a PostgreSQL database that replicas share. There a stored
// cluster other than an explicit --cluster-name is refused, nothing
// written: the likely cause is a --db of another cluster, in a config
// shared by replicas. The data directory is this authority's own, and
// keeps its cluster whatever --cluster-name says (loadOrInit warns).
func openStore(ctx context.Context, cfg Config) (store.Store, error) {
	opts := store.Options{Logger: cfg.Logger}
	switch {
	case cfg.DB == "":
		return sqlite.Open(cfg.DataDir, opts)
	case postgres.IsURL(cfg.DB):
		opts.Cluster = cfg.ClusterName
		return postgres.Open(ctx, cfg.DB, opts)
	}
	// Not quoted: it may hold a password.
	return nil, errors.New("bad --db: want postgres://USER@HOST:PORT/DATABASE?OPTIONS, or no --db for SQLite in --data-dir")
}

// stateName says where the state is, for the log: never a password.
func stateName(cfg Config) string {
	if cfg.DB == "" {
		return filepath.Join(cfg.DataDir, sqlite.File)
	}
	return redactURL(cfg.DB)
}

// loadOrInit reads the cluster name and CAs, making them (and the built-in
// roles) in one transaction on first start.
func (s *Server) loadOrInit(ctx context.Context) error {
	cluster, err := s.st.ClusterName(ctx)
	if errors.Is(err, store.ErrNotFound) {
		if err := s.initState(ctx); err != nil {
			return fmt.Errorf("initialise authority state: %w", err)
		}
		cluster, err = s.st.ClusterName(ctx)
	}
	if err != nil {
		return fmt.Errorf("read authority state: %w", err)
	}
	if s.cfg.ClusterName != "" && s.cfg.ClusterName != cluster {
		s.log.Warn("ignoring --cluster-name: the cluster name is fixed at first start", "cluster", cluster, "requested", s.cfg.ClusterName)
	}
	if err := identity.CheckClusterName(cluster); err != nil {
		// Fixed at first start by an older version; agents cannot render
		// known_hosts or ssh_config for it.
		s.log.Error("the stored cluster name fails the checks: agents will refuse to serve known_hosts and ssh_config", "err", err)
	}
	s.cluster = cluster
	// Every CA key is opened (loadCAs) before anything is written: a
	// wrong seal key changes nothing.
	if err := s.loadCAs(ctx); err != nil {
		return err
	}
	if err := s.sealStoredKeys(ctx); err != nil {
		return err
	}
	return s.sweepTokens(ctx)
}

// tokenGrace is how long `get tokens` keeps showing an expired token.
const tokenGrace = 7 * 24 * time.Hour

// sweepTokens drops tokens that expired more than tokenGrace ago: no join
// can use them, and one-time tokens would otherwise pile up forever.
func (s *Server) sweepTokens(ctx context.Context) error {
	cutoff := s.cfg.Clock.Now().Add(-tokenGrace)
	return s.st.Update(ctx, func(tx store.Tx) error {
		n, err := tx.RemoveExpiredTokens(ctx, cutoff)
		if err != nil {
			return err
		}
		if n > 0 {
			s.log.Info("removed long-expired join tokens", "count", n)
		}
		return nil
	})
}

func (s *Server) initState(ctx context.Context) error {
	cluster := s.cfg.ClusterName
	if cluster == "" {
		cluster = defaultClusterName()
	}
	now := s.cfg.Clock.Now()
	var cas []store.CA
	for _, kind := range []string{caUser, caHost, caDB} {
		a, keyDER, err := newAuthority(kind, cluster, now)
		if err != nil {
			return err
		}
		stored, err := s.storedKey(cluster, kind, keyDER)
		if s.seal != nil {
			clear(keyDER)
		}
		if err != nil {
			return err
		}
		cas = append(cas, store.CA{ID: newCAID(), Kind: kind, KeyDER: stored, CertDER: a.cert.Raw, Created: now})
	}
	return s.st.Update(ctx, func(tx store.Tx) error {
		made, err := tx.Init(ctx, cluster, cas, policy.BuiltinRoles())
		if err != nil || !made {
			return err // !made: made by a concurrent start; keep theirs
		}
		s.log.Info("created certificate authorities and built-in roles", "cluster", cluster)
		return nil
	})
}

// apiIdleTimeout keeps an agent's connection open between its node list
// polls (every 15 s), which then cost no TLS handshake, and closes the
// connections of clients that went away: every one held costs the
// authority a file descriptor and about 40 KB.
const apiIdleTimeout = 30 * time.Second

// apiMaxHeaderBytes bounds what a connection may make the authority hold
// before a handler runs; agents send well under 1 KiB of headers.
const apiMaxHeaderBytes = 8 << 10

// droppedConn counts a connection closed to make room under
// Config.MaxConns, and says so in the log at most once a minute.
func (s *Server) droppedConn() {
	s.metrics.droppedConn()
	now := time.Now().UnixNano()
	if last := s.lastDropWarn.Load(); now-last >= int64(time.Minute) && s.lastDropWarn.CompareAndSwap(last, now) {
		s.log.Warn("connection limit reached: closing the connections that waited longest without a request; if this is not a flood, raise --max-connections",
			"max_connections", s.cfg.MaxConns)
	}
}

// serveHTTPS listens on cfg.Listen with a server certificate issued by the
// host CA that signs and kept only in memory, and trusts client
// certificates of every user CA: both, during a rotation (see apiTLS).
func (s *Server) serveHTTPS(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w (is another authority running? pick another --listen)", s.cfg.Listen, err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	s.advertise = advertiseAddr(s.cfg.AdvertiseAddr, s.cfg.Listen, port)
	s.listening = ln.Addr()
	if err := s.loadCAs(ctx); err != nil {
		ln.Close()
		return err
	}
	// Each handshake takes the configuration of the CAs in use at that
	// moment, so that a phase change reaches the next connection.
	tlsCfg := &tls.Config{
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) { return s.caSet().tls, nil },
		MinVersion:         tls.VersionTLS12,
	}
	s.https = &http.Server{
		Handler: s.routes(),
		// Also the bound on the TLS handshake (net/http takes the
		// shortest of the read, header and write timeouts).
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       apiIdleTimeout,
		MaxHeaderBytes:    apiMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.httpsLn = tls.NewListener(LimitConnections(s.https, ln, s.cfg.MaxConns, s.droppedConn), tlsCfg)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.https.Serve(s.httpsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("HTTPS API stopped", "err", err)
		}
	}()
	return nil
}

// apiTLS is the HTTPS API's TLS configuration with a server certificate
// and the CAs trusted for client certificates.
func (s *Server) apiTLS(cert tls.Certificate, clientCAs *x509.CertPool) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clientCAs,
		MinVersion:   tls.VersionTLS12,
		Time:         s.cfg.Clock.Now,
		// A resumed TLS session carries the client certificate of the
		// handshake it resumes: a renewal must present the current bot
		// identity, never the one before, or the bot locks itself.
		SessionTicketsDisabled: true,
		// Classic X25519 (P-256 for old clients) instead of the hybrid
		// post-quantum exchange: it takes about 15% of a renewal's CPU, and
		// nothing on this channel stays secret for long (join tokens work
		// once within an hour, IAM challenges once within a minute, private
		// keys never travel).
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256},
	}
}

// serveAdmin serves the admin API (package admin) on DATA_DIR/admin.sock.
func (s *Server) serveAdmin() error {
	ln, err := admin.Listen(admin.SocketPath(s.cfg.DataDir))
	if err != nil {
		return err
	}
	s.adminSrv = admin.NewServer(s, s.log)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.adminSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin socket stopped", "err", err)
		}
	}()
	return nil
}

// serverCert names every way a client may reach this authority; clients
// that pin the host CA ask for wire.ServerName. host signs it.
func (s *Server) serverCert(host *authority, addr net.Addr) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	dns := []string{wire.ServerName, "localhost"}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if h, err := os.Hostname(); err == nil && h != "" {
		dns = append(dns, h)
	}
	if host, _, err := net.SplitHostPort(s.advertise); err == nil {
		if ip := net.ParseIP(host); ip != nil {
			ips = append(ips, ip)
		} else if host != "" {
			dns = append(dns, host)
		}
	}
	if ta, ok := addr.(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
		ips = append(ips, ta.IP)
	}
	now := s.cfg.Clock.Now()
	der, err := host.signTLS(&x509.Certificate{
		Subject:     pkix.Name{CommonName: wire.ServerName, Organization: []string{s.cluster}},
		DNSNames:    dns,
		IPAddresses: ips,
		NotBefore:   now.Add(-time.Minute),
		NotAfter:    now.Add(caValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, key.Public())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("issue HTTPS certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// Check reports whether the state is readable, for health checks.
func (s *Server) Check(ctx context.Context) error {
	if err := s.st.Ping(ctx); err != nil {
		return fmt.Errorf("authority state: %w", err)
	}
	return nil
}
