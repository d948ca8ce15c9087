// Package ststest is a stand-in for AWS STS on loopback, for tests only. It
// answers sts:GetCallerIdentity the way AWS does: it recomputes the SigV4
// signature of each request from test credentials it knows, checks the date,
// scope, region and service, and answers 200 with the caller's Account and
// Arn in JSON, or 403 with an AWS-style error.
//
// The authority forwards signed requests to it unchanged, Host header
// included (sts.REGION.amazonaws.com), so the signature it checks is the one
// the client made for the real endpoint.
//
// Only tests import it (of auth, auth/iam, joiner and e2e).
package ststest

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/midfs/midfs/identity/clock"
)

// Caller is one set of test AWS credentials and who STS says they are.
type Caller struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string // if set, requests must carry it as a signed X-Amz-Security-Token
	Account         string // 12 digits
	Arn             string
}

// Server is a running STS stand-in. Its URL is https://127.0.0.1:PORT; its
// certificate is httptest's (Certificate, Client).
type Server struct {
	*httptest.Server

	// Clock is the clock the 15-minute freshness check uses; the real
	// clock if nil.
	Clock clock.Clock

	mu      sync.Mutex
	callers map[string]Caller
	seen    []Result
}

// Result records what the stand-in decided about one request.
type Result struct {
	Status int
	Code   string // AWS error code, empty on success
	Host   string // the Host header as received
}

// Start runs a stand-in that knows callers.
func Start(callers ...Caller) *Server {
	s := &Server{callers: map[string]Caller{}}
	for _, c := range callers {
		s.AddCaller(c)
	}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(s.serve))
	return s
}

// AddCaller makes c known (or replaces the caller with its access key).
func (s *Server) AddCaller(c Caller) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.callers[c.AccessKeyID] = c
}

// Results lists what happened to each request so far, in arrival order:
// tests use it to show a refused join never reached STS, or was refused by it.
func (s *Server) Results() []Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Result(nil), s.seen...)
}

func (s *Server) record(r Result) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, r)
}

func (s *Server) now() time.Time {
	if s.Clock != nil {
		return s.Clock.Now()
	}
	return time.Now()
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	if err != nil {
		s.fail(w, r, http.StatusBadRequest, "InvalidRequest", "cannot read body")
		return
	}
	c, code, msg := s.authenticate(r, body)
	if code != "" {
		s.fail(w, r, http.StatusForbidden, code, msg)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/" || string(body) != Body {
		s.fail(w, r, http.StatusBadRequest, "InvalidAction", "only POST / Action=GetCallerIdentity&Version=2011-06-15 is served here")
		return
	}
	s.record(Result{Status: http.StatusOK, Host: r.Host})
	resp := map[string]any{
		"GetCallerIdentityResponse": map[string]any{
			"GetCallerIdentityResult": map[string]string{
				"Account": c.Account, "Arn": c.Arn, "UserId": c.AccessKeyID,
			},
			"ResponseMetadata": map[string]string{"RequestId": "00000000-0000-0000-0000-000000000000"},
		},
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	s.record(Result{Status: status, Code: code, Host: r.Host})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"Error":     map[string]string{"Type": "Sender", "Code": code, "Message": msg},
		"RequestId": "00000000-0000-0000-0000-000000000000",
	})
}

// authenticate checks the SigV4 signature of r as AWS would. It returns the
// caller, or an AWS error code and message.
func (s *Server) authenticate(r *http.Request, body []byte) (Caller, string, string) {
	a, err := parseAuthorization(r.Header.Get("Authorization"))
	if err != nil {
		return Caller{}, "IncompleteSignature", err.Error()
	}
	s.mu.Lock()
	c, ok := s.callers[a.accessKey]
	s.mu.Unlock()
	if !ok {
		return Caller{}, "InvalidClientTokenId", "The security token included in the request is invalid."
	}
	amzDate := r.Header.Get("X-Amz-Date")
	t, err := time.Parse("20060102T150405Z", amzDate)
	if err != nil {
		return Caller{}, "IncompleteSignature", "missing or malformed X-Amz-Date"
	}
	if d := s.now().Sub(t); d > 15*time.Minute || d < -15*time.Minute {
		return Caller{}, "SignatureDoesNotMatch", "Signature expired: " + amzDate
	}
	if a.date != amzDate[:8] || a.service != "sts" || a.terminal != "aws4_request" {
		return Caller{}, "SignatureDoesNotMatch", "Credential should be scoped to a valid date, service sts and aws4_request"
	}
	if a.region != regionOf(r.Host) {
		return Caller{}, "SignatureDoesNotMatch", fmt.Sprintf("Credential should be scoped to a valid region, not '%s'", a.region)
	}
	if !slices.Contains(a.signed, "host") {
		return Caller{}, "SignatureDoesNotMatch", "host must be a signed header"
	}
	if c.SessionToken != "" && (r.Header.Get("X-Amz-Security-Token") != c.SessionToken || !slices.Contains(a.signed, "x-amz-security-token")) {
		return Caller{}, "InvalidClientTokenId", "The security token included in the request is invalid."
	}
	canonical := canonicalRequest(r, a.signed, body)
	scope := strings.Join([]string{a.date, a.region, a.service, a.terminal}, "/")
	toSign := "AWS4-HMAC-SHA256\n" + amzDate + "\n" + scope + "\n" + hexSHA256([]byte(canonical))
	key := []byte("AWS4" + c.SecretAccessKey)
	for _, part := range []string{a.date, a.region, a.service, a.terminal} {
		key = hmacSHA256(key, part)
	}
	want := hex.EncodeToString(hmacSHA256(key, toSign))
	if subtle.ConstantTimeCompare([]byte(want), []byte(a.signature)) != 1 {
		return Caller{}, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided."
	}
	return c, "", ""
}

// authorization is a parsed "AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/
// SERVICE/aws4_request, SignedHeaders=a;b, Signature=HEX" header.
type authorization struct {
	accessKey, date, region, service, terminal string
	signed                                     []string
	signature                                  string
}

func parseAuthorization(h string) (authorization, error) {
	var a authorization
	rest, ok := strings.CutPrefix(h, "AWS4-HMAC-SHA256 ")
	if !ok {
		return a, fmt.Errorf("authorization header must use AWS4-HMAC-SHA256")
	}
	fields := map[string]string{}
	for _, part := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		fields[k] = v
	}
	cred := strings.Split(fields["Credential"], "/")
	if len(cred) != 5 || fields["SignedHeaders"] == "" || fields["Signature"] == "" {
		return a, fmt.Errorf("authorization header needs Credential, SignedHeaders and Signature")
	}
	a.accessKey, a.date, a.region, a.service, a.terminal = cred[0], cred[1], cred[2], cred[3], cred[4]
	a.signed = strings.Split(fields["SignedHeaders"], ";")
	a.signature = fields["Signature"]
	if !sort.StringsAreSorted(a.signed) {
		return a, fmt.Errorf("SignedHeaders must be sorted")
	}
	return a, nil
}

// canonicalRequest is SigV4's canonical request for a POST with no query
// string: method, URI, query, canonical headers, signed headers, payload hash.
func canonicalRequest(r *http.Request, signed []string, body []byte) string {
	var b strings.Builder
	b.WriteString(r.Method + "\n")
	b.WriteString(r.URL.EscapedPath() + "\n")
	b.WriteString(r.URL.RawQuery + "\n")
	for _, name := range signed {
		b.WriteString(name + ":" + canonicalValue(r, name) + "\n")
	}
	b.WriteString("\n" + strings.Join(signed, ";") + "\n")
	b.WriteString(hexSHA256(body))
	return b.String()
}

// canonicalValue is a header's values, trimmed, inner runs of spaces
// collapsed, joined by commas. Go's server moves Host and Content-Length out
// of the header map, so they come from the request.
func canonicalValue(r *http.Request, name string) string {
	switch name {
	case "host":
		return r.Host
	case "content-length":
		if v := r.Header.Get("Content-Length"); v != "" {
			return v
		}
		return strconv.FormatInt(r.ContentLength, 10)
	}
	vals := r.Header.Values(name)
	out := make([]string, len(vals))
	for i, v := range vals {
		out[i] = strings.Join(strings.Fields(v), " ")
	}
	return strings.Join(out, ",")
}

// regionOf is the region an STS host serves: sts.amazonaws.com is the
// global endpoint, signed for us-east-1.
func regionOf(host string) string {
	h := strings.TrimSuffix(strings.TrimSuffix(host, ".cn"), ".amazonaws.com")
	if h == "sts" {
		return "us-east-1"
	}
	if r, ok := strings.CutPrefix(h, "sts-fips."); ok {
		return r
	}
	if r, ok := strings.CutPrefix(h, "sts."); ok {
		return r
	}
	return ""
}

func hexSHA256(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func hmacSHA256(key []byte, data string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(data))
	return m.Sum(nil)
}
