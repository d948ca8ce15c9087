package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/service/diag"
)

// serveWired serves d as --diag-addr does: with the connection limit.
func serveWired(t *testing.T, d *diag.Server) string {
	t.Helper()
	if err := serveDiag(d, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return "http://" + d.Addr()
}

func TestDiagAddrInUseIsAUsageError(t *testing.T) {
	first := diag.New()
	base := serveWired(t, first)
	err := serveDiag(diag.New(), strings.TrimPrefix(base, "http://"))
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(err.Error(), "--diag-addr") {
		t.Fatalf("want a usage error naming --diag-addr, got %v", err)
	}
}

// TestDiagIdleConnectionsAreBounded: any local user can connect to
// --diag-addr; a flood of idle connections holds at most diagMaxConns of
// the process's descriptors, and the server still answers.
func TestDiagIdleConnectionsAreBounded(t *testing.T) {
	base := serveWired(t, diag.New())
	addr := strings.TrimPrefix(base, "http://")
	const idleHTTP, idleTCP = 200, 50
	before := openFDs(t)
	for range idleHTTP {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	for range idleTCP {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	// This process holds the test's end of every connection, and the
	// server's end of at most diagMaxConns (one more while Accept waits).
	if n, most := openFDs(t), before+idleHTTP+idleTCP+diagMaxConns+1; n > most {
		t.Errorf("%d files open after %d idle connections, want at most %d", n, idleHTTP+idleTCP, most)
	}
	if code, _ := testenv.HTTPGet(t, base+"/livez"); code != 200 {
		t.Errorf("/livez among idle connections: %d", code)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}
