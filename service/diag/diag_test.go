package diag

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/midfs/midfs/internal/testenv"
)

// fakeAgent stands in for the joiner's status, changed by the test.
type fakeAgent struct {
	mu sync.Mutex
	st AgentStatus
}

func (f *fakeAgent) status() AgentStatus { f.mu.Lock(); defer f.mu.Unlock(); return f.st }
func (f *fakeAgent) set(fn func(*AgentStatus)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(&f.st)
}

func serveDiag(t *testing.T, d *Server) string {
	t.Helper()
	if err := d.Serve("127.0.0.1:0", nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return "http://" + d.Addr()
}

func readyzOf(t *testing.T, base string) (int, Readyz) {
	t.Helper()
	code, body := testenv.HTTPGet(t, base+"/readyz")
	var r Readyz
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz is not JSON: %v: %s", err, body)
	}
	return code, r
}

func TestReadyzFollowsTheAgent(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	d := New()
	d.now = func() time.Time { return now }
	agent := &fakeAgent{}
	base := serveDiag(t, d)

	if code, _ := readyzOf(t, base); code != http.StatusServiceUnavailable {
		t.Fatalf("no component registered yet: want 503, got %d", code)
	}
	d.WatchAgent(agent.status)
	code, r := readyzOf(t, base)
	if code != 503 || r.Status != Initializing || r.Services["identity"].Status != Initializing {
		t.Fatalf("before the first identity: %d %+v", code, r)
	}

	agent.set(func(s *AgentStatus) {
		s.Expires, s.LastRenewal, s.LastAttempt, s.Renewals = now.Add(time.Hour), now, now, 1
	})
	if code, r = readyzOf(t, base); code != 200 || r.Status != Healthy {
		t.Fatalf("joined: %d %+v", code, r)
	}

	agent.set(func(s *AgentStatus) { s.LastError, s.Renewals, s.Failures = "authority unreachable", 2, 1 })
	code, r = readyzOf(t, base)
	if code != 503 || r.Services["renewal"].Status != Unhealthy || !strings.Contains(r.Services["renewal"].Reason, "authority unreachable") {
		t.Fatalf("renewals failing: %d %+v", code, r)
	}
	if r.Services["identity"].Status != Healthy {
		t.Fatalf("the identity is still valid: %+v", r.Services["identity"])
	}

	now = now.Add(2 * time.Hour)
	code, r = readyzOf(t, base)
	if code != 503 || r.Services["identity"].Status != Unhealthy || !strings.Contains(r.Services["identity"].Reason, "expired") {
		t.Fatalf("expired: %d %+v", code, r)
	}
	if c, body := testenv.HTTPGet(t, base+"/readyz/identity"); c != 503 || !strings.Contains(body, "expired") {
		t.Fatalf("/readyz/identity: %d %s", c, body)
	}

	agent.set(func(s *AgentStatus) {
		s.Expires, s.LastRenewal, s.LastError, s.AuthServer = now.Add(time.Hour), now, "", "10.0.0.2:3025"
	})
	if code, r = readyzOf(t, base); code != 200 || !strings.Contains(r.Services["renewal"].Reason, "10.0.0.2:3025") {
		t.Fatalf("recovered, through another replica: %d %+v", code, r)
	}
	if c, body := testenv.HTTPGet(t, base+"/readyz/nope"); c != 404 || !strings.Contains(body, "identity") {
		t.Fatalf("/readyz/nope: %d %s", c, body)
	}
	if c, body := testenv.HTTPGet(t, base+"/livez"); c != 200 || strings.TrimSpace(body) != "OK" {
		t.Fatalf("/livez: %d %q", c, body)
	}
}

func TestMetricsParseAndCount(t *testing.T) {
	d := New()
	agent := &fakeAgent{}
	exp := time.Unix(1_800_000_000, 0)
	agent.set(func(s *AgentStatus) { s.Expires, s.Renewals, s.Failures = exp, 7, 2 })
	d.WatchAgent(agent.status)
	d.OnOpen("key", "ok")
	d.OnOpen("key", "ok")
	d.OnOpen("identity", "denied")
	d.OnSign("ok")
	d.OnSign("expired")
	d.OnSign("ok")
	base := serveDiag(t, d)

	_, body := testenv.HTTPGet(t, base+"/metrics")
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	value := func(name string, labels map[string]string) float64 {
		t.Helper()
		f, ok := fams[name]
		if !ok {
			t.Fatalf("%s missing from /metrics", name)
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			if m.Counter != nil {
				return m.Counter.GetValue()
			}
			return m.Gauge.GetValue()
		}
		t.Fatalf("%s%v missing", name, labels)
		return 0
	}
	if v := value("midfs_agent_renewals_total", nil); v != 7 {
		t.Errorf("renewals_total %v", v)
	}
	if v := value("midfs_agent_renewals_failed_total", nil); v != 2 {
		t.Errorf("renewals_failed_total %v", v)
	}
	if v := value("midfs_agent_identity_expiry_timestamp_seconds", nil); v != 1.8e9 {
		t.Errorf("expiry %v", v)
	}
	if v := value("midfs_agent_opens_total", map[string]string{"file": "key", "result": "ok"}); v != 2 {
		t.Errorf("opens key ok %v", v)
	}
	if v := value("midfs_agent_opens_total", map[string]string{"file": "identity", "result": "denied"}); v != 1 {
		t.Errorf("opens identity denied %v", v)
	}
	if v := value("midfs_agent_ssh_signatures_total", map[string]string{"result": "ok"}); v != 2 {
		t.Errorf("ssh signatures ok %v", v)
	}
	if v := value("midfs_agent_ssh_signatures_total", map[string]string{"result": "expired"}); v != 1 {
		t.Errorf("ssh signatures expired %v", v)
	}
	if _, ok := fams["process_resident_memory_bytes"]; !ok {
		t.Error("process metrics missing")
	}
}
