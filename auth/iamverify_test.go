package auth

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/wire"
)

const testChallenge = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"

// stsReq describes a request as a client might sign it; the zero value
// plus a host and challenge is what the real agent sends.
type stsReq struct {
	method, uri, host, body string
	challenge               string
	signChallenge           bool
	noChallenge             bool
	creds                   aws.Credentials
	region                  string
	edit                    func(*http.Request) // after signing
}

var testCreds = aws.Credentials{AccessKeyID: "AKIATESTTESTTEST0001", SecretAccessKey: "test-secret"}

func goodReq() stsReq {
	return stsReq{method: "POST", uri: "/", host: "sts.us-east-1.amazonaws.com", body: stsBody,
		challenge: testChallenge, signChallenge: true, creds: testCreds, region: "us-east-1"}
}

// raw signs r with the AWS SDK's SigV4 signer and returns the HTTP/1.1 bytes.
func (r stsReq) raw(t testing.TB) []byte {
	t.Helper()
	req, err := http.NewRequest(r.method, "https://"+r.host+r.uri, strings.NewReader(r.body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if !r.noChallenge && r.signChallenge {
		req.Header.Set(wire.ChallengeHeader, r.challenge)
	}
	sum := sha256.Sum256([]byte(r.body))
	if err := v4.NewSigner().SignHTTP(context.Background(), r.creds, req, hex.EncodeToString(sum[:]), "sts", r.region, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !r.noChallenge && !r.signChallenge {
		req.Header.Set(wire.ChallengeHeader, r.challenge)
	}
	if r.edit != nil {
		r.edit(req)
	}
	var buf bytes.Buffer
	if err := req.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestParseSTSRequestAcceptsWhatTheAgentSigns(t *testing.T) {
	for _, host := range []string{"sts.amazonaws.com", "sts.eu-west-1.amazonaws.com", "sts-fips.us-gov-west-1.amazonaws.com", "sts.cn-northwest-1.amazonaws.com.cn"} {
		r := goodReq()
		r.host = host
		got, refusal := parseSTSRequest(r.raw(t), testChallenge)
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
		mod  func(*stsReq)
		raw  func([]byte) []byte
		want iamReason
	}{
		"GET instead of POST":    {mod: func(r *stsReq) { r.method = "GET" }, want: reasonWrongMethod},
		"PUT":                    {mod: func(r *stsReq) { r.method = "PUT" }, want: reasonWrongMethod},
		"path":                   {mod: func(r *stsReq) { r.uri = "/other" }, want: reasonWrongPath},
		"query string":           {mod: func(r *stsReq) { r.uri = "/?Action=AssumeRole" }, want: reasonWrongPath},
		"extra body parameter":   {mod: func(r *stsReq) { r.body = stsBody + "&DurationSeconds=900" }, want: reasonWrongBody},
		"other action":           {mod: func(r *stsReq) { r.body = "Action=AssumeRole&Version=2011-06-15" }, want: reasonWrongBody},
		"empty body":             {mod: func(r *stsReq) { r.body = "" }, want: reasonWrongBody},
		"challenge not signed":   {mod: func(r *stsReq) { r.signChallenge = false }, want: reasonChallengeNotSigned},
		"challenge missing":      {mod: func(r *stsReq) { r.noChallenge = true }, want: reasonChallengeMismatch},
		"other challenge":        {mod: func(r *stsReq) { r.challenge = "b3RoZXI" }, want: reasonChallengeMismatch},
		"host off the allowlist": {mod: func(r *stsReq) { r.host = "sts.evil.example.com" }, want: reasonHostNotAllowed},
		"allowlisted prefix":     {mod: func(r *stsReq) { r.host = "sts.amazonaws.com.evil.example" }, want: reasonHostNotAllowed},
		"host with port":         {mod: func(r *stsReq) { r.host = "sts.amazonaws.com:8443" }, want: reasonHostNotAllowed},
		"two challenge headers": {mod: func(r *stsReq) {
			r.edit = func(h *http.Request) { h.Header.Add(wire.ChallengeHeader, testChallenge) }
		}, want: reasonChallengeMismatch},
		"no authorization": {mod: func(r *stsReq) {
			r.edit = func(h *http.Request) { h.Header.Del("Authorization") }
		}, want: reasonChallengeNotSigned},
		"pipelined second request": {raw: func(b []byte) []byte { return append(b, b...) }, want: reasonUnparsable},
		"not HTTP":                 {raw: func([]byte) []byte { return []byte("hello\r\n\r\n") }, want: reasonUnparsable},
		"chunked body": {raw: func(b []byte) []byte {
			head, _, _ := bytes.Cut(b, []byte("\r\n\r\n"))
			head = bytes.Replace(head, []byte("Content-Length: 43"), []byte("Transfer-Encoding: chunked"), 1)
			return append(head, []byte("\r\n\r\n2b\r\n"+stsBody+"\r\n0\r\n\r\n")...)
		}, want: reasonWrongBody},
		"too large": {raw: func(b []byte) []byte { return append(b, make([]byte, wire.MaxBody)...) }, want: reasonUnparsable},
	} {
		r := goodReq()
		if tc.mod != nil {
			tc.mod(&r)
		}
		raw := r.raw(t)
		if tc.raw != nil {
			raw = tc.raw(raw)
		}
		_, refusal := parseSTSRequest(raw, testChallenge)
		if refusal == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if refusal.reason != tc.want {
			t.Errorf("%s: reason %s (%s), want %s", name, refusal.reason, refusal.detail, tc.want)
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
	id := callerIdentity{Account: "111111111111", Arn: "arn:aws:sts::111111111111:assumed-role/bot/i-0abc"}
	for name, tc := range map[string]struct {
		rules []policy.AllowRule
		want  iamReason // empty: admitted
	}{
		"account":                {[]policy.AllowRule{{AWSAccount: "111111111111"}}, ""},
		"account and arn":        {[]policy.AllowRule{{AWSAccount: "111111111111", AWSARN: "arn:aws:sts::111111111111:assumed-role/bot/*"}}, ""},
		"arn only":               {[]policy.AllowRule{{AWSARN: "arn:aws:sts::111111111111:*"}}, ""},
		"second rule":            {[]policy.AllowRule{{AWSAccount: "222222222222"}, {AWSAccount: "111111111111"}}, ""},
		"wrong account":          {[]policy.AllowRule{{AWSAccount: "222222222222"}}, reasonAccountNotAllowed},
		"arn outside the glob":   {[]policy.AllowRule{{AWSAccount: "111111111111", AWSARN: "arn:aws:sts::111111111111:assumed-role/other/*"}}, reasonARNNotAllowed},
		"arn only, no match":     {[]policy.AllowRule{{AWSARN: "arn:aws:sts::222222222222:*"}}, reasonARNNotAllowed},
		"empty rule admits none": {[]policy.AllowRule{{}}, reasonAccountNotAllowed},
		"no rules":               {nil, reasonAccountNotAllowed},
	} {
		got := matchIAMRules(tc.rules, id)
		switch {
		case tc.want == "" && got != nil:
			t.Errorf("%s: refused: %v", name, got)
		case tc.want != "" && (got == nil || got.reason != tc.want):
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
		if _, refusal := parseCallerIdentity([]byte(body)); refusal == nil || refusal.reason != reasonSTSBadResponse {
			t.Errorf("%s: got %v, want %s", body, refusal, reasonSTSBadResponse)
		}
	}
}

func TestChallengesAreSingleUseAndShortLived(t *testing.T) {
	clock := newFakeClock()
	c := newIAMChallenges(clock.Now)
	a, b := c.issue(), c.issue()
	if a == b || len(a) != 64 {
		t.Fatalf("challenges %q and %q: want two different 48-byte base64 values", a, b)
	}
	if r := c.take(a); r != nil {
		t.Fatalf("fresh challenge refused: %v", r)
	}
	if r := c.take(a); r == nil || r.reason != reasonChallengeUnknown {
		t.Errorf("replayed challenge: %v, want %s", r, reasonChallengeUnknown)
	}
	clock.Add(iamChallengeTTL)
	for range 2 {
		if r := c.take(b); r == nil || r.reason != reasonChallengeExpired {
			t.Errorf("challenge a minute old: %v, want %s", r, reasonChallengeExpired)
		}
	}
	forged, _ := base64.RawURLEncoding.DecodeString(c.issue())
	forged[15]++ // a later expiry under the same MAC
	restarted := newIAMChallenges(clock.Now)
	for name, ch := range map[string]string{
		"made up":                      "never-issued",
		"altered":                      base64.RawURLEncoding.EncodeToString(forged),
		"issued before a restart":      restarted.issue(),
		"empty":                        "",
		"right length, not base64 URL": strings.Repeat("+", 64),
	} {
		if r := c.take(ch); r == nil || r.reason != reasonChallengeUnknown {
			t.Errorf("%s challenge: %v, want %s", name, r, reasonChallengeUnknown)
		}
	}
}

// TestChallengesSurviveAFloodAndReplaysStayRefused: the authority keeps
// nothing per challenge it hands out, so no number of challenges handed out
// or taken by others can push out an agent's challenge, or make a taken one
// usable again before it expires; what it keeps of taken challenges is gone
// two TTLs later.
func TestChallengesSurviveAFloodAndReplaysStayRefused(t *testing.T) {
	clock := newFakeClock()
	c := newIAMChallenges(clock.Now)
	mine, spent := c.issue(), c.issue()
	if r := c.take(spent); r != nil {
		t.Fatal(r)
	}
	for i := range 100_000 {
		ch := c.issue()
		if i%10 == 0 {
			c.take(ch)
		}
	}
	if r := c.take(mine); r != nil {
		t.Errorf("a challenge was refused after 100,000 more were handed out: %v", r)
	}
	if r := c.take(spent); r == nil {
		t.Error("a taken challenge was accepted again after a flood")
	}
	// Replays are refused at every moment until expiry, however the
	// periods of the record of taken challenges fall.
	for issued := time.Duration(0); issued < 3*iamChallengeTTL; issued += 7 * time.Second {
		ch := c.issue()
		clock.Add(5 * time.Second)
		if r := c.take(ch); r != nil {
			t.Fatalf("fresh challenge refused: %v", r)
		}
		for at := 5 * time.Second; at < iamChallengeTTL; at += 11 * time.Second {
			clock.Add(11 * time.Second)
			if r := c.take(ch); r == nil {
				t.Fatalf("challenge replayed %v after it was issued was accepted", at+11*time.Second)
			}
		}
		clock.Add(2 * time.Second)
	}
	clock.Add(2 * iamChallengeTTL)
	c.take(c.issue())
	if n := len(c.taken) + len(c.takenBefore); n != 1 {
		t.Errorf("%d words of taken challenges kept two TTLs later, want the 1 just taken", n)
	}
}

func TestSTSForwarderBoundsWhatItWaitsForAndReads(t *testing.T) {
	hang := make(chan struct{})
	defer close(hang)
	for name, tc := range map[string]struct {
		handler http.HandlerFunc
		want    iamReason
	}{
		"answer too large": {func(w http.ResponseWriter, r *http.Request) {
			w.Write(bytes.Repeat([]byte(" "), wire.MaxBody+1))
		}, reasonSTSBadResponse},
		"XML answer": {func(w http.ResponseWriter, r *http.Request) {
			w.Write([]byte(`<GetCallerIdentityResponse><GetCallerIdentityResult><Account>1</Account></GetCallerIdentityResult></GetCallerIdentityResponse>`))
		}, reasonSTSBadResponse},
		"403": {func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusForbidden)
		}, reasonSTSDenied},
		"redirect": {func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://elsewhere.example/", http.StatusTemporaryRedirect)
		}, reasonSTSDenied},
		"no answer": {func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body) // then the server notices the client hang up
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		}, reasonSTSUnreachable},
	} {
		srv := httptest.NewTLSServer(tc.handler)
		f := newSTSForwarder(Config{STSEndpoint: srv.URL, InsecureTestMode: true})
		f.client.Timeout = 200 * time.Millisecond // stsTimeout is 10s; the behaviour is the same
		sr, refusal := parseSTSRequest(goodReq().raw(t), testChallenge)
		if refusal != nil {
			t.Fatal(refusal)
		}
		_, refusal = f.send(context.Background(), sr)
		if refusal == nil || refusal.reason != tc.want {
			t.Errorf("%s: got %v, want %s", name, refusal, tc.want)
		}
		srv.Close()
	}
	// Without test mode there is no endpoint override and certificates are checked.
	if f := newSTSForwarder(Config{}); f.endpoint != "" || f.client.Transport.(*http.Transport).TLSClientConfig.InsecureSkipVerify {
		t.Error("a production forwarder skips certificate checks or has an endpoint override")
	}
}
