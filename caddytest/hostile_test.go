package caddytest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// startDecoding starts a fake upstream that serves requests of any
// session, or none, whose GET streams open with the comment ": ok", and
// whose tool "sleep" runs 300ms, counting how many run at once. The
// proxy's checks are only worth as much as the proxy's reading of a
// message agrees with the upstream's (Go's encoding/json: keys unescaped
// and matched case-insensitively, the last duplicate wins); the fake's log
// shows what it ran.
func startDecoding(t *testing.T) (*fakeUpstream, *atomic.Int64) {
	t.Helper()
	var running, maxRun atomic.Int64
	u := startFake(t, &fakeUpstream{name: "decoding", stateless: true, stream: commentThenIdle, on: map[string]func(*fakeCall){
		"tools/call:sleep": func(c *fakeCall) {
			n := running.Add(1)
			for {
				old := maxRun.Load()
				if n <= old || maxRun.CompareAndSwap(old, n) {
					break
				}
			}
			time.Sleep(300 * time.Millisecond)
			running.Add(-1)
			c.result(`{}`)
		},
	}})
	return u, &maxRun
}

// TestHostileReading sends messages whose reading a proxy could get wrong:
// escaped and case-variant keys, duplicates, a call disguised as a
// response, a wrong or missing jsonrpc, a late envelope key past the
// peek. Each is refused with 400 before the upstream runs anything, and
// the per-tool cap holds against them.
func TestHostileReading(t *testing.T) {
	up, maxRun := startDecoding(t)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\trequire_session off\n\t\tmax_peek 1KiB\n\t\ttool sleep max_inflight 1\n\t}\n}\n", port, up.addr()))
	url := proxyURL(port) + "/mcp"
	pad := strings.Repeat("x", 2048)
	for _, tt := range []struct{ name, body, code string }{
		{"escaped method", `{"jsonrpc":"2.0","id":1,"method":"ping","\u006dethod":"tools/call","params":{"name":"sleep"}}`, "-32600"},
		{"case-variant method", `{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"sleep"}}`, "-32600"},
		{"long-s folding", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"},"paramſ":{"name":"sleep"}}`, "-32600"},
		{"escaped name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","\u006eame":"sleep"}}`, "-32600"},
		{"duplicate method", `{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}`, "-32600"},
		{"disguised as a response", `{"jsonrpc":"2.0","id":1,"result":{},"\u006dethod":"tools/call","params":{"name":"sleep"}}`, "-32600"},
		{"no jsonrpc", `{"id":1,"method":"tools/call","params":{"name":"sleep"}}`, "-32600"},
		{"jsonrpc 1.0", `{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"sleep"}}`, "-32600"},
		{"late method after the peek", `{"jsonrpc":"2.0","id":1,"method":"ping","params":{"pad":"` + pad + `"},"method":"tools/call"}`, "-32600"},
		{"late escaped name after the peek", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"pad":"` + pad + `"},"\u006eame":"sleep"}}`, "-32600"},
	} {
		st, _, b := rawPost(t, url, tt.body, nil)
		if st != http.StatusBadRequest || !strings.Contains(b, `"code":`+tt.code) {
			t.Errorf("%s: %d %s", tt.name, st, b)
		}
	}
	if up.didRun("tools/call:sleep") || up.didRun("tools/call") {
		t.Fatalf("a refused message ran upstream: %v", up.ran())
	}
	if n := up.bodiesRead(); n != 0 {
		t.Errorf("the upstream read %d complete bodies of refused messages", n)
	}

	// A large call whose envelope is all within the peek streams through
	// byte for byte, and the tool cap holds: six at once, one runs at a
	// time, the others are told the tool is busy.
	counts, sample := burst(6, 6, func(i int) (string, reply) {
		body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"sleep","arguments":{"pad":"%s"}}}`, i, pad)
		r := postJSON(context.Background(), url, body, nil)
		switch {
		case r.err == nil && r.status == http.StatusOK && strings.Contains(r.body, "is busy"):
			return "busy", r
		case r.ok():
			return "ok", r
		}
		return "other", r
	})
	if counts["other"] != 0 {
		t.Errorf("%d calls neither ran nor were told the tool is busy, as %v", counts["other"], sample["other"])
	}
	if m := maxRun.Load(); m != 1 || counts["busy"] == 0 {
		t.Errorf("sleep ran %d at once (%d busy answers), want 1", m, counts["busy"])
	}
}

// TestHostileLevelDisguise: with the level pinned to protective, a
// tools/call disguised as a response never reaches the upstream.
func TestHostileLevelDisguise(t *testing.T) {
	up, _ := startDecoding(t)
	port, adminPort := freePort(t), freePort(t)
	loadWithAdmin(t, adminPort, opsGlobal, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\trequire_session off\n\t}\n}\n", port, up.addr()))
	pinLevel(t, adminPort, "protective")
	url := proxyURL(port) + "/mcp"
	st, _, b := rawPost(t, url, `{"jsonrpc":"2.0","id":1,"result":{},"\u006dethod":"tools/call","params":{"name":"sleep"}}`, nil)
	if st < 400 || up.didRun("tools/call:sleep") {
		t.Errorf("disguised call at protective: %d %s, ran %v", st, b, up.ran())
	}
	// A genuine response still passes at protective (it finishes work).
	if st, _, b := rawPost(t, url, `{"jsonrpc":"2.0","id":5,"result":{}}`, nil); st != http.StatusAccepted {
		t.Errorf("response at protective: %d %s", st, b)
	}
}

// TestHostileBodies: a declared length over max_body is refused at once
// with 413; a body that stops arriving gets 408 within body_timeout and
// its connection is closed; a chunked body over max_body is aborted with
// 413 and the upstream never receives a complete request.
func TestHostileBodies(t *testing.T) {
	up, _ := startDecoding(t)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\trequire_session off\n\t\tmax_body 1MiB\n\t\tbody_timeout 500ms\n\t}\n}\n", port, up.addr()))
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	raw := func(head, body string, wait time.Duration) (string, bool) {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, head+body); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		// The connection is closed after the answer.
		_ = c.SetReadDeadline(time.Now().Add(wait))
		_, err = br.ReadByte()
		return fmt.Sprintf("%d %s", resp.StatusCode, b), err == io.EOF
	}
	hdr := "POST /mcp HTTP/1.1\r\nHost: " + addr + "\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"

	start := time.Now()
	got, closed := raw(hdr+"Content-Length: 10485760\r\n\r\n", `{"jsonrpc"`, time.Second)
	if !strings.HasPrefix(got, "413 ") || !strings.Contains(got, "max_body") || !closed || time.Since(start) > 2*time.Second {
		t.Errorf("declared 10 MiB: %s (closed %v, %v)", got, closed, time.Since(start))
	}
	got, closed = raw(hdr+"Content-Length: 4096\r\n\r\n", `{"jsonrpc"`, time.Second)
	if !strings.HasPrefix(got, "408 ") || !strings.Contains(got, "body_timeout") || !closed {
		t.Errorf("stalled body: %s (closed %v)", got, closed)
	}

	// 2 MiB chunked, the envelope first: streamed until the limit, then
	// aborted. The proxy answers and closes while the client still sends;
	// on a loaded machine the client's kernel may take the close's reset
	// before the client read the answer, so a reset is tried again (the
	// answer is what is checked).
	var st int
	var b string
	for attempt := 0; attempt < 3; attempt++ {
		var err error
		st, b, err = postChunked2MiB(addr)
		if err == nil || !isDialReset(err) {
			if err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if st != http.StatusRequestEntityTooLarge || !strings.Contains(b, `"id":1`) {
		t.Errorf("2 MiB chunked: %d %s", st, b)
	}
	if n := up.bodiesRead(); n != 0 || up.didRun("tools/call:echo") {
		t.Errorf("the upstream received %d complete bodies, ran %v", n, up.ran())
	}
}

// TestHostileRequestTrailers: a request that announces trailers is
// refused with 400, over HTTP/1.1 and HTTP/2, and never reaches the
// upstream, which might read a trailer field as the header the proxy
// checked (a session, a method, credentials); a trailer the client did
// not announce is not passed on.
func TestHostileRequestTrailers(t *testing.T) {
	var mu sync.Mutex
	var seen []string // the trailers of each request the upstream got
	up := startUpstreamHandler(t, "trailers", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		mu.Lock()
		seen = append(seen, fmt.Sprint(r.Trailer))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
	}))
	port := freePort(t)
	loadCaddyfileWith(t, h2cGlobal, proxySite(port, up.addr(), "\t\trequire_session off\n"))
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	const body = `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`

	chunked := func(announce, trailer string) string {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(boundedWait))
		_, _ = fmt.Fprintf(c, "POST /mcp HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"+
			"Accept: application/json, text/event-stream\r\nTransfer-Encoding: chunked\r\n%s\r\n%x\r\n%s\r\n0\r\n%s\r\n",
			addr, announce, len(body), body, trailer)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no answer: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	smuggled := "Mcp-Session-Id: raw-upstream-id\r\nMcp-Method: tools/call\r\nAuthorization: Bearer x\r\n"
	if got := chunked("Trailer: Mcp-Session-Id, Mcp-Method, Authorization\r\n", smuggled); !strings.HasPrefix(got, "400 ") || !strings.Contains(got, "trailers") {
		t.Errorf("announced trailers over HTTP/1.1: %s, want 400", got)
	}
	if got := chunked("", smuggled); !strings.HasPrefix(got, "200 ") {
		t.Errorf("trailers not announced over HTTP/1.1: %s, want 200", got)
	}

	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/mcp", io.MultiReader(strings.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Trailer = http.Header{"Mcp-Method": {"tools/call"}}
	r := readReply(h2cClient(t).Do(req))
	if r.err != nil || r.status != http.StatusBadRequest || !strings.Contains(r.body, "trailers") {
		t.Errorf("announced trailers over HTTP/2: %s, want 400", r)
	}

	mu.Lock()
	defer mu.Unlock()
	if want := []string{"map[]"}; !slices.Equal(seen, want) {
		t.Errorf("the upstream got requests with trailers %q, want %q (only the one without announced trailers, and none of them)", seen, want)
	}
}

// TestHostileConnectionOptions: a Connection header that names an
// end-to-end field is refused with 400 and nothing reaches the upstream:
// reverse_proxy would drop that field, and the upstream would read the
// request without it (without its session, once the proxy pinned it; a
// tenant a matcher read). The request's own options pass.
func TestHostileConnectionOptions(t *testing.T) {
	u := startFake(t, &fakeUpstream{name: "conn"})
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, u.addr(), ""))
	url := proxyURL(port) + "/mcp"
	sid := rawSession(t, url, nil)
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	mark := u.mark()
	for _, conn := range []string{"keep-alive, Mcp-Session-Id", "Mcp-Protocol-Version", "X-Tenant"} {
		r := postJSON(ctx, url, callBody("5", "echo", `{"text":"hi"}`), inSession(sid, map[string]string{"Connection": conn}))
		if r.status != http.StatusBadRequest || !strings.Contains(r.body, "Connection header names") {
			t.Errorf("Connection: %s: %s, want 400", conn, r)
		}
	}
	if seen := u.since(mark); len(seen) != 0 {
		t.Errorf("the upstream got %d requests whose Connection header names an end-to-end field", len(seen))
	}
	r := postJSON(ctx, url, callBody("6", "echo", `{"text":"hi"}`), inSession(sid, map[string]string{"Connection": "keep-alive"}))
	assertResult(t, r, "6", "hi")
}

// TestHostileUpgrade: a request for a protocol upgrade never reaches the
// upstream, which could switch the connection to a tunnel that passes no
// check of the proxy's: an upgrade to WebSocket is refused with 400, one
// to h2c (curl --http2 over plain HTTP) is declined and the request goes
// on as HTTP/1.1, without its Upgrade header.
func TestHostileUpgrade(t *testing.T) {
	u := startFake(t, &fakeUpstream{name: "upgrade"})
	var asked atomic.Int32 // requests that reached the upstream asking for an upgrade
	up := startUpstreamHandler(t, "upgrade", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			u.ServeHTTP(w, r)
			return
		}
		asked.Add(1)
		c, _, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+r.Header.Get("Upgrade")+"\r\n\r\n")
	}))
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, up.addr(), ""))
	url := proxyURL(port) + "/mcp"
	sid := rawSession(t, url, nil)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	const call = `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`
	for _, tc := range []struct {
		what, req string
		status    int
		want      string
	}{
		{"a GET stream upgraded to WebSocket", fmt.Sprintf("GET /mcp HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"+
			"Mcp-Session-Id: %s\r\nMcp-Protocol-Version: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", addr, sid, sessionVersion),
			http.StatusBadRequest, "switch protocols"},
		{"a call upgraded to h2c", fmt.Sprintf("POST /mcp HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"+
			"Mcp-Session-Id: %s\r\nMcp-Protocol-Version: %s\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"+
			"Content-Length: %d\r\n\r\n%s", addr, sid, sessionVersion, len(call), call),
			http.StatusOK, `"text":"hi"`},
		// A discovery document passes to the upstream unjudged as an MCP
		// request, but not as an upgrade.
		{"a discovery document upgraded to WebSocket", fmt.Sprintf("GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: %s\r\n"+
			"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr),
			http.StatusBadRequest, "switch protocols"},
		{"a discovery document upgraded to h2c", fmt.Sprintf("GET /.well-known/oauth-protected-resource/mcp HTTP/1.1\r\nHost: %s\r\n"+
			"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n", addr),
			http.StatusNotFound, ""},
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(boundedWait))
		_, _ = io.WriteString(c, tc.req)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.what, err)
		}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		c.Close()
		if resp.StatusCode != tc.status || !strings.Contains(string(b), tc.want) {
			t.Errorf("%s: %d %s, want %d with %s", tc.what, resp.StatusCode, b, tc.status, tc.want)
		}
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("%d requests reached the upstream asking for an upgrade", n)
	}
}

// TestHostileShape: only MCP over HTTP reaches the upstream.
func TestHostileShape(t *testing.T) {
	up, _ := startDecoding(t)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\trequire_session off\n\t}\n}\n", port, up.addr()))
	base := proxyURL(port)
	before := up.requests.Load()
	for _, tt := range []struct {
		method, path string
		hdr          map[string]string
		status       int
		allow        bool
	}{
		{"PUT", "/mcp", map[string]string{"Content-Type": "application/json"}, 405, true},
		{"PATCH", "/mcp", nil, 405, true},
		{"OPTIONS", "/mcp", nil, 405, true},
		{"GET", "/mcp", map[string]string{"Accept": "text/html"}, 406, false},
		{"POST", "/mcp", map[string]string{"Content-Type": "text/plain"}, 415, false},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json; charset=utf-7"}, 415, false},
		// Node's content-type reads charset utf-7; Go's mime, utf-8 from charset*.
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json; charset=utf-7; charset*=utf-8''utf-8"}, 415, false},
		{"POST", "/mcp", map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}, 415, false},
		{"POST", "/mcp/../../etc/passwd", map[string]string{"Content-Type": "application/json"}, 400, false},
		{"POST", "/mcp/%2e%2e/admin", map[string]string{"Content-Type": "application/json"}, 400, false},
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		var sb strings.Builder
		fmt.Fprintf(&sb, "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 2\r\nConnection: close\r\n", tt.method, tt.path, strings.TrimPrefix(base, "http://"))
		for k, v := range tt.hdr {
			fmt.Fprintf(&sb, "%s: %s\r\n", k, v)
		}
		sb.WriteString("\r\n{}")
		_, _ = io.WriteString(c, sb.String())
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("%s %s: %v", tt.method, tt.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		c.Close()
		if resp.StatusCode != tt.status || !strings.Contains(string(b), `"jsonrpc":"2.0"`) {
			t.Errorf("%s %s %v: %d %s", tt.method, tt.path, tt.hdr, resp.StatusCode, b)
		}
		if tt.allow && resp.Header.Get("Allow") != "GET, POST, DELETE, OPTIONS" {
			t.Errorf("%s: Allow %q", tt.method, resp.Header.Get("Allow"))
		}
		if enc := tt.hdr["Content-Encoding"]; enc != "" && resp.Header.Get("Accept-Encoding") != "identity" {
			t.Errorf("a body encoded %s: Accept-Encoding %q, want identity", enc, resp.Header.Get("Accept-Encoding"))
		}
	}
	if n := up.requests.Load() - before; n != 0 {
		t.Errorf("%d refused requests reached the upstream", n)
	}
}

// TestHostileBatches: a batch is admitted by all its members and follows
// the session's negotiated version when it carries no version header.
func TestHostileBatches(t *testing.T) {
	up, maxRun := startDecoding(t)
	port, port2 := freePort(t), freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\ttool sleep max_inflight 1\n\t\tsession_max_inflight 1\n\t}\n}\n"+
		":%d {\n\tmcp_proxy %s {\n\t\ttool sleep max_inflight 1\n\t\tsession_max_inflight 2\n\t}\n}\n", port, up.addr(), port2, up.addr()))
	session := func(url, version string) string {
		t.Helper()
		body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"` + version + `","capabilities":{},"clientInfo":{"name":"b","version":"1"}}}`
		st, hdr, b := rawPost(t, url, body, nil)
		if st != http.StatusOK || hdr.Get("Mcp-Session-Id") == "" {
			t.Fatalf("initialize %s: %d %s", version, st, b)
		}
		return hdr.Get("Mcp-Session-Id")
	}
	batch := `[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"sleep"}}]`
	url, url2 := proxyURL(port)+"/mcp", proxyURL(port2)+"/mcp"

	// 2025-06-18 forbids batches, header or not.
	sid := session(url, "2025-06-18")
	if st, _, b := rawPost(t, url, batch, map[string]string{"Mcp-Session-Id": sid}); st != http.StatusBadRequest {
		t.Errorf("batch in a 2025-06-18 session without a version header: %d %s", st, b)
	}
	// 2025-03-26 allows them, but a batch of two requests never fits a
	// session allowed one in flight: a ping at its head buys nothing.
	sid = session(url, "2025-03-26")
	if st, _, b := rawPost(t, url, batch, map[string]string{"Mcp-Session-Id": sid}); st != http.StatusTooManyRequests {
		t.Errorf("batch of two in a session allowed one: %d %s", st, b)
	}
	// Allowed two, four batches at once: the tool's cap lets one run.
	sid = session(url2, "2025-03-26")
	counts, _ := burst(4, 4, func(int) (string, reply) {
		r := postJSON(context.Background(), url2, batch, map[string]string{"Mcp-Session-Id": sid})
		switch {
		case r.err == nil && r.status == http.StatusOK:
			return "ok", r
		case r.err == nil && (r.status == http.StatusTooManyRequests || r.status == http.StatusServiceUnavailable):
			return "refused", r
		}
		return "other", r
	})
	if maxRun.Load() != 1 || counts["ok"] < 1 || counts["refused"] < 1 || counts["ok"]+counts["refused"] != 4 {
		t.Errorf("4 concurrent batches: %d ok, %d refused, sleep ran %d at once", counts["ok"], counts["refused"], maxRun.Load())
	}
}

// TestHostileRebinding: DNS-rebinding protection keys on the browser's
// signal: a tunnel forwarding the public Host over loopback without
// Origin passes; a rebinding page (Origin and Host both the attacker's
// name) is refused on a loopback listener and on one whose local address
// is not loopback, with a message naming allowed_origins; a page on an
// allowed origin or on the site's own host passes.
func TestHostileRebinding(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port, port2, port3 := freePort(t), freePort(t), freePort(t)
	loadCaddyfileWith(t, fmt.Sprintf("\tservers :%d {\n\t\tlistener_wrappers {\n\t\t\tmcpgate_test_lan\n\t\t}\n\t}\n", port2), fmt.Sprintf(
		":%d {\n\tmcp_proxy %s {\n\t\tallowed_origins https://app.example.com\n\t}\n}\n"+
			":%d {\n\tbind 127.0.0.1\n\tmcp_proxy %s\n}\n"+
			"http://mcp.example.com:%d {\n\tbind 127.0.0.1\n\tmcp_proxy %s\n}\n",
		port, up.addr(), port2, up.addr(), port3, up.addr()))
	evil, evil2 := fmt.Sprintf("evil.example:%d", port), fmt.Sprintf("evil.example:%d", port2)
	site := fmt.Sprintf("mcp.example.com:%d", port3)
	for _, tc := range []struct {
		what         string
		port         int
		host, origin string
		status       int
		mention      string // a word the refusal names
	}{
		{"tunnel with the public Host and no Origin", port, "mcp.public.example", "", http.StatusOK, ""},
		{"rebinding on a loopback listener", port, evil, "http://" + evil, http.StatusForbidden, "allowed_origins"},
		{"allowed origin", port, "mcp.public.example", "https://app.example.com", http.StatusOK, ""},
		{"loopback page on a site naming no host", port, "localhost", fmt.Sprintf("http://localhost:%d", port), http.StatusOK, ""},
		{"page on the site's own host", port3, site, "http://" + site, http.StatusOK, ""},
		{"loopback page on a site naming a host", port3, site, "http://localhost:3000", http.StatusForbidden, ""},
		// The same requests on a server whose connections arrive on a LAN
		// address: the rebinding page is refused, the tunnel passes.
		{"rebinding on a non-loopback listener", port2, evil2, "http://" + evil2, http.StatusForbidden, "allowed_origins"},
		{"tunnel on a non-loopback listener", port2, "mcp.public.example", "", http.StatusOK, ""},
	} {
		hdr := map[string]string{}
		if tc.origin != "" {
			hdr["Origin"] = tc.origin
		}
		req, _ := newPost(context.Background(), proxyURL(tc.port)+"/mcp", initializeBody, hdr)
		req.Host = tc.host
		if st, _, b := do(t, req); st != tc.status || !strings.Contains(b, tc.mention) {
			t.Errorf("%s: %d %s", tc.what, st, b)
		}
	}
}

func init() {
	caddy.RegisterModule(lanListener{})
}

// lanListener is a listener wrapper for tests: the connections it accepts
// report a LAN local address (192.0.2.10), as on a server reached over its
// network interface, while the test's traffic stays on loopback.
type lanListener struct{}

func (lanListener) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.listeners.mcpgate_test_lan", New: func() caddy.Module { return lanListener{} }}
}

func (lanListener) WrapListener(l net.Listener) net.Listener { return lanNet{l} }

func (lanListener) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	return nil
}

type lanNet struct{ net.Listener }

func (l lanNet) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return lanConn{c}, nil
}

type lanConn struct{ net.Conn }

func (lanConn) LocalAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(192, 0, 2, 10), Port: 443} }

// TestHostileAccessLog: with the log filter README gives, Caddy's access
// log shows no session token, neither the request's Mcp-Session-Id nor the
// one an initialize answer hands out.
func TestHostileAccessLog(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port := freePort(t)
	logFile := filepath.Join(t.TempDir(), "access.log")
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tlog {\n\t\toutput file %s\n\t\tformat filter {\n\t\t\trequest>headers>Mcp-Session-Id replace REDACTED\n\t\t\tresp_headers>Mcp-Session-Id replace REDACTED\n\t\t\trequest>uri query {\n\t\t\t\treplace mcpgate_route REDACTED\n\t\t\t}\n\t\t}\n\t}\n\tmcp_proxy %s\n}\n", port, logFile, up.addr()))
	url := proxyURL(port) + "/mcp"
	st, hdr, b := rawPost(t, url, initializeBody, nil)
	tok := hdr.Get("Mcp-Session-Id")
	if st != http.StatusOK || tok == "" {
		t.Fatalf("initialize: %d %s", st, b)
	}
	if st, _, b := rawPost(t, url, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, map[string]string{"Mcp-Session-Id": tok, "Mcp-Protocol-Version": "2025-06-18"}); st != http.StatusAccepted {
		t.Fatalf("initialized: %d %s", st, b)
	}
	var log []byte
	pollUntil(t, "two access log lines", func() bool {
		log, _ = os.ReadFile(logFile)
		return strings.Count(string(log), "handled request") >= 2
	})
	if strings.Contains(string(log), tok) {
		t.Errorf("the access log holds the session token:\n%s", log)
	}
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	t.Logf("access log line of the initialize: %s", lines[0])
	t.Logf("access log line of a request in the session: %s", lines[1])
	var entry struct {
		Request struct {
			Headers map[string]any `json:"headers"`
		} `json:"request"`
		RespHeaders map[string]any `json:"resp_headers"`
	}
	if err := json.Unmarshal([]byte(lines[0]), &entry); err != nil || entry.RespHeaders["Mcp-Session-Id"] != "REDACTED" {
		t.Errorf("initialize line: %v %v", err, entry.RespHeaders)
	}
	if err := json.Unmarshal([]byte(lines[1]), &entry); err != nil || entry.Request.Headers["Mcp-Session-Id"] != "REDACTED" {
		t.Errorf("session line: %v %v", err, entry.Request.Headers)
	}
}

// TestHostileLegacyEndpoint: the legacy endpoint a client is given is
// always a path-absolute URL carrying only the sealed route, whatever
// the upstream advertises, and the upstream's own session id stays
// sealed in it.
func TestHostileLegacyEndpoint(t *testing.T) {
	// A legacy server: its stream begins with the endpoint of its
	// session's POSTs, which it answers on the stream.
	up := startFake(t, &fakeUpstream{name: "legacy", stateless: true, stream: func(s *fakeStream) error {
		if err := s.write("event: endpoint\ndata: http://up//evil.example/message?sessionId=secret-upstream-id\n\n"); err != nil {
			return err
		}
		return s.idle(nil)
	}, on: map[string]func(*fakeCall){"*": func(c *fakeCall) { c.w.WriteHeader(http.StatusAccepted) }}})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, proxyURL(port)+"/sse", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	var data string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("no endpoint event: %v", err)
		}
		if v, ok := strings.CutPrefix(line, "data: "); ok {
			data = strings.TrimSpace(v)
			break
		}
	}
	if !strings.HasPrefix(data, "/evil.example/message?mcpgate_route=") || strings.HasPrefix(data, "//") || strings.Contains(data, "secret-upstream-id") || strings.Count(data, "=") != 1 {
		t.Fatalf("endpoint given to the client: %q", data)
	}
	st, _, b := rawPost(t, proxyURL(port)+data, `{"jsonrpc":"2.0","id":1,"method":"ping"}`, nil)
	posted, _ := up.find(ofMethod(http.MethodPost))
	if st != http.StatusAccepted || posted.uri != "/evil.example/message?sessionId=secret-upstream-id" {
		t.Errorf("legacy POST: %d %s, upstream got %v", st, b, posted.uri)
	}
	// The raw upstream id, with a 2026-07-28 version header and no route,
	// is never taken for a route.
	st, _, _ = rawPost(t, proxyURL(port)+"/evil.example/message?mcpgate_route=bogus", `{"jsonrpc":"2.0","id":2,"method":"ping"}`,
		map[string]string{"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "ping"})
	if st != http.StatusNotFound {
		t.Errorf("bogus route with a 2026-07-28 header: %d", st)
	}
	// The upstream's own query, raw id and all, without a route: in a
	// request of an era that needs no session (initialize, 2026-07-28) or
	// with a session header, it never reaches the upstream, whatever the
	// parameter's case or escaping.
	before := len(up.since(0))
	for _, c := range []struct {
		query string
		hdr   map[string]string
		body  string
	}{
		{"sessionId=secret-upstream-id", map[string]string{"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "ping"}, `{"jsonrpc":"2.0","id":3,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`},
		{"sessionid=secret-upstream-id", nil, `{"jsonrpc":"2.0","id":4,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}`},
		{"x=1&session%49d=secret-upstream-id", nil, `{"jsonrpc":"2.0","id":5,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}`},
		// Express 4's query parser (qs) reads these as sessionId too: an
		// array ["secret-upstream-id"], which indexes an object of
		// transports as its one string, and a plain string.
		{"sessionId[]=secret-upstream-id", nil, `{"jsonrpc":"2.0","id":7,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}`},
		{"%5BsessionId%5D=secret-upstream-id", nil, `{"jsonrpc":"2.0","id":8,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}`},
	} {
		st, _, b := rawPost(t, proxyURL(port)+"/evil.example/message?"+c.query, c.body, c.hdr)
		if st != http.StatusNotFound || !strings.Contains(b, `"code":-32001`) {
			t.Errorf("the upstream's query %q without a route: %d %s", c.query, st, b)
		}
	}
	if got := up.since(before); len(got) != 0 {
		t.Errorf("requests with the upstream's query reached it: %v", got)
	}
	// A query of other names passes.
	if st, _, b := rawPost(t, proxyURL(port)+"/mcp?tenant=a", `{"jsonrpc":"2.0","id":6,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}`, nil); st == http.StatusNotFound {
		t.Errorf("a query of another name: %d %s", st, b)
	}
}

// postChunked2MiB posts a 2 MiB chunked tools/call whose envelope comes
// first, and returns the answer.
func postChunked2MiB(addr string) (int, string, error) {
	pr, pw := io.Pipe()
	go func() {
		_, _ = io.WriteString(pw, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"blob":"`)
		chunk := strings.Repeat("a", 64<<10)
		for range 32 {
			if _, err := io.WriteString(pw, chunk); err != nil {
				return
			}
		}
		_, _ = io.WriteString(pw, `"}}}`)
		_ = pw.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/mcp", pr)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := rawClient.Do(req)
	_ = pr.CloseWithError(io.ErrClosedPipe)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(body), err
}

// TestHostileDuplicateHeaders: a second value of an MCP header the proxy
// reads is refused with 400 and a JSON-RPC error, and the upstream, which
// might read the other value, gets nothing: an empty first Mcp-Session-Id
// cannot carry a raw upstream id past the session check.
func TestHostileDuplicateHeaders(t *testing.T) {
	up, _ := startDecoding(t)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr()))
	host := strings.TrimPrefix(proxyURL(port), "http://")
	before := up.requests.Load()
	for _, dup := range []string{
		"Mcp-Session-Id: \r\nMcp-Session-Id: raw-upstream-id",
		"MCP-Protocol-Version: 2025-06-18\r\nMCP-Protocol-Version: 2026-07-28",
		"Last-Event-ID: \r\nLast-Event-ID: 7",
	} {
		for _, req := range []string{
			"POST /mcp HTTP/1.1\r\nHost: " + host + "\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n" + dup + "\r\nContent-Length: 58\r\nConnection: close\r\n\r\n" + `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`,
			"GET /mcp HTTP/1.1\r\nHost: " + host + "\r\nAccept: text/event-stream\r\n" + dup + "\r\nConnection: close\r\n\r\n",
		} {
			c, err := net.Dial("tcp", host)
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetDeadline(time.Now().Add(boundedWait))
			_, _ = io.WriteString(c, req)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("%q: %v", dup, err)
			}
			b, _ := io.ReadAll(resp.Body)
			c.Close()
			if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), `"jsonrpc":"2.0"`) {
				t.Errorf("%s with %q: %d %s", strings.Fields(req)[0], dup, resp.StatusCode, b)
			}
		}
	}
	if n := up.requests.Load() - before; n != 0 {
		t.Errorf("%d requests with two values of a header reached the upstream", n)
	}
}

// TestHostileEncodedSlashDotSegment: a path whose dot segment appears
// only once its encoded slash is decoded never reaches the upstream.
// Caddy's path matchers clean the decoded path, so
// /admin/..%2fpublic/mcp is served by the site's unprotected route (the
// one for /public/*), while uvicorn hands Starlette the decoded path
// uncleaned, /admin/../public/mcp, which a Mount("/admin") routes to
// the protected app, and Express, matching its routes on the raw path,
// gives it to app.use("/admin").
func TestHostileEncodedSlashDotSegment(t *testing.T) {
	up := startFake(t, &fakeUpstream{name: "paths", stateless: true})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\thandle /admin/* {\n\t\trespond \"sign in first\" 401\n\t}\n"+
		"\thandle {\n\t\tmcp_proxy %s {\n\t\t\trequire_session off\n\t\t}\n\t}\n}\n", port, up.addr()))
	const initialize = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{}}}`
	if st, _, b := rawPost(t, proxyURL(port)+"/admin/mcp", initialize, nil); st != http.StatusUnauthorized {
		t.Fatalf("/admin/mcp: %d %s, want the site's 401", st, b)
	}
	before := len(up.since(0))
	for _, path := range []string{"/admin/..%2fpublic/mcp", "/admin/x/..%2F..%2fpublic/mcp", "/admin/%2e%2e%2fpublic/mcp"} {
		st, _, b := rawPost(t, proxyURL(port)+path, initialize, nil)
		if st != http.StatusBadRequest || !strings.Contains(b, `"jsonrpc":"2.0"`) {
			t.Errorf("POST %s: %d %s, want 400", path, st, b)
		}
	}
	if got := up.since(before); len(got) != 0 {
		for _, s := range got {
			t.Errorf("the upstream got %s %s", s.method, s.uri)
		}
	}
	if st, _, b := rawPost(t, proxyURL(port)+"/public/mcp", initialize, nil); st != http.StatusOK {
		t.Errorf("/public/mcp: %d %s", st, b)
	}
}

// TestHostileUpstreamTrailers: an upstream that sends its session id, a
// digest and a field of its own as trailers (announced or not), over JSON
// and SSE answers. The client never gets the upstream's raw session id,
// in a trailer or in the announcement of one. The other trailers pass
// with a body relayed as it comes (a 202, an answer larger than
// max_event_size), and only there: an answer the proxy reads whole goes
// with a Content-Length, and the relay writes an SSE answer's body.
func TestHostileUpstreamTrailers(t *testing.T) {
	inAnswerModes(t, func(t *testing.T, jsonMode bool) {
		s := pagedServer("add", "b_hidden", "countdown", "echo", "zeta")
		s.AddTool(&mcp.Tool{Name: "big", InputSchema: map[string]any{"type": "object"}},
			func(context.Context, *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
				return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: strings.Repeat("b", 8<<10)}}}, nil
			})
		h := demo.Handler(s, "", &mcp.StreamableHTTPOptions{JSONResponse: jsonMode})
		var mu sync.Mutex
		raw := map[string]bool{} // every session id the upstream sent
		up := startUpstreamHandler(t, "trailers", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Trailer", "Mcp-Session-Id, Content-Digest")
			h.ServeHTTP(unsized{w}, r)
			sid := w.Header().Get("Mcp-Session-Id")
			if sid == "" {
				sid = r.Header.Get("Mcp-Session-Id")
			}
			mu.Lock()
			raw[sid] = true
			mu.Unlock()
			w.Header().Set("Mcp-Session-Id", sid)
			w.Header().Set("Content-Digest", "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:")
			w.Header().Set(http.TrailerPrefix+"X-Upstream-Check", "1")
		}))
		port := freePort(t)
		loadCaddyfile(t, proxySite(port, up.addr(), rulesBlock("deny tool add b_*")+"\t\tmax_event_size 4KiB\n"))
		url := proxyURL(port) + "/mcp"
		ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
		defer cancel()
		init := postJSON(ctx, url, initBody(1), nil)
		sid := init.hdr.Get("Mcp-Session-Id")
		if init.status != http.StatusOK || sid == "" {
			t.Fatalf("initialize: %s", init)
		}
		type answer struct {
			what   string
			r      reply
			passes bool // the upstream's trailers other than its session id pass
		}
		answers := []answer{{"the initialize answer", init, false}}
		hdr := inSession(sid, nil)
		for _, c := range []struct {
			what, body string
			passes     bool
		}{
			{"initialized (202)", notifyInitialized, true},
			{"a filtered tools/list page", `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, false},
			{"an answer read whole", callBody("3", "zeta", `{}`), false},
			{"an answer larger than max_event_size", callBody("4", "big", `{}`), jsonMode},
		} {
			answers = append(answers, answer{c.what, postJSON(ctx, url, c.body, hdr), c.passes})
		}
		mu.Lock()
		defer mu.Unlock()
		for _, a := range answers {
			if a.r.err != nil || a.r.status/100 != 2 {
				t.Fatalf("%s: %s", a.what, a.r)
			}
			for k, v := range a.r.trailer {
				if raw[strings.Join(v, "")] {
					t.Errorf("%s: the upstream's session id in trailer %s", a.what, k)
				}
			}
			if _, ok := a.r.trailer["Mcp-Session-Id"]; ok {
				t.Errorf("%s: trailers %v name a session id", a.what, a.r.trailer)
			}
			want := map[bool]string{true: "[Content-Digest X-Upstream-Check]", false: "[]"}[a.passes]
			if got := fmt.Sprint(slices.Sorted(maps.Keys(a.r.trailer))); got != want {
				t.Errorf("%s: trailers %v, want %s", a.what, a.r.trailer, want)
			}
		}
	})
}

// unsized is a ResponseWriter that sends no Content-Length, so that a body
// written whole can carry trailers.
type unsized struct{ http.ResponseWriter }

func (u unsized) WriteHeader(code int) {
	u.Header().Del("Content-Length")
	u.ResponseWriter.WriteHeader(code)
}

func (u unsized) Write(b []byte) (int, error) {
	u.Header().Del("Content-Length")
	return u.ResponseWriter.Write(b)
}

func (u unsized) Flush() { http.NewResponseController(u.ResponseWriter).Flush() }

func (u unsized) Unwrap() http.ResponseWriter { return u.ResponseWriter }

// TestHostileUpstreamEarlyHints: an upstream's informational answers (103
// Early Hints), which reverse_proxy passes on as they come, reach the
// client without the upstream's session id, over every kind of request
// (initialize, a notification, a call, a GET stream, an OAuth discovery
// document, a CORS preflight); their other headers pass.
func TestHostileUpstreamEarlyHints(t *testing.T) {
	h := demo.Handler(pagedServer("zeta"), "", nil)
	var mu sync.Mutex
	raw := map[string]bool{} // every session id the upstream sent
	up := startUpstreamHandler(t, "hints", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sid := r.Header.Get("Mcp-Session-Id")
		if sid == "" {
			sid = "early-" + strconv.Itoa(rand.IntN(1<<30))
		}
		mu.Lock()
		raw[sid] = true
		mu.Unlock()
		w.Header().Set("Mcp-Session-Id", sid)
		w.Header().Set("Link", "</style.css>; rel=preload; as=style")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Mcp-Session-Id")
		w.Header().Del("Link")
		if r.Method == http.MethodOptions || strings.HasPrefix(r.URL.Path, "/.well-known/") {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, "{}")
			return
		}
		h.ServeHTTP(w, r)
	}))
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, up.addr(), ""))
	url := proxyURL(port) + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()

	// send makes a request and returns the headers of each 103 it got and
	// its answer.
	send := func(method, target, body string, hdr map[string]string) (hints []http.Header, r reply) {
		t.Helper()
		var hmu sync.Mutex
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hmu.Lock()
			hints = append(hints, http.Header(h).Clone())
			hmu.Unlock()
			return nil
		}}
		req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, target, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		if method == http.MethodGet {
			resp, err := rawClient.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", method, target, err)
			}
			resp.Body.Close()
			r = reply{status: resp.StatusCode, hdr: resp.Header}
		} else {
			r = readReply(rawClient.Do(req))
		}
		hmu.Lock()
		defer hmu.Unlock()
		return hints, r
	}
	post := map[string]string{"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
	hints, init := send(http.MethodPost, url, initBody(1), post)
	sid := init.hdr.Get("Mcp-Session-Id")
	if init.status != http.StatusOK || sid == "" {
		t.Fatalf("initialize: %s", init)
	}
	all := map[string][]http.Header{"initialize": hints}
	hints, _ = send(http.MethodPost, url, notifyInitialized, withHeaders(post, inSession(sid, nil)))
	all["initialized"] = hints
	hints, _ = send(http.MethodPost, url, callBody("2", "zeta", `{}`), withHeaders(post, inSession(sid, nil)))
	all["a call"] = hints
	hints, _ = send(http.MethodGet, url, "", withHeaders(map[string]string{"Accept": "text/event-stream"}, inSession(sid, nil)))
	all["a GET stream"] = hints
	hints, _ = send(http.MethodGet, proxyURL(port)+"/.well-known/oauth-protected-resource/mcp", "", nil)
	all["a discovery document"] = hints
	hints, _ = send(http.MethodOptions, url, "", map[string]string{"Origin": proxyURL(port), "Access-Control-Request-Method": "POST"})
	all["a preflight"] = hints

	mu.Lock()
	defer mu.Unlock()
	for what, hints := range all {
		// A GET stream goes on a connection of the relay's own, which
		// reads informational answers past.
		if len(hints) == 0 && what != "a GET stream" {
			t.Errorf("%s: no 103 reached the client", what)
		}
		for _, h := range hints {
			if h.Get("Link") == "" {
				t.Errorf("%s: a 103 without its Link: %v", what, h)
			}
			for _, v := range h.Values("Mcp-Session-Id") {
				if raw[v] || v != "" {
					t.Errorf("%s: a 103 carries the session id %q (the upstream's: %v)", what, v, raw[v])
				}
			}
		}
	}
}

// TestHostileUpstreamConnectionOptions: an upstream's Connection header
// names fields of its answer that are for one hop only, which
// reverse_proxy removes before the client gets the answer. The proxy
// acts on none of them either: an initialize answer whose session id the
// upstream so names starts no session in the proxy (the client, which
// gets no id, could never use one).
func TestHostileUpstreamConnectionOptions(t *testing.T) {
	h := demo.Handler(pagedServer("zeta"), "", &mcp.StreamableHTTPOptions{JSONResponse: true})
	var named atomic.Bool // the upstream names Mcp-Session-Id in Connection
	up := startUpstreamHandler(t, "connection", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if named.Load() {
			w.Header().Set("Connection", "Mcp-Session-Id")
		}
		h.ServeHTTP(w, r)
	}))
	port, admin := startOps(t, up.addr(), opsGlobal, "")
	url := proxyURL(port) + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()

	named.Store(true)
	r := postJSON(ctx, url, initBody(1), nil)
	if r.status != http.StatusOK || r.hdr.Get("Mcp-Session-Id") != "" {
		t.Fatalf("initialize with its session id for one hop: %s %v", r, r.hdr)
	}
	if n := status(t, admin).Resources.Sessions.Used; n != 0 {
		t.Errorf("the proxy holds %d sessions the client never got", n)
	}
}
