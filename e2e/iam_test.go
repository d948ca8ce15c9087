package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/iam/ststest"
	"github.com/midfs/midfs/internal/testenv"
)

// The IAM walk-through of the README, with the real binary: the authority
// in test mode sends signed requests to an STS stand-in on loopback that
// checks SigV4 signatures with the test credentials the agent has in its
// environment.

var iamE2ECaller = ststest.Caller{
	AccessKeyID: "ASIAE2EIAMJOIN000001", SecretAccessKey: "e2e-iam-secret/EXAMPLEKEY", SessionToken: "e2e-session",
	Account: "111111111111", Arn: "arn:aws:sts::111111111111:assumed-role/midfs-bot/i-0123456789abcdef0",
}

// iamAuthority starts an authority whose STS is a stand-in knowing the
// test caller, with iam-token and bot robot bound to it.
func iamAuthority(t *testing.T) (*authority, *ststest.Server) {
	t.Helper()
	sts := ststest.Start(iamE2ECaller)
	t.Cleanup(sts.Close)
	a := startAuthority(t, "--sts-endpoint="+sts.URL, "--insecure-test-mode")
	yaml := filepath.Join(t.TempDir(), "iam-token.yaml")
	if err := os.WriteFile(yaml, []byte(testenv.IAMTokenYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	a.admin("create", "-f", yaml)
	a.admin("bots", "add", "robot", "--token=iam-token", "--roles=access", "--logins=root")
	return a, sts
}

// iamEnv puts test AWS credentials in the environment the agent inherits,
// and keeps the SDK away from files and instance metadata.
func iamEnv(t *testing.T, c ststest.Caller) {
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": c.AccessKeyID, "AWS_SECRET_ACCESS_KEY": c.SecretAccessKey, "AWS_SESSION_TOKEN": c.SessionToken,
		"AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "AWS_PROFILE": "",
		"AWS_CONFIG_FILE": filepath.Join(dir, "config"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
	} {
		t.Setenv(k, v)
	}
}

func TestIAMJoinMountThenSSH(t *testing.T) {
	a, sts := iamAuthority(t)
	s := startSSHD(t, a, "node-name."+cluster, "node-name")
	a.admin("nodes", "add", "node-name", "--addr="+s.addr(), "--labels=arch=x86_64")
	iamEnv(t, iamE2ECaller)
	dir := filepath.Join(publicDir(t), "machine-id")
	os.Mkdir(dir, 0o755)
	ag := startMount(t, dir, "--auth-server="+a.addr, "--join-method=iam", "--token=iam-token", "--ca-pin="+a.pin, "--storage=memory")

	if out, err := sshRun(t, ag.dir, "root@node-name."+cluster, "echo", "hello-from-iam"); err != nil || !strings.Contains(out, "hello-from-iam") {
		t.Fatalf("ssh with the IAM-joined identity: %v\n%s\nagent:\n%s\nsshd:\n%s", err, out, ag.logs, s.logs)
	}
	if got := sts.Results(); len(got) == 0 || got[0].Status != 200 {
		t.Errorf("STS stand-in saw %+v; want the join verified", got)
	}
	for what, logs := range map[string]string{"agent": ag.logs.String(), "authority": a.logs.String()} {
		if strings.Contains(logs, iamE2ECaller.SecretAccessKey) {
			t.Errorf("the AWS secret key is in the %s's log", what)
		}
	}
}

func TestIAMJoinWithUnknownCredentialsIsRefused(t *testing.T) {
	a, _ := iamAuthority(t)
	stranger := iamE2ECaller
	stranger.AccessKeyID = "AKIANOTKNOWNTOSTS001"
	iamEnv(t, stranger)
	dir := filepath.Join(publicDir(t), "machine-id")
	os.Mkdir(dir, 0o755)
	r := run(t, "mount", dir, "--auth-server="+a.addr, "--join-method=iam", "--token=iam-token", "--ca-pin="+a.pin, "--storage=memory")
	if r.code == 0 || !strings.Contains(r.stderr, "IAM join refused (ref ") {
		t.Fatalf("mount with credentials STS does not know: %s", r)
	}
	if strings.Contains(r.stderr, "111111111111") || strings.Contains(r.stderr, "InvalidClientTokenId") {
		t.Errorf("the agent learned AWS details:\n%s", r.stderr)
	}
	if !strings.Contains(a.logs.String(), "iam_sts_denied") {
		t.Errorf("the authority's log lacks the reason:\n%s", a.logs)
	}
	if mounted(dir) {
		t.Error("a refused join left a mount")
	}
}

func TestSTSEndpointWithoutTestModeIsRefused(t *testing.T) {
	r := run(t, "auth", "start", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--sts-endpoint=https://127.0.0.1:1/")
	if r.code == 0 || !strings.Contains(r.stderr, "--insecure-test-mode") {
		t.Fatalf("auth start with --sts-endpoint alone: %s", r)
	}
}

func TestIAMJoinWithFIPSSignsForTheFIPSEndpoint(t *testing.T) {
	a, sts := iamAuthority(t)
	iamEnv(t, iamE2ECaller)
	t.Setenv("AWS_REGION", "eu-west-1") // no FIPS endpoint there: us-east-1's is used
	dir := filepath.Join(publicDir(t), "machine-id")
	os.Mkdir(dir, 0o755)
	startMount(t, dir, "--auth-server="+a.addr, "--join-method=iam", "--token=iam-token", "--ca-pin="+a.pin, "--storage=memory", "--fips")
	if got := sts.Results(); len(got) == 0 || got[0].Host != "sts-fips.us-east-1.amazonaws.com" || got[0].Status != 200 {
		t.Errorf("STS stand-in saw %+v; want a verified request for sts-fips.us-east-1.amazonaws.com", got)
	}
	r := run(t, "mount", dir+"-other", "--auth-server="+a.addr, "--token=x", "--ca-pin="+a.pin, "--fips")
	if r.code != 3 || !strings.Contains(r.stderr, "--fips") {
		t.Errorf("--fips with the token join method: %s", r)
	}
}
