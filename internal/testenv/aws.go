package testenv

import (
	"path/filepath"
	"testing"
)

// IsolateAWS leaves the AWS SDK only what the test sets afterwards: no
// shared config or credentials files, no instance metadata, no region, no
// credentials or endpoints from the developer's environment.
func IsolateAWS(t testing.TB) {
	t.Helper()
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_CONFIG_FILE":             filepath.Join(dir, "config"),
		"AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_ACCESS_KEY_ID":           "",
		"AWS_SECRET_ACCESS_KEY":       "",
		"AWS_SESSION_TOKEN":           "",
		"AWS_REGION":                  "",
		"AWS_DEFAULT_REGION":          "",
		"AWS_PROFILE":                 "",
		"AWS_ENDPOINT_URL":            "",
		"AWS_ENDPOINT_URL_STS":        "",
		"AWS_USE_FIPS_ENDPOINT":       "",
	} {
		t.Setenv(k, v)
	}
}

// IAMTokenYAML is the IAM join token of the seed guide: name iam-token,
// bot robot, any instance of role midfs-bot in account 111111111111.
const IAMTokenYAML = `kind: token
version: v2
metadata:
  name: iam-token
spec:
  roles: [Bot]
  bot_name: robot
  join_method: iam
  allow:
    - aws_account: "111111111111"
      aws_arn: "arn:aws:sts::111111111111:assumed-role/midfs-bot/i-*"
`

// IAMNodeTokenYAML is an IAM join token of nodes: name iam-nodes, the same
// AWS identities as IAMTokenYAML, and env=prod on every node joining with it.
const IAMNodeTokenYAML = `kind: token
version: v2
metadata:
  name: iam-nodes
spec:
  roles: [Node]
  labels:
    env: prod
  join_method: iam
  allow:
    - aws_account: "111111111111"
      aws_arn: "arn:aws:sts::111111111111:assumed-role/midfs-bot/i-*"
`
