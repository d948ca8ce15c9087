package auth

import (
	"strings"
	"testing"
)

// A 404 names the path it did not find quoted: a decoded line break in the
// path never reaches the error text.
func TestNotFoundDoesNotEchoLineBreaks(t *testing.T) {
	s := startTest(t)
	c := newClient(t, s, nil, nil)
	defer c.close()
	status, msg, err := c.do("GET", "/v1/nope%0D%0AX-Injected:%20yes", nil, nil)
	if err != nil || status != 404 || strings.ContainsAny(msg, "\r\n") || !strings.Contains(msg, `\r\n`) {
		t.Errorf("API 404: %d %q %v", status, msg, err)
	}
	status, msg = adminRaw(t, s, "GET", "/v1/nope%0Aforged%20line", nil)
	if status != 404 || strings.Contains(msg, "\n") || !strings.Contains(msg, `\n`) {
		t.Errorf("admin 404: %d %q", status, msg)
	}
}
