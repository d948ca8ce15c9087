package output

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/midfs/midfs/auth/audit"
)

// A text line keeps every field on one line, quoting what has spaces,
// quotes or line breaks; JSON is one object per line.
func TestEventLine(t *testing.T) {
	e := audit.Event{ID: 7, Time: time.Date(2026, 12, 1, 8, 0, 0, 123456789, time.UTC), Type: audit.JoinRefused,
		Addr: "10.0.0.9:41234", Method: "token", Code: audit.CodeTokenUsed, Ref: "3f9a1c2e",
		Message: "token robot-ab was already used\nat \"noon\"", Principals: []string{"root", "deploy"}}
	raw, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := EventLine(&b, raw, "text"); err != nil {
		t.Fatal(err)
	}
	want := `2026-12-01T08:00:00.123Z bot.join_refused addr=10.0.0.9:41234 method=token principals=root,deploy code=token_used ref=3f9a1c2e message="token robot-ab was already used\nat \"noon\""` + "\n"
	if b.String() != want {
		t.Errorf("text:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	if err := EventLine(&b, raw, "json"); err != nil {
		t.Fatal(err)
	}
	if bytes.Count(b.Bytes(), []byte("\n")) != 1 || !bytes.HasPrefix(b.Bytes(), []byte(`{"id":7,"time":"2026-12-01T08:00:00.123456789Z","type":"bot.join_refused",`)) {
		t.Errorf("json: %s", b.String())
	}
}
