package joiner

import (
	"context"

	"github.com/midfs/midfs/wire"
)

// joinIAM is the seam of the iam join method: prove the machine's AWS
// identity to the authority through api (already verified against the
// pinned CA; api.call posts JSON to wire.PathIAMChallenge and
// wire.PathIAMJoin) and return the bot identity for publicKey (PKIX DER).
// It serves both the first join and every renewal of an iam bot.
//
// Stub: the IAM issue replaces this file with the signed
// sts:GetCallerIdentity exchange.
func joinIAM(ctx context.Context, c *Config, api *apiClient, publicKey []byte) (*wire.BotIdentity, error) {
	return nil, &kindError{kind: ErrConfig, msg: "IAM join not built yet: use --join-method=token"}
}
