package audit

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// The README documents every event type, every refusal code and every
// JSON field, so that what a SIEM is told to expect is what it gets.
func TestREADMEDocumentsTheTrail(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	var want []string
	for _, ty := range Types {
		want = append(want, ty.Type)
	}
	want = append(want, RefusalCodes...)
	for _, v := range []any{Event{}, Actor{}} {
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			want = append(want, name)
		}
	}
	for _, w := range want {
		if !strings.Contains(readme, "`"+w+"`") {
			t.Errorf("README lacks `%s`", w)
		}
	}
}
