package auth

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/auth/iam/ststest"
	"github.com/midfs/midfs/internal/testenv"
	"github.com/midfs/midfs/wire"
)

// startNodeIAM is startIAM with the iam token of nodes (env=prod).
func startNodeIAM(t *testing.T) *iamEnv {
	t.Helper()
	e := startIAM(t)
	if _, err := e.s.CreateYAML(context.Background(), []byte(testenv.IAMNodeTokenYAML), false); err != nil {
		t.Fatalf("create the iam token of nodes: %v", err)
	}
	return e
}

// joinNode sends an IAM join as the node info (nil: as a bot), signed by
// caller, presenting the identity held (nil: none) as a node joining again does.
func (e *iamEnv) joinNode(t *testing.T, token string, info *wire.NodeInfo, caller ststest.Caller, held *botID) (*botID, int, string) {
	t.Helper()
	ch := e.challenge(t)
	key, pub := newKey(t)
	c := newClient(t, e.s, nil, nil)
	if held != nil {
		c = newClient(t, e.s, held.key, held.cert)
	}
	defer c.close()
	var bi wire.BotIdentity
	req := wire.IAMJoinRequest{Token: token, Challenge: ch, STSRequest: signed(t, caller, ch), PublicKey: pub, Node: info}
	status, msg, err := c.do("POST", wire.PathIAMJoin, req, &bi)
	if err != nil {
		t.Fatal(err)
	}
	if status == 200 && (bi.Renewable || bi.BotName != nodeBot(info.Name)) {
		t.Fatalf("node identity %q renewable=%v; want node:%s, not renewable (it joins again)", bi.BotName, bi.Renewable, info.Name)
	}
	return &botID{key: key, pub: pub, cert: bi.TLSCert, gen: bi.Generation}, status, msg
}

func instanceOf(t *testing.T, id *botID) string {
	t.Helper()
	inst, _ := subjectValue(mustParseCert(t, id.cert).Subject, oidBotInstance)
	return inst
}

// A node joins with an iam token of nodes, as an IAM bot does, and is
// then a node like any: host certificate, heartbeats, in what bots see,
// with the token's labels over its own. Joining again with its current
// identity keeps its name (and instance) while it is online, and picks up
// the token's labels as they are now; a machine that cannot present that
// identity is refused the name. Each join is a node.joined event with
// method iam and the AWS identity.
func TestNodeJoinsWithIAM(t *testing.T) {
	e := startNodeIAM(t)
	ctx := context.Background()
	bot := join(t, e.s, addBot(t, e.s, "viewer", []string{"access"}, []string{"root"}).Token)
	info := &wire.NodeInfo{Name: "web", Addr: "10.0.0.1:22", Labels: map[string]string{"env": "dev", "team": "web"}}
	first, status, msg := e.joinNode(t, "iam-nodes", info, iamBot, nil)
	if status != 200 {
		t.Fatalf("node IAM join: %d %s\n%s", status, msg, e.log)
	}
	if _, status, msg := first.hostCert(t, e.s, hostKey(t)); status != 200 {
		t.Fatalf("host certificate: %d %s", status, msg)
	}
	beat := func(id *botID) *wire.HeartbeatAnswer {
		t.Helper()
		ans, status, msg := id.heartbeat(t, e.s, wire.Heartbeat{Addr: info.Addr, Labels: info.Labels, IntervalSeconds: 10})
		if status != 200 {
			t.Fatalf("heartbeat: %d %s", status, msg)
		}
		return ans
	}
	if ans := beat(first); !mapsEqual(ans.Labels, map[string]string{"env": "prod", "team": "web"}) {
		t.Errorf("labels %v; want the token's env=prod over the node's env=dev", ans.Labels)
	}
	if names := listNames(t, e.s, bot); !slices.Equal(names, []string{"web"}) {
		t.Fatalf("bots see %v", names)
	}

	// Another machine allowed by the token, without the identity: the
	// name is held by a node online.
	if _, status, msg := e.joinNode(t, "iam-nodes", info, iamBot, nil); status != 409 || !strings.Contains(msg, "online") || strings.Contains(msg, "\n") {
		t.Errorf("a second join as web while it heartbeats: %d %q; want 409 with one line", status, msg)
	}

	// The token's labels change; the node joins again as itself.
	changed := strings.Replace(testenv.IAMNodeTokenYAML, "env: prod", "env: stage", 1)
	if _, err := e.s.CreateYAML(ctx, []byte(changed), true); err != nil {
		t.Fatal(err)
	}
	again, status, msg := e.joinNode(t, "iam-nodes", info, iamBot, first)
	if status != 200 {
		t.Fatalf("joining again with the current identity: %d %s", status, msg)
	}
	if instanceOf(t, again) != instanceOf(t, first) {
		t.Error("joining again started a new instance: the identity held until then would be refused")
	}
	if ans := beat(again); ans.Labels["env"] != "stage" {
		t.Errorf("labels after joining again %v; want the token's env=stage", ans.Labels)
	}

	joins := ofType(trailOf(t, e.s), audit.NodeJoined)
	if len(joins) != 2 {
		t.Fatalf("%d node.joined events, want 2:\n%s", len(joins), dumpEvents(joins))
	}
	for i, j := range joins {
		if j.Name != "web" || j.Bot != "" || j.Method != wire.JoinIAM || j.Token != "iam-nodes" || j.AWSAccount != iamBot.Account ||
			j.AWSARN != iamBot.Arn || j.NodeAddr != info.Addr || j.Serial == "" || j.Instance != instanceOf(t, first) {
			t.Errorf("node.joined %d: %+v", i, j)
		}
	}
	if joins[0].Labels["env"] != "prod" || joins[1].Labels["env"] != "stage" {
		t.Errorf("node.joined labels %v then %v; want the token's of the time", joins[0].Labels, joins[1].Labels)
	}
}

// Once a node's heartbeats have stopped for its stay, another machine the
// token allows may take its name: a new instance, and the identity of the
// earlier holder is refused from then on. An AWS identity the token does
// not allow is refused as for bots.
func TestNodeIAMJoinTakesOverALeftNameAndRefusesStrangers(t *testing.T) {
	e := startNodeIAM(t)
	info := &wire.NodeInfo{Name: "web", Addr: "10.0.0.1:22"}
	first, status, msg := e.joinNode(t, "iam-nodes", info, iamBot, nil)
	if status != 200 {
		t.Fatalf("join: %d %s", status, msg)
	}
	if _, status, msg := first.heartbeat(t, e.s, wire.Heartbeat{Addr: info.Addr, IntervalSeconds: 10}); status != 200 {
		t.Fatalf("heartbeat: %d %s", status, msg)
	}
	if _, status, msg := e.joinNode(t, "iam-nodes", info, iamOtherAccount, nil); status != 403 || !strings.Contains(msg, "IAM join refused (ref ") {
		t.Errorf("an AWS account the token does not allow: %d %q", status, msg)
	}
	e.clock.Advance(16 * time.Second) // past 1.5 heartbeat intervals
	second, status, msg := e.joinNode(t, "iam-nodes", info, iamBot, nil)
	if status != 200 {
		t.Fatalf("join after the first holder left: %d %s", status, msg)
	}
	if instanceOf(t, second) == instanceOf(t, first) {
		t.Error("a first join kept the earlier holder's instance")
	}
	if _, status, _ := first.heartbeat(t, e.s, wire.Heartbeat{Addr: info.Addr, IntervalSeconds: 10}); status != 403 {
		t.Errorf("the earlier holder's heartbeat: %d; want 403 (superseded)", status)
	}
	if _, status, msg := second.heartbeat(t, e.s, wire.Heartbeat{Addr: info.Addr, IntervalSeconds: 10}); status != 200 {
		t.Errorf("the new holder's heartbeat: %d %s", status, msg)
	}
}

// A token joins what its role says: a bot's iam token does not join a
// node, nor an iam token of nodes a bot (neither `midfs mount` nor `bots
// add --token`). Each refusal is one line saying which, and is recorded.
func TestIAMTokenRolesAreKept(t *testing.T) {
	e := startNodeIAM(t)
	info := &wire.NodeInfo{Name: "web", Addr: "10.0.0.1:22"}
	if _, status, msg := e.joinNode(t, "iam-token", info, iamBot, nil); status != 400 || !strings.Contains(msg, "joins a bot") || strings.Contains(msg, "\n") {
		t.Errorf("node with a bot's iam token: %d %q", status, msg)
	}
	ch := e.challenge(t)
	if _, status, msg := e.join(t, "iam-nodes", ch, signed(t, iamBot, ch)); status != 400 || !strings.Contains(msg, "joins nodes") || strings.Contains(msg, "\n") {
		t.Errorf("bot with the iam token of nodes: %d %q", status, msg)
	}
	_, err := e.s.AddBot(context.Background(), admin.BotSpec{Name: "other", Roles: []string{"access"}, TokenName: "iam-nodes"})
	if err == nil || !strings.Contains(err.Error(), "joins nodes") {
		t.Errorf("bots add --token=iam-nodes: %v", err)
	}
	waitTrail(t, e.s, "two refused IAM joins for the token's role", func(evs []audit.Event) bool {
		n := 0
		for _, ev := range ofType(evs, audit.JoinRefused) {
			if ev.Method == wire.JoinIAM && ev.Detail == "token_role" && ev.Code == audit.CodeTokenWrongRole && ev.Token != "" {
				n++
			}
		}
		return n == 2
	})
	if res, _ := e.s.Get(context.Background(), "nodes", ""); len(res.Nodes) != 0 {
		t.Errorf("refused joins left nodes: %+v", res.Nodes)
	}
}
