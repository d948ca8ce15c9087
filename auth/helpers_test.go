package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MIDFS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startTest starts an authority on loopback with its state in a temp dir.
func startTest(t testing.TB, mod ...func(*Config)) *Server {
	t.Helper()
	cfg := Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", ClusterName: "test.example.com", Logger: testLogger(t)}
	for _, m := range mod {
		m(&cfg)
	}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// client is a bare API client: one identity (or none), fresh connections.
type client struct {
	addr string
	hc   *http.Client
}

// newClient trusts the server's host CA and presents key+cert if given.
func newClient(t testing.TB, s *Server, key crypto.Signer, certDER []byte) *client {
	return newClientAt(t, s.Addr(), s.signer(caHost).cert, key, certDER)
}

func newClientAt(t testing.TB, addr string, hostCA *x509.Certificate, key crypto.Signer, certDER []byte) *client {
	pool := x509.NewCertPool()
	pool.AddCert(hostCA)
	// The authority picks X25519 (server.go): offering only it spares the
	// test client the post-quantum key share it would make and the server
	// would not use, CPU that benchmarks would count against the authority.
	conf := &tls.Config{ServerName: wire.ServerName, RootCAs: pool, CurvePreferences: []tls.CurveID{tls.X25519}}
	if key != nil {
		conf.Certificates = []tls.Certificate{{Certificate: [][]byte{certDER}, PrivateKey: key}}
	}
	return &client{addr: addr, hc: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: conf, MaxIdleConnsPerHost: 64}}}
}

// do sends in as JSON (or raw if []byte) and decodes a 200 answer into out.
// It returns the status and, for errors, the wire.Error text.
func (c *client) do(method, path string, in, out any) (int, string, error) {
	var body io.Reader
	if b, ok := in.([]byte); ok {
		body = bytes.NewReader(b)
	} else if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "https://"+c.addr+path, body)
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		var e wire.Error
		json.Unmarshal(data, &e)
		return resp.StatusCode, e.Error, nil
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, "", err
		}
	}
	return 200, "", nil
}

func (c *client) close() { c.hc.CloseIdleConnections() }

func newKey(t testing.TB) (crypto.Signer, []byte) {
	t.Helper()
	k, err := identity.GenerateKey(identity.ECDSA)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return k, der
}

// botID is a bot identity as a test holds it.
type botID struct {
	key  crypto.Signer
	pub  []byte
	cert []byte
	gen  uint64
}

// join redeems token with a new key; it fails the test on refusal.
func join(t testing.TB, s *Server, token string) *botID {
	t.Helper()
	id, status, msg := tryJoin(t, s, token)
	if status != 200 {
		t.Fatalf("join: %d %s", status, msg)
	}
	return id
}

func tryJoin(t testing.TB, s *Server, token string) (*botID, int, string) {
	t.Helper()
	key, pub := newKey(t)
	return tryJoinKey(t, s, token, key, pub)
}

func tryJoinKey(t testing.TB, s *Server, token string, key crypto.Signer, pub []byte) (*botID, int, string) {
	t.Helper()
	c := newClient(t, s, nil, nil)
	defer c.close()
	var bi wire.BotIdentity
	status, msg, err := c.do("POST", wire.PathJoin, wire.JoinRequest{Token: token, PublicKey: pub}, &bi)
	if err != nil {
		t.Fatalf("join: %v", err)
	}
	return &botID{key: key, pub: pub, cert: bi.TLSCert, gen: bi.Generation}, status, msg
}

// renew trades id for the next identity.
func (id *botID) tryRenew(t testing.TB, s *Server) (*botID, int, string) {
	t.Helper()
	key, pub := newKey(t)
	return id.tryRenewKey(t, s, key, pub)
}

func (id *botID) tryRenewKey(t testing.TB, s *Server, key crypto.Signer, pub []byte) (*botID, int, string) {
	t.Helper()
	c := newClient(t, s, id.key, id.cert)
	defer c.close()
	var bi wire.BotIdentity
	status, msg, err := c.do("POST", wire.PathRenew, wire.RenewRequest{PublicKey: pub}, &bi)
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	return &botID{key: key, pub: pub, cert: bi.TLSCert, gen: bi.Generation}, status, msg
}

func (id *botID) renew(t testing.TB, s *Server) *botID {
	t.Helper()
	next, status, msg := id.tryRenew(t, s)
	if status != 200 {
		t.Fatalf("renew: %d %s", status, msg)
	}
	return next
}

// certs asks for an output identity.
func (id *botID) tryCerts(t testing.TB, s *Server, ttl time.Duration) (*wire.Certs, crypto.Signer, int, string) {
	t.Helper()
	key, pub := newKey(t)
	c := newClient(t, s, id.key, id.cert)
	defer c.close()
	var out wire.Certs
	status, msg, err := c.do("POST", wire.PathCerts, wire.CertsRequest{PublicKey: pub, TTLSeconds: int64(ttl / time.Second)}, &out)
	if err != nil {
		t.Fatalf("certs: %v", err)
	}
	return &out, key, status, msg
}

func (id *botID) certs(t testing.TB, s *Server) (*wire.Certs, crypto.Signer) {
	t.Helper()
	out, key, status, msg := id.tryCerts(t, s, 0)
	if status != 200 {
		t.Fatalf("certs: %d %s", status, msg)
	}
	return out, key
}

// nodesAs lists nodes with the given client identity.
func nodesAs(t testing.TB, s *Server, key crypto.Signer, cert []byte) ([]identity.Node, int, string) {
	t.Helper()
	c := newClient(t, s, key, cert)
	defer c.close()
	var list wire.NodeList
	status, msg, err := c.do("GET", wire.PathNodes, nil, &list)
	if err != nil {
		t.Fatalf("nodes: %v", err)
	}
	return list.Nodes, status, msg
}

func addBot(t testing.TB, s *Server, name string, roles, logins []string) *admin.BotToken {
	t.Helper()
	bt, err := s.AddBot(context.Background(), admin.BotSpec{Name: name, Roles: roles, Logins: logins})
	if err != nil {
		t.Fatalf("AddBot: %v", err)
	}
	return bt
}

func mustParseCert(t testing.TB, der []byte) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
