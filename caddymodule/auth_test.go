package caddymodule

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mcpgate/mcpgate/auth"
)

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
