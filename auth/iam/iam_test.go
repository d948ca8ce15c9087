package iam

import (
	"bytes"
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/iam/ststest"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

const testChallenge = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"

var testCaller = ststest.Caller{AccessKeyID: "AKIATESTTESTTEST0001", SecretAccessKey: "test-secret"}

func goodReq() ststest.Request { return ststest.GoodRequest(testCaller, testChallenge) }

func TestParseSTSRequestAcceptsWhatTheAgentSigns(t *testing.T) {
	for _, host := range []string{"sts.amazonaws.com", "sts.eu-west-1.amazonaws.com", "sts-fips.us-gov-west-1.amazonaws.com", "sts.cn-northwest-1.amazonaws.com.cn"} {
		r := goodReq()
		r.Host = host
		got, refusal := ParseSTSRequest(r.Raw(t), testChallenge)
		if refusal != nil {
			t.Fatalf("%s: refused: %v", host, refusal)
		}
		if got.host != host || string(got.body) != stsBody || got.header.Get("Authorization") == "" {
			t.Errorf("%s: parsed %+v", host, got)
		}
	}
}

func TestParseSTSRequestRefusals(t *testing.T) {
	for name, tc := range map[string]struct {
		mod  func(*ststest.Request)
		raw  func([]byte) []byte
		want Reason
	}{
		"GET instead of POST":    {mod: func(r *ststest.Request) { r.Method = "GET" }, want: ReasonWrongMethod},
		"PUT":                    {mod: func(r *ststest.Request) { r.Method = "PUT" }, want: ReasonWrongMethod},
		"path":                   {mod: func(r *ststest.Request) { r.URI = "/other" }, want: ReasonWrongPath},
		"query string":           {mod: func(r *ststest.Request) { r.URI = "/?Action=AssumeRole" }, want: ReasonWrongPath},
		"extra body parameter":   {mod: func(r *ststest.Request) { r.Body = stsBody + "&DurationSeconds=900" }, want: ReasonWrongBody},
		"other action":           {mod: func(r *ststest.Request) { r.Body = "Action=AssumeRole&Version=2011-06-15" }, want: ReasonWrongBody},
		"empty body":             {mod: func(r *ststest.Request) { r.Body = "" }, want: ReasonWrongBody},
		"challenge not signed":   {mod: func(r *ststest.Request) { r.SignChallenge = false }, want: ReasonChallengeNotSigned},
		"challenge missing":      {mod: func(r *ststest.Request) { r.NoChallenge = true }, want: ReasonChallengeMismatch},
		"other challenge":        {mod: func(r *ststest.Request) { r.Challenge = "b3RoZXI" }, want: ReasonChallengeMismatch},
		"host off the allowlist": {mod: func(r *ststest.Request) { r.Host = "sts.evil.example.com" }, want: ReasonHostNotAllowed},
		"allowlisted prefix":     {mod: func(r *ststest.Request) { r.Host = "sts.amazonaws.com.evil.example" }, want: ReasonHostNotAllowed},
		"host with port":         {mod: func(r *ststest.Request) { r.Host = "sts.amazonaws.com:8443" }, want: ReasonHostNotAllowed},
		"two challenge headers": {mod: func(r *ststest.Request) {
			r.Edit = func(h *http.Request) { h.Header.Add(wire.ChallengeHeader, testChallenge) }
		}, want: ReasonChallengeMismatch},
		"no authorization": {mod: func(r *ststest.Request) {
			r.Edit = func(h *http.Request) { h.Header.Del("Authorization") }
		}, want: ReasonChallengeNotSigned},
		"pipelined second request": {raw: func(b []byte) []byte { return append(b, b...) }, want: ReasonUnparsable},
		"not HTTP":                 {raw: func([]byte) []byte { return []byte("hello\r\n\r\n") }, want: ReasonUnparsable},
		"chunked body": {raw: func(b []byte) []byte {
			head, _, _ := bytes.Cut(b, []byte("\r\n\r\n"))
			head = bytes.Replace(head, []byte("Content-Length: 43"), []byte("Transfer-Encoding: chunked"), 1)
			return append(head, []byte("\r\n\r\n2b\r\n"+stsBody+"\r\n0\r\n\r\n")...)
		}, want: ReasonWrongBody},
		"too large": {raw: func(b []byte) []byte { return append(b, make([]byte, wire.MaxBody)...) }, want: ReasonUnparsable},
	} {
		r := goodReq()
		if tc.mod != nil {
			tc.mod(&r)
		}
		raw := r.Raw(t)
		if tc.raw != nil {
			raw = tc.raw(raw)
		}
		_, refusal := ParseSTSRequest(raw, testChallenge)
		if refusal == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if refusal.Reason != tc.want {
			t.Errorf("%s: reason %s (%s), want %s", name, refusal.Reason, refusal.Detail, tc.want)
		}
	}
}

func TestAllowedSTSHost(t *testing.T) {
	for host, want := range map[string]bool{
		"sts.amazonaws.com":                    true,
		"sts.us-east-1.amazonaws.com":          true,
		"sts.ap-southeast-2.amazonaws.com":     true,
		"sts.il-central-1.amazonaws.com":       true,
		"sts.us-gov-west-1.amazonaws.com":      true,
		"sts-fips.us-east-2.amazonaws.com":     true,
		"sts-fips.us-gov-east-1.amazonaws.com": true,
		"sts.cn-north-1.amazonaws.com.cn":      true,
		"sts.cn-northwest-1.amazonaws.com.cn":  true,

		"":                                     false,
		"sts.amazonaws.com.":                   false,
		"STS.AMAZONAWS.COM":                    false,
		"sts.amazonaws.com:443":                false,
		"sts.us-east-1.amazonaws.com:443":      false,
		"iam.amazonaws.com":                    false,
		"s3.us-east-1.amazonaws.com":           false,
		"sts.evil.amazonaws.com":               false,
		"sts.us-east-1.evil.amazonaws.com":     false,
		"x.sts.us-east-1.amazonaws.com":        false,
		"sts.us-east-1.amazonaws.com.cn":       false,
		"sts.cn-north-1.amazonaws.com":         false,
		"sts-fips.cn-north-1.amazonaws.com.cn": false,
		"sts.us-east-1.amazonaws.com.evil":     false,
		"sts.amazonaws.com@evil.example":       false,
		"127.0.0.1":                            false,
		"sts.us-east-123.amazonaws.com":        false,
		"sts.us_east_1.amazonaws.com":          false,
		"sts..amazonaws.com":                   false,
	} {
		if got := allowedSTSHost(host); got != want {
			t.Errorf("allowedSTSHost(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestMatchIAMRules(t *testing.T) {
	id := CallerIdentity{Account: "111111111111", Arn: "arn:aws:sts::111111111111:assumed-role/bot/i-0abc"}
	for name, tc := range map[string]struct {
		rules []policy.AllowRule
		want  Reason // empty: admitted
	}{
		"account":                {[]policy.AllowRule{{AWSAccount: "111111111111"}}, ""},
		"account and arn":        {[]policy.AllowRule{{AWSAccount: "111111111111", AWSARN: "arn:aws:sts::111111111111:assumed-role/bot/*"}}, ""},
		"arn only":               {[]policy.AllowRule{{AWSARN: "arn:aws:sts::111111111111:*"}}, ""},
		"second rule":            {[]policy.AllowRule{{AWSAccount: "222222222222"}, {AWSAccount: "111111111111"}}, ""},
		"wrong account":          {[]policy.AllowRule{{AWSAccount: "222222222222"}}, ReasonAccountNotAllowed},
		"arn outside the glob":   {[]policy.AllowRule{{AWSAccount: "111111111111", AWSARN: "arn:aws:sts::111111111111:assumed-role/other/*"}}, ReasonARNNotAllowed},
		"arn only, no match":     {[]policy.AllowRule{{AWSARN: "arn:aws:sts::222222222222:*"}}, ReasonARNNotAllowed},
		"empty rule admits none": {[]policy.AllowRule{{}}, ReasonAccountNotAllowed},
		"no rules":               {nil, ReasonAccountNotAllowed},
	} {
		got := MatchRules(tc.rules, id)
		switch {
		case tc.want == "" && got != nil:
			t.Errorf("%s: refused: %v", name, got)
		case tc.want != "" && (got == nil || got.Reason != tc.want):
			t.Errorf("%s: got %v, want %s", name, got, tc.want)
		}
	}
}

func TestParseCallerIdentity(t *testing.T) {
	id, refusal := parseCallerIdentity([]byte(`{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"111111111111","Arn":"arn:aws:iam::111111111111:user/ci","UserId":"AIDA"},"ResponseMetadata":{"RequestId":"x"}}}`))
	if refusal != nil || id.Account != "111111111111" || id.Arn != "arn:aws:iam::111111111111:user/ci" {
		t.Fatalf("got %+v, %v", id, refusal)
	}
	for _, body := range []string{
		`<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"/>`,
		`{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Account":"111111111111"}}}`,
		`{"GetCallerIdentityResponse":{"GetCallerIdentityResult":{"Arn":"arn:aws:iam::1:user/x"}}}`,
		`{}`,
	} {
		if _, refusal := parseCallerIdentity([]byte(body)); refusal == nil || refusal.Reason != ReasonSTSBadResponse {
			t.Errorf("%s: got %v, want %s", body, refusal, ReasonSTSBadResponse)
		}
	}
}

func TestChallengesAreSingleUseAndShortLived(t *testing.T) {
	ctx := context.Background()
	now := clock.NewFake(time.Now())
	c := NewChallenges(now)
	a, b := c.Issue(), c.Issue()
	if a == b || len(a) != 64 {
		t.Fatalf("challenges %q and %q: want two different 48-byte base64 values", a, b)
	}
	if r := c.Take(ctx, a); r != nil {
		t.Fatalf("fresh challenge refused: %v", r)
	}
	if r := c.Take(ctx, a); r == nil || r.Reason != ReasonChallengeUnknown {
		t.Errorf("replayed challenge: %v, want %s", r, ReasonChallengeUnknown)
	}
	now.Advance(ChallengeTTL)
	for range 2 {
		if r := c.Take(ctx, b); r == nil || r.Reason != ReasonChallengeExpired {
			t.Errorf("challenge a minute old: %v, want %s", r, ReasonChallengeExpired)
		}
	}
	forged, _ := base64.RawURLEncoding.DecodeString(c.Issue())
	forged[15]++ // a later expiry under the same MAC
	restarted := NewChallenges(now)
	for name, ch := range map[string]string{
		"made up":                      "never-issued",
		"altered":                      base64.RawURLEncoding.EncodeToString(forged),
		"issued before a restart":      restarted.Issue(),
		"empty":                        "",
		"right length, not base64 URL": strings.Repeat("+", 64),
	} {
		if r := c.Take(ctx, ch); r == nil || r.Reason != ReasonChallengeUnknown {
			t.Errorf("%s challenge: %v, want %s", name, r, ReasonChallengeUnknown)
		}
	}
}

// TestChallengesSurviveAFloodAndReplaysStayRefused: the authority keeps
// nothing per challenge it hands out, so no number of challenges handed out
// or taken by others can push out an agent's challenge, or make a taken one
// usable again before it expires; what it keeps of taken challenges is gone
// two TTLs later.
func TestChallengesSurviveAFloodAndReplaysStayRefused(t *testing.T) {
	ctx := context.Background()
	now := clock.NewFake(time.Now())
	c := NewChallenges(now)
	mine, spent := c.Issue(), c.Issue()
	if r := c.Take(ctx, spent); r != nil {
		t.Fatal(r)
	}
	for i := range 100_000 {
		ch := c.Issue()
		if i%10 == 0 {
			c.Take(ctx, ch)
		}
	}
	if r := c.Take(ctx, mine); r != nil {
		t.Errorf("a challenge was refused after 100,000 more were handed out: %v", r)
	}
	if r := c.Take(ctx, spent); r == nil {
		t.Error("a taken challenge was accepted again after a flood")
	}
	// Replays are refused at every moment until expiry, however the
	// periods of the record of taken challenges fall.
	for issued := time.Duration(0); issued < 3*ChallengeTTL; issued += 7 * time.Second {
		ch := c.Issue()
		now.Advance(5 * time.Second)
		if r := c.Take(ctx, ch); r != nil {
			t.Fatalf("fresh challenge refused: %v", r)
		}
		for at := 5 * time.Second; at < ChallengeTTL; at += 11 * time.Second {
			now.Advance(11 * time.Second)
			if r := c.Take(ctx, ch); r == nil {
				t.Fatalf("challenge replayed %v after it was issued was accepted", at+11*time.Second)
			}
		}
		now.Advance(2 * time.Second)
	}
	now.Advance(2 * ChallengeTTL)
	c.Take(ctx, c.Issue())
	if n := len(c.taken) + len(c.takenBefore); n != 1 {
		t.Errorf("%d words of taken challenges kept two TTLs later, want the 1 just taken", n)
	}
}

func TestSTSForwarderBoundsWhatItWaitsForAndReads(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	for name, tc := range map[string]struct {
		handler http.HandlerFunc
		want    Reason
	}{
		"answer too large": {func(w http.ResponseWriter, r *http.Request) {
			w.Write(bytes.Repeat([]byte(" "), wire.MaxBody+1))
		}, ReasonSTSBadResponse},
		"XML answer": {func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`<GetCallerIdentityResponse><GetCallerIdentityResult><Account>1</Account></GetCallerIdentityResult></GetCallerIdentityResponse>`))
		}, ReasonSTSBadResponse},
		"403": {func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusForbidden)
		}, ReasonSTSDenied},
		"redirect": {func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://elsewhere.example/", http.StatusTemporaryRedirect)
		}, ReasonSTSDenied},
		"no answer": {func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body) // then the server notices the client hang up
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		}, ReasonSTSUnreachable},
	} {
		srv := httptest.NewTLSServer(tc.handler)
		f := NewForwarder(srv.URL, true)
		f.client.Timeout = 200 * time.Millisecond // stsTimeout is 10s; the behaviour is the same
		sr, refusal := ParseSTSRequest(goodReq().Raw(t), testChallenge)
		if refusal != nil {
			t.Fatal(refusal)
		}
		_, refusal = f.Send(context.Background(), sr)
		if refusal == nil || refusal.Reason != tc.want {
			t.Errorf("%s: got %v, want %s", name, refusal, tc.want)
		}
		srv.Close()
	}
	// Without test mode there is no endpoint override and certificates are checked.
	if f := NewForwarder("", false); f.endpoint != "" || f.client.Transport.(*http.Transport).TLSClientConfig.InsecureSkipVerify {
		t.Error("a production forwarder skips certificate checks or has an endpoint override")
	}
}
