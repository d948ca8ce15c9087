package policy

import (
	"strings"
	"testing"
)

// The one syntax serves ARNs and label values alike.
func TestGlobMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"arn:aws:sts::111111111111:assumed-role/bot/i-*", "arn:aws:sts::111111111111:assumed-role/bot/i-0abc", true},
		{"arn:aws:sts::111111111111:assumed-role/bot/i-*", "arn:aws:sts::111111111111:assumed-role/bot/", false},
		{"arn:aws:sts::111111111111:assumed-role/bot/i-*", "arn:aws:sts::111111111111:assumed-role/botx/i-0abc", false},
		{"arn:aws:sts::111111111111:assumed-role/bot/i-*", "arn:aws:sts::111111111111:assumed-role/bot/i-", true},
		{"arn:aws:iam::?????????????:user/ci", "arn:aws:iam::1111111111111:user/ci", true},
		{"arn:aws:iam::?????????????:user/ci", "arn:aws:iam::111111111111:user/ci", false},
		{"*", "", true},
		{"", "", true},
		{"", "x", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"*.*", "a.b", true},
		{"a.c", "abc", false}, // no regular expressions
		{"[a]", "a", false},   // no character classes
		{"*a*a*a*a*a*b", strings.Repeat("a", 200), false},
		{"?", "é", true}, // one character, not one byte
		{"web-?", "web-1", true},
		{"web-?", "web-12", false},
		{"prod", "production", false}, // no pattern characters: equal or nothing
	} {
		if got := Match(tc.pattern, tc.s); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}
