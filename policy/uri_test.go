package policy

import (
	"net/url"
	"path"
	"strings"
	"testing"
)

func TestCanonicalURI(t *testing.T) {
	for in, want := range map[string]string{
		"file:///secret/key.txt":               "file:///secret/key.txt",
		"file:///%73ecret/key.txt":             "file:///secret/key.txt",
		"file:///secret%2Fkey.txt":             "file:///secret/key.txt",
		"file:///secret%2fkey.txt":             "file:///secret/key.txt",
		"FILE:///secret/key.txt":               "file:///secret/key.txt",
		"file:///public/../secret/key.txt":     "file:///secret/key.txt",
		"file:///public/%2e%2e/secret/key.txt": "file:///secret/key.txt",
		"file:////secret//key.txt":             "file:///secret/key.txt",
		"file:///./secret/key.txt":             "file:///secret/key.txt",
		"file://localhost/secret/key.txt":      "file:///secret/key.txt",
		"file://Other.Host/secret/key.txt":     "file:///secret/key.txt",
		"file:/secret/key.txt":                 "file:///secret/key.txt",
		"file:///secret\\key.txt":              "file:///secret/key.txt",
		"file:///secret/key.txt#frag":          "file:///secret/key.txt",
		" file:///sec\tret/key.txt\n":          "file:///secret/key.txt",
		"file:///dir/":                         "file:///dir/",
		"file:///dir/sub/..":                   "file:///dir",
		"HTTPS://Example.COM:443/a/%41":        "https://example.com/a/A",
		"https://example.com:8443/a":           "https://example.com:8443/a",
		"db://Main/users?name=%61dmin":         "db://main/users?name=admin",
		"secret://db/password":                 "secret://db/password",
		"custom:opaque%20x":                    "custom:opaque x",
		"custom:a\\b":                          "custom:a\\b",
		"no scheme/%41":                        "no scheme/A",
		"file:///bad%zzescape":                 "file:///bad%zzescape",
		"file:///trailing%":                    "file:///trailing%",
		"file:etc/passwd":                      "file:///etc/passwd",
		"https:///internal.example.com/x":      "https://internal.example.com/x",
		"https:/internal.example.com/x":        "https://internal.example.com/x",
		"https:internal.example.com/x":         "https://internal.example.com/x",
		"https:\\\\internal.example.com\\x":    "https://internal.example.com/x",
	} {
		if got := CanonicalURI(in); got != want {
			t.Errorf("CanonicalURI(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestCanonicalURIIsGoReading: for a file URI that Go's url.Parse takes,
// the canonical form's path is the path a Go server reads from it,
// cleaned.
func TestCanonicalURIIsGoReading(t *testing.T) {
	for _, in := range []string{
		"file:///a/b", "file:///%61/b", "file:///a%2Fb", "file://h/a/../b", "file:/a//b", "FILE:///a/./b",
		"file:///a%20b/c", "file:///%2e%2e/a", "file:///a/b/",
	} {
		u, err := url.Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		want := path.Clean(u.Path)
		if strings.HasSuffix(u.Path, "/") && want != "/" {
			want += "/"
		}
		if got := strings.TrimPrefix(CanonicalURI(in), "file://"); got != want {
			t.Errorf("%q: canonical path %q, Go reads %q", in, got, want)
		}
	}
}

// TestDecideResourceReadings: a resource URI is allowed only when the
// rules allow it both as written and in its canonical form, and a URI
// pattern matches in both forms too.
func TestDecideResourceReadings(t *testing.T) {
	deny := &Policy{Default: Allow, Rules: []Rule{{Action: Deny, Kind: KindResource, Targets: []string{"file:///secret/*"}}}}
	allow := &Policy{Default: Deny, Rules: []Rule{{Action: Allow, Kind: KindResource, Targets: []string{"file:///public/*", "file:///docs/my%20notes.txt", "file:///star%2A"}}}}
	for _, p := range []*Policy{deny, allow} {
		if err := p.Compile(); err != nil {
			t.Fatal(err)
		}
	}
	for _, uri := range []string{
		"file:///secret/key.txt", "file:///%73ecret/key.txt", "file:///secret%2Fkey.txt", "FILE:///secret/key.txt",
		"file:///public/../secret/key.txt", "file://localhost/secret/key.txt", "file:////secret/key.txt",
	} {
		if a, _ := deny.Decide(nil, "resources/read", uri); a != Deny {
			t.Errorf("deny file:///secret/*: %s allowed", uri)
		}
		if deny.Allows(nil, KindResource, uri) {
			t.Errorf("deny file:///secret/*: %s listed", uri)
		}
		if a, _ := allow.Decide(nil, "resources/read", uri); a != Deny {
			t.Errorf("allow file:///public/* only: %s allowed", uri)
		}
	}
	for _, uri := range []string{"file:///public/a.txt", "file:///public/my%20doc.txt", "file:///docs/my%20notes.txt", "file:///docs/my notes.txt", "file:///star%2A", "file:///star*"} {
		if a, _ := allow.Decide(nil, "resources/read", uri); a != Allow {
			t.Errorf("allow rules: %s denied", uri)
		}
		if a, _ := deny.Decide(nil, "resources/read", uri); a != Allow {
			t.Errorf("deny file:///secret/*: %s denied", uri)
		}
	}
	// A decoded star in a pattern is a literal star, not a wildcard.
	if a, _ := allow.Decide(nil, "resources/read", "file:///starry"); a != Deny {
		t.Error("the pattern file:///star%2A matched file:///starry")
	}
}

func TestGlobURI(t *testing.T) {
	for _, c := range []struct {
		pattern, target string
		want            bool
	}{
		{"secret://*", "secret://db/password", true},
		{"secret://*", "SECRET://db/password", true},
		{"file:///secret/*", "file:///%73ecret/key", true},
		{"file:///docs/my%20notes.txt", "file:///docs/my notes.txt", true},
		{"file:///docs/my notes.txt", "file:///docs/my%20notes.txt", true},
		{"file:///star%2A", "file:///starry", false},
		{"file:///public/*", "file:///private/x", false},
	} {
		if got := GlobURI(c.pattern, c.target); got != c.want {
			t.Errorf("GlobURI(%q, %q) = %v, want %v", c.pattern, c.target, got, c.want)
		}
	}
}

// TestDecideResourceWHATWGReadings: the URI spellings a WHATWG parser
// (JavaScript servers) reads as a denied URI are denied, and a pattern
// whose escapes do not decode to UTF-8 still compiles and matches as
// written.
func TestDecideResourceWHATWGReadings(t *testing.T) {
	p := &Policy{Default: Allow, Rules: []Rule{
		{Action: Deny, Kind: KindResource, Targets: []string{"file:///etc/*"}},
		{Action: Deny, Kind: KindResource, Targets: []string{"https://internal.example.com/*"}},
		{Action: Deny, Kind: KindResource, Targets: []string{"file:///data/caf%E9/*"}},
	}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	for _, uri := range []string{
		"file:etc/passwd", "file:/etc/passwd", "https:///internal.example.com/x", "https:/internal.example.com/x",
		"https:internal.example.com/x", "file:///data/caf%E9/menu",
	} {
		if a, _ := p.Decide(nil, "resources/read", uri); a != Deny {
			t.Errorf("%s: allowed (canonical %q), want deny", uri, CanonicalURI(uri))
		}
	}
	if a, _ := p.Decide(nil, "resources/read", "https://public.example.com/x"); a != Allow {
		t.Error("https://public.example.com/x denied")
	}
}
