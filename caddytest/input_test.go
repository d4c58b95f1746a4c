package caddytest

import (
	"fmt"
	"strings"
	"testing"
)

// TestAllowedHostsGone: the loopback-listener Host check and its
// allowed_hosts list are gone (see TestHostileRebinding); a Caddyfile that
// still names allowed_hosts is told what to do instead.
func TestAllowedHostsGone(t *testing.T) {
	cf := ":8080 {\n\tmcp_proxy 127.0.0.1:9 {\n\t\tallowed_hosts mcp.example.com\n\t}\n}\n"
	adaptFails(t, "allowed_hosts", cf, "allowed_origins")
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
		{"duplicate method", `{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}`, nil, 400, "-32600"},
	} {
		st, hdr, b := rawPost(t, url, tt.body, tt.hdr)
		if st != tt.status || !strings.Contains(b, `"code":`+tt.code) || hdr.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %s %s", tt.name, st, hdr.Get("Content-Type"), b)
		}
	}
	if got := up.requests.Load() - before; got != 0 {
		t.Errorf("%d bad requests reached the upstream", got)
	}
	// Upstream 4xx bodies are relayed byte for byte: the go-sdk server
	// refuses a POST that does not accept both of its answer types.
	st, _, b := rawPost(t, url, initializeBody, map[string]string{"Accept": "application/json"})
	if st < 400 || st >= 500 || strings.Contains(b, `"jsonrpc":"2.0","id":null`) || b == "" {
		t.Errorf("upstream 4xx not relayed: %d %q", st, b)
	}
	t.Logf("upstream's answer relayed: %d %q", st, b)
}
