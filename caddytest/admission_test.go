package caddytest

import (
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

	"github.com/caddyserver/caddy/v2"
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

func controllerOn(t *testing.T, port int) *admission.Controller {
	t.Helper()
	return proxyOn(t, port).Admission()
}

// awaitIdle waits until the mcp_proxy on port holds no admission slot of any
// kind. A request's slots are released when its handler returns, just
// after the client got the answer: a test that needs the capacity back
// right after an answer waits for this first.
func awaitIdle(t *testing.T, port int) {
	t.Helper()
	h := proxyOn(t, port)
	pollUntil(t, "every admission slot to be free", func() bool {
		g := h.Admission().Global()
		return h.Idle() && (g == nil || g.InFlight() == 0)
	})
}

// admissionScene is an admission scenario under way: a gated fake
// upstream (startGated) behind one mcp_proxy per site, and raw sessions
// opened through them, by name.
type admissionScene struct {
	t        *testing.T
	g        *fakeUpstream
	ports    []int
	urls     []string
	sessions map[string]sceneSession
	held     map[string]heldCall     // calls running upstream, by gate key
	waiting  map[string]<-chan reply // requests sent on their own, by raw id
	marked   int                     // the upstream's request count at mark
}

// sceneSession is a raw session of a scene; a session spec before it is
// opened.
type sceneSession struct {
	name   string
	site   int    // index of the site it is opened through
	client string // its X-Client header, "" for none
	sid    string
}

// heldCall is a gated call running upstream.
type heldCall struct {
	id    int
	reply <-chan reply
}

// sessionOn names a session of a site with the X-Client header client.
func sessionOn(name string, site int, client string) sceneSession {
	return sceneSession{name: name, site: site, client: client}
}

// plainSessions names sessions of the first site without a client header.
func plainSessions(names ...string) []sceneSession {
	var out []sceneSession
	for _, n := range names {
		out = append(out, sessionOn(n, 0, ""))
	}
	return out
}

// openScene starts a gated upstream and a config with the global options
// and a site per block (the lines inside its mcp_proxy), then opens the
// sessions in order, each once the proxy it went through is idle again.
func openScene(t *testing.T, global string, blocks []string, sessions []sceneSession) *admissionScene {
	t.Helper()
	s := &admissionScene{t: t, g: startGated(t), sessions: map[string]sceneSession{},
		held: map[string]heldCall{}, waiting: map[string]<-chan reply{}}
	var sites strings.Builder
	for _, block := range blocks {
		port := freePort(t)
		s.ports = append(s.ports, port)
		s.urls = append(s.urls, proxyURL(port)+"/mcp")
		sites.WriteString(proxySite(port, s.g.addr(), block))
	}
	loadCaddyfileWith(t, global, sites.String())
	for _, ss := range sessions {
		ss.sid = rawSession(t, s.urls[ss.site], ss.clientHeader())
		s.sessions[ss.name] = ss
		awaitIdle(t, s.ports[ss.site])
	}
	return s
}

func (ss sceneSession) clientHeader() map[string]string {
	if ss.client == "" {
		return nil
	}
	return map[string]string{"X-Client": ss.client}
}

// sceneRequest is a request of a scene: in a session, or an initialize
// from a session's client (fresh).
type sceneRequest struct {
	session string
	body    string
	id      string // raw JSON
	fresh   bool
}

// in is a request in session.
func in(session, body, id string) sceneRequest {
	return sceneRequest{session: session, body: body, id: id}
}

// newSession is an initialize from session's client, through its site.
func newSession(session string, id int) sceneRequest {
	return sceneRequest{session: session, body: initBody(id), id: strconv.Itoa(id), fresh: true}
}

// send posts r on its own goroutine.
func (s *admissionScene) send(r sceneRequest) <-chan reply {
	ss, ok := s.sessions[r.session]
	if !ok {
		s.t.Fatalf("no session %q", r.session)
	}
	hdr := inSession(ss.sid, ss.clientHeader())
	if r.fresh {
		hdr = ss.clientHeader()
	}
	return sendJSON(context.Background(), s.urls[ss.site], r.body, hdr)
}

// admissionStep is one step of a scenario.
type admissionStep func(s *admissionScene)

// hold sends a gated call of tool in session and waits until it runs
// upstream.
func hold(session string, id int, tool, key string) admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		s.held[key] = heldCall{id, s.send(in(session, gatedCall(id, tool, key), strconv.Itoa(id)))}
		s.g.awaitStarted(s.t, key)
	}
}

// release opens the gates of held calls and checks their answers.
func release(keys ...string) admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		s.g.open(keys...)
		for _, k := range keys {
			h := s.held[k]
			assertResult(s.t, awaitReply(s.t, h.reply, "call "+k), strconv.Itoa(h.id), "done "+k)
			delete(s.held, k)
		}
	}
}

// openGates opens gates without a held call.
func openGates(keys ...string) admissionStep {
	return func(s *admissionScene) { s.g.open(keys...) }
}

// refused sends each request and checks that it is refused with status,
// a Retry-After of retryAfter seconds and a JSON-RPC error naming reason.
func refused(status int, reason, retryAfter string, reqs ...sceneRequest) admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		for _, r := range reqs {
			assertRefused(s.t, awaitReply(s.t, s.send(r), "request "+r.id), status, r.id, reason, retryAfter)
		}
	}
}

// passes sends r and checks for a result containing want.
func passes(r sceneRequest, want string) admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		assertResult(s.t, awaitReply(s.t, s.send(r), "request "+r.id), r.id, want)
	}
}

// queued sends r on its own and waits until the proxy of its session's
// site holds n requests in its queue.
func queued(r sceneRequest, n int) admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		s.waiting[r.id] = s.send(r)
		ctrl := controllerOn(s.t, s.ports[s.sessions[r.session].site])
		pollUntil(s.t, fmt.Sprintf("request %s to queue (%d queued)", r.id, n), func() bool { return ctrl.Queued() == n })
	}
}

// served checks the answer to a request sent on its own: a result
// containing want, or any answer when want is empty.
func served(id, want string) admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		r := awaitReply(s.t, s.waiting[id], "request "+id)
		if want != "" {
			assertResult(s.t, r, id, want)
		}
	}
}

// expired checks that requests sent on their own were refused when their
// time in the queue ran out.
func expired(retryAfter string, ids ...string) admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		for _, id := range ids {
			assertRefused(s.t, awaitReply(s.t, s.waiting[id], "request "+id), http.StatusServiceUnavailable, id, "queue_timeout", retryAfter)
		}
	}
}

// mark notes how many requests the upstream has seen.
func mark() admissionStep {
	return func(s *admissionScene) { s.marked = s.g.mark() }
}

// notForwarded checks that no request reached the upstream since mark,
// and none of ids ever.
func notForwarded(ids ...string) admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		s.g.assertNotForwarded(s.t, s.marked, ids...)
	}
}

// idle waits until every proxy of the scene holds no admission slot.
func idle() admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		for _, p := range s.ports {
			awaitIdle(s.t, p)
		}
	}
}

// inFlight waits until the first site's proxy has n requests in flight.
func inFlight(n int) admissionStep {
	return func(s *admissionScene) {
		s.t.Helper()
		ctrl := controllerOn(s.t, s.ports[0])
		pollUntil(s.t, fmt.Sprintf("%d requests in flight", n), func() bool { return ctrl.InFlight() == n })
	}
}

// TestAdmissionLimits runs the admission scenarios: calls held upstream by
// gates take the slots of a limit, and the requests sent meanwhile are
// served, queued or refused as the limit says; refused requests never
// reach the upstream.
func TestAdmissionLimits(t *testing.T) {
	for _, tc := range []struct {
		name     string
		global   string   // mcp global options
		sites    []string // the lines inside each site's mcp_proxy
		sessions []sceneSession
		steps    []admissionStep
	}{{
		// With max_inflight 2 and no queue, a third request while two tool
		// calls run upstream is refused at once with 503, Retry-After and a
		// JSON-RPC error, and never reaches the upstream; a ping of an
		// existing session is never refused; once the calls end the full
		// capacity is back.
		name:     "MaxInflight",
		sites:    []string{"\t\tmax_inflight 2\n"},
		sessions: plainSessions("a", "b", "c"),
		steps: []admissionStep{
			hold("a", 10, "block", "a"), hold("b", 11, "block", "b"),
			mark(),
			refused(503, "queue_full", "1",
				in("c", echoCall(12, "x"), "12"), newSession("c", 13),
				in("c", `{"jsonrpc":"2.0","id":"req-14","method":"tools/list"}`, `"req-14"`)),
			notForwarded("12", "13", `"req-14"`),
			// Cheap messages of a session are never refused by the limit.
			passes(in("c", rpcRequest(15, "ping"), "15"), "{}"),
			release("a", "b"),
			// Both slots are free again.
			idle(),
			hold("a", 16, "block", "a2"), hold("b", 17, "block", "b2"),
			release("a2", "b2"),
			passes(in("c", echoCall(18, "again"), "18"), "again"),
		},
	}, {
		// With max_inflight 2 and queue 4 2s, a request over the limit waits
		// and is served when a slot frees; with the queue full the next is
		// refused at once (queue_full); waiters that get no slot within the
		// timeout are refused (queue_timeout). Refused requests never reach
		// the upstream.
		name:     "Queue",
		sites:    []string{"\t\tmax_inflight 2\n\t\tqueue 4 2s\n"},
		sessions: plainSessions("a", "b", "c", "d"),
		steps: []admissionStep{
			hold("a", 10, "block", "a"), hold("b", 11, "block", "b"),
			// A third call waits for a slot and is served when one frees.
			mark(),
			queued(in("c", echoCall(12, "queued"), "12"), 1),
			notForwarded("12"),
			release("a"),
			served("12", "queued"),
			// Fill both slots and the queue.
			inFlight(1),
			hold("c", 13, "block", "c"),
			mark(),
			queued(in("d", echoCall(20, "waiter"), "20"), 1), queued(in("d", echoCall(21, "waiter"), "21"), 2),
			queued(in("d", echoCall(22, "waiter"), "22"), 3), queued(in("d", echoCall(23, "waiter"), "23"), 4),
			// The queue is full of requests of the same priority, or higher.
			refused(503, "queue_full", "2", in("d", echoCall(30, "x"), "30"), newSession("d", 31)),
			// Nobody frees a slot: every waiter times out.
			expired("2", "20", "21", "22", "23"),
			notForwarded("20", "21", "22", "23", "30", "31"),
			func(s *admissionScene) {
				if q := controllerOn(s.t, s.ports[0]).Queued(); q != 0 {
					s.t.Errorf("%d requests still queued", q)
				}
			},
			release("b", "c"),
			inFlight(0),
			passes(in("d", echoCall(32, "after"), "32"), "after"),
		},
	}, {
		// With one slot taken, a tools/call and a tools/list of an existing
		// session and a new session's initialize wait in the queue; when
		// the slot frees they reach the upstream by priority (in-session
		// list work, in-session tool calls, then new sessions), not in the
		// order they came (FIFO: call, initialize, list) nor its reverse
		// (LIFO: list, initialize, call). A ping of a session is not
		// queued.
		name:     "Priority",
		sites:    []string{"\t\tmax_inflight 1\n\t\tqueue 10 5s\n"},
		sessions: plainSessions("a", "b"),
		steps: []admissionStep{
			hold("a", 10, "block", "heavy"),
			mark(),
			queued(in("b", echoCall(11, "call"), "11"), 1),
			queued(newSession("b", 12), 2),
			queued(in("b", rpcRequest(13, "tools/list"), "13"), 3),
			passes(in("b", rpcRequest(14, "ping"), "14"), "{}"),
			func(s *admissionScene) {
				if q := controllerOn(s.t, s.ports[0]).Queued(); q != 3 {
					s.t.Fatalf("queued %d, want 3", q)
				}
				for _, a := range s.g.since(s.marked) {
					if a.id != "14" {
						s.t.Fatalf("a queued request reached the upstream: %+v", a)
					}
				}
			},
			release("heavy"),
			served("11", "call"), served("12", "protocolVersion"), served("13", "echo"),
			func(s *admissionScene) {
				var order []string
				for _, a := range s.g.since(s.marked) {
					if a.id == "11" || a.id == "12" || a.id == "13" {
						order = append(order, a.rpc)
					}
				}
				if want := []string{"tools/list", "tools/call", "initialize"}; !reflect.DeepEqual(order, want) {
					s.t.Errorf("queued requests reached the upstream in the order %v, want %v", order, want)
				}
			},
		},
	}, {
		// With session_max_inflight 1, a second concurrent request of a
		// session gets 429 and never reaches the upstream, while another
		// session and the session's pings are unaffected.
		name:     "SessionMaxInflight",
		sites:    []string{"\t\tsession_max_inflight 1\n"},
		sessions: plainSessions("a", "b"),
		steps: []admissionStep{
			hold("a", 10, "block", "a"),
			mark(),
			refused(429, "session_quota", "1", in("a", echoCall(11, "x"), "11"), in("a", rpcRequest(12, "tools/list"), "12")),
			notForwarded("11", "12"),
			passes(in("b", echoCall(13, "other session"), "13"), "other session"),
			passes(in("a", rpcRequest(14, "ping"), "14"), "{}"),
			release("a"),
			idle(),
			passes(in("a", echoCall(15, "free again"), "15"), "free again"),
		},
	}, {
		// With client_max_inflight 1 keyed by the X-Client header, a second
		// concurrent request of the same client, even from another session,
		// gets 429; another client is unaffected.
		name:     "ClientMaxInflight",
		sites:    []string{"\t\tclient_max_inflight 1\n\t\tclient_key {http.request.header.X-Client}\n"},
		sessions: []sceneSession{sessionOn("a1", 0, "alice"), sessionOn("a2", 0, "alice"), sessionOn("b1", 0, "bob")},
		steps: []admissionStep{
			hold("a1", 10, "block", "alice"),
			mark(),
			refused(429, "client_quota", "1", in("a2", echoCall(11, "x"), "11"), newSession("a2", 12)),
			notForwarded("11", "12"),
			// Another client passes, also while both hold a call.
			passes(in("b1", echoCall(13, "bob"), "13"), "bob"),
			hold("b1", 14, "block", "bob"),
			release("alice", "bob"),
			idle(),
			passes(in("a2", echoCall(15, "alice again"), "15"), "alice again"),
		},
	}, {
		// With tool countdown max_inflight 1, a second concurrent countdown
		// call is answered with HTTP 200 carrying a JSON-RPC error with the
		// request's id, never reaches the upstream, and other tools keep
		// running.
		name:     "ToolLimit",
		sites:    []string{"\t\ttool countdown max_inflight 1\n"},
		sessions: plainSessions("a", "b"),
		steps: []admissionStep{
			hold("a", 10, "countdown", "first"),
			mark(),
			refused(http.StatusOK, "tool countdown is busy", "1",
				in("b", callBody("11", "countdown", `{"key":"second"}`), "11"),
				in("b", callBody(`"cd-12"`, "countdown", `{"key":"second"}`), `"cd-12"`)),
			notForwarded("11", `"cd-12"`),
			// Other tools are not limited by the countdown rule.
			passes(in("b", echoCall(13, "still"), "13"), "still"),
			hold("b", 14, "block", "other"),
			release("first", "other"),
			idle(),
			openGates("third"),
			passes(in("b", gatedCall(15, "countdown", "third"), "15"), "done third"),
		},
	}, {
		// The mcp global option's max_inflight is one limit shared by every
		// mcp_proxy of the process; it applies to pings too.
		name:     "GlobalLimit",
		global:   "\tmcp {\n\t\tmax_inflight 1\n\t}\n",
		sites:    []string{"", ""},
		sessions: []sceneSession{sessionOn("a", 0, ""), sessionOn("b", 1, "")},
		steps: []admissionStep{
			hold("a", 10, "block", "a"),
			mark(),
			refused(503, "capacity", "1",
				in("b", echoCall(11, "x"), "11"), newSession("b", 12),
				in("b", rpcRequest(13, "ping"), "13"), in("a", echoCall(14, "x"), "14")),
			notForwarded("11", "12", "13", "14"),
			release("a"),
			idle(),
			passes(in("b", echoCall(15, "two"), "15"), "two"),
			idle(),
			passes(in("a", echoCall(16, "one"), "16"), "one"),
		},
	}, {
		// A request waiting in one mcp_proxy's queue is not in flight, so
		// it must not take the process-wide in-flight slot another
		// mcp_proxy needs.
		name:     "QueuedHoldsNoGlobalSlot",
		global:   "\tmcp {\n\t\tmax_inflight 2\n\t}\n",
		sites:    []string{"\t\tmax_inflight 1\n\t\tqueue 4 5s\n", ""},
		sessions: []sceneSession{sessionOn("a", 0, ""), sessionOn("b", 1, "")},
		steps: []admissionStep{
			hold("a", 10, "block", "a"),
			queued(in("a", echoCall(11, "waits"), "11"), 1),
			// One request is in flight in the process, the limit is two.
			passes(in("b", echoCall(12, "other proxy"), "12"), "other proxy"),
			release("a"),
			served("11", ""),
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			s := openScene(t, tc.global, tc.sites, tc.sessions)
			for _, step := range tc.steps {
				step(s)
			}
		})
	}
}

// TestAdmissionClientSessionRate: with client_session_rate 1 1, a second
// initialize from the same client right after the first gets 429 with
// the time until its next session as Retry-After, and is not forwarded;
// the client's existing session keeps working, and after Retry-After it
// may open a session again.
func TestAdmissionClientSessionRate(t *testing.T) {
	sc := openScene(t, "", []string{"\t\tclient_session_rate 1 1\n"}, nil)
	g, url := sc.g, sc.urls[0]
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

// TestAdmissionMaxStreams: with max_streams 1, a second GET stream is
// refused with 503 while the first is open and never reaches the
// upstream; once the first closes a new one opens.
func TestAdmissionMaxStreams(t *testing.T) {
	sc := openScene(t, "", []string{"\t\tmax_streams 1\n"}, plainSessions("a", "b"))
	g, url, a, b := sc.g, sc.urls[0], sc.sessions["a"].sid, sc.sessions["b"].sid

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
	// Two sessions of each of four clients.
	var specs []sceneSession
	for i := range 8 {
		specs = append(specs, sessionOn(strconv.Itoa(i), 0, fmt.Sprintf("client-%d", i/2)))
	}
	sc := openScene(t, "\tmcp {\n\t\tmax_inflight 4\n\t}\n", []string{
		"\t\tmax_inflight 3\n\t\tqueue 3 1s\n\t\tmax_streams 1\n\t\tsession_max_inflight 2\n" +
			"\t\tclient_max_inflight 2\n\t\tclient_key {http.request.header.X-Client}\n" +
			"\t\ttool block max_inflight 2 wait 1s\n"}, specs)
	g, port, url := sc.g, sc.ports[0], sc.urls[0]
	ctrl := controllerOn(t, port)

	type session struct {
		sid string
		hdr map[string]string
	}
	var sessions []session
	for i := range 8 {
		ss := sc.sessions[strconv.Itoa(i)]
		sessions = append(sessions, session{ss.sid, ss.clientHeader()})
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
		"tool wrong keyword":    {block: "tool x limit 3", want: `tool x: unknown option "limit"`},
		"tool bad count":        {block: "tool x max_inflight many", want: `tool x: bad max_inflight "many"`},
		"tool bad option word":  {block: "tool x max_inflight 1 delay 2s", want: `tool x: unknown option "delay"`},
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
		"mcp evicted_sessions":  {global: "mcp {\n\t\tevicted_sessions keep\n\t}", want: `"keep": want delete or forget`},
	} {
		adaptFails(t, name, proxyBlockCaddyfile(tt.global, tt.block), tt.want)
	}
}

// TestAdmissionDetachedCallHoldsSlot: a session-era tool call whose
// client went away keeps running upstream (it may be resumed), so it
// must keep its in-flight slot until the upstream is done with it;
// otherwise clients that time out and retry multiply the upstream's load
// past max_inflight.
func TestAdmissionDetachedCallHoldsSlot(t *testing.T) {
	sc := openScene(t, "", []string{"\t\tmax_inflight 1\n"}, plainSessions("a", "b"))
	g, url, a, b := sc.g, sc.urls[0], sc.sessions["a"].sid, sc.sessions["b"].sid

	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	body := `{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"_meta":{"progressToken":"p"},"name":"block","arguments":{"key":"left"}}}`
	resp, err := openPost(ctx, rawClient, url, body, inSession(a, nil))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("call: %v %v", err, resp)
	}
	g.awaitStarted(t, "left")
	// Read until the progress notification, then go away.
	if _, err := readUntil(resp.Body, "notifications/progress"); err != nil {
		t.Fatalf("reading the stream: %v", err)
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

// TestAdmissionMcpOptionArguments: arguments on the mcp global option's
// own line mean nothing and must fail to adapt rather than be dropped.
func TestAdmissionMcpOptionArguments(t *testing.T) {

	cf := "{\n\tmcp 5\n}\n:8080 {\n\tmcp_proxy localhost:3000\n}\n"
	adaptFails(t, "arguments on the mcp line", cf, "wrong argument count")
}
