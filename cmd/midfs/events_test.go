package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/admin"
	"github.com/midfs/midfs/auth/audit"
	"github.com/midfs/midfs/cmd/midfs/internal/cliconfig"
)

// `midfs events` lists what admin commands did, who did it and through
// which socket, as JSON lines with the documented fields or as text, and
// filters by type, bot and time.
func TestEventsCommand(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	mustCLI(t, dir, "bots", "add", "robot", "--roles=access", "--logins=root")
	mustCLI(t, dir, "nodes", "add", "web", "--addr=10.0.0.1:22", "--labels=env=prod")

	var evs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(mustCLI(t, dir, "events", "--format=json")), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		evs = append(evs, m)
	}
	var types []string
	for _, e := range evs {
		types = append(types, e["type"].(string))
	}
	if !slices.Equal(types, []string{audit.BotCreated, audit.TokenCreated, audit.NodeCreated}) {
		t.Fatalf("events: %v", types)
	}
	created := evs[0]
	actor, _ := created["actor"].(map[string]any)
	if actor == nil || actor["uid"] != float64(os.Getuid()) || actor["pid"] != float64(os.Getpid()) || actor["socket"] != admin.SocketPath(dir) {
		t.Errorf("bot.created actor: %v", created["actor"])
	}
	var keys []string
	for k := range created {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{"actor", "bot", "id", "logins", "roles", "time", "type"}; !slices.Equal(keys, want) {
		t.Errorf("bot.created has fields %v, want %v", keys, want)
	}
	if _, err := time.Parse(time.RFC3339Nano, created["time"].(string)); err != nil {
		t.Errorf("time: %v", err)
	}

	text := mustCLI(t, dir, "events")
	line := regexp.MustCompile(`(?m)^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z node\.created actor\.uid=\d+ (actor\.user=\S+ )?actor\.pid=\d+ actor\.socket=\S+ name=web labels=env=prod node_addr=10\.0\.0\.1:22$`)
	if !line.MatchString(text) {
		t.Errorf("text lines:\n%s", text)
	}
	if out := mustCLI(t, dir, "events", "--type=node.created,node.removed"); strings.Count(out, "\n") != 1 || !strings.Contains(out, "node.created") {
		t.Errorf("--type=node.created,node.removed:\n%s", out)
	}
	if out := mustCLI(t, dir, "events", "--bot=robot"); strings.Count(out, "\n") != 2 || strings.Contains(out, "node.created") {
		t.Errorf("--bot=robot:\n%s", out)
	}
	if out := mustCLI(t, dir, "events", "--since=7d", "--until=1h"); out != "" {
		t.Errorf("events until an hour ago:\n%s", out)
	}
}

// Bad filters get one line naming what is wrong, exit 3, and nothing is
// printed.
func TestEventsBadInput(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	for _, args := range [][]string{
		{"--since=yesterday"},
		{"--since=-5m"},
		{"--until=soon"},
		{"--type=bot.exploded"},
		{"--type=bot.joined,nope"},
		{"--format=yaml"},
		{"--since=1h", "--until=2h"},
		{"--follow", "--until=1h"},
		{"extra"},
	} {
		r := runCLI(t, dir, append([]string{"events"}, args...)...)
		if r.code != exitUsage || r.out != "" || r.err == "" || strings.Contains(r.err, "\n") {
			t.Errorf("events %v: %s", args, r)
		}
	}
	if r := runCLI(t, dir, "events", "--type=bot.exploded"); !strings.Contains(r.err, `unknown event type "bot.exploded"`) || !strings.Contains(r.err, audit.JoinRefused) {
		t.Errorf("an unknown type is not named, or the known ones not listed: %s", r)
	}
}

// --follow prints the events that come after the listing, as they come,
// until interrupted.
func TestEventsFollow(t *testing.T) {
	s := startAuth(t)
	dir := s.DataDir()
	mustCLI(t, dir, "bots", "add", "before", "--roles=access")
	out := &syncBuffer{}
	app := newApp()
	app.Writer, app.ErrWriter = out, out
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- app.RunContext(ctx, cliconfig.PermuteArgs(app, []string{"midfs", "events", "--follow", "--type=bot.created", "--data-dir", dir}))
	}()
	waitOutput(t, out, "bot=before")
	mustCLI(t, dir, "bots", "add", "after", "--roles=access")
	waitOutput(t, out, "bot=after")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("events --follow, interrupted: %v", err)
	}
	if got := out.String(); strings.Count(got, "\n") != 2 || strings.Index(got, "bot=before") > strings.Index(got, "bot=after") {
		t.Errorf("followed:\n%s", got)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitOutput(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output never showed %q:\n%s", want, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
