package mcp

import "testing"

func TestRewriteEndpoint(t *testing.T) {
	tests := []struct {
		data, stream, prefix, want string
	}{
		{"/message?sessionId=abc", "/sse", "", "/message?sessionId=abc&" + RouteParam + "=T"},
		{"?sessionid=abc", "/sse", "/legacy", "/legacy/sse?sessionid=abc&" + RouteParam + "=T"},
		{"http://10.0.0.5:3000/messages/?session_id=x", "/sse", "/mcp", "/mcp/messages/?session_id=x&" + RouteParam + "=T"},
		{"messages", "/a/sse", "", "/a/messages?" + RouteParam + "=T"},
		{"/m", "/sse", "/p/", "/p/m?" + RouteParam + "=T"},
	}
	for _, tt := range tests {
		got, err := RewriteEndpoint(tt.data, tt.stream, tt.prefix, "T")
		if err != nil || got != tt.want {
			t.Errorf("RewriteEndpoint(%q, %q, %q) = %q, %v; want %q", tt.data, tt.stream, tt.prefix, got, err, tt.want)
		}
	}
	if _, err := RewriteEndpoint("  ", "/sse", "", "T"); err == nil {
		t.Error("empty endpoint accepted")
	}
}

func TestStripRouteParam(t *testing.T) {
	rest, tok := StripRouteParam("sessionId=a&" + RouteParam + "=tok%2B&x=1")
	if rest != "sessionId=a&x=1" || tok != "tok+" {
		t.Errorf("got %q %q", rest, tok)
	}
	if rest, tok := StripRouteParam("a=1"); rest != "a=1" || tok != "" {
		t.Errorf("got %q %q", rest, tok)
	}
}

func TestStrippedPrefix(t *testing.T) {
	for _, tt := range [][3]string{
		{"/legacy/sse", "/sse", "/legacy"},
		{"/sse", "/sse", ""},
		{"/mcp", "/", "/mcp"},
		{"/a/b", "/c", ""},
	} {
		if got := StrippedPrefix(tt[0], tt[1]); got != tt[2] {
			t.Errorf("StrippedPrefix(%q, %q) = %q, want %q", tt[0], tt[1], got, tt[2])
		}
	}
}

func TestOriginPolicy(t *testing.T) {
	def := &OriginPolicy{}
	list := &OriginPolicy{Allowed: []string{"https://app.example.com", "https://*.corp.example"}}
	any := &OriginPolicy{Allowed: []string{"*"}}
	for _, tt := range []struct {
		p      *OriginPolicy
		origin string
		host   string
		want   bool
	}{
		{def, "", "x", true},
		{def, "http://localhost:8080", "localhost:8080", true},
		{def, "http://LOCALHOST:8080", "localhost:8080", true},
		{def, "https://mcp.example.com", "mcp.example.com", true},
		{def, "https://mcp.example.com:443", "mcp.example.com", true},
		{def, "http://evil.example", "localhost:8080", false},
		{def, "http://localhost:9999", "localhost:8080", false},
		{def, "null", "localhost", false},
		{list, "https://app.example.com", "mcp.example.com", true},
		{list, "https://a.corp.example", "mcp.example.com", true},
		{list, "http://a.corp.example", "mcp.example.com", false},
		{list, "https://evil.example", "mcp.example.com", false},
		{any, "https://whatever", "x", true},
	} {
		if got := tt.p.Allow(tt.origin, tt.host); got != tt.want {
			t.Errorf("%v Allow(%q, %q) = %v", tt.p.Allowed, tt.origin, tt.host, got)
		}
	}
}

func TestIsLoopbackHost(t *testing.T) {
	for h, want := range map[string]bool{
		"localhost": true, "localhost:80": true, "127.0.0.1:9": true, "[::1]:8080": true, "::1": true,
		"a.localhost": true, "example.com": false, "10.0.0.1:80": false, "evil.com:8080": false,
	} {
		if got := IsLoopbackHost(h); got != want {
			t.Errorf("IsLoopbackHost(%q) = %v", h, got)
		}
	}
}
