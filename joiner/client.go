package joiner

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// apiClient speaks the authority's HTTPS API. One client presents one
// client certificate (or none): after a renewal a new client is made, so
// that no kept-alive connection goes on presenting the previous identity.
type apiClient struct {
	addr string
	hc   *http.Client
}

// newAPIClient trusts only roots and asks for wire.ServerName. key and
// cert, when set, are the client certificate.
func newAPIClient(addr string, roots *x509.CertPool, key crypto.Signer, cert *x509.Certificate) *apiClient {
	conf := &tls.Config{
		ServerName: wire.ServerName,
		RootCAs:    roots,
		MinVersion: tls.VersionTLS12,
	}
	if key != nil && cert != nil {
		conf.Certificates = []tls.Certificate{{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}}
	}
	tr := &http.Transport{
		TLSClientConfig:       conf,
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: requestTimeout,
		IdleConnTimeout:       90 * time.Second,
		MaxIdleConnsPerHost:   2,
	}
	return &apiClient{addr: addr, hc: &http.Client{Transport: tr}}
}

// close drops kept-alive connections.
func (c *apiClient) close() {
	if c != nil {
		c.hc.CloseIdleConnections()
	}
}

// call sends in (as JSON, unless nil) and decodes the answer into out.
// Errors: *retryable for the network and 5xx/429; ErrPinMismatch when the
// server's certificate is not from the pinned CA; ErrRefused for any other
// 4xx, with the authority's one-line reason.
func (c *apiClient) call(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+c.addr+path, body)
	if err != nil {
		return fmt.Errorf("bad auth server address %q: %v", c.addr, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return c.transportError(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxBody+1))
	if err != nil {
		return &retryable{fmt.Errorf("reading the answer of the authority at %s: %v", c.addr, err)}
	}
	if len(b) > wire.MaxBody {
		return fmt.Errorf("the authority at %s answered %s with more than %d bytes", c.addr, path, wire.MaxBody)
	}
	if resp.StatusCode/100 != 2 {
		return c.statusError(resp.StatusCode, b)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the authority at %s answered %s with bad JSON: %v", c.addr, path, err)
	}
	return nil
}

func (c *apiClient) transportError(err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostname x509.HostnameError
	var verify *tls.CertificateVerificationError
	if errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &hostname) || errors.As(err, &verify) {
		return &kindError{kind: ErrPinMismatch, cause: err, msg: fmt.Sprintf(
			"the authority at %s presents a server certificate its pinned host CA did not sign (%v); check the address, or the CA changed", c.addr, unwrapURL(err))}
	}
	return &retryable{fmt.Errorf("cannot reach the authority at %s: %v", c.addr, unwrapURL(err))}
}

func (c *apiClient) statusError(code int, body []byte) error {
	reason := strings.TrimSpace(string(body))
	var e wire.Error
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		reason = e.Error
	}
	reason = strings.ReplaceAll(reason, "\n", " ")
	if len(reason) > 300 {
		reason = reason[:300] + "..."
	}
	if reason == "" {
		reason = http.StatusText(code)
	}
	if code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout {
		return &retryable{fmt.Errorf("the authority at %s answered %d: %s", c.addr, code, reason)}
	}
	return &kindError{kind: ErrRefused, msg: reason}
}

// unwrapURL drops net/http's `Get "https://...":` prefix: the message
// already names the authority.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// ListNodes asks the authority at addr which nodes the identity of key and
// cert may reach (`midfs ls`, with the mount's own output identity).
// hostCAs vouch for the authority. Errors are of the kinds in errors.go
// where they apply; network errors are not retried.
func ListNodes(ctx context.Context, addr string, key crypto.Signer, cert *x509.Certificate, hostCAs []*x509.Certificate) ([]identity.Node, error) {
	api := newAPIClient(addr, certPool(hostCAs), key, cert)
	defer api.close()
	nodes, err := api.nodes(ctx)
	if isRetryable(err) {
		return nil, &kindError{kind: ErrUnreachable, cause: err, msg: err.Error()}
	}
	return nodes, err
}

// nodes fetches the nodes the client's identity may reach, sorted by name
// so that two fetches compare equal when nothing changed.
func (c *apiClient) nodes(ctx context.Context) ([]identity.Node, error) {
	var list wire.NodeList
	if err := c.call(ctx, http.MethodGet, wire.PathNodes, nil, &list); err != nil {
		return nil, err
	}
	slices.SortFunc(list.Nodes, func(a, b identity.Node) int { return strings.Compare(a.Name, b.Name) })
	return list.Nodes, nil
}
