package mcp

import (
	"net/http/httptest"
	"testing"
)

func TestIsOAuthMetadata(t *testing.T) {
	for _, tc := range []struct {
		method, target string
		want           bool
	}{
		{"GET", "/.well-known/oauth-protected-resource", true},
		{"GET", "/.well-known/oauth-protected-resource/mcp", true},
		{"HEAD", "/.well-known/oauth-protected-resource/a/b", true},
		{"GET", "/.well-known/oauth-authorization-server", true},
		{"GET", "/.well-known/oauth-authorization-server/tenant", true},
		{"GET", "/.well-known/openid-configuration", true},
		{"GET", "/.well-known/oauth-protected-resource?x=1", true},
		{"POST", "/.well-known/oauth-protected-resource", false},
		{"DELETE", "/.well-known/oauth-protected-resource", false},
		{"GET", "/.well-known/oauth-protected-resourcex", false},
		{"GET", "/.well-known/oauth-protected-resource/../../mcp", false},
		{"GET", "/.well-known/oauth-protected-resource/%2e%2e/mcp", false},
		{"GET", "/.well-known/oauth-protected-resource/..%2fmcp", false},
		{"GET", "/mcp/.well-known/oauth-protected-resource", false},
		{"GET", "/mcp", false},
		{"GET", "/.well-known/jwks.json", false},
	} {
		r := httptest.NewRequest(tc.method, tc.target, nil)
		if got := IsOAuthMetadata(r); got != tc.want {
			t.Errorf("%s %s: %v, want %v", tc.method, tc.target, got, tc.want)
		}
	}
}
