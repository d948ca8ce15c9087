package joiner_test

// The IAM join through the real agent code: joiner.Join and Agent.Run
// against auth.Start in test mode, whose STS endpoint is the ststest
// stand-in that checks SigV4 signatures. AWS credentials come from the
// environment, as on a machine with AWS_* variables set.

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/midfs/midfs/auth"
	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/iam/ststest"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/joiner"
	"github.com/midfs/midfs/wire"
)

var iamCaller = ststest.Caller{
	AccessKeyID: "ASIAIAMJOINTEST00001", SecretAccessKey: "iam-join-test-secret/EXAMPLEKEY", SessionToken: "iam-join-session",
	Account: "111111111111", Arn: "arn:aws:sts::111111111111:assumed-role/midfs-bot/i-0123456789abcdef0",
}

// startIAMAuthority runs an authority whose STS is a stand-in knowing
// iamCaller, with the seed guide's iam-token and bot robot.
func startIAMAuthority(t *testing.T, log *testenv.LogBuffer) (*auth.Server, *ststest.Server) {
	t.Helper()
	sts := ststest.Start(iamCaller)
	t.Cleanup(sts.Close)
	s, err := auth.Start(context.Background(), auth.Config{
		DataDir: filepath.Join(t.TempDir(), "auth"), Listen: "127.0.0.1:0", ClusterName: "iam.example",
		Logger: slog.New(slog.NewTextHandler(log, nil)), STSEndpoint: sts.URL, InsecureTestMode: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	if _, err := s.CreateYAML(ctx, []byte(testenv.IAMTokenYAML), false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, Logins: []string{"root"}, TokenName: "iam-token"}); err != nil {
		t.Fatal(err)
	}
	return s, sts
}

// awsEnv sets test AWS credentials in the environment and nothing else
// the SDK could pick up.
func awsEnv(t *testing.T, c ststest.Caller) {
	testenv.IsolateAWS(t)
	t.Setenv("AWS_ACCESS_KEY_ID", c.AccessKeyID)
	t.Setenv("AWS_SECRET_ACCESS_KEY", c.SecretAccessKey)
	t.Setenv("AWS_SESSION_TOKEN", c.SessionToken)
	t.Setenv("AWS_REGION", "us-east-1")
}

func TestIAMJoinThroughTheAgent(t *testing.T) {
	log := &testenv.LogBuffer{}
	s, sts := startIAMAuthority(t, log)
	awsEnv(t, iamCaller)
	agent, err := joiner.Join(context.Background(), joiner.Config{
		AuthServer: s.Addr(), Token: "iam-token", JoinMethod: wire.JoinIAM, CAPin: s.CAPin(),
		Logger: slog.New(slog.NewTextHandler(log, nil)), JoinTimeout: 10 * time.Second, RenewInterval: 30 * time.Minute,
	})
	if err != nil {
		t.Fatalf("join: %v\n%s", err, log)
	}
	id, _ := agent.Current()
	cert := sshCertOf(t, id)
	if cert.KeyId != "bot-robot" || len(cert.ValidPrincipals) != 1 || cert.ValidPrincipals[0] != "root" {
		t.Errorf("output certificate: key id %q, principals %v", cert.KeyId, cert.ValidPrincipals)
	}

	// Renewal of an iam bot is a fresh join, with no stored state.
	ctx, cancel := context.WithCancel(context.Background())
	published := make(chan *identity.Identity, 4)
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(ctx, func(id *identity.Identity, _ []identity.Node) {
			select {
			case published <- id:
			default:
			}
		})
	}()
	agent.RenewNow()
	var next *identity.Identity
	select {
	case next = <-published:
	case <-time.After(30 * time.Second):
		t.Fatalf("no renewal within 30s\n%s", log)
	}
	cancel()
	<-done
	if sshCertOf(t, next).Serial == cert.Serial && bytes.Equal(sshCertOf(t, next).Key.Marshal(), cert.Key.Marshal()) {
		t.Error("renewal published the same certificate")
	}
	joins := 0
	for _, r := range sts.Results() {
		if r.Status == 200 {
			joins++
		}
	}
	if joins < 2 {
		t.Errorf("STS verified %d joins, want the first join and the renewal: %+v", joins, sts.Results())
	}
	if strings.Contains(log.String(), iamCaller.SecretAccessKey) {
		t.Error("the AWS secret key appears in a log")
	}
}

func TestIAMJoinRefusedByTheAuthorityIsFinal(t *testing.T) {
	log := &testenv.LogBuffer{}
	s, _ := startIAMAuthority(t, log)
	stranger := iamCaller
	stranger.SecretAccessKey = "not-the-secret-sts-knows"
	awsEnv(t, stranger)
	_, err := joiner.Join(context.Background(), joiner.Config{
		AuthServer: s.Addr(), Token: "iam-token", JoinMethod: wire.JoinIAM, CAPin: s.CAPin(),
		Logger: slog.New(slog.NewTextHandler(log, nil)), JoinTimeout: 10 * time.Second,
	})
	if !errors.Is(err, joiner.ErrRefused) || !strings.Contains(err.Error(), "IAM join refused (ref ") {
		t.Fatalf("got %v, want ErrRefused with the authority's line", err)
	}
	if !strings.Contains(log.String(), "code=iam_sts_denied") {
		t.Errorf("authority log lacks the reason:\n%s", log)
	}
}

func sshCertOf(t *testing.T, id *identity.Identity) *ssh.Certificate {
	t.Helper()
	if id == nil || id.SSHCert == nil {
		t.Fatal("no identity")
	}
	return id.SSHCert
}
