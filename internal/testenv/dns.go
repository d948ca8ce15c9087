package testenv

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// DNS answers A queries for the names in records (no trailing dot) on a
// loopback UDP port, in the DNS wire format, until the test ends, and
// returns a Go resolver that asks only it: for tests of a name with
// several addresses, which /etc/hosts cannot give. Other names get
// NXDOMAIN; AAAA queries get no answer.
func DNS(t testing.TB, records map[string][]netip.Addr) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			if resp := dnsAnswer(buf[:n], records); resp != nil {
				pc.WriteTo(resp, from)
			}
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

// dnsAnswer builds the answer to one query, or nil for a message that is
// not a query with one question.
func dnsAnswer(q []byte, records map[string][]netip.Addr) []byte {
	if len(q) < 12 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return nil
	}
	var labels []string
	i := 12
	for i < len(q) && q[i] != 0 {
		l := int(q[i])
		if l&0xc0 != 0 || i+1+l > len(q) {
			return nil
		}
		labels = append(labels, string(q[i+1:i+1+l]))
		i += 1 + l
	}
	if i+5 > len(q) {
		return nil
	}
	question := q[12 : i+5] // name, its terminating zero, type, class
	qtype := binary.BigEndian.Uint16(q[i+1 : i+3])
	addrs, known := records[strings.ToLower(strings.Join(labels, "."))]
	var answers [][]byte
	if qtype == 1 { // A
		for _, a := range addrs {
			if a.Is4() {
				ip := a.As4()
				rr := []byte{0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4}
				answers = append(answers, append(rr, ip[:]...))
			}
		}
	}
	h := make([]byte, 12)
	copy(h[0:2], q[0:2])    // id
	flags := uint16(0x8180) // response, recursion desired and available
	flags |= binary.BigEndian.Uint16(q[2:4]) & 0x0100
	if !known {
		flags |= 3 // NXDOMAIN
	}
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint16(h[4:6], 1)
	binary.BigEndian.PutUint16(h[6:8], uint16(len(answers)))
	out := append(h, question...)
	for _, a := range answers {
		out = append(out, a...)
	}
	return out
}
