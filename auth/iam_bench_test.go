package auth

import (
	"fmt"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/iam/ststest"
	"github.com/midfs/midfs/wire"
)

// BenchmarkIAMJoinVsTokenJoin measures a whole IAM join (challenge, STS
// round trip to the loopback stand-in, identity) next to a token join on
// the same authority, and reports the ratio: what the delegated method
// costs the authority and the agent beyond issuance.
func BenchmarkIAMJoinVsTokenJoin(b *testing.B) {
	e := startIAM(b)
	var iam, tok time.Duration
	for i := 0; i < b.N; i++ {
		bt := addBot(b, e.s, fmt.Sprintf("tokbot%d", i), []string{"access"}, []string{"root"})
		start := time.Now()
		join(b, e.s, bt.Token)
		tok += time.Since(start)

		start = time.Now()
		c := newClient(b, e.s, nil, nil)
		var ch wire.IAMChallenge
		if status, msg, err := c.do("POST", wire.PathIAMChallenge, nil, &ch); status != 200 || err != nil {
			b.Fatalf("challenge: %d %s %v", status, msg, err)
		}
		r := ststest.GoodRequest(iamBot, ch.Challenge)
		_, pub := newKey(b)
		var bi wire.BotIdentity
		if status, msg, err := c.do("POST", wire.PathIAMJoin, wire.IAMJoinRequest{Token: "iam-token", Challenge: ch.Challenge, STSRequest: r.Raw(b), PublicKey: pub}, &bi); status != 200 || err != nil {
			b.Fatalf("iam join: %d %s %v", status, msg, err)
		}
		c.close()
		iam += time.Since(start)
	}
	b.ReportMetric(float64(iam.Microseconds())/float64(b.N), "iam-µs/join")
	b.ReportMetric(float64(tok.Microseconds())/float64(b.N), "token-µs/join")
	b.ReportMetric(float64(iam)/float64(tok), "iam/token")
}
