package iam

import (
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/iam/ststest"
	"github.com/midfs/midfs/wire"
)

// FuzzParseSTSRequest feeds arbitrary bytes to the parser of the signed
// request: whatever it accepts must satisfy every check, and nothing may
// panic. Seeds: the request the agent really sends, and its near misses
// (testdata/fuzz/FuzzParseSTSRequest holds the committed corpus).
func FuzzParseSTSRequest(f *testing.F) {
	good := goodReq()
	f.Add(good.Raw(f), testChallenge)
	for _, mod := range []func(*ststest.Request){
		func(r *ststest.Request) { r.Method = "GET" },
		func(r *ststest.Request) { r.Body = stsBody + "&X=1" },
		func(r *ststest.Request) { r.SignChallenge = false },
		func(r *ststest.Request) { r.Host = "sts.evil.example" },
		func(r *ststest.Request) { r.Host = "sts-fips.cn-north-1.amazonaws.com.cn" },
	} {
		r := goodReq()
		mod(&r)
		f.Add(r.Raw(f), testChallenge)
	}
	f.Fuzz(func(t *testing.T, raw []byte, challenge string) {
		got, refusal := ParseSTSRequest(raw, challenge)
		if refusal != nil {
			if got != nil || refusal.Reason == "" {
				t.Fatalf("refusal %v with result %v", refusal, got)
			}
			return
		}
		if !allowedSTSHost(got.host) {
			t.Fatalf("accepted host %q", got.host)
		}
		if string(got.body) != stsBody {
			t.Fatalf("accepted body %q", got.body)
		}
		if v := got.header.Values(wire.ChallengeHeader); len(v) != 1 || v[0] != challenge {
			t.Fatalf("accepted challenge header %q for %q", v, challenge)
		}
		if !strings.Contains(strings.ToLower(got.header.Get("Authorization")), strings.ToLower(wire.ChallengeHeader)) {
			t.Fatalf("accepted authorization %q", got.header.Get("Authorization"))
		}
	})
}
