package audit

// Codes of refused joins (Event.Code): a small set that stays stable, so
// that a SIEM rule written against it keeps working. The authority's finer
// reason (Event.Detail, the code of its log line and of
// midfs_auth_refusals_total) maps onto it with RefusalCode.
const (
	CodeBadRequest         = "bad_request"          // malformed request: JSON, public key, signed STS request
	CodeTokenUnknown       = "token_unknown"        // no such token
	CodeTokenExpired       = "token_expired"        // the token is past its expiry
	CodeTokenUsed          = "token_used"           // a one-time token already used
	CodeTokenWrongMethod   = "token_wrong_method"   // the token is for another join method
	CodeTokenWrongRole     = "token_wrong_role"     // the token joins bots and a node used it, or the reverse
	CodeNodeNameTaken      = "node_name_taken"      // the node's name is typed by an admin or held by a node online
	CodeBotMissing         = "bot_missing"          // the bot does not exist (removed?)
	CodeBotLocked          = "bot_locked"           // the bot is locked (generation lock, or a lock)
	CodeBotSuperseded      = "bot_superseded"       // the identity is of an earlier join of the bot
	CodeStaleGeneration    = "stale_generation"     // the identity was already renewed
	CodeChallengeInvalid   = "challenge_invalid"    // IAM challenge unknown, used, expired or not signed
	CodeIdentityRefused    = "identity_refused"     // AWS did not vouch for the signed request
	CodeIdentityNotAllowed = "identity_not_allowed" // the AWS identity is not in the token's allow rules
	CodeNotRenewable       = "not_renewable"        // an output or non-renewable identity sent to renew
	CodeUnavailable        = "unavailable"          // the authority could not decide: AWS unreachable, internal error
	CodeOther              = "other"                // a reason this list does not know yet; see detail
)

// RefusalCodes is every code, in the order the README lists them.
var RefusalCodes = []string{
	CodeBadRequest, CodeTokenUnknown, CodeTokenExpired, CodeTokenUsed, CodeTokenWrongMethod, CodeTokenWrongRole, CodeNodeNameTaken,
	CodeBotMissing, CodeBotLocked, CodeBotSuperseded, CodeStaleGeneration, CodeChallengeInvalid,
	CodeIdentityRefused, CodeIdentityNotAllowed, CodeNotRenewable, CodeUnavailable, CodeOther,
}

// details maps the authority's reason codes (auth's refusal codes, and
// "iam_" + an auth/iam Reason) to RefusalCodes.
var details = map[string]string{
	"bad_request":         CodeBadRequest,
	"token_unknown":       CodeTokenUnknown,
	"token_method":        CodeTokenWrongMethod,
	"token_expired":       CodeTokenExpired,
	"token_used":          CodeTokenUsed,
	"token_role":          CodeTokenWrongRole,
	"node_name_taken":     CodeNodeNameTaken,
	"bot_missing":         CodeBotMissing,
	"bot_locked":          CodeBotLocked,
	"generation_mismatch": CodeBotLocked,
	"superseded":          CodeBotSuperseded,
	"stale_generation":    CodeStaleGeneration,
	"output_identity":     CodeNotRenewable,
	"not_renewable":       CodeNotRenewable,
	"no_client_cert":      CodeBadRequest,
	"not_a_bot":           CodeBadRequest,
	"internal":            CodeUnavailable,

	"iam_bad_join_request":        CodeBadRequest,
	"iam_token_unknown":           CodeTokenUnknown,
	"iam_token_not_iam":           CodeTokenWrongMethod,
	"iam_token_expired":           CodeTokenExpired,
	"iam_challenge_unknown":       CodeChallengeInvalid,
	"iam_challenge_expired":       CodeChallengeInvalid,
	"iam_challenge_mismatch":      CodeChallengeInvalid,
	"iam_challenge_not_signed":    CodeChallengeInvalid,
	"iam_sts_request_unparsable":  CodeBadRequest,
	"iam_sts_wrong_method":        CodeBadRequest,
	"iam_sts_wrong_path":          CodeBadRequest,
	"iam_sts_wrong_body":          CodeBadRequest,
	"iam_sts_host_not_allowed":    CodeIdentityRefused,
	"iam_sts_denied":              CodeIdentityRefused,
	"iam_sts_bad_response":        CodeIdentityRefused,
	"iam_sts_unreachable":         CodeUnavailable,
	"iam_internal_error":          CodeUnavailable,
	"iam_aws_account_not_allowed": CodeIdentityNotAllowed,
	"iam_aws_arn_not_allowed":     CodeIdentityNotAllowed,
	"iam_bot_missing":             CodeBotMissing,
	"iam_bot_locked":              CodeBotLocked,
}

// RefusalCode maps the authority's reason code to one of RefusalCodes;
// CodeOther if it knows none.
func RefusalCode(detail string) string {
	if c, ok := details[detail]; ok {
		return c
	}
	return CodeOther
}
