package mcp

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type refusals struct{ kinds []string }

func (r *refusals) note(kind, _, _ string, _ error) { r.kinds = append(r.kinds, kind) }

func newResolver(t *testing.T, upstreams ...string) (*Resolver, *refusals) {
	t.Helper()
	sealer, err := NewSealer([][]byte{GenerateKey()})
	if err != nil {
		t.Fatal(err)
	}
	rf := &refusals{}
	rv := &Resolver{Sealer: sealer, Tokens: &TokenCache{}, RequireSession: true, Now: time.Now, Refused: rf.note}
	if upstreams != nil {
		rv.Upstreams = map[string]struct{}{}
		for _, u := range upstreams {
			rv.Upstreams[u] = struct{}{}
		}
	}
	return rv, rf
}

func (rv *Resolver) seal(t *testing.T, s *Session) string {
	t.Helper()
	s.Expires = time.Now().Add(time.Hour)
	tok, err := rv.Sealer.Seal(s)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// request returns a POST of body with headers hdr (name, value pairs),
// classified as the proxy classifies it before resolving.
func request(t *testing.T, target, body string, hdr ...string) (*http.Request, *Call) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, target, strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	call := &Call{}
	if ref := ClassifyHeaders(r.Header, call); ref != nil {
		t.Fatal(ref.Message)
	}
	if err := ParseEnvelope([]byte(body), true, &call.Peek); err != nil {
		t.Fatal(err)
	}
	return r, call
}

const ping = `{"jsonrpc":"2.0","id":1,"method":"ping"}`

func TestResolveSession(t *testing.T) {
	rv, rf := newResolver(t, "up:1")
	tok := rv.seal(t, &Session{Kind: TokenSession, Upstream: "up:1", UpstreamID: "u-1", Version: Version20250618, Principal: rv.Sealer.Bind("alice")})
	r, call := request(t, "/mcp", ping, HeaderSessionID, tok, HeaderProtocolVersion, Version20250618)
	res, ref := rv.Resolve(r, call, "alice")
	if ref != nil {
		t.Fatal(ref.Message)
	}
	if res.Token != tok || res.Pinned != "up:1" || res.Key != SessionKey("up:1", "u-1") || r.Header.Get(HeaderSessionID) != "u-1" || call.Era != EraSession {
		t.Fatalf("resolution %+v, header %q, era %v", res, r.Header.Get(HeaderSessionID), call.Era)
	}
	// Again, from the token cache.
	r, call = request(t, "/mcp", ping, HeaderSessionID, tok, HeaderProtocolVersion, Version20250618)
	if res2, ref := rv.Resolve(r, call, "alice"); ref != nil || res2.Key != res.Key {
		t.Fatalf("cached: %+v %v", res2, ref)
	}
	if len(rf.kinds) != 0 {
		t.Fatalf("refusals %v", rf.kinds)
	}

	for _, tt := range []struct {
		name, principal, token, version, body string
		status                                int
		kind                                  string
	}{
		{"another principal", "bob", tok, Version20250618, ping, http.StatusNotFound, RefusedPrincipal},
		{"no principal", "", tok, Version20250618, ping, http.StatusNotFound, RefusedPrincipal},
		{"garbage token", "alice", "nope", Version20250618, ping, http.StatusNotFound, RefusedNotFound},
		{"a version of another era", "alice", tok, Version20260728, ping, http.StatusBadRequest, ""},
		{"a batch at 2025-06-18", "alice", tok, Version20250618, "[" + ping + "]", http.StatusBadRequest, ""},
		{"no session", "alice", "", Version20250618, `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, http.StatusBadRequest, RefusedMissing},
	} {
		rf.kinds = nil
		hdr := []string{HeaderProtocolVersion, tt.version}
		if tt.token != "" {
			hdr = append(hdr, HeaderSessionID, tt.token)
		}
		r, call := request(t, "/mcp", tt.body, hdr...)
		res, ref := rv.Resolve(r, call, tt.principal)
		if ref == nil || ref.Status != tt.status || res.Session != nil {
			t.Errorf("%s: %+v, %+v", tt.name, ref, res)
			continue
		}
		if tt.kind == "" && len(rf.kinds) != 0 || tt.kind != "" && (len(rf.kinds) != 1 || rf.kinds[0] != tt.kind) {
			t.Errorf("%s: refusals %v, want %q", tt.name, rf.kinds, tt.kind)
		}
		if tt.token != "" && r.Header.Get(HeaderSessionID) == "u-1" && ref.Status == http.StatusNotFound {
			t.Errorf("%s: the upstream's id was put in a refused request", tt.name)
		}
	}

	// A session whose upstream left the configuration is unknown.
	gone := rv.seal(t, &Session{Kind: TokenSession, Upstream: "up:2", UpstreamID: "u-2", Version: Version20250618})
	rf.kinds = nil
	r, call = request(t, "/mcp", ping, HeaderSessionID, gone)
	if _, ref := rv.Resolve(r, call, ""); ref == nil || ref.Status != http.StatusNotFound || len(rf.kinds) != 1 || rf.kinds[0] != RefusedNotFound {
		t.Fatalf("gone upstream: %+v %v", ref, rf.kinds)
	}
}

// A client and server may agree on a version older than the session era
// over Streamable HTTP (the TypeScript SDK does when offered 2024-11-05)
// and then send it as MCP-Protocol-Version: the session's token, not the
// version, makes the era, and the request goes through.
func TestResolveSessionLegacyVersionHeader(t *testing.T) {
	rv, _ := newResolver(t, "up:1")
	tok := rv.seal(t, &Session{Kind: TokenSession, Upstream: "up:1", UpstreamID: "u-1", Version: SessionVersion(Version20241105)})
	for _, method := range []string{http.MethodPost, http.MethodGet, http.MethodDelete} {
		r, call := request(t, "/mcp", ping, HeaderSessionID, tok, HeaderProtocolVersion, Version20241105)
		r.Method = method
		res, ref := rv.Resolve(r, call, "")
		if ref != nil {
			t.Fatalf("%s: refused %d %s", method, ref.Status, ref.Message)
		}
		if res.Pinned != "up:1" || r.Header.Get(HeaderSessionID) != "u-1" || call.Era != EraSession {
			t.Fatalf("%s: resolution %+v, header %q, era %v", method, res, r.Header.Get(HeaderSessionID), call.Era)
		}
	}
}

// The TypeScript SDK's SSE client sends the version it negotiated on
// every request, the GET that reopens its legacy stream included: with
// require_session on, a GET at a session-era version without a session
// opens a legacy stream as it does without the header; with it off, it is
// a Streamable HTTP GET of an upstream that issues no sessions.
func TestResolveSessionlessGetWithVersion(t *testing.T) {
	for _, require := range []bool{true, false} {
		rv, rf := newResolver(t, "up:1")
		rv.RequireSession = require
		r := httptest.NewRequest(http.MethodGet, "/sse", nil)
		r.Header.Set("Accept", "text/event-stream")
		r.Header.Set(HeaderProtocolVersion, Version20251125)
		call := &Call{}
		if ref := ClassifyHeaders(r.Header, call); ref != nil {
			t.Fatal(ref.Message)
		}
		res, ref := rv.Resolve(r, call, "")
		if ref != nil || res.Session != nil || len(rf.kinds) != 0 {
			t.Fatalf("require_session %v: refused %+v, refusals %v", require, ref, rf.kinds)
		}
		if got := OpensLegacyStream(r.Method, call, false); got != require {
			t.Fatalf("require_session %v: opens a legacy stream %v, era %v", require, got, call.Era)
		}
	}
}

func TestResolveLegacy(t *testing.T) {
	rv, _ := newResolver(t)
	tok := rv.seal(t, &Session{Kind: TokenLegacy, Upstream: "up:1", UpstreamID: "legacy-1", Version: Version20241105, Endpoint: "/messages/?sessionId=abc"})
	r, call := request(t, EndpointURL("/legacy/message", tok)+"&x=1", ping)
	res, ref := rv.Resolve(r, call, "")
	if ref != nil {
		t.Fatal(ref.Message)
	}
	if res.Pinned != "up:1" || call.Era != EraLegacy || r.URL.Path != "/messages/" || r.URL.RawQuery != "sessionId=abc" || r.RequestURI != "" {
		t.Fatalf("resolution %+v, url %q ? %q", res, r.URL.Path, r.URL.RawQuery)
	}
	// A session token in the route parameter is not a legacy token.
	stok := rv.seal(t, &Session{Kind: TokenSession, Upstream: "up:1", UpstreamID: "u-1", Version: Version20250618})
	r, call = request(t, EndpointURL("/legacy/message", stok), ping)
	if _, ref := rv.Resolve(r, call, ""); ref == nil || ref.Status != http.StatusNotFound {
		t.Fatalf("session token as a route: %+v", ref)
	}
	// Without RequireSession, a request without a session passes.
	rv.RequireSession = false
	r, call = request(t, "/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, HeaderProtocolVersion, Version20250618)
	if res, ref := rv.Resolve(r, call, ""); ref != nil || res.Session != nil {
		t.Fatalf("no session, not required: %+v %+v", res, ref)
	}
}
