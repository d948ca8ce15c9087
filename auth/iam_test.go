package auth

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/iam/ststest"
	"github.com/midfs/midfs/identity/clock"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/wire"
)

// Test AWS callers the STS stand-in knows.
var (
	iamBot = ststest.Caller{AccessKeyID: "ASIAIAMBOT0000000001", SecretAccessKey: "bot-secret", SessionToken: "bot-session",
		Account: "111111111111", Arn: "arn:aws:sts::111111111111:assumed-role/midfs-bot/i-0123456789abcdef0"}
	iamOtherAccount = ststest.Caller{AccessKeyID: "AKIAOTHERACCOUNT0001", SecretAccessKey: "other-secret",
		Account: "222222222222", Arn: "arn:aws:sts::222222222222:assumed-role/midfs-bot/i-0123456789abcdef0"}
	iamOtherRole = ststest.Caller{AccessKeyID: "AKIAOTHERROLE0000001", SecretAccessKey: "role-secret",
		Account: "111111111111", Arn: "arn:aws:sts::111111111111:assumed-role/developer/alice"}
)

// iamEnv is an authority in test mode wired to an STS stand-in, with the
// iam token of the seed guide and bot robot bound to it.
type iamEnv struct {
	s       *Server
	sts     *ststest.Server
	clock   *clock.Fake
	log     *testenv.LogBuffer
	metrics *prometheus.Registry
}

func startIAM(t testing.TB, mod ...func(*Config)) *iamEnv {
	t.Helper()
	e := &iamEnv{sts: ststest.Start(iamBot, iamOtherAccount, iamOtherRole), clock: clock.NewFake(time.Now().Truncate(time.Second)), log: &testenv.LogBuffer{}, metrics: prometheus.NewRegistry()}
	t.Cleanup(e.sts.Close)
	e.s = startTest(t, func(c *Config) {
		c.STSEndpoint = e.sts.URL
		c.InsecureTestMode = true
		c.Clock = e.clock
		c.Logger = slog.New(slog.NewTextHandler(e.log, nil))
		c.Metrics = e.metrics
		for _, m := range mod {
			m(c)
		}
	})
	ctx := context.Background()
	if _, err := e.s.CreateYAML(ctx, []byte(testenv.IAMTokenYAML), false); err != nil {
		t.Fatalf("create iam token: %v", err)
	}
	if _, err := e.s.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, Logins: []string{"root"}, TokenName: "iam-token"}); err != nil {
		t.Fatalf("bots add: %v", err)
	}
	return e
}

func (e *iamEnv) challenge(t *testing.T) string {
	t.Helper()
	c := newClient(t, e.s, nil, nil)
	defer c.close()
	var ch wire.IAMChallenge
	if status, msg, err := c.do("POST", wire.PathIAMChallenge, nil, &ch); err != nil || status != 200 {
		t.Fatalf("challenge: %d %s %v", status, msg, err)
	}
	return ch.Challenge
}

// join sends an IAM join for token with the signed request raw.
func (e *iamEnv) join(t *testing.T, token, challenge string, raw []byte) (*wire.BotIdentity, int, string) {
	t.Helper()
	_, pub := newKey(t)
	c := newClient(t, e.s, nil, nil)
	defer c.close()
	var bi wire.BotIdentity
	status, msg, err := c.do("POST", wire.PathIAMJoin, wire.IAMJoinRequest{Token: token, Challenge: challenge, STSRequest: raw, PublicKey: pub}, &bi)
	if err != nil {
		t.Fatal(err)
	}
	return &bi, status, msg
}

// signed is the request the agent would send for caller and challenge.
func signed(t *testing.T, caller ststest.Caller, challenge string, mod ...func(*ststest.Request)) []byte {
	r := ststest.GoodRequest(caller, challenge)
	for _, m := range mod {
		m(&r)
	}
	return r.Raw(t)
}

// refusals is the refusal counter by reason.
func (e *iamEnv) refusals(t *testing.T) map[string]float64 {
	t.Helper()
	fams, err := e.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "midfs_auth_refusals_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

func TestIAMJoinIssuesANonRenewableIdentityAndTheTokenStays(t *testing.T) {
	e := startIAM(t)
	for i := 0; i < 2; i++ { // the token is not used up: a renewal is a fresh join
		ch := e.challenge(t)
		bi, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch))
		if status != 200 {
			t.Fatalf("join %d: %d %s\nlog:\n%s", i, status, msg, e.log)
		}
		if bi.BotName != "robot" || bi.Renewable || bi.ClusterName != e.s.ClusterName() {
			t.Errorf("join %d: got bot %q renewable=%v cluster %q", i, bi.BotName, bi.Renewable, bi.ClusterName)
		}
		if cert := mustParseCert(t, bi.TLSCert); cert.Subject.CommonName != "bot-robot" {
			t.Errorf("join %d: certificate for %q", i, cert.Subject.CommonName)
		}
	}
	got := e.sts.Results()
	if len(got) != 2 || got[0].Status != 200 || got[0].Host != "sts.us-east-1.amazonaws.com" {
		t.Errorf("STS saw %+v; want two verified requests for sts.us-east-1.amazonaws.com", got)
	}
	if !strings.Contains(e.log.String(), "aws_arn="+iamBot.Arn) {
		t.Errorf("the join's AWS identity is not in the log:\n%s", e.log)
	}
}

func TestIAMJoinIdentityGetsOutputCertificates(t *testing.T) {
	e := startIAM(t)
	ch := e.challenge(t)
	key, pub := newKey(t)
	c := newClient(t, e.s, nil, nil)
	defer c.close()
	var bi wire.BotIdentity
	if status, msg, _ := c.do("POST", wire.PathIAMJoin, wire.IAMJoinRequest{Token: "iam-token", Challenge: ch, STSRequest: signed(t, iamBot, ch), PublicKey: pub}, &bi); status != 200 {
		t.Fatalf("join: %d %s", status, msg)
	}
	id := &botID{key: key, pub: pub, cert: bi.TLSCert, gen: bi.Generation}
	certs, _ := id.certs(t, e.s)
	if !strings.Contains(certs.SSHCert, "-cert-v01@openssh.com ") || len(certs.HostCAs) == 0 {
		t.Errorf("output identity: %+v", certs)
	}
	if _, status, _ := id.tryRenew(t, e.s); status == 200 {
		t.Error("an IAM bot identity was renewed; it must join again instead")
	}
}

func TestIAMJoinRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		// do makes one join attempt; it may make earlier ones of its own.
		do       func(t *testing.T, e *iamEnv) (int, string)
		reason   string
		stsCalls int // requests STS sees in all: the refused one only if it got past the local checks
	}{
		{name: "bad signature", reason: "iam_sts_denied", stsCalls: 1, do: func(t *testing.T, e *iamEnv) (int, string) {
			forged := iamBot
			forged.SecretAccessKey = "guessed"
			ch := e.challenge(t)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, forged, ch))
			return status, msg
		}},
		{name: "wrong account", reason: "iam_aws_account_not_allowed", stsCalls: 1, do: func(t *testing.T, e *iamEnv) (int, string) {
			ch := e.challenge(t)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, iamOtherAccount, ch))
			return status, msg
		}},
		{name: "ARN outside the glob", reason: "iam_aws_arn_not_allowed", stsCalls: 1, do: func(t *testing.T, e *iamEnv) (int, string) {
			ch := e.challenge(t)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, iamOtherRole, ch))
			return status, msg
		}},
		{name: "replayed challenge", reason: "iam_challenge_unknown", stsCalls: 1, do: func(t *testing.T, e *iamEnv) (int, string) {
			ch := e.challenge(t)
			raw := signed(t, iamBot, ch)
			if _, status, msg := e.join(t, "iam-token", ch, raw); status != 200 {
				t.Fatalf("first join: %d %s", status, msg)
			}
			_, status, msg := e.join(t, "iam-token", ch, raw)
			return status, msg
		}},
		{name: "expired challenge", reason: "iam_challenge_expired", do: func(t *testing.T, e *iamEnv) (int, string) {
			ch := e.challenge(t)
			e.clock.Advance(61 * time.Second)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch))
			return status, msg
		}},
		{name: "challenge header not signed", reason: "iam_challenge_not_signed", do: func(t *testing.T, e *iamEnv) (int, string) {
			ch := e.challenge(t)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch, func(r *ststest.Request) { r.SignChallenge = false }))
			return status, msg
		}},
		{name: "Host off the allowlist", reason: "iam_sts_host_not_allowed", do: func(t *testing.T, e *iamEnv) (int, string) {
			ch := e.challenge(t)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch, func(r *ststest.Request) { r.Host = "sts.attacker.example" }))
			return status, msg
		}},
		{name: "extra body parameter", reason: "iam_sts_wrong_body", do: func(t *testing.T, e *iamEnv) (int, string) {
			ch := e.challenge(t)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch, func(r *ststest.Request) { r.Body = ststest.Body + "&Extra=1" }))
			return status, msg
		}},
		{name: "GET instead of POST", reason: "iam_sts_wrong_method", do: func(t *testing.T, e *iamEnv) (int, string) {
			ch := e.challenge(t)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch, func(r *ststest.Request) { r.Method = "GET" }))
			return status, msg
		}},
		{name: "not an iam token", reason: "iam_token_not_iam", do: func(t *testing.T, e *iamEnv) (int, string) {
			bt := addBot(t, e.s, "tokenbot", []string{"access"}, []string{"root"})
			ch := e.challenge(t)
			_, status, msg := e.join(t, bt.TokenName, ch, signed(t, iamBot, ch))
			return status, msg
		}},
		{name: "bot removed", reason: "iam_bot_missing", stsCalls: 1, do: func(t *testing.T, e *iamEnv) (int, string) {
			if err := e.s.RemoveBot(context.Background(), "robot"); err != nil {
				t.Fatal(err)
			}
			ch := e.challenge(t)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch))
			return status, msg
		}},
		{name: "bot locked", reason: "iam_bot_locked", stsCalls: 1, do: func(t *testing.T, e *iamEnv) (int, string) {
			if _, err := e.s.AddLock(context.Background(), admin.LockSpec{Bot: "robot"}); err != nil {
				t.Fatal(err)
			}
			ch := e.challenge(t)
			_, status, msg := e.join(t, "iam-token", ch, signed(t, iamBot, ch))
			return status, msg
		}},
		{name: "unknown token", reason: "iam_token_unknown", do: func(t *testing.T, e *iamEnv) (int, string) {
			ch := e.challenge(t)
			_, status, msg := e.join(t, "no-such-token", ch, signed(t, iamBot, ch))
			return status, msg
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startIAM(t)
			status, msg := tc.do(t, e)
			if status != 403 {
				t.Fatalf("status %d (%s), want 403", status, msg)
			}
			// The client learns that it was refused and where to look,
			// nothing about AWS, the rules or the reason.
			for _, leak := range []string{"111111111111", "222222222222", "arn:", "sts", "signature", "challenge", "account", strings.TrimPrefix(tc.reason, "iam_")} {
				if strings.Contains(strings.ToLower(msg), leak) {
					t.Errorf("client message %q reveals %q", msg, leak)
				}
			}
			ref := msg[strings.Index(msg, "(ref ")+5:][:8]
			logged := e.log.String()
			if !strings.Contains(logged, "code="+tc.reason) || !strings.Contains(logged, "[ref "+ref+"]") {
				t.Errorf("log lacks code=%s with ref %s:\n%s", tc.reason, ref, logged)
			}
			if n := e.refusals(t)[tc.reason]; n != 1 {
				t.Errorf("refusal counter for %s is %v, want 1 (all: %v)", tc.reason, n, e.refusals(t))
			}
			if got := e.sts.Results(); len(got) != tc.stsCalls {
				t.Errorf("STS saw %+v, want %d request(s)", got, tc.stsCalls)
			}
			if tc.reason == "iam_sts_denied" && !strings.Contains(logged, "SignatureDoesNotMatch") {
				t.Errorf("log lacks the STS error code:\n%s", logged)
			}
		})
	}
}

func TestIAMChallengesAreRandomAndSingleUse(t *testing.T) {
	e := startIAM(t)
	a, b := e.challenge(t), e.challenge(t)
	if a == b || len(a) != 64 {
		t.Fatalf("challenges %q, %q: want two distinct base64 encodings of 48 bytes", a, b)
	}
	// A challenge spent on a failed join cannot be used for a good one.
	if _, status, _ := e.join(t, "iam-token", a, signed(t, iamBot, a, func(r *ststest.Request) { r.Method = "GET" })); status != 403 {
		t.Fatalf("GET join: %d", status)
	}
	if _, status, _ := e.join(t, "iam-token", a, signed(t, iamBot, a)); status != 403 {
		t.Errorf("a challenge spent on a refused join was accepted again: %d", status)
	}
}

// TestIAMJoinSucceedsDuringAChallengeFlood: anyone may ask for challenges,
// so a flood of requests for them (main evicted every real challenge within
// 150 ms at 25,000/s) must not stop an agent from joining with its own, and
// cannot make a spent one work again.
func TestIAMJoinSucceedsDuringAChallengeFlood(t *testing.T) {
	e := startIAM(t)
	var flooded atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient(t, e.s, nil, nil)
			defer c.close()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if status, _, err := c.do("POST", wire.PathIAMChallenge, nil, nil); err == nil && status == 200 {
					flooded.Add(1)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()

	ch := e.challenge(t)
	raw := signed(t, iamBot, ch)
	// An agent signs between the challenge and its join; 10,000 more
	// challenges go out meanwhile, more than any store of outstanding
	// challenges with room for a few thousand keeps.
	start, since := time.Now(), flooded.Load()
	deadline := start.Add(2 * time.Minute)
	for flooded.Load() < since+10_000 {
		if time.Now().After(deadline) {
			t.Fatalf("the flood got only %d challenges in 2 minutes", flooded.Load()-since)
		}
		time.Sleep(10 * time.Millisecond) // poll the flood's progress
	}
	t.Logf("flood: %d challenges in %v (%.0f/s)", flooded.Load()-since, time.Since(start).Round(time.Millisecond),
		float64(flooded.Load()-since)/time.Since(start).Seconds())
	if _, status, msg := e.join(t, "iam-token", ch, raw); status != 200 {
		t.Fatalf("join during the flood: %d %s\nlog:\n%s", status, msg, e.log)
	}
	if _, status, _ := e.join(t, "iam-token", ch, raw); status != 403 {
		t.Errorf("the same challenge and signed request were accepted twice: %d", status)
	}
}

func TestSTSEndpointNeedsInsecureTestMode(t *testing.T) {
	for name, cfg := range map[string]Config{
		"without test mode": {STSEndpoint: "https://127.0.0.1:1/"},
		"not https":         {STSEndpoint: "http://127.0.0.1:1/", InsecureTestMode: true},
		"not a URL":         {STSEndpoint: "127.0.0.1:1", InsecureTestMode: true},
	} {
		cfg.DataDir, cfg.Listen, cfg.Logger = t.TempDir(), "127.0.0.1:0", testLogger(t)
		s, err := Start(context.Background(), cfg)
		if err == nil {
			s.Close()
			t.Errorf("%s: authority started", name)
			continue
		}
		if !strings.Contains(err.Error(), "sts-endpoint") || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: error %q should be one line naming --sts-endpoint", name, err)
		}
	}
	e := startIAM(t)
	if !strings.Contains(e.log.String(), "TEST MODE") {
		t.Errorf("no warning at start with --sts-endpoint:\n%s", e.log)
	}
}

func TestIAMJoinBadBodies(t *testing.T) {
	e := startIAM(t)
	c := newClient(t, e.s, nil, nil)
	defer c.close()
	for _, tc := range []struct {
		body   []byte
		status int
	}{
		{[]byte(`{"token":`), 400},
		{[]byte(`{"token":"iam-token","surprise":1}`), 400},
		{append(append([]byte(`{"token":"`), bytes.Repeat([]byte("a"), wire.MaxBody)...), `"}`...), 413},
	} {
		if status, msg, _ := c.do("POST", wire.PathIAMJoin, tc.body, nil); status != tc.status || msg == "" {
			t.Errorf("body of %d bytes: %d %q, want %d with a reason", len(tc.body), status, msg, tc.status)
		}
	}
	if len(e.sts.Results()) != 0 {
		t.Error("a malformed join reached STS")
	}
}
