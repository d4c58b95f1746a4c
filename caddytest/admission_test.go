package caddytest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/caddymodule"
)

// startGated starts a fake upstream that answers in SSE, as the go-sdk
// server does, whose tools "block" and "countdown" run until the test
// opens their gate (gatedTool), and whose tool "crash" dies in the middle
// of its answer.
func startGated(t *testing.T) *fakeUpstream {
	t.Helper()
	return startFake(t, &fakeUpstream{name: "up", sse: true, on: map[string]func(*fakeCall){
		"tools/call:block":     gatedTool,
		"tools/call:countdown": gatedTool,
		"tools/call:crash": func(c *fakeCall) {
			// An upstream that dies in the middle of its answer.
			s := c.sse()
			_ = s.write("event: message\ndata: {\"jsonrpc\":")
			panic(http.ErrAbortHandler)
		},
	}})
}

// proxyOn returns the mcp_proxy handler of the running config that serves
// the listener on port.
func proxyOn(t *testing.T, port int) *caddymodule.Handler {
	t.Helper()
	appIface, err := caddy.ActiveContext().AppIfConfigured("http")
	if err != nil {
		t.Fatalf("http app: %v", err)
	}
	var find func(caddyhttp.RouteList) *caddymodule.Handler
	find = func(routes caddyhttp.RouteList) *caddymodule.Handler {
		for _, r := range routes {
			for _, mh := range r.Handlers {
				switch mh := mh.(type) {
				case *caddymodule.Handler:
					return mh
				case *caddyhttp.Subroute:
					if h := find(mh.Routes); h != nil {
						return h
					}
				}
			}
		}
		return nil
	}
	suffix := fmt.Sprintf(":%d", port)
	for _, srv := range appIface.(*caddyhttp.App).Servers {
		for _, l := range srv.Listen {
			if strings.HasSuffix(l, suffix) {
				if h := find(srv.Routes); h != nil {
					return h
				}
			}
		}
	}
	t.Fatalf("no mcp_proxy listens on %d", port)
	return nil
}

// unexported reads an unexported field of the struct owner points to.
// The admission state has no metric or admin endpoint yet that tells how
// many requests wait in a queue or hold a slot; the tests need it to know
// a request is queued, and that every slot is free again.
func unexported[T any](t *testing.T, owner any, field string) T {
	t.Helper()
	f := reflect.ValueOf(owner).Elem().FieldByName(field)
	if !f.IsValid() {
		t.Fatalf("%T has no field %s", owner, field)
	}
	v, ok := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(T)
	if !ok {
		t.Fatalf("%T field %s is a %s", owner, field, f.Type())
	}
	return v
}

func controllerOn(t *testing.T, port int) *admission.Controller {
	t.Helper()
	return unexported[*admission.Controller](t, proxyOn(t, port), "ctrl")
}

// awaitIdle waits until the mcp_proxy on port holds no admission slot of any
// kind. A request's slots are released when its handler returns, just
// after the client got the answer: a test that needs the capacity back
// right after an answer waits for this first.
func awaitIdle(t *testing.T, port int) {
	t.Helper()
	h := proxyOn(t, port)
	ctrl := unexported[*admission.Controller](t, h, "ctrl")
	streams := unexported[*admission.Limiter](t, h, "streamLimit")
	sessions := unexported[*admission.KeyedLimiter](t, ctrl, "sessions")
	clients := unexported[*admission.KeyedLimiter](t, ctrl, "clients")
	pollUntil(t, "every admission slot to be free", func() bool {
		for _, ts := range ctrl.ToolStats() {
			if ts.InFlight != 0 || ts.Queued != 0 {
				return false
			}
		}
		return ctrl.InFlight() == 0 && ctrl.Queued() == 0 && streams.InFlight() == 0 &&
			(ctrl.Global() == nil || ctrl.Global().InFlight() == 0) &&
			(sessions == nil || sessions.Len() == 0) && (clients == nil || clients.Len() == 0)
	})
}

func siteWith(port int, up, block string) string {
	return fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n%s\t}\n}\n", port, up, block)
}

// TestAdmissionMaxInflight: with max_inflight 2 and no queue, a third
// request while two tool calls run upstream is refused at once with 503,
// Retry-After and a JSON-RPC error, and never reaches the upstream; a
// ping of an existing session is never refused; once the calls end the
// full capacity is back.
func TestAdmissionMaxInflight(t *testing.T) {
	g := startGated(t)
	port := freePort(t)
	loadCaddyfile(t, siteWith(port, g.addr(), "\t\tmax_inflight 2\n"))
	url := proxyURL(port) + "/mcp"
	a, b, c := rawSession(t, url, nil), rawSession(t, url, nil), rawSession(t, url, nil)
	awaitIdle(t, port)
	ctx := context.Background()

	ra := sendJSON(ctx, url, gatedCall(10, "block", "a"), inSession(a, nil))
	rb := sendJSON(ctx, url, gatedCall(11, "block", "b"), inSession(b, nil))
	g.awaitStarted(t, "a", "b")

	mark := g.mark()
	assertRefused(t, postJSON(ctx, url, echoCall(12, "x"), inSession(c, nil)), 503, "12", "queue_full", "1")
	assertRefused(t, postJSON(ctx, url, initBody(13), nil), 503, "13", "queue_full", "1")
	assertRefused(t, postJSON(ctx, url, `{"jsonrpc":"2.0","id":"req-14","method":"tools/list"}`, inSession(c, nil)), 503, `"req-14"`, "queue_full", "1")
	g.assertNotForwarded(t, mark, "12", "13", `"req-14"`)

	// Cheap messages of a session are never refused by the limit.
	assertResult(t, postJSON(ctx, url, rpcRequest(15, "ping"), inSession(c, nil)), "15", "{}")

	g.open("a", "b")
	assertResult(t, awaitReply(t, ra, "call a"), "10", "done a")
	assertResult(t, awaitReply(t, rb, "call b"), "11", "done b")

	// Both slots are free again.
	awaitIdle(t, port)
	ra = sendJSON(ctx, url, gatedCall(16, "block", "a2"), inSession(a, nil))
	rb = sendJSON(ctx, url, gatedCall(17, "block", "b2"), inSession(b, nil))
	g.awaitStarted(t, "a2", "b2")
	g.open("a2", "b2")
	assertResult(t, awaitReply(t, ra, "call a2"), "16", "done a2")
	assertResult(t, awaitReply(t, rb, "call b2"), "17", "done b2")
	assertResult(t, postJSON(ctx, url, echoCall(18, "again"), inSession(c, nil)), "18", "again")
}

// TestAdmissionQueue: with max_inflight 2 and queue 4 2s, a request over
// the limit waits and is served when a slot frees; with the queue full the
// next is refused at once (queue_full); waiters that get no slot within
// the timeout are refused (queue_timeout). Refused requests never reach
// the upstream.
func TestAdmissionQueue(t *testing.T) {
	g := startGated(t)
	port := freePort(t)
	loadCaddyfile(t, siteWith(port, g.addr(), "\t\tmax_inflight 2\n\t\tqueue 4 2s\n"))
	url := proxyURL(port) + "/mcp"
	a, b, c, d := rawSession(t, url, nil), rawSession(t, url, nil), rawSession(t, url, nil), rawSession(t, url, nil)
	awaitIdle(t, port)
	ctrl := controllerOn(t, port)
	ctx := context.Background()

	ra := sendJSON(ctx, url, gatedCall(10, "block", "a"), inSession(a, nil))
	rb := sendJSON(ctx, url, gatedCall(11, "block", "b"), inSession(b, nil))
	g.awaitStarted(t, "a", "b")

	// A third call waits for a slot and is served when one frees.
	rc := sendJSON(ctx, url, echoCall(12, "queued"), inSession(c, nil))
	pollUntil(t, "the third call to queue", func() bool { return ctrl.Queued() == 1 })
	if g.saw("12") {
		t.Fatal("a queued call reached the upstream")
	}
	g.open("a")
	assertResult(t, awaitReply(t, ra, "call a"), "10", "done a")
	assertResult(t, awaitReply(t, rc, "queued call"), "12", "queued")

	// Fill both slots and the queue.
	pollUntil(t, "the served calls to release their slots", func() bool { return ctrl.InFlight() == 1 })
	rc = sendJSON(ctx, url, gatedCall(13, "block", "c"), inSession(c, nil))
	g.awaitStarted(t, "c")
	mark := g.mark()
	var waiters []<-chan reply
	for i := range 4 {
		waiters = append(waiters, sendJSON(ctx, url, echoCall(20+i, "waiter"), inSession(d, nil)))
	}
	pollUntil(t, "four waiters", func() bool { return ctrl.Queued() == 4 })
	// The queue is full of requests of the same priority, or higher.
	assertRefused(t, postJSON(ctx, url, echoCall(30, "x"), inSession(d, nil)), 503, "30", "queue_full", "2")
	assertRefused(t, postJSON(ctx, url, initBody(31), nil), 503, "31", "queue_full", "2")
	// Nobody frees a slot: every waiter times out.
	for i, w := range waiters {
		assertRefused(t, awaitReply(t, w, "waiter"), 503, strconv.Itoa(20+i), "queue_timeout", "2")
	}
	g.assertNotForwarded(t, mark, "20", "21", "22", "23", "30", "31")
	if q := ctrl.Queued(); q != 0 {
		t.Errorf("%d requests still queued", q)
	}

	g.open("b", "c")
	assertResult(t, awaitReply(t, rb, "call b"), "11", "done b")
	assertResult(t, awaitReply(t, rc, "call c"), "13", "done c")
	pollUntil(t, "every slot free", func() bool { return ctrl.InFlight() == 0 })
	assertResult(t, postJSON(ctx, url, echoCall(32, "after"), inSession(d, nil)), "32", "after")
}

// TestAdmissionPriority: with one slot taken, a tools/call and a
// tools/list of an existing session and a new session's initialize wait
// in the queue; when the slot frees they reach the upstream by priority
// (in-session list work, in-session tool calls, then new sessions), not
// in the order they came (FIFO: call, initialize, list) nor its reverse
// (LIFO: list, initialize, call). A ping of a session is not queued.
func TestAdmissionPriority(t *testing.T) {
	g := startGated(t)
	port := freePort(t)
	loadCaddyfile(t, siteWith(port, g.addr(), "\t\tmax_inflight 1\n\t\tqueue 10 5s\n"))
	url := proxyURL(port) + "/mcp"
	a, b := rawSession(t, url, nil), rawSession(t, url, nil)
	awaitIdle(t, port)
	ctrl := controllerOn(t, port)
	ctx := context.Background()

	heavy := sendJSON(ctx, url, gatedCall(10, "block", "heavy"), inSession(a, nil))
	g.awaitStarted(t, "heavy")
	mark := g.mark()

	call := sendJSON(ctx, url, echoCall(11, "call"), inSession(b, nil))
	pollUntil(t, "tools/call to queue", func() bool { return ctrl.Queued() == 1 })
	initq := sendJSON(ctx, url, initBody(12), nil)
	pollUntil(t, "initialize to queue", func() bool { return ctrl.Queued() == 2 })
	list := sendJSON(ctx, url, rpcRequest(13, "tools/list"), inSession(b, nil))
	pollUntil(t, "tools/list to queue", func() bool { return ctrl.Queued() == 3 })

	assertResult(t, postJSON(ctx, url, rpcRequest(14, "ping"), inSession(b, nil)), "14", "{}")
	if q := ctrl.Queued(); q != 3 {
		t.Fatalf("queued %d, want 3", q)
	}
	for _, a := range g.since(mark) {
		if a.id != "14" {
			t.Fatalf("a queued request reached the upstream: %+v", a)
		}
	}

	g.open("heavy")
	assertResult(t, awaitReply(t, heavy, "heavy call"), "10", "done heavy")
	assertResult(t, awaitReply(t, call, "tools/call"), "11", "call")
	assertResult(t, awaitReply(t, initq, "initialize"), "12", "protocolVersion")
	assertResult(t, awaitReply(t, list, "tools/list"), "13", "echo")

	var order []string
	for _, a := range g.since(mark) {
		if a.id == "11" || a.id == "12" || a.id == "13" {
			order = append(order, a.rpc)
		}
	}
	want := []string{"tools/list", "tools/call", "initialize"}
	if !reflect.DeepEqual(order, want) {
		t.Errorf("queued requests reached the upstream in the order %v, want %v", order, want)
	}
}

// TestAdmissionSessionMaxInflight: with session_max_inflight 1, a second
// concurrent request of a session gets 429 and never reaches the upstream,
// while another session and the session's pings are unaffected.
func TestAdmissionSessionMaxInflight(t *testing.T) {
	g := startGated(t)
	port := freePort(t)
	loadCaddyfile(t, siteWith(port, g.addr(), "\t\tsession_max_inflight 1\n"))
	url := proxyURL(port) + "/mcp"
	a, b := rawSession(t, url, nil), rawSession(t, url, nil)
	awaitIdle(t, port)
	ctx := context.Background()

	ra := sendJSON(ctx, url, gatedCall(10, "block", "a"), inSession(a, nil))
	g.awaitStarted(t, "a")
	mark := g.mark()
	assertRefused(t, postJSON(ctx, url, echoCall(11, "x"), inSession(a, nil)), 429, "11", "session_quota", "1")
	assertRefused(t, postJSON(ctx, url, rpcRequest(12, "tools/list"), inSession(a, nil)), 429, "12", "session_quota", "1")
	g.assertNotForwarded(t, mark, "11", "12")

	assertResult(t, postJSON(ctx, url, echoCall(13, "other session"), inSession(b, nil)), "13", "other session")
	assertResult(t, postJSON(ctx, url, rpcRequest(14, "ping"), inSession(a, nil)), "14", "{}")

	g.open("a")
	assertResult(t, awaitReply(t, ra, "call a"), "10", "done a")
	awaitIdle(t, port)
	assertResult(t, postJSON(ctx, url, echoCall(15, "free again"), inSession(a, nil)), "15", "free again")
}

// TestAdmissionClientMaxInflight: with client_max_inflight 1 keyed by the
// X-Client header, a second concurrent request of the same client, even
// from another session, gets 429; another client is unaffected.
func TestAdmissionClientMaxInflight(t *testing.T) {
	g := startGated(t)
	port := freePort(t)
	loadCaddyfile(t, siteWith(port, g.addr(), "\t\tclient_max_inflight 1\n\t\tclient_key {http.request.header.X-Client}\n"))
	url := proxyURL(port) + "/mcp"
	alice := map[string]string{"X-Client": "alice"}
	bob := map[string]string{"X-Client": "bob"}
	a1 := rawSession(t, url, alice)
	awaitIdle(t, port)
	a2 := rawSession(t, url, alice)
	b1 := rawSession(t, url, bob)
	awaitIdle(t, port)
	ctx := context.Background()

	ra := sendJSON(ctx, url, gatedCall(10, "block", "alice"), inSession(a1, alice))
	g.awaitStarted(t, "alice")
	mark := g.mark()
	assertRefused(t, postJSON(ctx, url, echoCall(11, "x"), inSession(a2, alice)), 429, "11", "client_quota", "1")
	assertRefused(t, postJSON(ctx, url, initBody(12), alice), 429, "12", "client_quota", "1")
	g.assertNotForwarded(t, mark, "11", "12")

	// Another client passes, also while both hold a call.
	assertResult(t, postJSON(ctx, url, echoCall(13, "bob"), inSession(b1, bob)), "13", "bob")
	rb := sendJSON(ctx, url, gatedCall(14, "block", "bob"), inSession(b1, bob))
	g.awaitStarted(t, "bob")
	g.open("alice", "bob")
	assertResult(t, awaitReply(t, ra, "alice's call"), "10", "done alice")
	assertResult(t, awaitReply(t, rb, "bob's call"), "14", "done bob")
	awaitIdle(t, port)
	assertResult(t, postJSON(ctx, url, echoCall(15, "alice again"), inSession(a2, alice)), "15", "alice again")
}

// TestAdmissionClientSessionRate: with client_session_rate 1 1, a second
// initialize from the same client right after the first gets 429 with
// the time until its next session as Retry-After, and is not forwarded;
// the client's existing session keeps working, and after Retry-After it
// may open a session again.
func TestAdmissionClientSessionRate(t *testing.T) {
	g := startGated(t)
	port := freePort(t)
	loadCaddyfile(t, siteWith(port, g.addr(), "\t\tclient_session_rate 1 1\n"))
	url := proxyURL(port) + "/mcp"
	ctx := context.Background()

	first := postJSON(ctx, url, initBody(1), nil)
	sid := first.hdr.Get("Mcp-Session-Id")
	if first.status != http.StatusOK || sid == "" {
		t.Fatalf("first initialize: %d %v %s", first.status, first.err, first.body)
	}
	start := time.Now()
	mark := g.mark()
	second := postJSON(ctx, url, initBody(2), nil)
	if second.status != http.StatusTooManyRequests {
		t.Fatalf("second initialize %v after the first: %d %s", time.Since(start), second.status, second.body)
	}
	retry, err := strconv.Atoi(second.hdr.Get("Retry-After"))
	if err != nil || retry < 1 {
		t.Fatalf("Retry-After %q, want a whole number of seconds ≥ 1", second.hdr.Get("Retry-After"))
	}
	assertRefused(t, second, 429, "2", "client_quota", strconv.Itoa(retry))
	g.assertNotForwarded(t, mark, "2")

	// The rate limits new sessions only.
	if st, _, b := rawPost(t, url, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, inSession(sid, nil)); st != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %d %s", st, b)
	}
	assertResult(t, postJSON(ctx, url, echoCall(3, "in session"), inSession(sid, nil)), "3", "in session")

	// Retry-After is honest: the client may open a session once it passed.
	time.Sleep(time.Duration(retry) * time.Second)
	assertResult(t, postJSON(ctx, url, initBody(4), nil), "4", "protocolVersion")
}

// TestAdmissionToolLimit: with tool countdown max_inflight 1, a second
// concurrent countdown call is answered with HTTP 200 carrying a JSON-RPC
// error with the request's id, never reaches the upstream, and other tools
// keep running.
func TestAdmissionToolLimit(t *testing.T) {
	g := startGated(t)
	port := freePort(t)
	loadCaddyfile(t, siteWith(port, g.addr(), "\t\ttool countdown max_inflight 1\n"))
	url := proxyURL(port) + "/mcp"
	a, b := rawSession(t, url, nil), rawSession(t, url, nil)
	awaitIdle(t, port)
	ctx := context.Background()

	first := sendJSON(ctx, url, gatedCall(10, "countdown", "first"), inSession(a, nil))
	g.awaitStarted(t, "first")
	mark := g.mark()
	for _, id := range []string{"11", `"cd-12"`} {
		r := postJSON(ctx, url, callBody(id, "countdown", `{"key":"second"}`), inSession(b, nil))
		assertRefused(t, r, http.StatusOK, id, "tool countdown is busy", "1")
	}
	g.assertNotForwarded(t, mark, "11", `"cd-12"`)

	// Other tools are not limited by the countdown rule.
	assertResult(t, postJSON(ctx, url, echoCall(13, "still"), inSession(b, nil)), "13", "still")
	other := sendJSON(ctx, url, gatedCall(14, "block", "other"), inSession(b, nil))
	g.awaitStarted(t, "other")
	g.open("first", "other")
	assertResult(t, awaitReply(t, first, "first countdown"), "10", "done first")
	assertResult(t, awaitReply(t, other, "block"), "14", "done other")
	awaitIdle(t, port)
	g.open("third")
	assertResult(t, postJSON(ctx, url, gatedCall(15, "countdown", "third"), inSession(b, nil)), "15", "done third")
}

// TestAdmissionGlobalLimit: the mcp global option's max_inflight is one
// limit shared by every mcp_proxy of the process; it applies to pings too.
func TestAdmissionGlobalLimit(t *testing.T) {
	g := startGated(t)
	p1, p2 := freePort(t), freePort(t)
	loadCaddyfileWith(t, "\tmcp {\n\t\tmax_inflight 1\n\t}\n",
		fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n:%d {\n\tmcp_proxy %s\n}\n", p1, g.addr(), p2, g.addr()))
	u1, u2 := proxyURL(p1)+"/mcp", proxyURL(p2)+"/mcp"
	a := rawSession(t, u1, nil)
	awaitIdle(t, p1)
	b := rawSession(t, u2, nil)
	awaitIdle(t, p2)
	ctx := context.Background()

	ra := sendJSON(ctx, u1, gatedCall(10, "block", "a"), inSession(a, nil))
	g.awaitStarted(t, "a")
	mark := g.mark()
	assertRefused(t, postJSON(ctx, u2, echoCall(11, "x"), inSession(b, nil)), 503, "11", "capacity", "1")
	assertRefused(t, postJSON(ctx, u2, initBody(12), nil), 503, "12", "capacity", "1")
	assertRefused(t, postJSON(ctx, u2, rpcRequest(13, "ping"), inSession(b, nil)), 503, "13", "capacity", "1")
	assertRefused(t, postJSON(ctx, u1, echoCall(14, "x"), inSession(a, nil)), 503, "14", "capacity", "1")
	g.assertNotForwarded(t, mark, "11", "12", "13", "14")

	g.open("a")
	assertResult(t, awaitReply(t, ra, "call a"), "10", "done a")
	awaitIdle(t, p1)
	assertResult(t, postJSON(ctx, u2, echoCall(15, "two"), inSession(b, nil)), "15", "two")
	awaitIdle(t, p2)
	assertResult(t, postJSON(ctx, u1, echoCall(16, "one"), inSession(a, nil)), "16", "one")
}

// TestAdmissionMaxStreams: with max_streams 1, a second GET stream is
// refused with 503 while the first is open and never reaches the
// upstream; once the first closes a new one opens.
func TestAdmissionMaxStreams(t *testing.T) {
	g := startGated(t)
	port := freePort(t)
	loadCaddyfile(t, siteWith(port, g.addr(), "\t\tmax_streams 1\n"))
	url := proxyURL(port) + "/mcp"
	a, b := rawSession(t, url, nil), rawSession(t, url, nil)
	awaitIdle(t, port)

	ctxA, cancelA := context.WithTimeout(context.Background(), 2*boundedWait)
	defer cancelA()
	first, err := getStream(ctxA, rawClient, url, a, sessionVersion, "", nil)
	if err != nil || first.StatusCode != http.StatusOK || first.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("first stream: %v %v", err, first)
	}
	gets := g.count(ofMethod(http.MethodGet))
	mark := g.mark()
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	assertRefused(t, readReply(getStream(ctx, rawClient, url, b, sessionVersion, "", nil)), 503, "null", "capacity", "1")
	g.assertNotForwarded(t, mark)
	if n := g.count(ofMethod(http.MethodGet)); n != gets {
		t.Errorf("a refused stream reached the upstream")
	}
	// POSTs do not take stream slots.
	assertResult(t, postJSON(ctx, url, echoCall(10, "post"), inSession(b, nil)), "10", "post")

	cancelA()
	first.Body.Close()
	var second *http.Response
	pollUntil(t, "the stream slot to free", func() bool {
		resp, err := getStream(ctx, rawClient, url, b, sessionVersion, "", nil)
		if err != nil {
			t.Fatalf("second stream: %v", err)
		}
		if resp.StatusCode == http.StatusOK {
			second = resp
			return true
		}
		r := readReply(resp, nil)
		if r.status != http.StatusServiceUnavailable {
			t.Fatalf("second stream: %d %s", r.status, r.body)
		}
		return false
	})
	second.Body.Close()
}

// TestAdmissionSlotsReleased throws a bounded burst of concurrent
// requests at every limit at once, with clients that give up at any
// point (queued, running upstream, streaming), an upstream that dies
// mid-answer, and refusals of every kind; afterwards every limit must be
// back to its full capacity.
func TestAdmissionSlotsReleased(t *testing.T) {
	g := startGated(t)
	port := freePort(t)
	loadCaddyfileWith(t, "\tmcp {\n\t\tmax_inflight 4\n\t}\n", siteWith(port, g.addr(),
		"\t\tmax_inflight 3\n\t\tqueue 3 1s\n\t\tmax_streams 1\n\t\tsession_max_inflight 2\n"+
			"\t\tclient_max_inflight 2\n\t\tclient_key {http.request.header.X-Client}\n"+
			"\t\ttool block max_inflight 2 timeout 1s\n"))
	url := proxyURL(port) + "/mcp"
	h := proxyOn(t, port)
	ctrl := unexported[*admission.Controller](t, h, "ctrl")

	type session struct {
		sid string
		hdr map[string]string
	}
	var sessions []session
	for c := range 4 {
		hdr := map[string]string{"X-Client": fmt.Sprintf("client-%d", c)}
		for range 2 {
			sessions = append(sessions, session{rawSession(t, url, hdr), hdr})
		}
		awaitIdle(t, port)
	}

	// Deterministic cancellations first: a call cancelled while it runs
	// upstream, and one cancelled while it waits in the queue.
	ctx, cancelRunning := context.WithCancel(context.Background())
	running := sendJSON(ctx, url, gatedCall(1, "block", "cancelled-running"), inSession(sessions[0].sid, sessions[0].hdr))
	g.awaitStarted(t, "cancelled-running")
	held := []<-chan reply{
		sendJSON(context.Background(), url, gatedCall(2, "countdown", "held-1"), inSession(sessions[2].sid, sessions[2].hdr)),
		sendJSON(context.Background(), url, gatedCall(3, "countdown", "held-2"), inSession(sessions[4].sid, sessions[4].hdr)),
	}
	g.awaitStarted(t, "held-1", "held-2")
	qctx, cancelQueued := context.WithCancel(context.Background())
	queued := sendJSON(qctx, url, echoCall(4, "gives up"), inSession(sessions[6].sid, sessions[6].hdr))
	pollUntil(t, "a call to queue", func() bool { return ctrl.Queued() == 1 })
	cancelQueued()
	if r := awaitReply(t, queued, "cancelled waiter"); r.err == nil {
		t.Errorf("cancelled waiter got an answer: %d %s", r.status, r.body)
	}
	pollUntil(t, "the cancelled waiter to leave the queue", func() bool { return ctrl.Queued() == 0 })
	cancelRunning()
	if r := awaitReply(t, running, "cancelled call"); r.err == nil {
		t.Errorf("cancelled call got an answer: %d %s", r.status, r.body)
	}
	g.open("held-1", "held-2")
	for _, ch := range held {
		if r := awaitReply(t, ch, "held call"); r.status != http.StatusOK {
			t.Errorf("held call: %d %v %s", r.status, r.err, r.body)
		}
	}

	// Then a burst where clients give up at arbitrary moments.
	const burst = 48
	var keys []string
	var wg sync.WaitGroup
	for i := range burst {
		s := sessions[i%len(sessions)]
		key := fmt.Sprintf("burst-%d", i)
		keys = append(keys, key)
		var body string
		switch i % 8 {
		case 0, 1:
			body = gatedCall(100+i, "block", key)
		case 2:
			body = gatedCall(100+i, "countdown", key)
		case 3:
			body = echoCall(100+i, key)
		case 4:
			body = rpcRequest(100+i, "tools/list")
		case 5:
			body = rpcRequest(100+i, "ping")
		case 6:
			body = callBody(strconv.Itoa(100+i), "crash", "{}")
		case 7:
			body = "" // a GET stream
		}
		// Every client gives up after a while; none of these durations
		// is asserted on, they only scatter the cancellations.
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(50+(i*37)%700)*time.Millisecond)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cancel()
			if body == "" {
				if resp, err := getStream(ctx, rawClient, url, s.sid, sessionVersion, "", nil); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				return
			}
			_ = postJSON(ctx, url, body, inSession(s.sid, s.hdr))
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * boundedWait):
		t.Fatal("burst clients never finished")
	}
	// Let the upstream finish what the clients left behind: a client that
	// goes away before the upstream answered leaves the request running
	// (the session era resumes, it does not cancel).
	g.open(append(keys, "cancelled-running")...)
	awaitIdle(t, port)

	// Full capacity: three calls at once (the per-proxy and the global
	// limit), two of them of the limited tool.
	var calls []<-chan reply
	for i, tool := range []string{"block", "block", "countdown"} {
		s := sessions[2*i]
		calls = append(calls, sendJSON(context.Background(), url, gatedCall(200+i, tool, fmt.Sprintf("full-%d", i)), inSession(s.sid, s.hdr)))
	}
	g.awaitStarted(t, "full-0", "full-1", "full-2")
	g.open("full-0", "full-1", "full-2")
	for i, ch := range calls {
		assertResult(t, awaitReply(t, ch, "full capacity call"), strconv.Itoa(200+i), fmt.Sprintf("done full-%d", i))
	}
	// Every session, and so every client, may run two calls at once.
	for i, s := range sessions {
		awaitIdle(t, port)
		k1, k2 := fmt.Sprintf("s%d-1", i), fmt.Sprintf("s%d-2", i)
		r1 := sendJSON(context.Background(), url, gatedCall(300+2*i, "countdown", k1), inSession(s.sid, s.hdr))
		r2 := sendJSON(context.Background(), url, gatedCall(301+2*i, "countdown", k2), inSession(s.sid, s.hdr))
		g.awaitStarted(t, k1, k2)
		g.open(k1, k2)
		assertResult(t, awaitReply(t, r1, "session call"), strconv.Itoa(300+2*i), "done "+k1)
		assertResult(t, awaitReply(t, r2, "session call"), strconv.Itoa(301+2*i), "done "+k2)
	}
	// And the stream slot is free.
	awaitIdle(t, port)
	sctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	resp, err := getStream(sctx, rawClient, url, sessions[7].sid, sessionVersion, "", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("stream after the burst: %v %v", err, resp)
	}
	resp.Body.Close()
}

// TestAdmissionCaddyfileErrors checks that bad admission subdirectives
// and mcp global options fail to adapt with a message naming the problem.
func TestAdmissionCaddyfileErrors(t *testing.T) {
	for name, tt := range map[string]struct{ global, block, want string }{
		"queue one arg":         {block: "queue 10", want: "wrong argument count"},
		"queue bad size":        {block: "queue many 5s", want: `bad queue size "many"`},
		"queue negative":        {block: "queue -1 5s", want: `bad queue size "-1"`},
		"queue bad timeout":     {block: "queue 10 soon", want: `bad queue timeout "soon"`},
		"queue zero timeout":    {block: "queue 10 0s", want: `bad queue timeout "0s"`},
		"max_inflight":          {block: "max_inflight lots", want: `bad max_inflight "lots": want a count`},
		"max_streams negative":  {block: "max_streams -2", want: `bad max_streams "-2"`},
		"session_max_inflight":  {block: "session_max_inflight", want: "wrong argument count"},
		"client_max_inflight":   {block: "client_max_inflight 1 2", want: "wrong argument count"},
		"client_key":            {block: "client_key", want: "wrong argument count"},
		"client_session_rate":   {block: "client_session_rate 0", want: `bad client_session_rate "0"`},
		"client_session_burst":  {block: "client_session_rate 1 0", want: `bad client_session_rate burst "0"`},
		"tool without limit":    {block: "tool x max_inflight", want: "wrong argument count"},
		"tool wrong keyword":    {block: "tool x limit 3", want: `tool x: expected max_inflight, got "limit"`},
		"tool bad count":        {block: "tool x max_inflight many", want: `tool x: bad max_inflight "many"`},
		"tool bad timeout word": {block: "tool x max_inflight 1 wait 2s", want: `tool x: expected timeout, got "wait"`},
		"tool bad timeout":      {block: "tool x max_inflight 1 timeout never", want: `tool x: bad timeout "never"`},
		"limit adaptive min":    {block: "limit adaptive min", want: "expected: limit adaptive [min <n>] [max <n>] [initial <n>]"},
		"limit not adaptive":    {block: "limit static", want: "expected: limit adaptive"},
		"limit adaptive bad":    {block: "limit adaptive min 0", want: `limit adaptive: bad min "0"`},
		"limit adaptive option": {block: "limit adaptive floor 3", want: `limit adaptive: unknown option "floor"`},
		"mcp unknown option":    {global: "mcp {\n\t\tmax_queue 3\n\t}", want: `unrecognized mcp option "max_queue"`},
		"mcp bad count":         {global: "mcp {\n\t\tmax_inflight lots\n\t}", want: `bad max_inflight "lots": want a count`},
		"mcp negative":          {global: "mcp {\n\t\tmax_streams -1\n\t}", want: `bad max_streams "-1"`},
		"mcp missing count":     {global: "mcp {\n\t\tmax_inflight\n\t}", want: "wrong argument count"},
		"mcp extra argument":    {global: "mcp {\n\t\tmax_inflight 1 2\n\t}", want: "wrong argument count"},
	} {
		cf := ":8080 {\n\tmcp_proxy localhost:3000 {\n\t\t" + tt.block + "\n\t}\n}\n"
		if tt.global != "" {
			cf = "{\n\t" + tt.global + "\n}\n" + cf
		}
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tt.want)
		}
	}
}

// TestAdmissionDetachedCallHoldsSlot: a session-era tool call whose
// client went away keeps running upstream (it may be resumed), so it
// must keep its in-flight slot until the upstream is done with it;
// otherwise clients that time out and retry multiply the upstream's load
// past max_inflight.
func TestAdmissionDetachedCallHoldsSlot(t *testing.T) {

	g := startGated(t)
	port := freePort(t)
	loadCaddyfile(t, siteWith(port, g.addr(), "\t\tmax_inflight 1\n"))
	url := proxyURL(port) + "/mcp"
	a, b := rawSession(t, url, nil), rawSession(t, url, nil)
	awaitIdle(t, port)

	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	body := `{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"_meta":{"progressToken":"p"},"name":"block","arguments":{"key":"left"}}}`
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range inSession(a, nil) {
		req.Header.Set(k, v)
	}
	resp, err := rawClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("call: %v %v", err, resp)
	}
	g.awaitStarted(t, "left")
	// Read until the progress notification, then go away.
	buf := make([]byte, 4096)
	var got []byte
	for !bytes.Contains(got, []byte("notifications/progress")) {
		n, err := resp.Body.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("reading the stream: %v %q", err, got)
		}
	}
	cancel()
	resp.Body.Close()
	// The proxy is done with the client once no stream has a client
	// attached.
	pollUntil(t, "the proxy to see the client go", func() bool { v, ok := liveFamily(t, "caddy_mcp_streams_active"); return ok && v == 0 })

	// The upstream still runs the call: the only slot is taken.
	second := sendJSON(context.Background(), url, gatedCall(11, "block", "second"), inSession(b, nil))
	select {
	case r := <-second:
		assertRefused(t, r, 503, "11", "queue_full", "1")
	case <-g.started:
		t.Errorf("a second call runs upstream beside the first with max_inflight 1")
		g.open("second")
		awaitReply(t, second, "second call")
	case <-time.After(boundedWait):
		t.Fatal("second call: no answer")
	}
	g.open("left")
}

// TestAdmissionQueuedHoldsNoGlobalSlot: a request waiting in one
// mcp_proxy's queue is not in flight, so it must not take the process-wide
// in-flight slot another mcp_proxy needs.
func TestAdmissionQueuedHoldsNoGlobalSlot(t *testing.T) {

	g := startGated(t)
	p1, p2 := freePort(t), freePort(t)
	loadCaddyfileWith(t, "\tmcp {\n\t\tmax_inflight 2\n\t}\n",
		siteWith(p1, g.addr(), "\t\tmax_inflight 1\n\t\tqueue 4 5s\n")+fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", p2, g.addr()))
	u1, u2 := proxyURL(p1)+"/mcp", proxyURL(p2)+"/mcp"
	a := rawSession(t, u1, nil)
	awaitIdle(t, p1)
	b := rawSession(t, u2, nil)
	awaitIdle(t, p2)
	ctrl := controllerOn(t, p1)
	ctx := context.Background()

	running := sendJSON(ctx, u1, gatedCall(10, "block", "a"), inSession(a, nil))
	g.awaitStarted(t, "a")
	waiting := sendJSON(ctx, u1, echoCall(11, "waits"), inSession(a, nil))
	pollUntil(t, "a waiter", func() bool { return ctrl.Queued() == 1 })
	// One request is in flight in the process, the limit is two.
	assertResult(t, postJSON(ctx, u2, echoCall(12, "other proxy"), inSession(b, nil)), "12", "other proxy")
	g.open("a")
	awaitReply(t, running, "running call")
	awaitReply(t, waiting, "waiting call")
}

// TestAdmissionMcpOptionArguments: arguments on the mcp global option's
// own line mean nothing and must fail to adapt rather than be dropped.
func TestAdmissionMcpOptionArguments(t *testing.T) {

	cf := "{\n\tmcp 5\n}\n:8080 {\n\tmcp_proxy localhost:3000\n}\n"
	if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil); err == nil || !strings.Contains(err.Error(), "wrong argument count") {
		t.Errorf("err = %v, want a wrong argument count", err)
	}
}
