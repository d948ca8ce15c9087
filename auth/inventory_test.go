package auth

import (
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/policy"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// listAnswer is one answer to GET /v1/nodes.
type listAnswer struct {
	status int
	etag   string
	names  []string
	body   int // bytes
}

// pollNodes asks for the node list as a bot, with If-None-Match ifNone
// unless it is empty.
func pollNodes(t *testing.T, s *Server, key crypto.Signer, cert []byte, ifNone string) listAnswer {
	t.Helper()
	resp, data := conditionalGet(t, s, key, cert, wire.PathNodes, ifNone)
	a := listAnswer{status: resp.StatusCode, etag: resp.Header.Get("ETag"), body: len(data)}
	if resp.StatusCode == 200 {
		var list wire.NodeList
		if err := json.Unmarshal(data, &list); err != nil {
			t.Fatalf("node list: %v", err)
		}
		for _, n := range list.Nodes {
			a.names = append(a.names, n.Name)
		}
	}
	return a
}

// conditionalGet asks for path with a client identity (none if key is
// nil), with If-None-Match ifNone unless it is empty; it returns the
// answer and its body.
func conditionalGet(t *testing.T, s *Server, key crypto.Signer, cert []byte, path, ifNone string) (*http.Response, []byte) {
	t.Helper()
	c := newClient(t, s, key, cert)
	defer c.close()
	req, _ := http.NewRequest("GET", "https://"+s.Addr()+path, nil)
	if ifNone != "" {
		req.Header.Set("If-None-Match", ifNone)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, data
}

// TestNodeListETag: an unchanged list is answered 304 with no body; a
// change of anything that decides a bot's list (nodes added or removed, a
// role's node_labels, the bot's roles) gives a new ETag and the new list;
// unrelated changes (another bot, a token) keep the ETag, so that they do
// not make every agent fetch its list again.
func TestNodeListETag(t *testing.T) {
	s := startTest(t)
	ctx := context.Background()
	for _, n := range []identity.Node{
		{Name: "web", Addr: "10.0.0.1:22", Labels: map[string]string{"env": "prod"}},
		{Name: "db", Addr: "10.0.0.2:22", Labels: map[string]string{"env": "dev"}},
	} {
		if err := s.AddNode(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	role := func(env string) {
		t.Helper()
		yaml := fmt.Sprintf("kind: role\nversion: v7\nmetadata:\n  name: env-only\nspec:\n  allow:\n    node_labels:\n      env: %s\n", env)
		if _, err := s.CreateYAML(ctx, []byte(yaml), true); err != nil {
			t.Fatal(err)
		}
	}
	role("prod")
	id := join(t, s, addBot(t, s, "robot", []string{"env-only"}, nil).Token)
	poll := func(ifNone string) listAnswer { return pollNodes(t, s, id.key, id.cert, ifNone) }

	first := poll("")
	if first.status != 200 || first.etag == "" || !slices.Equal(first.names, []string{"web"}) {
		t.Fatalf("first list: %+v; want 200 with an ETag and node web", first)
	}
	if a := poll(first.etag); a.status != http.StatusNotModified || a.body != 0 || a.etag != first.etag {
		t.Fatalf("unchanged list: %+v; want 304, no body, the same ETag", a)
	}
	if a := poll(`"something-else"`); a.status != 200 {
		t.Errorf("another ETag: %+v; want the full list", a)
	}

	// Unrelated changes keep the ETag.
	addBot(t, s, "other", []string{"access"}, nil)
	if _, err := s.CreateYAML(ctx, []byte("kind: token\nversion: v2\nmetadata:\n  name: aws\nspec:\n  join_method: iam\n  bot_name: other\n  allow:\n  - aws_account: \"123456789012\"\n"), false); err != nil {
		t.Fatal(err)
	}
	if a := poll(first.etag); a.status != http.StatusNotModified {
		t.Errorf("after adding another bot and a token: %+v; want 304", a)
	}

	tag := first.etag
	changed := func(what string, want ...string) {
		t.Helper()
		a := poll(tag)
		if a.status != 200 || a.etag == tag || !slices.Equal(a.names, want) {
			t.Fatalf("after %s: %+v; want 200, a new ETag, nodes %v", what, a, want)
		}
		if b := poll(a.etag); b.status != http.StatusNotModified {
			t.Fatalf("after %s, polling with the new ETag: %+v; want 304", what, b)
		}
		tag = a.etag
	}
	if err := s.AddNode(ctx, identity.Node{Name: "api", Addr: "10.0.0.3:22", Labels: map[string]string{"env": "prod"}}); err != nil {
		t.Fatal(err)
	}
	changed("a node was added", "api", "web")
	if err := s.Remove(ctx, policy.KindNode, "web"); err != nil {
		t.Fatal(err)
	}
	changed("a node was removed", "api")
	role("dev")
	changed("the role's node_labels changed", "db")
	if _, err := s.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, Replace: true}); err != nil {
		t.Fatal(err)
	}
	changed("the bot's roles changed", "api", "db")
	if err := s.Remove(ctx, policy.KindNode, "db"); err != nil {
		t.Fatal(err)
	}
	changed("a node it sees was removed", "api")
}

// The ETag names the stored inventory: an agent's tag still matches after
// the authority restarts (nothing to fetch again), and never matches a
// state made anew, even at the same version number.
func TestNodeListETagOutlivesARestartNotARebuild(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: testLogger(t), ClusterName: "one.example"}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, nil).Token)
	before := pollNodes(t, s, id.key, id.cert, "")
	s.Close()
	s2, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if a := pollNodes(t, s2, id.key, id.cert, before.etag); a.status != 304 || a.etag != before.etag {
		t.Errorf("after a restart: %+v; want 304 with %s", a, before.etag)
	}
	if err := s2.AddNode(context.Background(), identity.Node{Name: "web", Addr: "10.0.0.1:22"}); err != nil {
		t.Fatal(err)
	}
	if a := pollNodes(t, s2, id.key, id.cert, before.etag); a.status != 200 || a.etag == before.etag {
		t.Errorf("after a change: %+v; want 200 and another ETag than %s", a, before.etag)
	}
	cfg.DataDir = t.TempDir()
	s3, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	id3 := join(t, s3, addBot(t, s3, "robot", []string{"access"}, nil).Token)
	rebuilt := pollNodes(t, s3, id3.key, id3.cert, "")
	version := func(tag string) string { return tag[strings.LastIndex(tag, "-"):] }
	if version(rebuilt.etag) != version(before.etag) || rebuilt.etag == before.etag {
		t.Errorf("a rebuilt state at the version of the first: ETag %s, first %s; want the same version and another tag", rebuilt.etag, before.etag)
	}
}

// A list far above the old 64 KiB cap arrives whole.
func TestNodeListOfManyNodes(t *testing.T) {
	const n = 20000
	s := startTest(t)
	addNodes(t, s, n)
	id := join(t, s, addBot(t, s, "robot", []string{"access"}, nil).Token)
	a := pollNodes(t, s, id.key, id.cert, "")
	if a.status != 200 || len(a.names) != n || a.names[0] != "node-00000" || a.names[n-1] != fmt.Sprintf("node-%05d", n-1) {
		t.Fatalf("list of %d nodes: status %d, %d names", n, a.status, len(a.names))
	}
	if a.body <= wire.MaxBody {
		t.Errorf("the list is %d bytes; the test needs more than %d", a.body, wire.MaxBody)
	}
}

// `midfs get nodes` lists an inventory larger than the admin request cap
// (4 MiB; 50,000 nodes are about 5.5 MB of answer).
func TestAdminGetOfManyNodes(t *testing.T) {
	const n = 50000
	s := startTest(t)
	addNodes(t, s, n)
	ac := dialAdmin(t, s)
	res, err := ac.Get(context.Background(), "nodes", "")
	if err != nil || len(res.Nodes) != n {
		t.Fatalf("get nodes: %v; want %d nodes", err, n)
	}
}

// addNodes stores n nodes node-00000... in one Create, as `midfs create -f`
// of a file with many nodes does.
func addNodes(t testing.TB, s *Server, n int) {
	t.Helper()
	res := &policy.Resources{}
	for i := range n {
		res.Nodes = append(res.Nodes, policy.NodeResource{Kind: policy.KindNode, Version: "v2",
			Metadata: policy.Metadata{Name: fmt.Sprintf("node-%05d", i), Labels: policy.LabelMap{"env": "prod"}},
			Spec:     policy.NodeSpec{Addr: fmt.Sprintf("10.%d.%d.%d:22", i>>16&255, i>>8&255, i&255)}})
	}
	if _, err := s.Create(context.Background(), res, false); err != nil {
		t.Fatal(err)
	}
}
