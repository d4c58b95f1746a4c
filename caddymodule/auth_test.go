package caddymodule

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mcpgate/mcpgate/auth"
	"github.com/mcpgate/mcpgate/mcp"
)

// TestCheckScopes: every message of a request, each member of a batch,
// must be allowed by the token's scopes under scope_rules; a request
// without messages (a GET) is checked as a request of no method.
func TestCheckScopes(t *testing.T) {
	a := &Auth{ScopeRules: []auth.ScopeRule{
		{Method: "tools/call", Target: "admin_*", Scopes: []string{"admin"}},
		{Method: "tools/*", Scopes: []string{"tools"}},
		{Method: "", Scopes: []string{"stream"}},
	}}
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
		{"[" + call("add") + "," + call("admin_reset") + "]", []string{"tools"}, "admin tools"},
		{"", nil, "stream"},
		{"", []string{"stream"}, ""},
	}
	for _, c := range cases {
		var m mcp.Call
		if c.body != "" {
			m = *callOf(t, c.body)
		}
		e := a.checkScopes(&auth.Principal{ID: "u", Scopes: c.scopes}, &m)
		switch {
		case c.want == "" && e != nil:
			t.Errorf("%s with %v: refused %+v", c.body, c.scopes, e)
		case c.want != "" && (e == nil || e.Status != 403 || e.Code != "insufficient_scope" || e.Scope != c.want):
			t.Errorf("%s with %v: %+v, want 403 naming %q", c.body, c.scopes, e, c.want)
		}
	}
	if e := new(Auth).checkScopes(&auth.Principal{}, callOf(t, call("admin_reset"))); e != nil {
		t.Errorf("without scope rules: %+v", e)
	}
}

// TestScopeRuleGlobs: scope rules read their globs as the policy rules
// do: `*` crosses `/`, so a rule over a URI scheme covers every URI under
// it and `*` covers every method; brackets are literal; a malformed glob
// is refused at load rather than protecting nothing.
func TestScopeRuleGlobs(t *testing.T) {
	a := &Auth{ScopeRules: []auth.ScopeRule{
		{Method: "resources/read", Target: "secret://*", Scopes: []string{"secrets"}},
		{Method: "tools/call", Target: "delete_*", Scopes: []string{"admin"}},
		{Method: "tools/call", Target: `ops_\[x`, Scopes: []string{"ops"}},
		{Method: "prompts/get", Target: "admin_*", Scopes: []string{"admin"}},
		{Method: "*", Scopes: []string{"basic"}},
	}}
	if err := validScopeRules(a.ScopeRules); err != nil {
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
		call("delete_repo/force"): "admin basic",
		call("ops_[x"):            "ops basic",
		call("ops_x"):             "basic",
		call("echo"):              "basic",
	} {
		e := a.checkScopes(&auth.Principal{ID: "u"}, callOf(t, body))
		if e == nil || e.Scope != want {
			t.Errorf("%s without scopes: %+v, want 403 naming %q", body, e, want)
		}
	}
	for _, bad := range []auth.ScopeRule{
		{Method: "tools/call", Target: `delete_\`, Scopes: []string{"admin"}},
		{Method: "tools/\xff", Scopes: []string{"admin"}},
		// path.Match's character classes, which these globs once had.
		{Method: "tools/call", Target: "[dD]elete*", Scopes: []string{"admin"}},
		{Method: "tools/[c]all", Scopes: []string{"admin"}},
	} {
		if err := validScopeRules([]auth.ScopeRule{bad}); err == nil {
			t.Errorf("rule %q:%q accepted", bad.Method, bad.Target)
		}
	}
}

// TestCheckIssuers: with several issuers, every key must be bound to the
// issuers it signs for, a static key by its own issuers and the JWKS
// beside static keys by jwks_issuers, each an accepted issuer; with one
// issuer or none, keys need not say.
func TestCheckIssuers(t *testing.T) {
	const a, b = "https://a.example", "https://b.example"
	key := func(issuers ...string) StaticKey { return StaticKey{PEM: "x", Issuers: issuers} }
	for _, c := range []struct {
		name string
		auth *Auth
		want string // "" when accepted
	}{
		{"one issuer, key without issuer", &Auth{Issuers: []string{a}, JWKSURL: "u", Keys: []StaticKey{key()}}, ""},
		{"no issuer, keys without issuer", &Auth{JWKSURL: "u", Keys: []StaticKey{key(), key()}}, ""},
		{"no issuer, key bound to one", &Auth{Keys: []StaticKey{key(b)}}, ""},
		{"several issuers, JWKS only", &Auth{Issuers: []string{a, b}, JWKSURL: "u"}, ""},
		{"several issuers, bound keys", &Auth{Issuers: []string{a, b}, JWKSURL: "u", JWKSIssuers: []string{a}, Keys: []StaticKey{key(b)}}, ""},
		{"several issuers, key without issuer", &Auth{Issuers: []string{a, b}, Keys: []StaticKey{key(a), key()}}, "key 1: with several issuers"},
		{"several issuers, JWKS beside keys", &Auth{Issuers: []string{a, b}, JWKSURL: "u", Keys: []StaticKey{key(b)}}, "jwks_issuer"},
		{"key of another issuer", &Auth{Issuers: []string{a}, Keys: []StaticKey{key(b)}}, "is not one of the accepted issuers"},
		{"JWKS of another issuer", &Auth{Issuers: []string{a}, JWKSURL: "u", JWKSIssuers: []string{b}}, "is not one of the accepted issuers"},
		{"jwks_issuers without jwks_url", &Auth{Issuers: []string{a}, JWKSIssuers: []string{a}, Keys: []StaticKey{key()}}, "without jwks_url"},
		{"several issuers, one with a space", &Auth{Issuers: []string{a, "b c"}, JWKSURL: "u"}, "may not hold a space"},
	} {
		err := c.auth.checkIssuers()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error mentioning %q", c.name, err, c.want)
		}
	}
}

// TestLogCauseRateLimited: why tokens could not be checked is logged at
// WARN once per causeLogInterval however many requests hit it, the next
// line counting those left out.
func TestLogCauseRateLimited(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	a := &Auth{logger: zap.New(core)}
	e := &auth.Error{Description: "the token could not be checked", Cause: errors.New("introspection: dial refused")}
	for range 100 {
		a.logCause(e)
	}
	if n := logs.Len(); n != 1 {
		t.Fatalf("%d WARNs for 100 causes, want 1", n)
	}
	a.causeLogNext.Store(time.Now().UnixNano()) // the interval is over
	a.logCause(e)
	all := logs.All()
	if len(all) != 2 || all[1].ContextMap()["not_logged_since_last"] != int64(99) || all[1].ContextMap()["error"] != "introspection: dial refused" {
		t.Errorf("WARNs %+v, want a second one counting 99 left out", all)
	}
}

// TestSetPrincipal: the principal and its claims become Caddy's
// {http.auth.user.*} placeholders.
func TestSetPrincipal(t *testing.T) {
	repl := caddy.NewReplacer()
	r := httptest.NewRequest("GET", "/mcp", nil)
	r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	setPrincipal(r, &auth.Principal{ID: "alice", Scopes: []string{"a", "b"},
		Claims: map[string]any{"email": "a@example.com", "groups": []any{"x", "y"}, "n": 3.0}})
	for k, want := range map[string]string{
		"{http.auth.user.id}":     "alice",
		"{http.auth.user.scope}":  "a b",
		"{http.auth.user.email}":  "a@example.com",
		"{http.auth.user.groups}": "x,y",
		"{http.auth.user.n}":      "3",
		"{http.auth.user.none}":   "-",
		"{http.other}":            "-",
	} {
		if got := repl.ReplaceAll(k, "-"); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	setPrincipal(httptest.NewRequest("GET", "/mcp", nil), &auth.Principal{ID: "x"}) // no Replacer: nothing to set
}
