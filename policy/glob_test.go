package policy

import (
	"strings"
	"testing"
	"time"
)

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern, target string
		want            bool
	}{
		{"read_file", "read_file", true},
		{"read_file", "read_files", false},
		{"read_*", "read_file", true},
		{"read_*", "read_", true},
		{"read_*", "rea", false},
		{"*_file", "read_file", true},
		{"*_file", "read_files", false},
		{"*", "", true},
		{"**", "anything/at/all", true},
		{"file:///etc/*", "file:///etc/passwd", true},
		{"file:///etc/*", "file:///etc/ssl/certs/x.pem", true},
		{"file:///*/secret", "file:///a/b/secret", true},
		{"file:///*/secret", "file:///a/b/secrets", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"a?c", "abbc", false},
		{"a?c", "aéc", true}, // ? is one character, not one byte
		{"a??c", "aéc", false},
		{"*é", "xé", true},
		{"?", "", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"a*b*c", "abcbc", true},
		{"*a*a*b", "aaab", true},
		{"*a*a*b", "aab", true},
		{"*a*a*b", "ab", false},
		{"*ab", "aab", true},
		{"*aab*", "aaab", true},
		{"*?", "", false},
		{"*?", "x", true},
		{`delete\*`, "delete*", true},
		{`delete\*`, "delete_all", false},
		{`what\?`, "what?", true},
		{`what\?`, "whatx", false},
		{`back\\slash`, `back\slash`, true},
		{`\a\b`, "ab", true},
		{`\é`, "é", true},
		{`*\*`, "x*", true},
		{`*\*`, "x", false},
		{"tools/*", "tools/call", true},
		{"", "", false},          // malformed: matches nothing
		{`oops\`, "oops", false}, // malformed
	}
	for _, tt := range tests {
		if got := Glob(tt.pattern, tt.target); got != tt.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", tt.pattern, tt.target, got, tt.want)
		}
	}
}

func TestValidGlob(t *testing.T) {
	tests := []struct {
		pattern string
		ok      bool
	}{
		{"*", true},
		{"a?b*", true},
		{`a\*`, true},
		{`a\\`, true},
		{"", false},
		{`a\`, false},
		{"a\xffb", false},
	}
	for _, tt := range tests {
		if err := ValidGlob(tt.pattern); (err == nil) != tt.ok {
			t.Errorf("ValidGlob(%q) = %v, want ok %v", tt.pattern, err, tt.ok)
		}
	}
}

// TestGlobPathological checks that matching does not backtrack
// exponentially: a pattern of many stars against a long run that almost
// matches must finish in well under a second.
func TestGlobPathological(t *testing.T) {
	target := strings.Repeat("a", 100000)
	patterns := []string{
		"*a*a*a*a*a*b",
		strings.Repeat("*a", 50) + "*b",
		strings.Repeat("a*", 50) + "b",
		strings.Repeat("?*", 30) + "b",
	}
	for _, p := range patterns {
		start := time.Now()
		if Glob(p, target) {
			t.Errorf("Glob(%.20q…) matched a target without b", p)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("Glob(%.20q…) took %v", p, d)
		}
	}
	if !Glob("*a*a*a*a*a*b", target+"b") {
		t.Error("pathological pattern does not match its target")
	}
}

// TestGlobAgainstReference compares the matcher with a plain recursive
// definition of the same globs on short inputs.
func TestGlobAgainstReference(t *testing.T) {
	alphabet := []string{"a", "b", "*", "?", `\*`, "é"}
	targets := []string{"", "a", "b", "ab", "ba", "aab", "abab", "*", "a*b", "é", "aéb", "bbbb", "a?b"}
	var patterns []string
	var gen func(prefix string, n int)
	gen = func(prefix string, n int) {
		if prefix != "" {
			patterns = append(patterns, prefix)
		}
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(prefix+c, n-1)
		}
	}
	gen("", 4)
	for _, p := range patterns {
		for _, s := range targets {
			if got, want := Glob(p, s), refGlob([]rune(p), []rune(s)); got != want {
				t.Errorf("Glob(%q, %q) = %v, reference says %v", p, s, got, want)
			}
		}
	}
}

func refGlob(p, s []rune) bool {
	if len(p) == 0 {
		return len(s) == 0
	}
	switch p[0] {
	case '*':
		for i := 0; i <= len(s); i++ {
			if refGlob(p[1:], s[i:]) {
				return true
			}
		}
		return false
	case '?':
		return len(s) > 0 && refGlob(p[1:], s[1:])
	case '\\':
		return len(p) > 1 && len(s) > 0 && p[1] == s[0] && refGlob(p[2:], s[1:])
	}
	return len(s) > 0 && p[0] == s[0] && refGlob(p[1:], s[1:])
}
