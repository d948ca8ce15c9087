// Package iam holds the checks of an IAM join: what the authority checks in
// a signed, unsent sts:GetCallerIdentity request before and after it hands
// that request to AWS, the token allow rules, and the single-use challenges
// it hands out. Nothing here touches the store, and only Forwarder.Send the
// network, so every other check can be tested with a table. Its STS
// stand-in for tests is iam/ststest.
//
// The authority (package auth) imports it; it imports policy (the allow
// rules) and wire, never auth.
package iam

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/wire"
)

// stsBody is the only body the authority forwards: anything else could make
// AWS do something other than say who signed it.
const stsBody = "Action=GetCallerIdentity&Version=2011-06-15"

// Reason names why an IAM join was refused. It goes to the authority's log
// and labels the refusal counter; the client never sees it.
type Reason string

const (
	ReasonBadJoinRequest     Reason = "bad_join_request"  // JSON, sizes, public key
	ReasonTokenUnknown       Reason = "token_unknown"     // no token of that name
	ReasonTokenNotIAM        Reason = "token_not_iam"     // token exists, other join method
	ReasonTokenExpired       Reason = "token_expired"     // token past its expiry
	ReasonChallengeUnknown   Reason = "challenge_unknown" // never issued (by this process), or already used
	ReasonChallengeExpired   Reason = "challenge_expired" // issued, but too long ago
	ReasonUnparsable         Reason = "sts_request_unparsable"
	ReasonWrongMethod        Reason = "sts_wrong_method"     // not POST
	ReasonWrongPath          Reason = "sts_wrong_path"       // RequestURI other than "/"
	ReasonWrongBody          Reason = "sts_wrong_body"       // not exactly stsBody
	ReasonChallengeMismatch  Reason = "challenge_mismatch"   // header missing or other value
	ReasonChallengeNotSigned Reason = "challenge_not_signed" // header not in SignedHeaders
	ReasonHostNotAllowed     Reason = "sts_host_not_allowed" // Host off the STS allowlist
	ReasonSTSUnreachable     Reason = "sts_unreachable"      // network error or timeout
	ReasonSTSDenied          Reason = "sts_denied"           // non-200: bad signature, unknown key, ...
	ReasonSTSBadResponse     Reason = "sts_bad_response"     // 200 but not the expected JSON
	ReasonInternal           Reason = "internal_error"       // the authority's own failure, e.g. its database
	ReasonAccountNotAllowed  Reason = "aws_account_not_allowed"
	ReasonARNNotAllowed      Reason = "aws_arn_not_allowed"
)

// Refusal is a refused IAM join: the reason for the counter, and a detail
// for the authority's log only.
type Refusal struct {
	Reason Reason
	Detail string
}

func (r *Refusal) Error() string { return string(r.Reason) + ": " + r.Detail }

func Refuse(reason Reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// STSRequest is a signed request that passed every local check and may be
// forwarded to Host.
type STSRequest struct {
	host   string
	header http.Header
	body   []byte
}

// ParseSTSRequest reads the raw HTTP/1.1 request the client signed and checks
// everything that can be checked without AWS: method, path, body, the
// challenge and that it is signed, and the Host allowlist.
func ParseSTSRequest(raw []byte, challenge string) (*STSRequest, *Refusal) {
	if len(raw) > wire.MaxBody {
		return nil, Refuse(ReasonUnparsable, "signed request of %d bytes exceeds %d", len(raw), wire.MaxBody)
	}
	br := bufio.NewReader(bytes.NewReader(raw))
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, Refuse(ReasonUnparsable, "%v", err)
	}
	if req.Method != http.MethodPost {
		return nil, Refuse(ReasonWrongMethod, "method %q", req.Method)
	}
	if req.RequestURI != "/" {
		return nil, Refuse(ReasonWrongPath, "request URI %q", req.RequestURI)
	}
	// Only a plain Content-Length body: chunked or trailing bytes would let
	// what AWS reads differ from what was checked here.
	if len(req.TransferEncoding) > 0 || req.ContentLength != int64(len(stsBody)) {
		return nil, Refuse(ReasonWrongBody, "content length %d, transfer encoding %q", req.ContentLength, req.TransferEncoding)
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, int64(len(stsBody))+1))
	if err != nil {
		return nil, Refuse(ReasonUnparsable, "body: %v", err)
	}
	if string(body) != stsBody {
		return nil, Refuse(ReasonWrongBody, "body %q", Truncate(string(body), 200))
	}
	if br.Buffered() > 0 {
		return nil, Refuse(ReasonUnparsable, "%d bytes after the request", br.Buffered())
	}
	if err := checkChallengeHeader(req.Header, challenge); err != nil {
		return nil, err
	}
	if !allowedSTSHost(req.Host) {
		return nil, Refuse(ReasonHostNotAllowed, "host %q", Truncate(req.Host, 200))
	}
	return &STSRequest{host: req.Host, header: req.Header, body: body}, nil
}

// checkChallengeHeader insists on exactly one challenge header, equal to the
// challenge, and signed: an unsigned header could be added by anyone who
// replays a captured request.
func checkChallengeHeader(h http.Header, challenge string) *Refusal {
	vals := h.Values(wire.ChallengeHeader)
	if len(vals) != 1 || subtle.ConstantTimeCompare([]byte(vals[0]), []byte(challenge)) != 1 {
		return Refuse(ReasonChallengeMismatch, "%d challenge header(s), none equal to the issued challenge", len(vals))
	}
	signed, err := signedHeaders(h.Get("Authorization"))
	if err != nil {
		return Refuse(ReasonChallengeNotSigned, "%v", err)
	}
	want := strings.ToLower(wire.ChallengeHeader)
	if slices.Contains(signed, want) {
		return nil
	}
	return Refuse(ReasonChallengeNotSigned, "SignedHeaders %q lacks %s", strings.Join(signed, ";"), want)
}

// signedHeaders returns the SignedHeaders list of a SigV4 Authorization
// header: "AWS4-HMAC-SHA256 Credential=..., SignedHeaders=a;b, Signature=...".
func signedHeaders(auth string) ([]string, error) {
	const algo = "AWS4-HMAC-SHA256 "
	if !strings.HasPrefix(auth, algo) {
		return nil, errors.New("authorization header is not AWS4-HMAC-SHA256")
	}
	var found []string
	n := 0
	for _, part := range strings.Split(auth[len(algo):], ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(part), "SignedHeaders="); ok {
			found = strings.Split(v, ";")
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("authorization header has %d SignedHeaders fields", n)
	}
	return found, nil
}

// stsRegion is an AWS region name: us-east-1, ap-southeast-2, us-gov-west-1,
// cn-north-1, eu-central-2 ...
var stsRegion = regexp.MustCompile(`^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-[0-9]{1,2}$`)

// allowedSTSHost is the allowlist of STS endpoints the authority will send a
// signed request to. Being strict here is what stops a client from pointing
// the authority at a host of its own that answers with any account it likes.
func allowedSTSHost(host string) bool {
	if host == "sts.amazonaws.com" {
		return true
	}
	var region string
	switch {
	case strings.HasSuffix(host, ".amazonaws.com.cn"):
		r, ok := strings.CutPrefix(strings.TrimSuffix(host, ".amazonaws.com.cn"), "sts.")
		if !ok || !strings.HasPrefix(r, "cn-") {
			return false
		}
		region = r
	case strings.HasSuffix(host, ".amazonaws.com"):
		name := strings.TrimSuffix(host, ".amazonaws.com")
		r, ok := strings.CutPrefix(name, "sts.")
		if !ok {
			r, ok = strings.CutPrefix(name, "sts-fips.")
		}
		if !ok || strings.HasPrefix(r, "cn-") {
			return false
		}
		region = r
	default:
		return false
	}
	return stsRegion.MatchString(region)
}

// stsTimeout bounds one round trip to STS; a join waits for it.
const stsTimeout = 10 * time.Second

// CheckEndpoint validates --sts-endpoint: an https URL with a host and
// nothing else to it. The authority's config checks call it.
func CheckEndpoint(endpoint string) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("bad --sts-endpoint %q: want an https URL such as https://127.0.0.1:8443/", endpoint)
	}
	return nil
}

// NewForwarder sends to AWS, or, if endpoint is set, to endpoint (test mode
// only): without checking its certificate when insecureTestMode is set, as a
// stand-in on loopback has a throwaway one. The authority refuses a
// test-only endpoint without --insecure-test-mode.
func NewForwarder(endpoint string, insecureTestMode bool) *Forwarder {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if endpoint != "" && insecureTestMode {
		tr.TLSClientConfig.InsecureSkipVerify = true
	}
	return &Forwarder{
		endpoint: endpoint,
		client: &http.Client{
			Transport: tr,
			Timeout:   stsTimeout,
			// STS answers directly; following a redirect would send the
			// signed request somewhere the allowlist never saw.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
}

// Forwarder sends checked requests to STS.
type Forwarder struct {
	client *http.Client
	// endpoint, if set, replaces https://HOST/ as the address requests go
	// to (test mode only). The Host header, which the signature covers,
	// stays the allowlisted STS host.
	endpoint string
}

// Send forwards r to STS and returns who signed it. The Accept header is
// forced to JSON: if the client signed another value, STS refuses the
// signature; if it signed none, the extra header is harmless.
func (f *Forwarder) Send(ctx context.Context, r *STSRequest) (CallerIdentity, *Refusal) {
	url := "https://" + r.host + "/"
	if f.endpoint != "" {
		url = f.endpoint
	}
	ctx, cancel := context.WithTimeout(ctx, stsTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(r.body))
	if err != nil {
		return CallerIdentity{}, Refuse(ReasonSTSUnreachable, "%v", err)
	}
	for k, v := range r.header {
		req.Header[k] = append([]string(nil), v...)
	}
	req.Header.Set("Accept", "application/json")
	req.Host = r.host
	resp, err := f.client.Do(req)
	if err != nil {
		return CallerIdentity{}, Refuse(ReasonSTSUnreachable, "%v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxBody+1))
	if err != nil {
		return CallerIdentity{}, Refuse(ReasonSTSUnreachable, "reading the answer: %v", err)
	}
	if len(body) > wire.MaxBody {
		return CallerIdentity{}, Refuse(ReasonSTSBadResponse, "answer larger than %d bytes", wire.MaxBody)
	}
	if resp.StatusCode != http.StatusOK {
		return CallerIdentity{}, Refuse(ReasonSTSDenied, "%s from %s: %s", resp.Status, r.host, Truncate(string(body), 300))
	}
	return parseCallerIdentity(body)
}

// CallerIdentity is what STS says about the signer.
type CallerIdentity struct {
	Account string
	Arn     string
}

// parseCallerIdentity reads the JSON answer of sts:GetCallerIdentity.
func parseCallerIdentity(body []byte) (CallerIdentity, *Refusal) {
	var resp struct {
		GetCallerIdentityResponse struct {
			GetCallerIdentityResult CallerIdentity
		}
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return CallerIdentity{}, Refuse(ReasonSTSBadResponse, "not JSON: %v", err)
	}
	id := resp.GetCallerIdentityResponse.GetCallerIdentityResult
	if id.Account == "" || id.Arn == "" {
		return CallerIdentity{}, Refuse(ReasonSTSBadResponse, "answer without Account or Arn")
	}
	return id, nil
}

// MatchRules is nil when one of the token's allow rules admits id. In a
// rule an empty field matches anything, but a rule with both fields empty
// matches nothing (it would let any AWS account in). Otherwise the reason
// says which part failed: the account, or (with a matching account) the ARN.
func MatchRules(rules []policy.AllowRule, id CallerIdentity) *Refusal {
	accountMatched := false
	for _, r := range rules {
		if r.AWSAccount == "" && r.AWSARN == "" {
			continue
		}
		if r.AWSAccount != "" && r.AWSAccount != id.Account {
			continue
		}
		accountMatched = true
		if r.AWSARN != "" && !policy.Match(r.AWSARN, id.Arn) {
			continue
		}
		return nil
	}
	if accountMatched {
		return Refuse(ReasonARNNotAllowed, "account %s, arn %q matches no aws_arn of the token", id.Account, id.Arn)
	}
	return Refuse(ReasonAccountNotAllowed, "account %s (arn %q) matches no aws_account of the token", id.Account, id.Arn)
}

func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Challenges live at most this long: long enough to sign one request and
// send it, short enough that a captured request is soon worthless.
const ChallengeTTL = time.Minute

// Challenges hands out single-use challenges without keeping them, so
// that no flood of requests for challenges can push out the one a real
// agent is about to use. A challenge is an identifier and an expiry under
// an HMAC; a taken challenge is remembered until it has surely expired.
//
// NewChallenges is for one authority process: the key is made at start and
// only this process knows it, identifiers are sequence numbers, and taken
// ones are kept in a bit set. A restart refuses challenges handed out
// before it (the agent retries with a fresh one), and expiries are measured
// on the monotonic clock from start, so a wall clock step cannot revive a
// spent challenge.
//
// NewSharedChallenges is for replicas: every replica derives the same key
// (from the seal key), so any replica verifies a challenge another handed
// out; identifiers are random, expiries are wall-clock times, and taken
// challenges are recorded in the shared database (Spender), so that a
// challenge is taken once across all replicas. Replica clocks that differ
// by d shift a challenge's life by d; the record outlives the expiry by
// SpentMargin, so a clock behind by less than that cannot revive one.
type Challenges struct {
	clock clock.Clock
	start time.Time // expiries count from here
	key   [32]byte
	seq   atomic.Uint64
	spent Spender // shared mode; nil for one process

	mu sync.Mutex
	// Taken challenges, a bit per sequence number in words of 64: taken
	// in the current period, and in the one before. Periods are a TTL
	// long, so a challenge is forgotten one to two TTLs after it was
	// taken, when it has expired anyway.
	taken, takenBefore map[uint64]uint64
	periodEnd          time.Duration // since start
}

// Spender records the identifiers of taken challenges for all replicas.
// Spend records id until at least expires and reports whether it was new:
// of two replicas spending one id at once, exactly one gets true.
type Spender interface {
	Spend(ctx context.Context, id []byte, expires time.Time) (bool, error)
}

// SpentMargin is how long past its expiry a taken challenge stays
// recorded in shared mode: the most replica clocks may disagree by.
const SpentMargin = 5 * time.Minute

const (
	challengeLen       = 8 + 8 + sha256.Size           // sequence number, expiry since start, MAC
	sharedIDLen        = 16                            // random identifier of a shared challenge
	sharedChallengeLen = sharedIDLen + 8 + sha256.Size // identifier, expiry in Unix ns, MAC
)

// NewChallenges starts a challenge issuer on clk (nil: the real clock).
func NewChallenges(clk clock.Clock) *Challenges {
	if clk == nil {
		clk = clock.Real()
	}
	c := &Challenges{clock: clk, start: clk.Now(), taken: map[uint64]uint64{}, takenBefore: map[uint64]uint64{}, periodEnd: ChallengeTTL}
	rand.Read(c.key[:])
	return c
}

// NewSharedChallenges starts a challenge issuer whose challenges any
// replica holding key verifies, and whose taken challenges spent records.
func NewSharedChallenges(clk clock.Clock, key []byte, spent Spender) *Challenges {
	if clk == nil {
		clk = clock.Real()
	}
	c := &Challenges{clock: clk, start: clk.Now(), spent: spent}
	copy(c.key[:], key)
	return c
}

// Issue returns a new challenge, base64 (URL alphabet) without padding.
func (c *Challenges) Issue() string {
	if c.spent != nil {
		var b [sharedChallengeLen]byte
		rand.Read(b[:sharedIDLen])
		binary.BigEndian.PutUint64(b[sharedIDLen:sharedIDLen+8], uint64(c.clock.Now().Add(ChallengeTTL).UnixNano()))
		copy(b[sharedIDLen+8:], c.mac(b[:sharedIDLen+8]))
		return base64.RawURLEncoding.EncodeToString(b[:])
	}
	var b [challengeLen]byte
	binary.BigEndian.PutUint64(b[0:8], c.seq.Add(1))
	binary.BigEndian.PutUint64(b[8:16], uint64(c.sinceStart()+ChallengeTTL))
	copy(b[16:], c.mac(b[:16]))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Take consumes ch: it can never be taken again, whether or not it was
// still valid.
func (c *Challenges) Take(ctx context.Context, ch string) *Refusal {
	if c.spent != nil {
		return c.takeShared(ctx, ch)
	}
	b, err := base64.RawURLEncoding.DecodeString(ch)
	if err != nil || len(b) != challengeLen || !hmac.Equal(b[16:], c.mac(b[:16])) {
		return Refuse(ReasonChallengeUnknown, "challenge not issued by this authority since it started")
	}
	seq, exp := binary.BigEndian.Uint64(b[0:8]), time.Duration(binary.BigEndian.Uint64(b[8:16]))
	now := c.sinceStart()
	if now >= exp {
		return Refuse(ReasonChallengeExpired, "challenge expired %s ago", (now - exp).Round(time.Second))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rotate(now)
	word, bit := seq/64, uint64(1)<<(seq%64)
	if (c.taken[word]|c.takenBefore[word])&bit != 0 {
		return Refuse(ReasonChallengeUnknown, "challenge already used")
	}
	c.taken[word] |= bit
	return nil
}

// takeShared checks a shared challenge and records it as taken; the
// record, not this process, decides whether it was taken before.
func (c *Challenges) takeShared(ctx context.Context, ch string) *Refusal {
	b, err := base64.RawURLEncoding.DecodeString(ch)
	if err != nil || len(b) != sharedChallengeLen || !hmac.Equal(b[sharedIDLen+8:], c.mac(b[:sharedIDLen+8])) {
		return Refuse(ReasonChallengeUnknown, "challenge not issued by a replica of this authority")
	}
	exp := time.Unix(0, int64(binary.BigEndian.Uint64(b[sharedIDLen:sharedIDLen+8])))
	now := c.clock.Now()
	if !now.Before(exp) {
		return Refuse(ReasonChallengeExpired, "challenge expired %s ago", now.Sub(exp).Round(time.Second))
	}
	fresh, err := c.spent.Spend(ctx, b[:sharedIDLen], exp.Add(SpentMargin))
	if err != nil {
		return Refuse(ReasonInternal, "record the taken challenge: %v", err)
	}
	if !fresh {
		return Refuse(ReasonChallengeUnknown, "challenge already used")
	}
	return nil
}

// rotate starts a new period once the current one is over. A challenge
// taken in period k expires before period k ends plus a TTL, which is no
// later than the end of period k+1, when it is dropped.
func (c *Challenges) rotate(now time.Duration) {
	if now < c.periodEnd {
		return
	}
	if now < c.periodEnd+ChallengeTTL {
		c.takenBefore = c.taken
	} else { // idle for a whole period: everything taken has expired
		c.takenBefore = map[uint64]uint64{}
	}
	c.taken = map[uint64]uint64{}
	c.periodEnd = now + ChallengeTTL
}

func (c *Challenges) sinceStart() time.Duration { return c.clock.Now().Sub(c.start) }

func (c *Challenges) mac(msg []byte) []byte {
	h := hmac.New(sha256.New, c.key[:])
	h.Write(msg)
	return h.Sum(nil)
}
