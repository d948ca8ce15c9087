package joiner

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// parsePins reads "sha256:HEX[,sha256:HEX...]" into lowercase pins.
func parsePins(s string) ([]string, error) {
	var pins []string
	for _, p := range strings.Split(s, ",") {
		p = strings.ToLower(strings.TrimSpace(p))
		h, ok := strings.CutPrefix(p, "sha256:")
		if b, err := hex.DecodeString(h); !ok || err != nil || len(b) != 32 {
			return nil, &kindError{kind: ErrConfig, msg: fmt.Sprintf("bad CA pin %q: want sha256: and 64 hex digits, as `midfs status` prints it", p)}
		}
		pins = append(pins, p)
	}
	return pins, nil
}

// checkPins requires every CA to match one of the pins, as Teleport does:
// a server that adds a CA of its own must not slip it in beside a good one.
func checkPins(addr string, pins []string, cas []*x509.Certificate) error {
	if len(cas) == 0 {
		return &kindError{kind: ErrPinMismatch, msg: fmt.Sprintf("CA pin mismatch: the authority at %s presents no host CA", addr)}
	}
	for _, ca := range cas {
		got := identity.SPKIPin(ca)
		match := 0
		for _, p := range pins {
			match |= subtle.ConstantTimeCompare([]byte(got), []byte(p))
		}
		if match != 1 {
			return &kindError{kind: ErrPinMismatch, msg: fmt.Sprintf(
				"CA pin mismatch: the authority at %s presents %s, expected %s; check --ca-pin against `midfs status` on the authority",
				addr, got, strings.Join(pins, ","))}
		}
	}
	return nil
}

// pinsVouch says whether the pins given vouch for a stored bot identity's
// host CAs: they match them, or they are the pins that vouched for the
// first host CAs of its chain, which the authority replaced since over
// connections those vouched for (a rotation of the host CA). A pin given
// anew (another authority?) must match.
func pinsVouch(pins []string, b *bot) bool {
	if b.pinnedBy != "" && b.pinnedBy == strings.Join(pins, ",") {
		return true
	}
	return checkPins("", pins, b.hostCAs) == nil
}

// fetchCAs asks the current replica of the authority for its host CAs over
// a TLS connection that verifies nothing: the answer is only trusted after
// checkPins. Nothing secret travels on this connection.
func fetchCAs(ctx context.Context, auth *authorities) ([]*x509.Certificate, error) {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			ServerName:         wire.ServerName,
			InsecureSkipVerify: true, // the CAs are checked against the pin below, before anything is sent
			MinVersion:         tls.VersionTLS12,
		},
		Proxy:               http.ProxyFromEnvironment,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	defer tr.CloseIdleConnections()
	api := &apiClient{auth: auth, hc: &http.Client{Transport: tr}}
	addr := auth.current(ctx)
	var resp wire.CAResponse
	if err := api.call(ctx, http.MethodGet, wire.PathCA, nil, &resp); err != nil {
		return nil, err
	}
	var cas []*x509.Certificate
	for _, der := range resp.HostCAs {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, &kindError{kind: ErrPinMismatch, msg: fmt.Sprintf("the authority at %s sent a host CA that does not parse: %v", addr, err)}
		}
		cas = append(cas, c)
	}
	return cas, nil
}

// certPool trusts exactly the given CAs.
func certPool(cas []*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range cas {
		p.AddCert(c)
	}
	return p
}
