package auth

import (
	"context"
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
	ac := dialAdmin(t, s)
	err = ac.call(context.Background(), "GET", "/v1/nope%0Aforged%20line", nil, nil)
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `\n`) {
		t.Errorf("admin 404: %q", err)
	}
}
