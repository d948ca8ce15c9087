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
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

// apiClient speaks the authority's HTTPS API, to whichever of its
// replicas is current (see authorities). One client presents one client
// certificate (or none): after a renewal a new client is made, so that no
// kept-alive connection goes on presenting the previous identity.
type apiClient struct {
	auth *authorities
	hc   *http.Client
}

// newAPIClient trusts only roots and asks for wire.ServerName. key and
// cert, when set, are the client certificate.
func newAPIClient(auth *authorities, roots *x509.CertPool, key crypto.Signer, cert *x509.Certificate) *apiClient {
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
		// Longer than DefaultNodesInterval, so that a poll reuses the
		// connection of the one before, and shorter than the authority's
		// idle timeout (30 s), so that the agent drops an idle connection
		// before the authority closes it, never sending a request on one
		// the authority is closing.
		IdleConnTimeout:     20 * time.Second,
		MaxIdleConnsPerHost: 2,
	}
	return &apiClient{auth: auth, hc: &http.Client{Transport: tr}}
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
	resp, err := c.send(ctx, method, path, in, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	addr := resp.Request.URL.Host
	b, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxBody+1))
	if err != nil {
		err = &retryable{fmt.Errorf("reading the answer of the authority at %s: %v", addr, err)}
		c.auth.fail(addr, err)
		return err
	}
	if len(b) > wire.MaxBody {
		return fmt.Errorf("the authority at %s answered %s with more than %d bytes", addr, path, wire.MaxBody)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("the authority at %s answered %s with bad JSON: %v", addr, path, err)
	}
	return nil
}

// send makes one request with in (as JSON, unless nil) and the extra
// header to the current replica, and returns a 2xx or 304 answer for the
// caller to read and close; any other answer becomes an error of the kinds
// call returns. A failure that another replica may not share makes the
// next replica current.
func (c *apiClient) send(ctx context.Context, method, path string, in any, header http.Header) (*http.Response, error) {
	addr := c.auth.current(ctx)
	resp, err := c.sendTo(ctx, addr, method, path, in, header)
	var pin *kindError
	switch {
	case isRetryable(err):
		c.auth.fail(addr, err)
	case errors.As(err, &pin) && pin.kind == ErrPinMismatch && c.auth.count(ctx) > 1:
		// Not a replica of the pinned authority, but others are listed:
		// nothing was sent to it, so try them.
		c.auth.fail(addr, err)
		err = &retryable{err}
	case ctx.Err() == nil:
		c.auth.ok(addr)
	}
	return resp, err
}

func (c *apiClient) sendTo(ctx context.Context, addr, method, path string, in any, header http.Header) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "https://"+addr+path, body)
	if err != nil {
		return nil, fmt.Errorf("bad auth server address %q: %v", addr, err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, transportError(addr, err)
	}
	if resp.StatusCode/100 == 2 || resp.StatusCode == http.StatusNotModified {
		return resp, nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxBody))
	if err != nil {
		return nil, &retryable{fmt.Errorf("reading the answer of the authority at %s: %v", addr, err)}
	}
	return nil, statusError(addr, resp.StatusCode, b)
}

func transportError(addr string, err error) error {
	if errors.Is(err, context.Canceled) {
		return err
	}
	var unknown x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostname x509.HostnameError
	var verify *tls.CertificateVerificationError
	if errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &hostname) || errors.As(err, &verify) {
		return &kindError{kind: ErrPinMismatch, cause: err, msg: fmt.Sprintf(
			"the authority at %s presents a server certificate its pinned host CA did not sign (%v); check the address, or the CA changed", addr, unwrapURL(err))}
	}
	return &retryable{fmt.Errorf("cannot reach the authority at %s: %v", addr, unwrapURL(err))}
}

func statusError(addr string, code int, body []byte) error {
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
		return &retryable{fmt.Errorf("the authority at %s answered %d: %s", addr, code, reason)}
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

// ListNodes asks the authority at authServer (one or more HOST:PORT, as
// --auth-server takes them) which nodes the identity of key and cert may
// reach (`midfs ls`, with the mount's own output identity). hostCAs vouch
// for the authority. Errors are of the kinds in errors.go where they
// apply; a network error moves on to the next replica, once each.
func ListNodes(ctx context.Context, authServer string, key crypto.Signer, cert *x509.Certificate, hostCAs []*x509.Certificate) ([]identity.Node, error) {
	servers, err := ParseAuthServers(authServer)
	if err != nil {
		return nil, err
	}
	auth := newAuthorities(servers, nil, slog.New(slog.DiscardHandler), clock.Real())
	api := newAPIClient(auth, certPool(hostCAs), key, cert)
	defer api.close()
	for tries := auth.count(ctx); ; tries-- {
		nodes, _, _, err := api.nodes(ctx, "")
		if !isRetryable(err) {
			return nodes, err
		}
		if tries <= 1 || ctx.Err() != nil {
			return nil, &kindError{kind: ErrUnreachable, cause: err, msg: err.Error()}
		}
	}
}

// Limits of one node list: far above any inventory midfs is made for
// (100,000 nodes are about 8 MB), and low enough that a broken authority
// cannot make the agent hold unbounded memory.
const (
	maxNodeBytes     = 64 << 10  // one node, as JSON
	maxNodes         = 1 << 20   // nodes in one list
	maxNodeListBytes = 256 << 20 // the whole answer
	// minListRate is the slowest transfer of a node list that is still
	// waited for: requestTimeout plus one second per minListRate bytes.
	minListRate = 64 << 10
)

// nodes fetches the nodes the client's identity may reach, sorted by name
// so that two fetches compare equal when nothing changed, the CAs the
// answer carries (nil from an authority before CA rotation) and the list's
// ETag. With etag set it asks only for a changed list, and returns
// ErrNotModified if the list is still the one etag names.
func (c *apiClient) nodes(ctx context.Context, etag string) ([]identity.Node, *wire.CASet, string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// requestTimeout to the answer's headers, then more for a long list.
	deadline := time.AfterFunc(requestTimeout, cancel)
	defer deadline.Stop()
	var header http.Header
	if etag != "" {
		header = http.Header{"If-None-Match": {etag}}
	}
	resp, err := c.send(ctx, http.MethodGet, wire.PathNodes, nil, header)
	if err != nil {
		return nil, nil, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotModified {
		return nil, nil, etag, ErrNotModified
	}
	addr := resp.Request.URL.Host
	if resp.ContentLength > maxNodeListBytes {
		return nil, nil, "", fmt.Errorf("the authority at %s sent a node list of %d bytes; the most this agent takes is %d", addr, resp.ContentLength, maxNodeListBytes)
	}
	if resp.ContentLength > 0 {
		deadline.Reset(requestTimeout + time.Duration(resp.ContentLength/minListRate)*time.Second)
	}
	br := &budgetReader{r: resp.Body}
	nodes, cas, err := decodeNodes(br)
	if err != nil {
		if br.broken != nil || ctx.Err() != nil {
			err = &retryable{fmt.Errorf("reading the node list from the authority at %s: %v", addr, err)}
			c.auth.fail(addr, err)
			return nil, nil, "", err
		}
		return nil, nil, "", fmt.Errorf("the authority at %s sent a node list this agent does not take: %w", addr, err)
	}
	slices.SortFunc(nodes, func(a, b identity.Node) int { return strings.Compare(a.Name, b.Name) })
	return nodes, cas, resp.Header.Get("ETag"), nil
}

// errListLimit is a node list beyond the limits above.
var errListLimit = errors.New("node list beyond this agent's limits")

// decodeNodes reads a wire.NodeList one node at a time, so that neither a
// node above maxNodeBytes nor a list above maxNodes or maxNodeListBytes is
// ever held whole; its CAs (a few KB) are held to maxNodeBytes too.
func decodeNodes(br *budgetReader) ([]identity.Node, *wire.CASet, error) {
	dec := json.NewDecoder(br)
	br.allow(maxNodeBytes)
	if err := expectDelim(dec, '{'); err != nil {
		return nil, nil, err
	}
	var nodes []identity.Node
	var cas *wire.CASet
	for dec.More() {
		br.allow(dec.InputOffset() + maxNodeBytes)
		key, err := dec.Token()
		if err != nil {
			return nil, nil, err
		}
		switch key {
		case "cas":
			if err := dec.Decode(&cas); err != nil {
				return nil, nil, err
			}
			continue
		case "nodes":
		default:
			var skip json.RawMessage // a field of a later version
			if err := dec.Decode(&skip); err != nil {
				return nil, nil, err
			}
			continue
		}
		if err := expectDelim(dec, '['); err != nil {
			return nil, nil, err
		}
		for dec.More() {
			if len(nodes) == maxNodes {
				return nil, nil, fmt.Errorf("%w: more than %d nodes", errListLimit, maxNodes)
			}
			br.allow(dec.InputOffset() + maxNodeBytes)
			var n identity.Node
			if err := dec.Decode(&n); err != nil {
				return nil, nil, err
			}
			nodes = append(nodes, n)
		}
		if err := expectDelim(dec, ']'); err != nil {
			return nil, nil, err
		}
	}
	if err := expectDelim(dec, '}'); err != nil {
		return nil, nil, err
	}
	return nodes, cas, nil
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok != want {
		return fmt.Errorf("bad node list: %v where %v belongs", tok, want)
	}
	return nil
}

// budgetReader lets its reader be read up to a limit that the decoder
// moves on node by node (and never past maxNodeListBytes): a node larger
// than maxNodeBytes runs into it before it is read whole. broken keeps a
// failure of the reader itself (the connection), as opposed to the list.
type budgetReader struct {
	r      io.Reader
	read   int64
	limit  int64
	broken error
}

func (b *budgetReader) allow(upTo int64) { b.limit = min(upTo, maxNodeListBytes) }

func (b *budgetReader) Read(p []byte) (int, error) {
	left := b.limit - b.read
	if left <= 0 {
		if b.limit == maxNodeListBytes {
			return 0, fmt.Errorf("%w: more than %d bytes", errListLimit, maxNodeListBytes)
		}
		return 0, fmt.Errorf("%w: a node of more than %d bytes", errListLimit, maxNodeBytes)
	}
	n, err := b.r.Read(p[:min(int64(len(p)), left)])
	b.read += int64(n)
	if err != nil && err != io.EOF {
		b.broken = err
	}
	return n, err
}
