package service

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/service/diag"
)

// listenNotify is systemd's side: a unixgram socket that collects datagrams.
func listenNotify(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", addr)
	return conn
}

func readDatagram(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify datagram: %v", err)
	}
	return string(buf[:n])
}

func TestNotifyLifecycle(t *testing.T) {
	for name, addr := range map[string]string{
		"path":     filepath.Join(t.TempDir(), "notify.sock"),
		"abstract": fmt.Sprintf("@midfs-test-%d-%d", os.Getpid(), time.Now().UnixNano()),
	} {
		t.Run(name, func(t *testing.T) {
			conn := listenNotify(t, addr)
			svc := New()
			if os.Getenv("NOTIFY_SOCKET") != "" {
				t.Error("NOTIFY_SOCKET must be unset so child processes do not notify")
			}
			svc.Ready("mounted at /opt/machine-id")
			if got := readDatagram(t, conn); got != "READY=1\nSTATUS=mounted at /opt/machine-id\n" {
				t.Fatalf("ready sent %q", got)
			}
			svc.Ready("again") // once only
			svc.Status("identity expires at 12:00\nsoon")
			if got := readDatagram(t, conn); got != "STATUS=identity expires at 12:00 soon\n" {
				t.Fatalf("status sent %q", got)
			}
			svc.Status("identity expires at 12:00\nsoon") // unchanged: not sent again
			svc.Close()
			if got := readDatagram(t, conn); got != "STOPPING=1\n" {
				t.Fatalf("close sent %q", got)
			}
		})
	}
}

func TestNotifyWithoutSocketIsSilent(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := newNotifier()
	if n.enabled() {
		t.Fatal("no socket, yet enabled")
	}
	if err := n.notify("READY=1"); err != nil {
		t.Fatal(err)
	}
}

func TestNotifyBadSocketSaysSo(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "relative/path")
	if err := newNotifier().notify("READY=1"); err == nil || !strings.Contains(err.Error(), "NOTIFY_SOCKET") {
		t.Fatalf("want an error naming NOTIFY_SOCKET, got %v", err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "gone.sock"))
	if err := newNotifier().notify("READY=1"); err == nil {
		t.Fatal("a socket nobody listens on must be an error")
	}
}

func TestAgentStatusLine(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local)
	st := diag.AgentStatus{Expires: now.Add(time.Hour)}
	if got := agentStatusLine(st, now); got != "identity expires at 2026-01-02 04:04:05" {
		t.Errorf("got %q", got)
	}
	st.LastError = "authority unreachable"
	if got := agentStatusLine(st, now.Add(2*time.Hour)); got != "identity expired at 2026-01-02 04:04:05; renewal failing: authority unreachable" {
		t.Errorf("got %q", got)
	}
}
