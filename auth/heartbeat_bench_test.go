package auth

import (
	"testing"

	"github.com/midfs/midfs/wire"
)

// BenchmarkHeartbeat: one node heartbeating over one kept-alive TLS
// connection (the client shares the process), beside GET /v1/ca.
//
//	go test -run '^$' -bench Heartbeat ./auth/
func BenchmarkHeartbeat(b *testing.B) {
	s := startTest(b)
	node := joinNode(b, s, addNodeToken(b, s, nil), wire.NodeInfo{Name: "web", Addr: "10.0.0.1:22"})
	c := newClient(b, s, node.key, node.cert)
	defer c.close()
	hb := wire.Heartbeat{Addr: "10.0.0.1:22", IntervalSeconds: 30}
	b.Run("ca", func(b *testing.B) {
		for b.Loop() {
			if status, msg, err := c.do("GET", wire.PathCA, nil, nil); status != 200 {
				b.Fatal(status, msg, err)
			}
		}
	})
	b.Run("heartbeat", func(b *testing.B) {
		for b.Loop() {
			if status, msg, err := c.do("POST", wire.PathHeartbeat, hb, nil); status != 200 {
				b.Fatal(status, msg, err)
			}
		}
	})
}
