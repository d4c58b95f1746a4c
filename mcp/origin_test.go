package mcp

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
)

type hostList []string

func (l hostList) Named() bool { return len(l) > 0 }
func (l hostList) Match(h string) bool {
	for _, p := range l {
		if MatchHostPattern(p, h) {
			return true
		}
	}
	return false
}

func TestOriginPolicyCheck(t *testing.T) {
	none := &OriginPolicy{}
	list := &OriginPolicy{Allowed: []string{"https://app.example.com", "https://*.corp.example"}}
	star := &OriginPolicy{Allowed: []string{"*"}}
	site := hostList{"mcp.example.com", "*.mcp.example.com"}
	for _, tt := range []struct {
		name      string
		p         *OriginPolicy
		origin    string
		fetchSite string
		host      string
		site      SiteHosts
		want      bool
	}{
		{"no browser signal, any host", none, "", "", "public.example:443", site, true},
		{"no browser signal, rebound host", none, "", "", "evil.example:8080", nil, true},
		{"fetch site none", none, "", "none", "evil.example", nil, true},
		{"site host origin", none, "https://mcp.example.com", "", "mcp.example.com", site, true},
		{"site wildcard origin", none, "https://a.mcp.example.com", "", "mcp.example.com", site, true},
		{"wildcard is one label", none, "https://a.b.mcp.example.com", "", "mcp.example.com", site, false},
		{"rebinding: origin equals host", none, "http://evil.example:8080", "", "evil.example:8080", site, false},
		{"rebinding on a site naming no host", none, "http://evil.example:8080", "", "evil.example:8080", nil, false},
		{"loopback origin, site naming no host", none, "http://localhost:3000", "", "127.0.0.1:8080", nil, true},
		{"loopback origin, site naming hosts", none, "http://localhost:3000", "", "mcp.example.com", site, false},
		{"listed origin", list, "https://app.example.com", "", "mcp.example.com", site, true},
		{"listed wildcard", list, "https://x.corp.example", "", "mcp.example.com", site, true},
		{"scheme matters", list, "http://x.corp.example", "", "mcp.example.com", site, false},
		{"star", star, "https://whatever", "", "x", nil, true},
		{"null origin", none, "null", "", "localhost", nil, false},
		{"cross-site without origin", none, "", "cross-site", "mcp.example.com", site, false},
		{"same-origin GET without origin, site host", none, "", "same-origin", "mcp.example.com", site, true},
		{"same-origin GET without origin, rebound host", none, "", "same-origin", "evil.example", site, false},
	} {
		ref := tt.p.Check(tt.origin, tt.fetchSite, tt.host, tt.site)
		if got := ref == nil; got != tt.want {
			t.Errorf("%s: allowed %v, want %v (%v)", tt.name, got, tt.want, ref)
		}
		if ref != nil && (ref.Status != http.StatusForbidden || !strings.Contains(ref.Message, "allowed_origins") && tt.fetchSite != "cross-site") {
			t.Errorf("%s: refusal %d %q does not name allowed_origins", tt.name, ref.Status, ref.Message)
		}
	}
}

func TestMatchHostPattern(t *testing.T) {
	for _, tt := range []struct {
		p, h string
		want bool
	}{
		{"example.com", "EXAMPLE.com", true},
		{"example.com", "example.com.", true},
		{"*.example.com", "a.example.com", true},
		{"*.example.com", "example.com", false},
		{"*.example.com", "a.b.example.com", false},
		{"*", "localhost", true},
		{"*", "a.b", false},
	} {
		if got := MatchHostPattern(tt.p, tt.h); got != tt.want {
			t.Errorf("MatchHostPattern(%q, %q) = %v", tt.p, tt.h, got)
		}
	}
}

// Two Content-Type headers are refused: a server may read either.
func TestCheckShapeTwoContentTypes(t *testing.T) {
	r, _ := http.NewRequest("POST", "http://h/mcp", nil)
	r.Header.Add("Content-Type", "application/json")
	r.Header.Add("Content-Type", "application/json; charset=utf-7")
	if ref := CheckShape(r); ref == nil || ref.Status != 415 {
		t.Errorf("two Content-Type headers: %+v", ref)
	}
}

// TestCheckShapeContentEncoding: an encoded POST body is refused with
// 415 and Accept-Encoding: identity, whichever of its Content-Encoding
// headers names the coding.
func TestCheckShapeContentEncoding(t *testing.T) {
	r, _ := http.NewRequest("POST", "http://h/mcp", nil)
	r.Header.Set("Content-Type", "application/json")
	r.Header.Add("Content-Encoding", "identity")
	r.Header.Add("Content-Encoding", "x-gzip")
	ref := CheckShape(r)
	if ref == nil || ref.Status != 415 || ref.Header.Get("Accept-Encoding") != "identity" || !strings.Contains(ref.Message, "x-gzip") {
		t.Errorf("a body encoded x-gzip in a second header: %+v", ref)
	}
}

// TestCheckShapeTrailers: a request that announces trailers is refused
// with 400, whatever its method; an empty trailer map is no trailer.
func TestCheckShapeTrailers(t *testing.T) {
	for _, method := range []string{"POST", "GET", "DELETE"} {
		r, _ := http.NewRequest(method, "http://h/mcp", nil)
		r.Header.Set("Content-Type", "application/json")
		r.Trailer = http.Header{"Mcp-Session-Id": nil}
		if ref := CheckShape(r); ref == nil || ref.Status != 400 || !strings.Contains(ref.Message, "trailers") {
			t.Errorf("%s with a trailer: %+v", method, ref)
		}
		r.Trailer = http.Header{}
		if ref := CheckShape(r); ref != nil {
			t.Errorf("%s with an empty trailer map: %+v", method, ref)
		}
	}
}

// TestCheckShapeConnection: a Connection header may name the request's
// own options and hop-by-hop fields, in any case; one that names another
// field, which reverse_proxy would drop, is refused with 400.
func TestCheckShapeConnection(t *testing.T) {
	for conn, ok := range map[string]bool{
		"keep-alive": true, "Close": true, "Upgrade, HTTP2-Settings": true, "TE, close": true, " keep-alive ,, Proxy-Authorization": true,
		"keep-alive, Mcp-Session-Id": false, "mcp-protocol-version": false, "Authorization": false, "X-Tenant": false, "close,Content-Type": false,
	} {
		r, _ := http.NewRequest("POST", "http://h/mcp", nil)
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Connection", conn)
		if ref := CheckShape(r); (ref == nil) != ok || ref != nil && (ref.Status != 400 || !strings.Contains(ref.Message, "Connection")) {
			t.Errorf("Connection: %s: %+v, want accepted %v", conn, ref, ok)
		}
	}
}

// TestCheckShapeUpgrade: a request for a protocol upgrade is refused
// with 400 but one to h2c; an Upgrade header without the Connection
// option asks for nothing.
func TestCheckShapeUpgrade(t *testing.T) {
	for _, tc := range []struct {
		conn, upgrade string
		ok            bool
	}{
		{"Upgrade", "websocket", false},
		{"keep-alive, upgrade", "WebSocket", false},
		{"Upgrade", "h2c, websocket", false},
		{"Upgrade, HTTP2-Settings", "h2c", true},
		{"keep-alive", "websocket", true},
	} {
		r, _ := http.NewRequest("GET", "http://h/mcp", nil)
		r.Header.Set("Accept", "text/event-stream")
		r.Header.Set("Connection", tc.conn)
		r.Header.Set("Upgrade", tc.upgrade)
		if ref := CheckShape(r); (ref == nil) != tc.ok || ref != nil && (ref.Status != 400 || !strings.Contains(ref.Message, "switch protocols")) {
			t.Errorf("Connection: %s, Upgrade: %s: %+v, want accepted %v", tc.conn, tc.upgrade, ref, tc.ok)
		}
	}
}

func TestCheckShape(t *testing.T) {
	for _, tt := range []struct {
		method, path string
		hdr          map[string]string
		want         int
	}{
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json"}, 0},
		{"POST", "/mcp", map[string]string{"Content-Type": "Application/JSON; charset=utf-8"}, 0},
		{"POST", "/mcp", map[string]string{"Content-Type": "text/plain"}, 415},
		{"POST", "/mcp", nil, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/jsonx"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": `application/json;charset="UTF-8"`}, 0},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json; charset=utf8"}, 0},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json; charset=utf-7"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json; charset=UTF-16LE"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json; charset=iso-8859-1"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json; charset=utf-8; charset=utf-7"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json; charset*=utf-8''utf-7"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json; profile=x"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json, text/plain"}, 415},
		// A body a server would decode first is not what the proxy reads.
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json", "Content-Encoding": "BR"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json", "Content-Encoding": "identity, deflate"}, 415},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json", "Content-Encoding": "Identity"}, 0},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json", "Content-Encoding": ""}, 0},
		{"GET", "/mcp", map[string]string{"Accept": "text/event-stream", "Content-Encoding": "gzip"}, 0},
		{"GET", "/mcp", map[string]string{"Accept": "text/event-stream"}, 0},
		{"GET", "/mcp", map[string]string{"Accept": "text/html, */*;q=0.8"}, 0},
		{"GET", "/mcp", map[string]string{"Accept": "text/*"}, 0},
		{"GET", "/mcp", nil, 0},
		{"GET", "/mcp", map[string]string{"Accept": "text/html"}, 406},
		{"GET", "/mcp", map[string]string{"Accept": "text/event-stream;q=0"}, 406},
		{"GET", "/mcp", map[string]string{"Accept": "application/json"}, 406},
		{"DELETE", "/mcp", nil, 0},
		{"PUT", "/mcp", nil, 405},
		{"PATCH", "/mcp", nil, 405},
		{"OPTIONS", "/mcp", nil, 405},
		{"OPTIONS", "/mcp", map[string]string{"Origin": "https://a", "Access-Control-Request-Method": "POST"}, 0},
		{"POST", "/mcp/../../etc/passwd", map[string]string{"Content-Type": "application/json"}, 400},
		{"POST", "/mcp/%2e%2E/x", map[string]string{"Content-Type": "application/json"}, 400},
		{"POST", "/mcp/./x", map[string]string{"Content-Type": "application/json"}, 400},
		{"POST", "/mcp/.well-known/x", map[string]string{"Content-Type": "application/json"}, 0},
		{"POST", "/mcp/...", map[string]string{"Content-Type": "application/json"}, 0},
	} {
		r, err := http.NewRequest(tt.method, "http://h"+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range tt.hdr {
			r.Header.Set(k, v)
		}
		got := 0
		if ref := CheckShape(r); ref != nil {
			got = ref.Status
		}
		if got != tt.want {
			t.Errorf("%s %s %v: %d, want %d", tt.method, tt.path, tt.hdr, got, tt.want)
		}
	}
}

// TestCheckShapeExtendedCharset: a Content-Type whose parameters are
// read one way by Go's mime package and another by Node's content-type
// package is refused. Go folds an RFC 2231 `charset*` (or `charset*0`)
// into charset, over a plain charset; Node's content-type, used by
// Express's JSON body parser and the TypeScript SDK's own body reading,
// keeps `charset*` apart and decodes the body by the plain charset
// (UTF-7 here), so the server would read other messages than the proxy.
func TestCheckShapeExtendedCharset(t *testing.T) {
	for _, ct := range []string{
		"application/json; charset=utf-7; charset*=utf-8''utf-8",
		"application/json; charset*=utf-8''utf-8; charset=utf-7",
		"application/json; charset=utf-16; charset*0=utf-8",
		"application/json; charset*=utf-8''utf-8",
		"application/json; charset*0=utf-8",
	} {
		r, _ := http.NewRequest("POST", "http://h/mcp", nil)
		r.Header.Set("Content-Type", ct)
		if ref := CheckShape(r); ref == nil || ref.Status != http.StatusUnsupportedMediaType {
			t.Errorf("Content-Type %q: %+v, want 415", ct, ref)
		}
	}
}

// TestCheckShapeEncodedSlashDotSegment: a dot segment that appears only
// once an encoded slash is decoded is refused too. Caddy's path matchers
// clean the decoded path ("/admin/..%2fpublic/mcp" matches /public/*),
// while uvicorn gives Starlette the decoded path uncleaned, which a
// Mount("/admin") routes to the admin app, and Express matches routes on
// the raw path, which app.use("/admin") takes.
func TestCheckShapeEncodedSlashDotSegment(t *testing.T) {
	for path, want := range map[string]int{
		"/admin/..%2fpublic/mcp":     400,
		"/admin/..%2Fpublic/mcp":     400,
		"/admin/%2e%2e%2fpublic/mcp": 400,
		"/admin/.%2fpublic/mcp":      400,
		"/admin/x%2f..%2fpublic/mcp": 400,
		"/mcp/a%2fb":                 0,
		"/mcp/..a%2fb":               0,
	} {
		r, err := http.NewRequest("POST", "http://h"+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		r.Header.Set("Content-Type", "application/json")
		got := 0
		if ref := CheckShape(r); ref != nil {
			got = ref.Status
		}
		if got != want {
			t.Errorf("POST %s: %d, want %d", path, got, want)
		}
	}
}

// TestRemoveConnectionFields: every field an answer's Connection header
// names goes, whatever its case, spacing and repetition; the Connection
// header and the fields it does not name stay.
func TestRemoveConnectionFields(t *testing.T) {
	h := http.Header{
		"Connection":     {"keep-alive, mcp-session-id", " Content-Type ,,X-Hop"},
		"Mcp-Session-Id": {"raw"},
		"Content-Type":   {"application/json"},
		"X-Hop":          {"1"},
		"X-Stays":        {"1"},
	}
	RemoveConnectionFields(h)
	want := http.Header{"Connection": {"keep-alive, mcp-session-id", " Content-Type ,,X-Hop"}, "X-Stays": {"1"}}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("got %v, want %v", h, want)
	}
}
