package caddytest

import (
	"net/http"
	"sync"
	"testing"
)

// TestUpstreamOwnOAuth: an upstream that is its own OAuth resource server
// behind a bare `mcp_proxy <upstream>` keeps working for its clients: its
// 401 (challenge and body) reaches the client unchanged, its discovery
// documents are served from the MCP origin whatever the client accepts
// (the go-sdk's and most OAuth libraries' fetches send Accept:
// application/json, which an MCP GET stream would refuse with 406), and
// the bearer token reaches it on every request.
func TestUpstreamOwnOAuth(t *testing.T) {
	const (
		challenge = `Bearer error="invalid_token", resource_metadata="http://mcp.example/.well-known/oauth-protected-resource/mcp"`
		refusal   = `{"error":"invalid_token","error_description":"Missing Authorization header"}`
		prm       = `{"resource":"http://mcp.example/mcp","authorization_servers":["http://as.example"]}`
		asm       = `{"issuer":"http://mcp.example","token_endpoint":"http://mcp.example/token"}`
	)
	var mu sync.Mutex
	var tokens []string
	up := startUpstreamHandler(t, "own-oauth", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/.well-known/oauth-protected-resource/mcp":
			_, _ = w.Write([]byte(prm))
			return
		case "/.well-known/oauth-authorization-server":
			_, _ = w.Write([]byte(asm))
			return
		}
		mu.Lock()
		tokens = append(tokens, r.Header.Get("Authorization"))
		mu.Unlock()
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("WWW-Authenticate", challenge)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(refusal))
			return
		}
		w.Header().Set("Mcp-Session-Id", "s1")
		_, _ = w.Write([]byte(`{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"own-oauth","version":"1"}}}`))
	}))
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, up.addr(), ""))
	base := proxyURL(port)

	status, hdr, body := rawPost(t, base+"/mcp", initializeBody, nil)
	if status != http.StatusUnauthorized || hdr.Get("WWW-Authenticate") != challenge || body != refusal {
		t.Errorf("401 without a token: %d %q %q", status, hdr.Get("WWW-Authenticate"), body)
	}
	for _, tc := range []struct{ method, path, accept, want string }{
		{http.MethodGet, "/.well-known/oauth-protected-resource/mcp", "application/json", prm},
		{http.MethodGet, "/.well-known/oauth-protected-resource/mcp", "", prm},
		{http.MethodGet, "/.well-known/oauth-authorization-server", "application/json, */*;q=0.1", asm},
		{http.MethodHead, "/.well-known/oauth-protected-resource/mcp", "application/json", ""},
	} {
		req, err := http.NewRequest(tc.method, base+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tc.accept != "" {
			req.Header.Set("Accept", tc.accept)
		}
		status, hdr, body := do(t, req)
		if status != http.StatusOK || body != tc.want || hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s %s (Accept %q): %d %q %q", tc.method, tc.path, tc.accept, status, hdr.Get("Content-Type"), body)
		}
	}
	status, hdr, _ = rawPost(t, base+"/mcp", initializeBody, map[string]string{"Authorization": "Bearer t0k"})
	if status != http.StatusOK || hdr.Get("Mcp-Session-Id") == "" {
		t.Errorf("initialize with a token: %d, session %q", status, hdr.Get("Mcp-Session-Id"))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(tokens) != 2 || tokens[0] != "" || tokens[1] != "Bearer t0k" {
		t.Errorf("the upstream saw Authorization %q on its MCP requests", tokens)
	}
}
