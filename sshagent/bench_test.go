package sshagent

import (
	"crypto/rand"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/midfs/midfs/identity"
)

// BenchmarkSignThroughTheSocket is the agent's share of a login: connect,
// list, sign and hang up, as ssh does once per login, against what ssh does
// with a key file instead (parse the PEM it read, sign). The login itself
// is e2e's BenchmarkSSHLoginAgent.
//
//	us/login      connect + list + sign + close through the socket
//	file-us/login parse the key file's PEM + sign
//	x-file        the ratio of the two
func BenchmarkSignThroughTheSocket(b *testing.B) {
	key, cert := issue(b, time.Now(), time.Hour)
	s, err := Listen(Options{Path: filepath.Join(b.TempDir(), "agent.sock"), Mode: 0o600, Allow: anyone,
		Logger: slog.New(slog.DiscardHandler)}, key, cert)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	pemBytes, err := identity.MarshalPrivateKeyPEM(key)
	if err != nil {
		b.Fatal(err)
	}
	data := make([]byte, 150) // about what a userauth request signs
	rand.Read(data)

	viaSocket := func() {
		c, err := net.Dial("unix", s.opts.Path)
		if err != nil {
			b.Fatal(err)
		}
		client := agent.NewClient(c)
		if keys, err := client.List(); err != nil || len(keys) != 2 {
			b.Fatalf("list: %d keys, %v", len(keys), err)
		}
		if _, err := client.Sign(cert, data); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	viaFile := func() {
		signer, err := ssh.ParsePrivateKey(pemBytes)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := signer.Sign(rand.Reader, data); err != nil {
			b.Fatal(err)
		}
	}
	var sockTime, fileTime time.Duration
	n := 0
	for b.Loop() {
		t0 := time.Now()
		viaSocket()
		t1 := time.Now()
		viaFile()
		sockTime += t1.Sub(t0)
		fileTime += time.Since(t1)
		n++
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(float64(sockTime.Microseconds())/float64(n), "us/login")
	b.ReportMetric(float64(fileTime.Microseconds())/float64(n), "file-us/login")
	b.ReportMetric(float64(sockTime)/float64(fileTime), "x-file")
}
