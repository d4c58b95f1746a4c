package mcp

import (
	"fmt"
	"strings"
	"testing"
)

func TestMapEndpoint(t *testing.T) {
	tests := []struct {
		data, stream, prefix, upstream, client string
	}{
		{"/message?sessionId=abc", "/sse", "", "/message?sessionId=abc", "/message"},
		{"?sessionid=abc", "/sse", "/legacy", "/sse?sessionid=abc", "/legacy/sse"},
		{"http://10.0.0.5:3000/messages/?session_id=x", "/sse", "/mcp", "/messages/?session_id=x", "/mcp/messages/"},
		{"messages", "/a/sse", "", "/a/messages", "/a/messages"},
		{"/m", "/sse", "/p/", "/m", "/p/m"},
		// Never a network-path reference, whatever the upstream says.
		{"http://up//evil.example/x?s=1", "/sse", "", "/evil.example/x?s=1", "/evil.example/x"},
		{"//evil.example//x", "/sse", "", "/x", "/x"},
		{`/\evil.example/x`, "/sse", "", "/%5Cevil.example/x", "/%5Cevil.example/x"},
	}
	for _, tt := range tests {
		up, client, err := MapEndpoint(tt.data, tt.stream, tt.prefix)
		if err != nil || up != tt.upstream || client != tt.client {
			t.Errorf("MapEndpoint(%q, %q, %q) = %q, %q, %v; want %q, %q", tt.data, tt.stream, tt.prefix, up, client, err, tt.upstream, tt.client)
		}
		if strings.HasPrefix(client, "//") || !strings.HasPrefix(client, "/") {
			t.Errorf("%q: client path %q is not path-absolute", tt.data, client)
		}
	}
	if _, _, err := MapEndpoint("  ", "/sse", ""); err == nil {
		t.Error("empty endpoint accepted")
	}
	if got := EndpointURL("/legacy/message", "a+b"); got != "/legacy/message?"+RouteParam+"=a%2Bb" {
		t.Errorf("EndpointURL: %q", got)
	}
	if p, q := SplitEndpoint("/m?sessionId=1&x=2"); p != "/m" || q != "sessionId=1&x=2" {
		t.Errorf("SplitEndpoint: %q %q", p, q)
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

func TestLegacyParams(t *testing.T) {
	var lp LegacyParams
	if lp.Named("sessionId=x") {
		t.Fatal("an empty set names a parameter")
	}
	lp.Note("sessionId=abc&v=2")
	for q, want := range map[string]bool{
		"sessionId=x":          true,
		"SESSIONID=x":          true,
		"session%49d=x":        true,
		"a=1&v":                true,
		"sessionid":            true,
		"session+id=x":         false,
		"sessionIdx=x":         false,
		"":                     false,
		"tenant=a&other=b":     false,
		"tenant=a&sessionId=b": true,
		// Express 4's query parser (qs) reads all of these as sessionId.
		"sessionId[]=x":       true,
		"sessionId%5B0%5D=x":  true,
		"sessionId[=x":        true,
		"[sessionId]=x":       true,
		"[sessionId]tail=x":   true,
		"sessionId[a][b]=x":   true,
		"tenant[sessionId]=x": true,
	} {
		if got := lp.Named(q); got != want {
			t.Errorf("Named(%q) = %v, want %v", q, got, want)
		}
	}
	for i := range 2 * MaxLegacyParams {
		lp.Note(fmt.Sprintf("p%d=1", i))
	}
	if n := len(*lp.names.Load()); n != MaxLegacyParams {
		t.Errorf("%d names kept, want at most %d", n, MaxLegacyParams)
	}
}
