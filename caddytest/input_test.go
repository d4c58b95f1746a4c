package caddytest

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestOriginAndRebinding checks that a foreign Origin, or a foreign Host on
// a loopback listener, is refused with 403 before reaching the upstream,
// while the upstream never sees the client's Host (it is rewritten).
func TestOriginAndRebinding(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port := freePort(t)
	port2 := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n:%d {\n\tmcp_proxy %s {\n\t\tallowed_origins https://app.example.com\n\t\tallowed_hosts mcp.example.com\n\t}\n}\n", port, up.addr(), port2, up.addr()))
	url := proxyURL(port) + "/mcp"
	if st, _, b := rawPost(t, url, initializeBody, map[string]string{"Origin": fmt.Sprintf("http://127.0.0.1:%d", port)}); st != http.StatusOK {
		t.Fatalf("same origin: %d %s", st, b)
	}
	before := up.requests.Load()
	for name, hdr := range map[string]map[string]string{
		"foreign origin": {"Origin": "http://evil.example"},
		"other port":     {"Origin": "http://127.0.0.1:1"},
		"null origin":    {"Origin": "null"},
	} {
		st, _, b := rawPost(t, url, initializeBody, hdr)
		if st != http.StatusForbidden || !strings.Contains(b, `"jsonrpc":"2.0"`) {
			t.Errorf("%s: %d %s", name, st, b)
		}
	}
	// DNS rebinding: evil.example resolves to 127.0.0.1 and the browser
	// sends its own name as Host (and Origin).
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(initializeBody))
	req.Host = "evil.example"
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if st, _, b := do(t, req); st != http.StatusForbidden {
		t.Errorf("rebound host: %d %s", st, b)
	}
	if got := up.requests.Load() - before; got != 0 {
		t.Errorf("%d refused requests reached the upstream", got)
	}
	url2 := proxyURL(port2) + "/mcp"
	if st, _, b := rawPost(t, url2, initializeBody, map[string]string{"Origin": "https://app.example.com"}); st != http.StatusOK {
		t.Errorf("listed origin: %d %s", st, b)
	}
	if st, _, _ := rawPost(t, url2, initializeBody, map[string]string{"Origin": "https://evil.example"}); st != http.StatusForbidden {
		t.Errorf("unlisted origin: %d", st)
	}
	// A public name listed in allowed_hosts passes on the loopback listener
	// (a local load balancer forwarding to Caddy); others do not.
	for host, want := range map[string]int{"mcp.example.com": http.StatusOK, "evil.example": http.StatusForbidden} {
		req, _ := http.NewRequest(http.MethodPost, url2, strings.NewReader(initializeBody))
		req.Host = host
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if st, _, b := do(t, req); st != want {
			t.Errorf("host %s: %d %s, want %d", host, st, b, want)
		}
	}
}

// TestBadInput sends malformed bodies and headers: each gets a clear 4xx
// with a JSON-RPC error body and none reaches the upstream.
func TestBadInput(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tmax_peek 1KiB\n\t}\n}\n", port, up.addr()))
	url := proxyURL(port) + "/mcp"
	big := `{"jsonrpc":"2.0","id":1,"params":{"blob":"` + strings.Repeat("a", 4096) + `"},"method":"initialize"}`
	before := up.requests.Load()
	for _, tt := range []struct {
		name   string
		body   string
		hdr    map[string]string
		status int
		code   string
	}{
		{"malformed", `{"jsonrpc":"2.0","id":1,"method":`, nil, 400, "-32700"},
		{"garbage", "\x00\x01\xff\xfe garbage", nil, 400, "-32700"},
		{"empty", "", nil, 400, "-32700"},
		{"not jsonrpc", `{"hello":"world"}`, nil, 400, "-32600"},
		{"oversized envelope", big, nil, 413, "-32600"},
		{"bad version header", initializeBody, map[string]string{"Mcp-Protocol-Version": "latest"}, 400, "-32600"},
		{"batch at 2025-06-18", `[{"jsonrpc":"2.0","id":1,"method":"ping"}]`, map[string]string{"Mcp-Protocol-Version": "2025-06-18"}, 400, "-32600"},
		{"duplicate method", `{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}`, nil, 400, "-32700"},
	} {
		st, hdr, b := rawPost(t, url, tt.body, tt.hdr)
		if st != tt.status || !strings.Contains(b, `"code":`+tt.code) || hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %s %s", tt.name, st, hdr.Get("Content-Type"), b)
		}
	}
	if got := up.requests.Load() - before; got != 0 {
		t.Errorf("%d bad requests reached the upstream", got)
	}
	// Upstream 4xx bodies are relayed byte for byte.
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(initializeBody))
	req.Header.Set("Content-Type", "text/plain")
	st, _, b := do(t, req)
	if st != http.StatusUnsupportedMediaType || !strings.Contains(b, "Content-Type must be") {
		t.Errorf("upstream 415 not relayed: %d %q", st, b)
	}
}
