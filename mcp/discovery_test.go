package mcp

import (
	"net/http/httptest"
	"testing"
)

func TestIsOAuthMetadata(t *testing.T) {
	for _, tc := range []struct {
		method, target string
		want           bool
		hdr            []string // header name, value
	}{
		{"GET", "/.well-known/oauth-protected-resource", true, nil},
		{"GET", "/.well-known/oauth-protected-resource/mcp", true, nil},
		{"HEAD", "/.well-known/oauth-protected-resource/a/b", true, nil},
		{"GET", "/.well-known/oauth-authorization-server", true, nil},
		{"GET", "/.well-known/oauth-authorization-server/tenant", true, nil},
		{"GET", "/.well-known/openid-configuration", true, nil},
		{"GET", "/.well-known/oauth-protected-resource?x=1", true, nil},
		{"POST", "/.well-known/oauth-protected-resource", false, nil},
		{"DELETE", "/.well-known/oauth-protected-resource", false, nil},
		{"GET", "/.well-known/oauth-protected-resourcex", false, nil},
		{"GET", "/.well-known/oauth-protected-resource/../../mcp", false, nil},
		{"GET", "/.well-known/oauth-protected-resource/%2e%2e/mcp", false, nil},
		{"GET", "/.well-known/oauth-protected-resource/..%2fmcp", false, nil},
		{"GET", "/mcp/.well-known/oauth-protected-resource", false, nil},
		{"GET", "/mcp", false, nil},
		{"GET", "/.well-known/jwks.json", false, nil},
		{"GET", "/.well-known/oauth-protected-resource/mcp", true, []string{"Accept", "application/json, */*"}},
		{"GET", "/.well-known/oauth-protected-resource/mcp", false, []string{"Accept", "text/event-stream"}},
		{"GET", "/.well-known/oauth-protected-resource/mcp", false, []string{"Accept", "application/json, Text/Event-Stream;q=0.5"}},
		{"GET", "/.well-known/oauth-protected-resource/mcp", true, []string{"Accept", "text/event-stream;q=0, application/json"}},
		{"GET", "/.well-known/oauth-protected-resource", false, []string{"Mcp-Session-Id", "s1"}},
	} {
		r := httptest.NewRequest(tc.method, tc.target, nil)
		if tc.hdr != nil {
			r.Header.Set(tc.hdr[0], tc.hdr[1])
		}
		if got := IsOAuthMetadata(r); got != tc.want {
			t.Errorf("%s %s: %v, want %v", tc.method, tc.target, got, tc.want)
		}
	}
}
