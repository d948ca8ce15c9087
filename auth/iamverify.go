package auth

// IAM join, the checks: what the authority checks in a signed, unsent
// sts:GetCallerIdentity request before and after it hands that request to
// AWS, and the challenges it hands out. Nothing here touches the store, and
// only stsForwarder.send the network, so every other check can be tested
// with a table.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/wire"
)

// stsBody is the only body the authority forwards: anything else could make
// AWS do something other than say who signed it.
const stsBody = "Action=GetCallerIdentity&Version=2011-06-15"

// iamReason names why an IAM join was refused. It goes to the authority's log
// and labels the refusal counter; the client never sees it.
type iamReason string

const (
	reasonBadJoinRequest     iamReason = "bad_join_request"  // JSON, sizes, public key
	reasonTokenUnknown       iamReason = "token_unknown"     // no token of that name
	reasonTokenNotIAM        iamReason = "token_not_iam"     // token exists, other join method
	reasonTokenExpired       iamReason = "token_expired"     // token past its expiry
	reasonChallengeUnknown   iamReason = "challenge_unknown" // never issued (by this process), or already used
	reasonChallengeExpired   iamReason = "challenge_expired" // issued, but too long ago
	reasonUnparsable         iamReason = "sts_request_unparsable"
	reasonWrongMethod        iamReason = "sts_wrong_method"     // not POST
	reasonWrongPath          iamReason = "sts_wrong_path"       // RequestURI other than "/"
	reasonWrongBody          iamReason = "sts_wrong_body"       // not exactly stsBody
	reasonChallengeMismatch  iamReason = "challenge_mismatch"   // header missing or other value
	reasonChallengeNotSigned iamReason = "challenge_not_signed" // header not in SignedHeaders
	reasonHostNotAllowed     iamReason = "sts_host_not_allowed" // Host off the STS allowlist
	reasonSTSUnreachable     iamReason = "sts_unreachable"      // network error or timeout
	reasonSTSDenied          iamReason = "sts_denied"           // non-200: bad signature, unknown key, ...
	reasonSTSBadResponse     iamReason = "sts_bad_response"     // 200 but not the expected JSON
	reasonInternal           iamReason = "internal_error"       // the authority's own failure, e.g. its database
	reasonAccountNotAllowed  iamReason = "aws_account_not_allowed"
	reasonARNNotAllowed      iamReason = "aws_arn_not_allowed"
)

// iamRefusal is a refused IAM join: the reason for the counter, and a detail
// for the authority's log only.
type iamRefusal struct {
	reason iamReason
	detail string
}

func (r *iamRefusal) Error() string { return string(r.reason) + ": " + r.detail }

func refuse(reason iamReason, format string, args ...any) *iamRefusal {
	return &iamRefusal{reason: reason, detail: fmt.Sprintf(format, args...)}
}

// stsRequest is a signed request that passed every local check and may be
// forwarded to Host.
type stsRequest struct {
	host   string
	header http.Header
	body   []byte
}

// parseSTSRequest reads the raw HTTP/1.1 request the client signed and checks
// everything that can be checked without AWS: method, path, body, the
// challenge and that it is signed, and the Host allowlist.
func parseSTSRequest(raw []byte, challenge string) (*stsRequest, *iamRefusal) {
	if len(raw) > wire.MaxBody {
		return nil, refuse(reasonUnparsable, "signed request of %d bytes exceeds %d", len(raw), wire.MaxBody)
	}
	br := bufio.NewReader(bytes.NewReader(raw))
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, refuse(reasonUnparsable, "%v", err)
	}
	if req.Method != http.MethodPost {
		return nil, refuse(reasonWrongMethod, "method %q", req.Method)
	}
	if req.RequestURI != "/" {
		return nil, refuse(reasonWrongPath, "request URI %q", req.RequestURI)
	}
	// Only a plain Content-Length body: chunked or trailing bytes would let
	// what AWS reads differ from what was checked here.
	if len(req.TransferEncoding) > 0 || req.ContentLength != int64(len(stsBody)) {
		return nil, refuse(reasonWrongBody, "content length %d, transfer encoding %q", req.ContentLength, req.TransferEncoding)
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, int64(len(stsBody))+1))
	if err != nil {
		return nil, refuse(reasonUnparsable, "body: %v", err)
	}
	if string(body) != stsBody {
		return nil, refuse(reasonWrongBody, "body %q", truncate(string(body), 200))
	}
	if br.Buffered() > 0 {
		return nil, refuse(reasonUnparsable, "%d bytes after the request", br.Buffered())
	}
	if err := checkChallengeHeader(req.Header, challenge); err != nil {
		return nil, err
	}
	if !allowedSTSHost(req.Host) {
		return nil, refuse(reasonHostNotAllowed, "host %q", truncate(req.Host, 200))
	}
	return &stsRequest{host: req.Host, header: req.Header, body: body}, nil
}

// checkChallengeHeader insists on exactly one challenge header, equal to the
// challenge, and signed: an unsigned header could be added by anyone who
// replays a captured request.
func checkChallengeHeader(h http.Header, challenge string) *iamRefusal {
	vals := h.Values(wire.ChallengeHeader)
	if len(vals) != 1 || subtle.ConstantTimeCompare([]byte(vals[0]), []byte(challenge)) != 1 {
		return refuse(reasonChallengeMismatch, "%d challenge header(s), none equal to the issued challenge", len(vals))
	}
	signed, err := signedHeaders(h.Get("Authorization"))
	if err != nil {
		return refuse(reasonChallengeNotSigned, "%v", err)
	}
	want := strings.ToLower(wire.ChallengeHeader)
	if slices.Contains(signed, want) {
		return nil
	}
	return refuse(reasonChallengeNotSigned, "SignedHeaders %q lacks %s", strings.Join(signed, ";"), want)
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

// stsForwarder sends checked requests to STS.
type stsForwarder struct {
	client *http.Client
	// endpoint, if set, replaces https://HOST/ as the address requests go
	// to (test mode only). The Host header, which the signature covers,
	// stays the allowlisted STS host.
	endpoint string
}

// send forwards r to STS and returns who signed it. The Accept header is
// forced to JSON: if the client signed another value, STS refuses the
// signature; if it signed none, the extra header is harmless.
func (f *stsForwarder) send(ctx context.Context, r *stsRequest) (callerIdentity, *iamRefusal) {
	url := "https://" + r.host + "/"
	if f.endpoint != "" {
		url = f.endpoint
	}
	ctx, cancel := context.WithTimeout(ctx, stsTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(r.body))
	if err != nil {
		return callerIdentity{}, refuse(reasonSTSUnreachable, "%v", err)
	}
	for k, v := range r.header {
		req.Header[k] = append([]string(nil), v...)
	}
	req.Header.Set("Accept", "application/json")
	req.Host = r.host
	resp, err := f.client.Do(req)
	if err != nil {
		return callerIdentity{}, refuse(reasonSTSUnreachable, "%v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, wire.MaxBody+1))
	if err != nil {
		return callerIdentity{}, refuse(reasonSTSUnreachable, "reading the answer: %v", err)
	}
	if len(body) > wire.MaxBody {
		return callerIdentity{}, refuse(reasonSTSBadResponse, "answer larger than %d bytes", wire.MaxBody)
	}
	if resp.StatusCode != http.StatusOK {
		return callerIdentity{}, refuse(reasonSTSDenied, "%s from %s: %s", resp.Status, r.host, truncate(string(body), 300))
	}
	return parseCallerIdentity(body)
}

// callerIdentity is what STS says about the signer.
type callerIdentity struct {
	Account string
	Arn     string
}

// parseCallerIdentity reads the JSON answer of sts:GetCallerIdentity.
func parseCallerIdentity(body []byte) (callerIdentity, *iamRefusal) {
	var resp struct {
		GetCallerIdentityResponse struct {
			GetCallerIdentityResult callerIdentity
		}
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return callerIdentity{}, refuse(reasonSTSBadResponse, "not JSON: %v", err)
	}
	id := resp.GetCallerIdentityResponse.GetCallerIdentityResult
	if id.Account == "" || id.Arn == "" {
		return callerIdentity{}, refuse(reasonSTSBadResponse, "answer without Account or Arn")
	}
	return id, nil
}

// matchIAMRules is nil when one of the token's allow rules admits id. In a
// rule an empty field matches anything, but a rule with both fields empty
// matches nothing (it would let any AWS account in). Otherwise the reason
// says which part failed: the account, or (with a matching account) the ARN.
func matchIAMRules(rules []policy.AllowRule, id callerIdentity) *iamRefusal {
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
		return refuse(reasonARNNotAllowed, "account %s, arn %q matches no aws_arn of the token", id.Account, id.Arn)
	}
	return refuse(reasonAccountNotAllowed, "account %s (arn %q) matches no aws_account of the token", id.Account, id.Arn)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Challenges live at most this long: long enough to sign one request and
// send it, short enough that a captured request is soon worthless.
const iamChallengeTTL = time.Minute

// iamChallenges hands out single-use challenges without keeping them, so
// that no flood of requests for challenges can push out the one a real
// agent is about to use. A challenge is a sequence number and an expiry
// under an HMAC with a key made at start, which only this process knows; a
// taken challenge is remembered in a bit set until it has surely expired.
//
// The key and the clock are this process's: a restart refuses challenges
// handed out before it (the agent retries with a fresh one), and expiries
// are measured on the monotonic clock from start, so a wall clock step
// cannot revive a spent challenge. Replicas of the authority would need a
// shared key, wall-clock expiries, a replica id in the sequence number and
// a shared record of taken challenges.
type iamChallenges struct {
	now   func() time.Time
	start time.Time // expiries count from here
	key   [32]byte
	seq   atomic.Uint64

	mu sync.Mutex
	// Taken challenges, a bit per sequence number in words of 64: taken
	// in the current period, and in the one before. Periods are a TTL
	// long, so a challenge is forgotten one to two TTLs after it was
	// taken, when it has expired anyway.
	taken, takenBefore map[uint64]uint64
	periodEnd          time.Duration // since start
}

const challengeLen = 8 + 8 + sha256.Size // sequence number, expiry, MAC

func newIAMChallenges(now func() time.Time) *iamChallenges {
	if now == nil {
		now = time.Now
	}
	c := &iamChallenges{now: now, start: now(), taken: map[uint64]uint64{}, takenBefore: map[uint64]uint64{}, periodEnd: iamChallengeTTL}
	rand.Read(c.key[:])
	return c
}

// issue returns a new challenge, base64 (URL alphabet) without padding.
func (c *iamChallenges) issue() string {
	var b [challengeLen]byte
	binary.BigEndian.PutUint64(b[0:8], c.seq.Add(1))
	binary.BigEndian.PutUint64(b[8:16], uint64(c.sinceStart()+iamChallengeTTL))
	copy(b[16:], c.mac(b[:16]))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// take consumes ch: it can never be taken again, whether or not it was
// still valid.
func (c *iamChallenges) take(ch string) *iamRefusal {
	b, err := base64.RawURLEncoding.DecodeString(ch)
	if err != nil || len(b) != challengeLen || !hmac.Equal(b[16:], c.mac(b[:16])) {
		return refuse(reasonChallengeUnknown, "challenge not issued by this authority since it started")
	}
	seq, exp := binary.BigEndian.Uint64(b[0:8]), time.Duration(binary.BigEndian.Uint64(b[8:16]))
	now := c.sinceStart()
	if now >= exp {
		return refuse(reasonChallengeExpired, "challenge expired %s ago", (now - exp).Round(time.Second))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rotate(now)
	word, bit := seq/64, uint64(1)<<(seq%64)
	if (c.taken[word]|c.takenBefore[word])&bit != 0 {
		return refuse(reasonChallengeUnknown, "challenge already used")
	}
	c.taken[word] |= bit
	return nil
}

// rotate starts a new period once the current one is over. A challenge
// taken in period k expires before period k ends plus a TTL, which is no
// later than the end of period k+1, when it is dropped.
func (c *iamChallenges) rotate(now time.Duration) {
	if now < c.periodEnd {
		return
	}
	if now < c.periodEnd+iamChallengeTTL {
		c.takenBefore = c.taken
	} else { // idle for a whole period: everything taken has expired
		c.takenBefore = map[uint64]uint64{}
	}
	c.taken = map[uint64]uint64{}
	c.periodEnd = now + iamChallengeTTL
}

func (c *iamChallenges) sinceStart() time.Duration { return c.now().Sub(c.start) }

func (c *iamChallenges) mac(msg []byte) []byte {
	h := hmac.New(sha256.New, c.key[:])
	h.Write(msg)
	return h.Sum(nil)
}
