package auth

import (
	"strings"
	"testing"

	"github.com/mcpgate/mcpgate/mcp"
)

// messagesOf reads the JSON-RPC messages of body as the proxy does.
func messagesOf(t *testing.T, body string) []mcp.Envelope {
	t.Helper()
	var p mcp.Peek
	if err := mcp.ParseEnvelope([]byte(body), true, &p); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return p.Messages
}

// TestCheckScopes: every message of a request, each member of a batch,
// must be allowed by the token's scopes under scope_rules; a request
// without messages (a GET) is checked as a request of no method.
func TestCheckScopes(t *testing.T) {
	rules := []ScopeRule{
		{Method: "tools/call", Target: "admin_*", Scopes: []string{"admin"}},
		{Method: "tools/*", Scopes: []string{"tools"}},
		{Method: "", Scopes: []string{"stream"}},
	}
	call := func(name string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"` + name + `"}}`
	}
	cases := []struct {
		body   string // "" for a GET
		scopes []string
		want   string // the scopes the 403 names; "" for none
	}{
		{call("add"), []string{"tools"}, ""},
		{call("add"), nil, "tools"},
		{call("admin_reset"), []string{"tools"}, "admin tools"},
		{call("admin_reset"), []string{"tools", "admin"}, ""},
		{`{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"admin_x"}}`, nil, ""},
		// a batch is refused for its member that needs more
		{"[" + call("add") + "," + strings.Replace(call("admin_reset"), `"id":1`, `"id":2`, 1) + "]", []string{"tools"}, "admin tools"},
		{"", nil, "stream"},
		{"", []string{"stream"}, ""},
	}
	for _, c := range cases {
		var msgs []mcp.Envelope
		if c.body != "" {
			msgs = messagesOf(t, c.body)
		}
		e := CheckScopes(rules, &Principal{ID: "u", Scopes: c.scopes}, msgs)
		switch {
		case c.want == "" && e != nil:
			t.Errorf("%s with %v: refused %+v", c.body, c.scopes, e)
		case c.want != "" && (e == nil || e.Status != 403 || e.Code != "insufficient_scope" || e.Scope != c.want):
			t.Errorf("%s with %v: %+v, want 403 naming %q", c.body, c.scopes, e, c.want)
		}
	}
	if e := CheckScopes(nil, &Principal{}, messagesOf(t, call("admin_reset"))); e != nil {
		t.Errorf("without scope rules: %+v", e)
	}
}

// TestScopeRuleGlobs: scope rules read their globs as the policy rules
// do: `*` crosses `/`, so a rule over a URI scheme covers every URI under
// it and `*` covers every method; brackets are literal; a malformed glob
// is refused at load rather than protecting nothing.
func TestScopeRuleGlobs(t *testing.T) {
	rules := []ScopeRule{
		{Method: "resources/read", Target: "secret://*", Scopes: []string{"secrets"}},
		{Method: "resources/subscribe", Target: "secret://*", Scopes: []string{"secrets"}},
		{Method: "tools/call", Target: "delete_*", Scopes: []string{"admin"}},
		{Method: "tools/call", Target: `ops_\[x`, Scopes: []string{"ops"}},
		{Method: "prompts/get", Target: "admin_*", Scopes: []string{"admin"}},
		{Method: "*", Scopes: []string{"basic"}},
	}
	if err := ValidScopeRules(rules); err != nil {
		t.Fatal(err)
	}
	read := func(uri string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"` + uri + `"}}`
	}
	call := func(name string) string {
		return `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"` + name + `"}}`
	}
	for body, want := range map[string]string{
		read("secret://db"):          "secrets basic",
		read("secret://db/password"): "secrets basic",
		read("file:///etc/passwd"):   "basic",
		// Other spellings of a URI a scope rule names need its scopes.
		read("SECRET://db/password"):   "secrets basic",
		read("secret://db/%70assword"): "secrets basic",
		// A completion needs the scopes of what it completes.
		`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/resource","uri":"secret://db/{name}"},"argument":{"name":"name","value":""}}}`: "basic secrets",
		`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"delete_all"},"argument":{"name":"x","value":""}}}`:             "basic",
		`{"jsonrpc":"2.0","id":1,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"admin_reset"},"argument":{"name":"x","value":""}}}`:            "basic admin",
		// A subscriptions/listen needs the scopes of subscribing to each
		// resource it names.
		`{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{"notifications":{"resourceSubscriptions":["file:///a","secret://db/x"]}}}`: "basic secrets",
		call("delete_repo/force"): "admin basic",
		call("ops_[x"):            "ops basic",
		call("ops_x"):             "basic",
		call("echo"):              "basic",
	} {
		e := CheckScopes(rules, &Principal{ID: "u"}, messagesOf(t, body))
		if e == nil || e.Scope != want {
			t.Errorf("%s without scopes: %+v, want 403 naming %q", body, e, want)
		}
	}
	for _, bad := range []ScopeRule{
		{Method: "tools/call", Target: `delete_\`, Scopes: []string{"admin"}},
		{Method: "tools/\xff", Scopes: []string{"admin"}},
		// path.Match's character classes, which these globs once had.
		{Method: "tools/call", Target: "[dD]elete*", Scopes: []string{"admin"}},
		{Method: "tools/[c]all", Scopes: []string{"admin"}},
	} {
		if err := ValidScopeRules([]ScopeRule{bad}); err == nil {
			t.Errorf("rule %q:%q accepted", bad.Method, bad.Target)
		}
	}
}

// TestKeyBinding: with several issuers, every key must be bound to the
// issuers it signs for, a static key by its own issuers and the JWKS
// beside static keys by jwks_issuers, each an accepted issuer; with one
// issuer or none, keys need not say.
func TestKeyBinding(t *testing.T) {
	const a, b = "https://a.example", "https://b.example"
	key := func(issuers ...string) []string { return issuers }
	for _, c := range []struct {
		name string
		bind *KeyBinding
		want string // "" when accepted
	}{
		{"one issuer, key without issuer", &KeyBinding{Issuers: []string{a}, JWKS: true, KeyIssuers: [][]string{key()}}, ""},
		{"no issuer, keys without issuer", &KeyBinding{JWKS: true, KeyIssuers: [][]string{key(), key()}}, ""},
		{"no issuer, key bound to one", &KeyBinding{KeyIssuers: [][]string{key(b)}}, ""},
		{"several issuers, JWKS only", &KeyBinding{Issuers: []string{a, b}, JWKS: true}, ""},
		{"several issuers, bound keys", &KeyBinding{Issuers: []string{a, b}, JWKS: true, JWKSIssuers: []string{a}, KeyIssuers: [][]string{key(b)}}, ""},
		{"several issuers, key without issuer", &KeyBinding{Issuers: []string{a, b}, KeyIssuers: [][]string{key(a), key()}}, "key 1: with several issuers"},
		{"several issuers, JWKS beside keys", &KeyBinding{Issuers: []string{a, b}, JWKS: true, KeyIssuers: [][]string{key(b)}}, "jwks_issuer"},
		{"key of another issuer", &KeyBinding{Issuers: []string{a}, KeyIssuers: [][]string{key(b)}}, "is not one of the accepted issuers"},
		{"JWKS of another issuer", &KeyBinding{Issuers: []string{a}, JWKS: true, JWKSIssuers: []string{b}}, "is not one of the accepted issuers"},
		{"jwks_issuers without jwks_url", &KeyBinding{Issuers: []string{a}, JWKSIssuers: []string{a}, KeyIssuers: [][]string{key()}}, "without jwks_url"},
		{"several issuers, one with a space", &KeyBinding{Issuers: []string{a, "b c"}, JWKS: true}, "may not hold a space"},
	} {
		err := c.bind.Check()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error mentioning %q", c.name, err, c.want)
		}
	}
}

// TestStepUp: a 403 names what the request needs, then the scopes of the
// resource the token holds (not others, such as openid), without repeats,
// so that a client authorizing again for exactly these keeps them.
func TestStepUp(t *testing.T) {
	p := &Principal{ID: "u", Scopes: []string{"openid", "mcp:read", "mcp:write"}}
	keep := []string{"mcp:read", "mcp:admin", "mcp:write", "mcp:secrets"}
	e := StepUp(InsufficientScope([]string{"mcp:admin", "mcp:read"}), p, keep)
	if e.Status != 403 || e.Code != "insufficient_scope" || e.Scope != "mcp:admin mcp:read mcp:write" {
		t.Errorf("StepUp: %+v, want 403 naming mcp:admin mcp:read mcp:write", e)
	}
}
