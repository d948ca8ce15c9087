package joiner

// IAM join, the agent's half: prove the machine's AWS identity by signing an
// sts:GetCallerIdentity request that the authority, not the agent, sends to
// AWS. The AWS secret key signs locally and never leaves this process, and
// nothing is stored for a bot: every renewal of an iam bot is a fresh join
// with the same (public) token name. A node joins again the same way, but
// presents its current identity, which keeps its name, and keeps that
// identity in its Store, so that a restart presents it too.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/midfs/midfs/wire"
)

// joinIAM proves the machine's AWS identity to the authority through api
// (already verified against the pinned CA) and returns a non-renewable bot
// (or node, c.Node) identity for publicKey (PKIX DER). It serves the first
// join and every renewal of an iam bot or node; a retry starts over with a
// fresh challenge.
func joinIAM(ctx context.Context, c *Config, api *apiClient, publicKey []byte) (*wire.BotIdentity, error) {
	if c.Token == "" {
		return nil, &kindError{kind: ErrConfig, msg: "--token is required with --join-method=iam: the name of an iam token (midfs get tokens)"}
	}
	awsCfg, err := loadAWSConfig(ctx)
	if err != nil {
		return nil, &kindError{kind: ErrConfig, cause: err, msg: err.Error()}
	}
	var ch wire.IAMChallenge
	if err := api.call(ctx, http.MethodPost, wire.PathIAMChallenge, nil, &ch); err != nil {
		return nil, err
	}
	if ch.Challenge == "" {
		return nil, &retryable{errors.New("the authority answered an empty IAM challenge")}
	}
	raw, err := signSTSRequest(ctx, awsCfg, ch.Challenge, c.FIPS)
	if err != nil {
		return nil, err
	}
	var bi wire.BotIdentity
	req := wire.IAMJoinRequest{Token: c.Token, Challenge: ch.Challenge, STSRequest: raw, PublicKey: publicKey, Node: c.Node}
	if err := api.call(ctx, http.MethodPost, wire.PathIAMJoin, req, &bi); err != nil {
		return nil, err
	}
	return &bi, nil
}

// defaultAWSRegion is used when neither the AWS config nor instance metadata
// name a region, as the AWS CLI and Teleport do.
const defaultAWSRegion = "us-east-1"

// imdsRegionTimeout bounds the instance-metadata lookup: off AWS there is
// nothing at 169.254.169.254 and the agent should not hang at start.
const imdsRegionTimeout = 2 * time.Second

// fipsSTSRegions have an sts-fips endpoint; a FIPS agent elsewhere signs for
// us-east-1's, the nearest FIPS endpoint that always exists.
var fipsSTSRegions = map[string]bool{
	"us-east-1": true, "us-east-2": true, "us-west-1": true, "us-west-2": true,
	"ca-central-1": true, "ca-west-1": true, "us-gov-east-1": true, "us-gov-west-1": true,
}

// loadAWSConfig loads credentials and region with the SDK's default chain
// (environment, shared config and credentials files, instance metadata).
// Region: the AWS config, then instance metadata, then us-east-1.
func loadAWSConfig(ctx context.Context) (aws.Config, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return aws.Config{}, fmt.Errorf("load AWS configuration: %w (check AWS_PROFILE and ~/.aws/config)", err)
	}
	if cfg.Region == "" {
		cfg.Region = imdsRegion(ctx, cfg)
	}
	if _, err := cfg.Credentials.Retrieve(ctx); err != nil {
		return aws.Config{}, errors.New("no AWS credentials found: run on an instance or task with an IAM role, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE")
	}
	return cfg, nil
}

func imdsRegion(ctx context.Context, cfg aws.Config) string {
	ctx, cancel := context.WithTimeout(ctx, imdsRegionTimeout)
	defer cancel()
	out, err := imds.NewFromConfig(cfg).GetRegion(ctx, &imds.GetRegionInput{})
	if err != nil || out.Region == "" {
		slog.Debug("no AWS region in config or instance metadata, using the default", "region", defaultAWSRegion, "err", err)
		return defaultAWSRegion
	}
	return out.Region
}

// errRecorded stops the SDK once the signed request is in hand.
var errRecorded = errors.New("signed STS request recorded, not sent")

// recorder is an HTTP client that writes down the request it is given
// instead of sending it.
type recorder struct{ raw []byte }

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	var buf bytes.Buffer
	if err := req.Write(&buf); err != nil {
		return nil, err
	}
	r.raw = buf.Bytes()
	return nil, errRecorded
}

// signSTSRequest returns the raw HTTP/1.1 bytes of an sts:GetCallerIdentity
// request signed with cfg's credentials, carrying challenge in a signed
// header, ready for wire.IAMJoinRequest.STSRequest. With fips it is signed
// for a FIPS endpoint.
func signSTSRequest(ctx context.Context, cfg aws.Config, challenge string, fips bool) ([]byte, error) {
	rec := &recorder{}
	client := sts.NewFromConfig(cfg, func(o *sts.Options) {
		o.HTTPClient = rec
		o.Retryer = aws.NopRetryer{}
		// The authority accepts only the real STS hosts, so a custom
		// endpoint (AWS_ENDPOINT_URL_STS) could only be refused.
		o.BaseEndpoint = nil
		if fips {
			o.EndpointOptions.UseFIPSEndpoint = aws.FIPSEndpointStateEnabled
			if !fipsSTSRegions[o.Region] {
				o.Region = defaultAWSRegion
			}
		}
		// Build-step headers are in place before the Finalize-step signer
		// runs, so both become SignedHeaders: the challenge binds the
		// signature to this join, Accept makes STS answer in JSON.
		o.APIOptions = append(o.APIOptions,
			smithyhttp.SetHeaderValue(wire.ChallengeHeader, challenge),
			smithyhttp.SetHeaderValue("Accept", "application/json"))
	})
	_, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if !errors.Is(err, errRecorded) {
		if err == nil {
			err = errors.New("the SDK returned without sending")
		}
		return nil, fmt.Errorf("sign sts:GetCallerIdentity: %w", err)
	}
	return rec.raw, nil
}
