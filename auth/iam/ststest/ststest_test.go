package ststest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
)

const body = "Action=GetCallerIdentity&Version=2011-06-15"

var alice = Caller{
	AccessKeyID:     "AKIAALICE0000000TEST",
	SecretAccessKey: "alice-secret",
	Account:         "111111111111",
	Arn:             "arn:aws:sts::111111111111:assumed-role/bot/i-0123",
}

var bob = Caller{
	AccessKeyID:     "ASIABOB00000000TEST0",
	SecretAccessKey: "bob-secret",
	SessionToken:    "bob-session",
	Account:         "222222222222",
	Arn:             "arn:aws:sts::222222222222:assumed-role/ci/job",
}

// signed is a request signed by the AWS SDK's own SigV4 signer (not this
// package's code) for host, ready to send to the stand-in.
type signed struct {
	host, region string
	creds        aws.Credentials
	at           time.Time
	edit         func(*http.Request) // after signing
}

func (s signed) send(t *testing.T, srv *Server) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Host = s.host
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("X-Midfs-Challenge", "c1")
	sum := sha256.Sum256([]byte(body))
	at := s.at
	if at.IsZero() {
		at = time.Now()
	}
	if err := v4.NewSigner().SignHTTP(context.Background(), s.creds, req, hex.EncodeToString(sum[:]), "sts", s.region, at); err != nil {
		t.Fatal(err)
	}
	if s.edit != nil {
		s.edit(req)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("answer is not JSON: %q", raw)
	}
	return resp.StatusCode, out
}

func creds(c Caller) aws.Credentials {
	return aws.Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken}
}

func TestAnswersCallerOfAValidSignature(t *testing.T) {
	srv := Start(alice, bob)
	defer srv.Close()
	for _, tc := range []struct {
		host, region string
		c            Caller
	}{
		{"sts.us-east-1.amazonaws.com", "us-east-1", alice},
		{"sts.amazonaws.com", "us-east-1", alice},
		{"sts-fips.us-west-2.amazonaws.com", "us-west-2", alice},
		{"sts.cn-north-1.amazonaws.com.cn", "cn-north-1", bob},
	} {
		status, out := signed{host: tc.host, region: tc.region, creds: creds(tc.c)}.send(t, srv)
		if status != http.StatusOK {
			t.Fatalf("%s: status %d, %v", tc.host, status, out)
		}
		res := out["GetCallerIdentityResponse"].(map[string]any)["GetCallerIdentityResult"].(map[string]any)
		if res["Account"] != tc.c.Account || res["Arn"] != tc.c.Arn {
			t.Errorf("%s: answered %v, want %s %s", tc.host, res, tc.c.Account, tc.c.Arn)
		}
	}
}

func TestRefusesWhatAWSRefuses(t *testing.T) {
	srv := Start(alice, bob)
	defer srv.Close()
	wrongSecret := alice
	wrongSecret.SecretAccessKey = "not-alice-secret"
	noSession := bob
	noSession.SessionToken = ""
	for name, tc := range map[string]struct {
		s    signed
		code string
	}{
		"wrong secret":     {signed{host: "sts.us-east-1.amazonaws.com", region: "us-east-1", creds: creds(wrongSecret)}, "SignatureDoesNotMatch"},
		"unknown key":      {signed{host: "sts.us-east-1.amazonaws.com", region: "us-east-1", creds: aws.Credentials{AccessKeyID: "AKIANOBODY", SecretAccessKey: "x"}}, "InvalidClientTokenId"},
		"region of scope":  {signed{host: "sts.us-east-1.amazonaws.com", region: "eu-west-1", creds: creds(alice)}, "SignatureDoesNotMatch"},
		"stale date":       {signed{host: "sts.us-east-1.amazonaws.com", region: "us-east-1", creds: creds(alice), at: time.Now().Add(-20 * time.Minute)}, "SignatureDoesNotMatch"},
		"missing session":  {signed{host: "sts.us-east-1.amazonaws.com", region: "us-east-1", creds: creds(noSession)}, "InvalidClientTokenId"},
		"no authorization": {signed{host: "sts.us-east-1.amazonaws.com", region: "us-east-1", creds: creds(alice), edit: func(r *http.Request) { r.Header.Del("Authorization") }}, "IncompleteSignature"},
		"signed header changed": {signed{host: "sts.us-east-1.amazonaws.com", region: "us-east-1", creds: creds(alice), edit: func(r *http.Request) {
			r.Header.Set("X-Midfs-Challenge", "c2")
		}}, "SignatureDoesNotMatch"},
		"host changed": {signed{host: "sts.us-east-1.amazonaws.com", region: "us-east-1", creds: creds(alice), edit: func(r *http.Request) {
			r.Host = "sts.amazonaws.com"
		}}, "SignatureDoesNotMatch"},
	} {
		status, out := tc.s.send(t, srv)
		if status != http.StatusForbidden {
			t.Errorf("%s: status %d, want 403 (%v)", name, status, out)
			continue
		}
		if code := out["Error"].(map[string]any)["Code"]; code != tc.code {
			t.Errorf("%s: code %v, want %s", name, code, tc.code)
		}
	}
}

func TestUnsignedHeadersMayBeAdded(t *testing.T) {
	srv := Start(alice)
	defer srv.Close()
	status, out := signed{host: "sts.us-east-1.amazonaws.com", region: "us-east-1", creds: creds(alice), edit: func(r *http.Request) {
		r.Header.Set("X-Extra", "not signed")
	}}.send(t, srv)
	if status != http.StatusOK {
		t.Fatalf("status %d, %v", status, out)
	}
	if got := srv.Results(); len(got) != 1 || got[0].Status != 200 || got[0].Host != "sts.us-east-1.amazonaws.com" {
		t.Errorf("results %+v", got)
	}
}
