package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// Client talks to a running authority over its admin socket. Its methods
// mirror Authority's.
type Client struct {
	hc *http.Client
}

// Dial connects to the admin socket of dataDir. Errors say what to do:
// start the authority, pick the right --data-dir, or run as root.
func Dial(dataDir string) (*Client, error) {
	path := SocketPath(dataDir)
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	switch {
	case err == nil:
		c.Close()
	case errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT):
		return nil, fmt.Errorf("no authority admin socket at %s: is `midfs auth start` running with --data-dir %s?", path, dataDir)
	case errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM):
		return nil, fmt.Errorf("permission denied on %s: the admin socket is for root; run with sudo", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("nothing listens on %s (the authority stopped?): is `midfs auth start` running with --data-dir %s?", path, dataDir)
	default:
		return nil, fmt.Errorf("admin socket %s: %w", path, err)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns: 1,
	}
	return &Client{hc: &http.Client{Transport: tr, Timeout: time.Minute}}, nil
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// call sends one admin request; body is JSON-encoded unless it is []byte.
// An error answer comes back as an error of the kind its status says (see
// KindOf), so that callers can tell "not found" from "already exists".
func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if b, ok := body.([]byte); ok {
		rd = bytes.NewReader(b)
	} else if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://midfs-admin"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		if err != nil {
			return fmt.Errorf("admin socket: %w", err)
		}
		kind := KindOfStatus(resp.StatusCode)
		var e wire.Error
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return Mark(kind, errors.New(e.Error))
		}
		return Errorf(kind, "admin socket: %s", resp.Status)
	}
	if out == nil {
		return nil
	}
	// No cap: root's own authority answers, and a listing grows with the
	// inventory (`get nodes` of 100,000 nodes is about 11 MB).
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	return nil
}

// Status describes the authority.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	return &st, c.call(ctx, "GET", "/v1/status", nil, &st)
}

// AddBot makes a bot and its join token.
func (c *Client) AddBot(ctx context.Context, spec BotSpec) (*BotToken, error) {
	var t BotToken
	return &t, c.call(ctx, "POST", "/v1/bots", spec, &t)
}

// RemoveBot deletes a bot.
func (c *Client) RemoveBot(ctx context.Context, name string) error {
	return c.call(ctx, "DELETE", "/v1/bots/"+url.PathEscape(name), nil, nil)
}

// UnlockBot clears a bot's lock.
func (c *Client) UnlockBot(ctx context.Context, name string) error {
	return c.call(ctx, "POST", "/v1/bots/"+url.PathEscape(name)+"/unlock", nil, nil)
}

// AddLock locks a bot.
func (c *Client) AddLock(ctx context.Context, spec LockSpec) (*wire.Lock, error) {
	var l wire.Lock
	return &l, c.call(ctx, "POST", "/v1/locks", spec, &l)
}

// CreateYAML stores the resources of a YAML file.
func (c *Client) CreateYAML(ctx context.Context, data []byte, force bool) ([]string, error) {
	if len(data) > policy.MaxResourceYAML { // the authority would refuse it after reading 1 MiB
		return nil, Mark(Invalid, policy.ErrResourcesTooLarge)
	}
	var done []string
	err := c.call(ctx, "POST", "/v1/resources?force="+fmt.Sprint(force), data, &done)
	return done, err
}

// Get lists resources of a kind, or the one named.
func (c *Client) Get(ctx context.Context, kind, name string) (*policy.Resources, error) {
	path := "/v1/resources/" + url.PathEscape(kind)
	if name != "" {
		path += "/" + url.PathEscape(name)
	}
	var res policy.Resources
	return &res, c.call(ctx, "GET", path, nil, &res)
}

// Remove deletes a resource.
func (c *Client) Remove(ctx context.Context, kind, name string) error {
	return c.call(ctx, "DELETE", "/v1/resources/"+url.PathEscape(kind)+"/"+url.PathEscape(name), nil, nil)
}

// AddNode adds or updates a node.
func (c *Client) AddNode(ctx context.Context, n identity.Node) error {
	return c.call(ctx, "POST", "/v1/nodes", nodeRequest{Node: n}, nil)
}

// AddNodeToken makes a one-time token that joins one node.
func (c *Client) AddNodeToken(ctx context.Context, spec NodeTokenSpec) (*NodeToken, error) {
	var t NodeToken
	return &t, c.call(ctx, "POST", "/v1/tokens/node", spec, &t)
}

// RemoveNode deletes a node.
func (c *Client) RemoveNode(ctx context.Context, name string) error {
	return c.Remove(ctx, policy.KindNode, name)
}

// Export returns a CA in the form of typ (see Export* constants).
func (c *Client) Export(ctx context.Context, typ string) (string, error) {
	var t textResponse
	err := c.call(ctx, "GET", "/v1/export/"+url.PathEscape(typ), nil, &t)
	return t.Text, err
}

// SignHost has the host CA sign a host public key (authorized_keys form).
func (c *Client) SignHost(ctx context.Context, publicKey string, hosts []string, ttl time.Duration) (string, error) {
	var t textResponse
	err := c.call(ctx, "POST", "/v1/sign/host", signHostRequest{PublicKey: publicKey, Hosts: hosts, TTL: ttl}, &t)
	return t.Text, err
}
