package auth

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the authority's Prometheus series; all methods are no-ops
// without a registerer.
type metrics struct {
	joins    *prometheus.CounterVec
	renewals *prometheus.CounterVec
	refusals *prometheus.CounterVec
	lists    *prometheus.CounterVec
	locks    *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	dropped  prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	m := &metrics{
		joins: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "midfs_auth_joins_total", Help: "Bot joins, by join method and result (ok or refused).",
		}, []string{"method", "result"}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "midfs_auth_renewals_total", Help: "Bot identity renewals, by result (ok or refused).",
		}, []string{"result"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "midfs_auth_refusals_total", Help: "Refused API requests, by reason.",
		}, []string{"reason"}),
		lists: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "midfs_auth_node_lists_total", Help: "Node list answers, by result (full, or not_modified for an unchanged list).",
		}, []string{"result"}),
		locks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "midfs_auth_lock_lists_total", Help: "Lock list answers, by result (full, or not_modified for an unchanged list).",
		}, []string{"result"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "midfs_auth_issuance_seconds", Help: "Time to answer a successful join, renewal or certs request.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}, []string{"kind"}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "midfs_auth_connections_dropped_total", Help: "Connections without a request in progress closed to stay within --max-connections.",
		}),
	}
	reg.MustRegister(m.joins, m.renewals, m.refusals, m.lists, m.locks, m.latency, m.dropped)
	return m
}

func (m *metrics) join(method, result string) {
	if m != nil {
		m.joins.WithLabelValues(method, result).Inc()
	}
}

func (m *metrics) renewal(result string) {
	if m != nil {
		m.renewals.WithLabelValues(result).Inc()
	}
}

func (m *metrics) refused(reason string) {
	if m != nil {
		m.refusals.WithLabelValues(reason).Inc()
	}
}

func (m *metrics) nodeList(result string) {
	if m != nil {
		m.lists.WithLabelValues(result).Inc()
	}
}

func (m *metrics) lockList(result string) {
	if m != nil {
		m.locks.WithLabelValues(result).Inc()
	}
}

func (m *metrics) issued(kind string, d time.Duration) {
	if m != nil {
		m.latency.WithLabelValues(kind).Observe(d.Seconds())
	}
}

func (m *metrics) droppedConn() {
	if m != nil {
		m.dropped.Inc()
	}
}
