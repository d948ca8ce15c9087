package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/identity"
	"github.com/midfs/midfs/wire"
)

// dialAdmin connects to the admin socket of a test authority.
func dialAdmin(t testing.TB, s *Server) *admin.Client {
	t.Helper()
	ac, err := admin.Dial(s.cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ac.Close() })
	return ac
}

// adminRaw sends body as it is to the admin socket of s, as curl would,
// past the admin client's own checks. It returns the status and the error
// message of the answer.
func adminRaw(t *testing.T, s *Server, method, path string, body []byte) (int, string) {
	t.Helper()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", admin.SocketPath(s.cfg.DataDir))
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://midfs-admin"+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e wire.Error
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

// wantKind checks that err, returned through the real admin socket, has
// kind want and still says what went wrong (words).
func wantKind(t *testing.T, what string, err error, want admin.Kind, words string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want %s", what, want)
		return
	}
	if got := admin.KindOf(err); got != want {
		t.Errorf("%s: kind %s, want %s (%v)", what, got, want, err)
	}
	if !strings.Contains(err.Error(), words) {
		t.Errorf("%s: %q does not say %q", what, err, words)
	}
}

// Getting or removing what is not there is a 404: a script can tell it from
// a refused request.
func TestAdminNotFound(t *testing.T) {
	s := startTest(t)
	ac := dialAdmin(t, s)
	ctx := context.Background()
	for _, kind := range []string{"role", "bot", "node", "token"} {
		_, err := ac.Get(ctx, kind, "ghost")
		wantKind(t, "get "+kind, err, admin.NotFound, "not found")
		wantKind(t, "rm "+kind, ac.Remove(ctx, kind, "ghost"), admin.NotFound, "not found")
	}
	wantKind(t, "bots rm", ac.RemoveBot(ctx, "ghost"), admin.NotFound, "not found")
	wantKind(t, "nodes rm", ac.RemoveNode(ctx, "ghost"), admin.NotFound, "not found")
	wantKind(t, "bots unlock", ac.UnlockBot(ctx, "ghost"), admin.NotFound, "not found")
}

// Making what exists without --force, or changing what its state forbids,
// is a 409, and changes nothing.
func TestAdminConflict(t *testing.T) {
	s := startTest(t)
	ac := dialAdmin(t, s)
	ctx := context.Background()
	role := []byte("kind: role\nmetadata:\n  name: dev\nspec: {}\n")
	if _, err := ac.CreateYAML(ctx, role, false); err != nil {
		t.Fatal(err)
	}
	_, err := ac.CreateYAML(ctx, role, false)
	wantKind(t, "create existing role", err, admin.Conflict, "already exists; use --force")
	if _, err := ac.CreateYAML(ctx, role, true); err != nil {
		t.Errorf("create --force: %v", err)
	}
	if _, err := ac.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"dev"}}); err != nil {
		t.Fatal(err)
	}
	_, err = ac.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"dev"}})
	wantKind(t, "bots add existing", err, admin.Conflict, "already exists")
	wantKind(t, "rm role in use", ac.Remove(ctx, "role", "dev"), admin.Conflict, "used by bots robot")
	wantKind(t, "unlock unlocked bot", ac.UnlockBot(ctx, "robot"), admin.Conflict, "not locked")
	if _, err := ac.Get(ctx, "role", "dev"); err != nil {
		t.Errorf("the role in use was removed: %v", err)
	}
}

// Bad YAML, names, values or references are a 400.
func TestAdminInvalid(t *testing.T) {
	s := startTest(t)
	ac := dialAdmin(t, s)
	ctx := context.Background()
	_, err := ac.CreateYAML(ctx, []byte("kind: role\nmetadata: [\n"), false)
	wantKind(t, "bad YAML", err, admin.Invalid, "")
	_, err = ac.CreateYAML(ctx, []byte("kind: role\nmetadata:\n  name: \"bad name\"\nspec: {}\n"), false)
	wantKind(t, "bad role name", err, admin.Invalid, "bad role name")
	_, err = ac.Get(ctx, "gadgets", "")
	wantKind(t, "bad kind", err, admin.Invalid, "gadgets")
	_, err = ac.AddBot(ctx, admin.BotSpec{Name: "robot"})
	wantKind(t, "bot without roles", err, admin.Invalid, "--roles")
	_, err = ac.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"nosuchrole"}})
	wantKind(t, "bot with an unknown role", err, admin.Invalid, "nosuchrole")
	_, err = ac.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}, TokenName: "nosuchtoken"})
	wantKind(t, "bot with an unknown token", err, admin.Invalid, "nosuchtoken")
	wantKind(t, "bad node", ac.AddNode(ctx, identity.Node{Name: "n1", Addr: "bad addr\n"}), admin.Invalid, "")
	_, err = ac.Export(ctx, "nope")
	wantKind(t, "bad export type", err, admin.Invalid, "unknown export type")
	_, err = ac.SignHost(ctx, "not a key", []string{"h"}, 0)
	wantKind(t, "bad host key", err, admin.Invalid, "bad host public key")
	status, msg := adminRaw(t, s, "POST", "/v1/bots", []byte(`{"name": "robot", "extra": 1}`))
	if status != http.StatusBadRequest || !strings.Contains(msg, "bad request body") {
		t.Errorf("bad request body: %d %q, want 400 saying so", status, msg)
	}
}

// A failure of the authority itself is a 500, not the user's fault.
func TestAdminInternal(t *testing.T) {
	s := startTest(t)
	ac := dialAdmin(t, s)
	ctx := context.Background()
	s.st.Close() // the admin socket still serves; the store fails
	if status, msg := adminRaw(t, s, "GET", "/v1/resources/roles", nil); status != http.StatusInternalServerError {
		t.Errorf("get roles of a closed store: %d %q, want 500", status, msg)
	}
	_, err := ac.Get(ctx, "roles", "")
	wantKind(t, "get roles of a closed store", err, admin.Internal, "")
	_, err = ac.AddBot(ctx, admin.BotSpec{Name: "robot", Roles: []string{"access"}})
	wantKind(t, "bots add to a closed store", err, admin.Internal, "")
}
