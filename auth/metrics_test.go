package auth

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricsCountJoinsRenewalsAndRefusals: what an operator's dashboard
// shows after one good join, one refused join and one renewal.
func TestMetricsCountJoinsRenewalsAndRefusals(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := startTest(t, func(c *Config) { c.Metrics = reg })
	bt := addBot(t, s, "robot", []string{"access"}, []string{"root"})
	id := join(t, s, bt.Token)
	tryJoin(t, s, bt.Token) // used: refused
	id.renew(t, s).certs(t, s)

	got := map[string]float64{}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			key := f.GetName() + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				got[key] = m.Counter.GetValue()
			case m.Histogram != nil:
				got[key] = float64(m.Histogram.GetSampleCount())
			}
		}
	}
	for key, want := range map[string]float64{
		"midfs_auth_joins_total{method=token,result=ok}":      1,
		"midfs_auth_joins_total{method=token,result=refused}": 1,
		"midfs_auth_renewals_total{result=ok}":                1,
		"midfs_auth_refusals_total{reason=token_used}":        1,
		"midfs_auth_issuance_seconds{kind=join}":              1,
		"midfs_auth_issuance_seconds{kind=renew}":             1,
		"midfs_auth_issuance_seconds{kind=certs}":             1,
	} {
		if got[key] != want {
			t.Errorf("%s = %v, want %v (all: %v)", key, got[key], want, got)
		}
	}
}
