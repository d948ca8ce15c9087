package ststest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"

	"github.com/midfs/midfs/wire"
)

// Body is the only body the authority forwards to STS.
const Body = "Action=GetCallerIdentity&Version=2011-06-15"

// Request describes an sts:GetCallerIdentity request as a client might
// sign it, for tests of what the authority accepts; GoodRequest is what
// the real agent sends.
type Request struct {
	Method, URI, Host, Body string
	Challenge               string
	SignChallenge           bool // sign the challenge header (the agent does)
	NoChallenge             bool // send no challenge header at all
	Creds                   aws.Credentials
	Region                  string
	Edit                    func(*http.Request) // after signing
}

// GoodRequest is the request the agent sends for caller and challenge.
func GoodRequest(caller Caller, challenge string) Request {
	return Request{Method: "POST", URI: "/", Host: "sts.us-east-1.amazonaws.com", Body: Body,
		Challenge: challenge, SignChallenge: true, Creds: caller.Credentials(), Region: "us-east-1"}
}

// Credentials are the caller's AWS credentials.
func (c Caller) Credentials() aws.Credentials {
	return aws.Credentials{AccessKeyID: c.AccessKeyID, SecretAccessKey: c.SecretAccessKey, SessionToken: c.SessionToken}
}

// Raw signs r with the AWS SDK's SigV4 signer and returns the HTTP/1.1 bytes.
func (r Request) Raw(t testing.TB) []byte {
	t.Helper()
	req, err := http.NewRequest(r.Method, "https://"+r.Host+r.URI, strings.NewReader(r.Body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	if !r.NoChallenge && r.SignChallenge {
		req.Header.Set(wire.ChallengeHeader, r.Challenge)
	}
	sum := sha256.Sum256([]byte(r.Body))
	if err := v4.NewSigner().SignHTTP(context.Background(), r.Creds, req, hex.EncodeToString(sum[:]), "sts", r.Region, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !r.NoChallenge && !r.SignChallenge {
		req.Header.Set(wire.ChallengeHeader, r.Challenge)
	}
	if r.Edit != nil {
		r.Edit(req)
	}
	var buf bytes.Buffer
	if err := req.Write(&buf); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
