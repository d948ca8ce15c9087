package joiner

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/wire"
)

const testSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

func setCreds(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "ASIAEXAMPLEEXAMPLE01")
	t.Setenv("AWS_SECRET_ACCESS_KEY", testSecret)
	t.Setenv("AWS_SESSION_TOKEN", "example-session-token")
}

// sign runs the agent's signing and parses what it would send.
func sign(t *testing.T, fips bool) (*http.Request, []byte) {
	t.Helper()
	cfg, err := loadAWSConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	raw, err := signSTSRequest(context.Background(), cfg, "the-challenge", fips)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
	if err != nil {
		t.Fatalf("signed request does not parse: %v\n%s", err, raw)
	}
	return req, raw
}

func TestSignedRequestCarriesTheSignedChallengeAndNoSecret(t *testing.T) {
	testenv.IsolateAWS(t)
	setCreds(t)
	t.Setenv("AWS_REGION", "eu-west-1")
	req, raw := sign(t, false)
	if req.Method != "POST" || req.RequestURI != "/" || req.Host != "sts.eu-west-1.amazonaws.com" {
		t.Errorf("request line %s %s, host %s", req.Method, req.RequestURI, req.Host)
	}
	body, _ := io.ReadAll(req.Body)
	if string(body) != "Action=GetCallerIdentity&Version=2011-06-15" || req.ContentLength != int64(len(body)) {
		t.Errorf("body %q, content length %d", body, req.ContentLength)
	}
	if req.Header.Get(wire.ChallengeHeader) != "the-challenge" || req.Header.Get("Accept") != "application/json" {
		t.Errorf("headers %v", req.Header)
	}
	auth := req.Header.Get("Authorization")
	for _, h := range []string{"accept", "host", "x-amz-security-token", strings.ToLower(wire.ChallengeHeader)} {
		if !strings.Contains(auth, h) {
			t.Errorf("%s is not signed: %s", h, auth)
		}
	}
	if !strings.Contains(auth, "/eu-west-1/sts/aws4_request") {
		t.Errorf("signed for another scope: %s", auth)
	}
	if bytes.Contains(raw, []byte(testSecret)) {
		t.Error("the AWS secret key is in the request sent to the authority")
	}
}

func TestRegionFallsBackToUSEast1AndFIPSEndpoints(t *testing.T) {
	testenv.IsolateAWS(t)
	setCreds(t)
	for _, tc := range []struct {
		region string
		fips   bool
		host   string
	}{
		{"", false, "sts.us-east-1.amazonaws.com"}, // no config, no instance metadata
		{"", true, "sts-fips.us-east-1.amazonaws.com"},
		{"us-west-2", true, "sts-fips.us-west-2.amazonaws.com"},
		{"eu-central-1", true, "sts-fips.us-east-1.amazonaws.com"}, // no FIPS endpoint there
		{"cn-north-1", false, "sts.cn-north-1.amazonaws.com.cn"},
	} {
		t.Setenv("AWS_REGION", tc.region)
		if req, _ := sign(t, tc.fips); req.Host != tc.host {
			t.Errorf("region %q fips=%v: host %s, want %s", tc.region, tc.fips, req.Host, tc.host)
		}
	}
}

func TestRegionFromSharedConfig(t *testing.T) {
	testenv.IsolateAWS(t)
	setCreds(t)
	if err := os.WriteFile(os.Getenv("AWS_CONFIG_FILE"), []byte("[default]\nregion = ap-southeast-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if req, _ := sign(t, false); req.Host != "sts.ap-southeast-2.amazonaws.com" {
		t.Errorf("host %s, want the config file's region", req.Host)
	}
}

func TestCustomSTSEndpointIsIgnored(t *testing.T) {
	testenv.IsolateAWS(t)
	setCreds(t)
	t.Setenv("AWS_REGION", "us-east-2")
	t.Setenv("AWS_ENDPOINT_URL_STS", "https://sts.example.internal")
	if req, _ := sign(t, false); req.Host != "sts.us-east-2.amazonaws.com" {
		t.Errorf("host %s: the authority only accepts AWS's own STS hosts", req.Host)
	}
}

func TestNoAWSCredentialsIsAConfigError(t *testing.T) {
	testenv.IsolateAWS(t)
	_, err := joinIAM(context.Background(), &Config{Token: "iam-token"}, nil, nil)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "no AWS credentials") || strings.Contains(err.Error(), "\n") {
		t.Errorf("got %v; want one line of kind ErrConfig about AWS credentials", err)
	}
}
