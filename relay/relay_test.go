package relay

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// counts records what a Proxy reports through its Metrics.
type counts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counts) add(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[name]++
}

func (c *counts) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[name]
}

func (c *counts) metrics() *Metrics {
	f := func(name string) func() { return func() { c.add(name) } }
	return &Metrics{
		CancelSent: f("cancel"), ResponseTooLarge: f("too_large"), Backpressure: f("backpressure"),
		ListUnreadable: f("list_unreadable"), Unanswered: f("unanswered"), SessionCreated: f("session"),
		StreamOpened: f("opened"), StreamClosed: f("closed"), SideSkipped: f("side_skipped"), StrayAnswer: f("stray"),
		Deadline:       func(s string) { c.add("deadline_" + s) },
		SessionRefused: func(k string) { c.add("refused_" + k) },
		UpstreamID:     func(r string) { c.add("id_" + r) },
	}
}

// noLists filters nothing.
type noLists struct{}

func (noLists) Filters() bool  { return false }
func (noLists) Enforces() bool { return false }

func (noLists) Freeze(policy.Subject) policy.Subject { return nil }
func (noLists) Filter(string, []byte, policy.Subject, string, bool) ([]byte, bool) {
	return nil, true
}
func (noLists) NoteAnswer(*http.Response, bool) {}

// side records the side requests a Proxy sends.
type side struct {
	mu     sync.Mutex
	bodies []string
}

func (s *side) sendFunc() func(context.Context, string, string, string, string, http.Header, []byte) (int, error) {
	return func(_ context.Context, _, _, _, _ string, _ http.Header, body []byte) (int, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.bodies = append(s.bodies, string(body))
		return http.StatusAccepted, nil
	}
}

func newTestProxy(t *testing.T, cfg Config) (*Proxy, *counts, *side) {
	t.Helper()
	gov := governor.New(governor.Hooks{})
	t.Cleanup(gov.Close)
	sealer, err := mcp.NewSealer([][]byte{mcp.GenerateKey()})
	if err != nil {
		t.Fatal(err)
	}
	c := &counts{m: map[string]int{}}
	sd := &side{}
	if cfg.MaxEvent == 0 {
		cfg.MaxEvent, cfg.QueueEvents, cfg.QueueBytes = 1<<20, 100, 1<<20
		cfg.WriteTimeout, cfg.SessionLifetime = 5*time.Second, time.Hour
	}
	p := &Proxy{
		Config: cfg, Logger: zap.NewNop(), Gov: gov, Lists: noLists{}, Sealer: sealer,
		Streams: sse.NewStreamSet(nil), Inner: http.DefaultTransport, Now: time.Now, Metrics: c.metrics(),
		Side:        sd.sendFunc(),
		StreamHooks: func(*resources.Session) *sse.Hooks { return &sse.Hooks{} },
		Panicked:    func(where string, v any) { t.Errorf("panic in %s: %v", where, v) },
	}
	return p, c, sd
}

func TestIsEventStream(t *testing.T) {
	for ct, want := range map[string]bool{
		"text/event-stream": true, "Text/Event-Stream; charset=utf-8": true, "text/event-stream ;x=y": true,
		"text/event-streams": false, "application/json": false, "": false, "text/event": false,
	} {
		h := http.Header{}
		h.Set("Content-Type", ct)
		if got := isEventStream(h); got != want {
			t.Errorf("%q: %v", ct, got)
		}
	}
}

func TestSessionTableRefusal(t *testing.T) {
	p, c, _ := newTestProxy(t, Config{})
	if ref := p.SessionTableRefusal(resources.ErrClientFull, "1"); ref.Status != http.StatusTooManyRequests || c.get("refused_client_full") != 1 {
		t.Errorf("client full: %+v", ref)
	}
	if ref := p.SessionTableRefusal(resources.ErrFull, "1"); ref.Status != http.StatusServiceUnavailable || c.get("refused_full") != 1 {
		t.Errorf("full: %+v", ref)
	}
}

// post returns a tools/call POST of a 2025-06-18 session and its call.
func post(t *testing.T, body string) (*http.Request, *mcp.Call) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(mcp.HeaderProtocolVersion, mcp.Version20250618)
	call := &mcp.Call{}
	if ref := mcp.ClassifyHeaders(r.Header, call); ref != nil {
		t.Fatal(ref.Message)
	}
	if err := mcp.ParseEnvelope([]byte(body), true, &call.Peek); err != nil {
		t.Fatal(err)
	}
	return r, call
}

// relayEvents relays events as the upstream's SSE answer to r (of call,
// in the session res) through p, and returns the request's relay state
// and what its client got.
func relayEvents(p *Proxy, r *http.Request, call *mcp.Call, res mcp.Resolution, events string) (*State, *httptest.ResponseRecorder) {
	w := httptest.NewRecorder()
	st := p.NewState(w, r, call, res)
	req := st.Attempt(r.Clone(r.Context()))
	st.Answer(req, sseResponse(req, events), false, "up:1")
	p.Relay(w, st, st.StreamBody())
	return st, w
}

func sseResponse(req *http.Request, events string) *http.Response {
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:  http.Header{"Content-Type": {"text/event-stream"}},
		Body:    io.NopCloser(strings.NewReader(events)),
		Request: req, ContentLength: -1,
	}
}

// TestRelayAnswerWatch: an SSE answer that ends without the request's
// answer gets the proxy's error for it as its last event; one that
// passes max_response is ended with an error and the upstream is told.
func TestRelayAnswerWatch(t *testing.T) {
	const body = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}`
	sess := &mcp.Session{Kind: mcp.TokenSession, Upstream: "up:1", UpstreamID: "u1", Version: mcp.Version20250618}
	res := mcp.Resolution{Session: sess, Token: "tok", Pinned: "up:1", Key: mcp.SessionKey("up:1", "u1")}

	p, c, _ := newTestProxy(t, Config{})
	r, call := post(t, body)
	w := httptest.NewRecorder()
	st := p.NewState(w, r, call, res)
	req := st.Attempt(r.Clone(r.Context()))
	resp := st.Answer(req, sseResponse(req, "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"), false, "up:1")
	if b := st.StreamBody(); b == nil || resp.Body != http.NoBody {
		t.Fatal("SSE body not taken over")
	}
	p.Relay(w, st, st.StreamBody())
	out := w.Body.String()
	if !strings.Contains(out, "notifications/progress") || !strings.Contains(out, `"id":7`) || !strings.Contains(out, "without an answer") {
		t.Fatalf("client got %q", out)
	}
	if c.get("unanswered") != 1 || c.get("opened") != 1 || c.get("closed") != 1 {
		t.Fatalf("counts %v", c.m)
	}

	p, c, sd := newTestProxy(t, Config{})
	p.MaxResponse = 100
	r, call = post(t, body)
	big := `{"jsonrpc":"2.0","id":7,"result":{"text":"` + strings.Repeat("a", 200) + `"}}`
	_, w = relayEvents(p, r, call, res, "data: "+big+"\n\n")
	out = w.Body.String()
	if strings.Contains(out, "aaaa") || !strings.Contains(out, "max_response") {
		t.Fatalf("client got %q", out)
	}
	p.Gov.Tasks().Wait()
	sd.mu.Lock()
	defer sd.mu.Unlock()
	if c.get("too_large") != 1 || len(sd.bodies) != 1 || !strings.Contains(sd.bodies[0], "notifications/cancelled") {
		t.Fatalf("counts %v, side requests %q", c.m, sd.bodies)
	}
}

// resumeTransport answers the relay's resumptions of an upstream stream
// (GETs with Last-Event-ID) with its bodies in turn, as SSE; past the
// last, with 404. A stall body blocks until the request's context ends.
type resumeTransport struct {
	mu      sync.Mutex
	bodies  []string
	lastIDs []string // Last-Event-ID of each GET
}

// stallBody and conflictBody stand for a body that stalls and a 409.
const (
	stallBody    = "\x00stall"
	conflictBody = "\x00conflict"
)

func (rt *resumeTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if r.Method != http.MethodGet || r.Header.Get("Accept") != "text/event-stream" || r.Header.Get(mcp.HeaderSessionID) == "" {
		return nil, fmt.Errorf("not a resumption: %s %v", r.Method, r.Header)
	}
	// The GET carries none of the POST's body framing.
	if r.ContentLength != 0 || len(r.TransferEncoding) != 0 || r.Trailer != nil || (r.Body != nil && r.Body != http.NoBody) {
		return nil, fmt.Errorf("a resumption with a body: length %d, transfer encoding %q, trailer %v", r.ContentLength, r.TransferEncoding, r.Trailer)
	}
	rt.lastIDs = append(rt.lastIDs, r.Header.Get(mcp.HeaderLastEventID))
	if len(rt.bodies) == 0 {
		return &http.Response{StatusCode: http.StatusNotFound, Body: http.NoBody, Header: http.Header{}, Request: r}, nil
	}
	b := rt.bodies[0]
	rt.bodies = rt.bodies[1:]
	if b == conflictBody {
		return &http.Response{StatusCode: http.StatusConflict, Body: http.NoBody, Header: http.Header{}, Request: r}, nil
	}
	resp := sseResponse(r, b)
	if b == stallBody {
		resp.Body = &stallingBody{ctx: r.Context()}
	}
	return resp, nil
}

func (rt *resumeTransport) gets() []string {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return slices.Clone(rt.lastIDs)
}

// TestRelayResumesUpstream: an SSE answer in a session whose upstream
// stream ends before the answer right after an event id of its own,
// cleanly (a priming event, then the close SEP-1699 allows) or with a
// broken connection, is resumed by the relay from the upstream (a GET
// with Last-Event-ID) on the stream the client holds, as long as each
// resumption brings a new id (a 409, the upstream still holding the broken
// connection, is asked again within the same tries); ended after an event
// without an id of the upstream's, or when the upstream does not resume
// it, it ends with the proxy's error. A deadline runs on through the resumption.
func TestRelayResumesUpstream(t *testing.T) {
	const body = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow"}}`
	sess := &mcp.Session{Kind: mcp.TokenSession, Upstream: "up:1", UpstreamID: "u1", Version: mcp.Version20250618}
	res := mcp.Resolution{Session: sess, Token: "tok", Pinned: "up:1", Key: mcp.SessionKey("up:1", "u1")}
	const batch = `[{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow"}},{"jsonrpc":"2.0","id":8,"method":"ping"}]`
	const (
		priming  = "id: ev-1\nretry: 1\ndata: \n\n"
		progress = "id: ev-1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"
		answer7  = "id: ev-9\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n"
		answer8  = "data: {\"jsonrpc\":\"2.0\",\"id\":8,\"result\":{}}\n\n"
	)
	for _, tc := range []struct {
		name, events string
		broken       bool
		batch        bool
		deadline     bool
		resumptions  []string // the upstream's answers to the GETs
		wantGets     []string // their Last-Event-IDs
		wantError    string   // in the client's stream; "" for none
	}{
		{name: "priming event then close", events: priming, resumptions: []string{answer7}, wantGets: []string{"ev-1"}},
		{name: "an id, then the connection breaks", events: progress, broken: true, resumptions: []string{answer7}, wantGets: []string{"ev-1"}},
		{name: "the upstream polls twice", events: priming,
			resumptions: []string{"id: ev-2\nretry: 1\ndata: \n\n", answer7}, wantGets: []string{"ev-1", "ev-2"}},
		{name: "no progress", events: priming, resumptions: []string{"", "", "", ""},
			wantGets: []string{"ev-1", "ev-1", "ev-1"}, wantError: "without an answer"},
		{name: "the upstream does not resume", events: priming, wantGets: []string{"ev-1"}, wantError: "without an answer"},
		{name: "the upstream holds the broken connection a while", events: progress, broken: true,
			resumptions: []string{conflictBody, answer7}, wantGets: []string{"ev-1", "ev-1"}},
		{name: "the upstream holds the broken connection", events: progress, broken: true,
			resumptions: []string{conflictBody, conflictBody, conflictBody, answer7}, wantGets: []string{"ev-1", "ev-1", "ev-1"}, wantError: "connection failed"},
		{name: "no id", events: "retry: 500\ndata: \n\n", wantError: "without an answer"},
		{name: "notification after the id", events: "id: ev-1\ndata: \n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
			wantError: "without an answer"},
		{name: "no id, then the connection breaks", events: "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n",
			broken: true, wantError: "connection failed"},
		{name: "answered", events: "id: ev-1\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n"},
		{name: "a batch", events: priming, batch: true, resumptions: []string{answer7 + answer8}, wantGets: []string{"ev-1"}},
		{name: "a batch, answered in part", events: priming, batch: true, resumptions: []string{answer7},
			wantGets: []string{"ev-1", "ev-9"}, wantError: `"id":8,"error"`},
		{name: "the deadline passes while resumed", events: priming, deadline: true, resumptions: []string{stallBody},
			wantGets: []string{"ev-1"}, wantError: fmt.Sprintf(`"code":%d`, policy.CodeRequestTimeout)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, c, sd := newTestProxy(t, Config{})
			p.ReplayEvents, p.ReplayBytes, p.ReplayAge = 10, 1<<16, time.Minute
			rt := &resumeTransport{bodies: tc.resumptions}
			p.Inner = rt
			r, call := post(t, body)
			rs := res
			if tc.batch {
				r, call, rs = batchPost(t, batch)
			}
			w := httptest.NewRecorder()
			st := p.NewState(w, r, call, rs)
			if tc.deadline {
				done, _ := st.Arm(20 * time.Millisecond)
				defer done()
			}
			req := st.Attempt(r.Clone(r.Context()))
			req.Header.Set(mcp.HeaderSessionID, "u1")
			// The client sent its body chunked, with a trailer.
			req.ContentLength, req.TransferEncoding, req.Trailer = -1, []string{"chunked"}, http.Header{"X-Checksum": nil}
			resp := sseResponse(req, tc.events)
			if tc.broken {
				resp.Body = io.NopCloser(io.MultiReader(strings.NewReader(tc.events), iotest.ErrReader(io.ErrUnexpectedEOF)))
			}
			st.Answer(req, resp, false, "up:1")
			p.Relay(w, st, st.StreamBody())
			p.Gov.Tasks().Wait()
			out := w.Body.String()
			if gets := rt.gets(); !slices.Equal(gets, tc.wantGets) {
				t.Errorf("resumed with Last-Event-ID %q, want %q", gets, tc.wantGets)
			}
			switch {
			case tc.wantError == "" && strings.Contains(out, `"error"`):
				t.Errorf("error event sent; client got %q", out)
			case tc.wantError != "" && !strings.Contains(out, tc.wantError):
				t.Errorf("client got %q, want an error with %s", out, tc.wantError)
			case tc.wantError == "" && !strings.Contains(out, `"id":7,"result"`):
				t.Errorf("client got %q, want the answer", out)
			}
			if tc.wantError == "" && c.get("unanswered") != 0 {
				t.Errorf("unanswered %d", c.get("unanswered"))
			}
			// The deadline's timer sends notifications/cancelled after it
			// has ended the stream, so the relay may return before it.
			if !tc.deadline {
				return
			}
			if bodies := sideBodies(p, sd, c, 1); !slices.ContainsFunc(bodies, func(b string) bool { return strings.Contains(b, "notifications/cancelled") }) {
				t.Errorf("the upstream was not told: %q", bodies)
			}
		})
	}
}

// TestArmDeadline: without a legacy link a request with a step gets a
// deadline, which cancels its upstream attempt and leaves the timeout
// error for the caller.
func TestArmDeadline(t *testing.T) {
	p, c, _ := newTestProxy(t, Config{})
	r, call := post(t, `{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"slow"}}`)
	st := p.NewState(httptest.NewRecorder(), r, call, mcp.Resolution{})
	done, ref := st.Arm(time.Millisecond)
	if ref != nil {
		t.Fatal(ref.Message)
	}
	defer done()
	req := st.Attempt(r.Clone(r.Context()))
	select {
	case <-req.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the deadline did not cancel the attempt")
	}
	if !st.IsExpired() || c.get("deadline_waiting") != 1 {
		t.Fatalf("expired %v, counts %v", st.IsExpired(), c.m)
	}
	if ref := st.TimeoutRefusal(); ref.Code != policy.CodeRequestTimeout || ref.Status != http.StatusOK {
		t.Fatalf("refusal %+v", ref)
	}
	// The proxy's record of the cancelled attempt does not reach the
	// client, who gets the timeout error instead.
	rec := httptest.NewRecorder()
	st.Writer(rec).WriteHeader(statusClientClosed)
	if rec.Code == statusClientClosed {
		t.Fatal("499 written to the client")
	}
	st.HandlerDone()
}

// TestDenialsAnswerAsTheUpstreams: a denial is written in the form and
// with the headers of the upstreams' last answers.
func TestDenialsAnswerAsTheUpstreams(t *testing.T) {
	var d Denials
	res := mcp.Resolution{Session: &mcp.Session{Kind: mcp.TokenSession}, Token: "client-token"}
	answers := [][]byte{[]byte(`{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"unknown tool"}}`)}

	// Before any upstream answer: JSON, headers of its own only.
	r, call := post(t, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`)
	r.Header.Set("Accept", "application/json, text/event-stream")
	w := httptest.NewRecorder()
	if st := d.Write(w, r, call, res, answers); st != http.StatusOK || w.Header().Get("Content-Type") != "application/json" || w.Body.String() != string(answers[0]) {
		t.Fatalf("first: %d %v %q", st, w.Header(), w.Body.String())
	}

	// Fields that name one request or one caller are not copied: the
	// template serves every caller.
	up := &http.Response{ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{
		"Content-Type": {"text/event-stream"}, "X-Powered-By": {"yes"}, mcp.HeaderSessionID: {"u-1"}, "Date": {"then"},
		"Content-Digest": {"sha-256=:x:"}, "Etag": {`"v1"`}, "X-Request-Id": {"r-1"}, "Traceparent": {"00-1-2-01"},
		"X-Ratelimit-Remaining": {"41"}, "Set-Cookie": {"a=1"}, "X-User": {"alice"},
	}}
	d.Note(up, true)
	w = httptest.NewRecorder()
	w.Header().Set("Server", "Caddy")
	if st := d.Write(w, r, call, res, answers); st != http.StatusOK {
		t.Fatalf("status %d", st)
	}
	h := w.Header()
	if h.Get("Content-Type") != "text/event-stream" || h.Get("X-Powered-By") != "yes" || h.Get("Server") != "" ||
		h.Get("Via") != "1.1 Caddy" || h.Get(mcp.HeaderSessionID) != "client-token" {
		t.Fatalf("headers %v", h)
	}
	for _, k := range []string{"Date", "Content-Digest", "ETag", "X-Request-Id", "Traceparent", "X-Ratelimit-Remaining", "Set-Cookie", "X-User"} {
		if v := h.Values(k); len(v) > 0 {
			t.Errorf("the denial has the upstream's %s: %q", k, v)
		}
	}
	if b := w.Body.String(); !strings.Contains(b, "event: message") || !strings.Contains(b, "unknown tool") || !strings.Contains(b, "id: "+sse.ProxyIDMarker) {
		t.Fatalf("body %q", b)
	}

	// A client that accepts only JSON gets JSON; a notification gets 202.
	r.Header.Set("Accept", "application/json")
	w = httptest.NewRecorder()
	if st := d.Write(w, r, call, res, answers); st != http.StatusOK || !strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") {
		t.Fatalf("json only: %d %v", st, w.Header())
	}
	w = httptest.NewRecorder()
	if st := d.Write(w, r, call, res, nil); st != http.StatusAccepted || w.Code != http.StatusAccepted || w.Body.Len() != 0 {
		t.Fatalf("notification: %d %d %q", st, w.Code, w.Body.String())
	}
}

// stallingBody yields data, then blocks until ctx ends (for 10s at
// most), as the body of an upstream answer that stalls does until its
// request is cancelled.
type stallingBody struct {
	data []byte
	ctx  context.Context
}

func (b *stallingBody) Read(p []byte) (int, error) {
	if len(b.data) > 0 {
		n := copy(p, b.data)
		b.data = b.data[n:]
		return n, nil
	}
	select {
	case <-b.ctx.Done():
		return 0, b.ctx.Err()
	case <-time.After(10 * time.Second):
		return 0, io.ErrUnexpectedEOF
	}
}

func (b *stallingBody) Close() error { return nil }

func jsonResponse(req *http.Request, body io.ReadCloser, length int64) *http.Response {
	return &http.Response{
		StatusCode: http.StatusOK, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Type": {"application/json"}},
		Body:   body, Request: req, ContentLength: length,
	}
}

// TestRelayJSONAnswerUnderDeadline: a JSON answer is read whole, within
// max_event_size, before it is handed on; one whose body stalls past the
// request's deadline becomes the deadline's error. A larger one is handed
// on as it comes, and its deadline runs on until its last byte: its body
// fails when the deadline passes.
func TestRelayJSONAnswerUnderDeadline(t *testing.T) {
	const body = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow"}}`
	answer := `{"jsonrpc":"2.0","id":7,"result":{}}`
	for _, tc := range []struct {
		name     string
		maxEvent int64
		data     string
		stall    bool
	}{
		{"read whole", 1 << 10, answer, false},
		{"stalls", 1 << 10, answer[:20], true},
		{"larger than max_event_size", 8, answer, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, c, _ := newTestProxy(t, Config{})
			p.MaxEvent = tc.maxEvent
			r, call := post(t, body)
			st := p.NewState(httptest.NewRecorder(), r, call, mcp.Resolution{})
			// The answer read whole must beat its deadline on a loaded
			// machine, and the deadline must then pass within the test.
			step := 50 * time.Millisecond
			if !tc.stall {
				step = 500 * time.Millisecond
			}
			done, ref := st.Arm(step)
			if ref != nil {
				t.Fatal(ref.Message)
			}
			defer done()
			defer st.HandlerDone()
			req := st.Attempt(r.Clone(r.Context()))
			var rc io.ReadCloser = io.NopCloser(strings.NewReader(tc.data))
			if tc.stall {
				rc = &stallingBody{data: []byte(tc.data), ctx: req.Context()}
			}
			resp := st.Answer(req, jsonResponse(req, rc, -1), false, "up:1")
			got, err := io.ReadAll(resp.Body)
			switch tc.name {
			case "read whole":
				if err != nil || string(got) != answer || resp.ContentLength != int64(len(answer)) || st.IsExpired() {
					t.Fatalf("answer %q (%v), length %d, expired %v", got, err, resp.ContentLength, st.IsExpired())
				}
				time.Sleep(step + 200*time.Millisecond)
				if st.IsExpired() {
					t.Fatal("the deadline passed after the answer was read")
				}
			case "stalls":
				if err != nil || !strings.Contains(string(got), `"code":-32001`) || !strings.Contains(string(got), `"id":7`) || resp.StatusCode != http.StatusOK {
					t.Fatalf("answer %d %q (%v), want the deadline's error", resp.StatusCode, got, err)
				}
			default:
				if err == nil || string(got) != answer {
					t.Fatalf("answer %q (%v), want it all, then the read cut by the deadline", got, err)
				}
			}
			if want := tc.stall; st.IsExpired() != want || (c.get("deadline_waiting") == 1) != want {
				t.Fatalf("expired %v, counts %v", st.IsExpired(), c.m)
			}
		})
	}
}

// TestLegacyOwedAnswers: a legacy stream owes the answers of at most
// policy.MaxAwaited requests; one past that is not noted. An answer that
// came, or an error sent in its place, settles a request; the others get
// an error each when the stream ends, and none is noted after. An id
// owed, or awaited, is in use: a request with it (written any way) is
// not noted, nor the others with it.
func TestLegacyOwedAnswers(t *testing.T) {
	p, c, _ := newTestProxy(t, Config{})
	l := &legacyLink{p: p, owed: map[string]string{}, awaiting: policy.NewAwaiting(func(*policy.Awaited) {})}
	var ids []string
	for i := range policy.MaxAwaited + 1 {
		ids = append(ids, strconv.Itoa(i))
	}
	if got, inUse := l.claim(ids); len(got) != policy.MaxAwaited || got[0] != "0" || inUse != "" {
		t.Fatalf("noted %d of %d (in use %q)", len(got), len(ids), inUse)
	}
	l.settle(ids[2:policy.MaxAwaited]...)
	if got, inUse := l.claim([]string{`"b"`, "1"}); len(got) != 0 || inUse != "1" {
		t.Fatalf("an owed id claimed again: noted %q, in use %q; want none noted, 1 in use", got, inUse)
	}
	if got, _ := l.claim([]string{`"a"`}); len(got) != 1 {
		t.Fatal("no room after the answers came")
	}
	l.awaiting.Add([]*policy.Awaited{{ID: `"c"`}}, 0)
	if got, inUse := l.claim([]string{`"\u0063"`}); len(got) != 0 || inUse != `"\u0063"` {
		t.Fatalf("an awaited id written another way: noted %q, in use %q", got, inUse)
	}
	l.awaiting.Forget([]string{`"c"`})
	out := string(l.final(nil))
	for _, id := range []string{`"id":0,`, `"id":1,`, `"id":"a",`} {
		if !strings.Contains(out, id) {
			t.Errorf("no error for %s in %q", id, out)
		}
	}
	if n := strings.Count(out, "event: message"); n != 3 || c.get("unanswered") != 3 {
		t.Errorf("%d errors (%d counted) in %q, want 3", n, c.get("unanswered"), out)
	}
	if got, _ := l.claim([]string{"9"}); len(got) != 0 || l.final(nil) != nil {
		t.Error("a request noted after the stream ended")
	}
	// An event over max_event_size ends the session's stream: its calls
	// are told why.
	l = &legacyLink{p: p, owed: map[string]string{}, awaiting: policy.NewAwaiting(func(*policy.Awaited) {})}
	l.claim([]string{"7"})
	if out := string(l.final(sse.ErrEventTooLarge)); !strings.Contains(out, `"id":7,`) || !strings.Contains(out, "max_event_size") {
		t.Errorf("oversized event: %q", out)
	}
}

// batchPost returns a POST of a 2025-03-26 session carrying body (a
// batch), its call and the session's resolution.
func batchPost(t *testing.T, body string) (*http.Request, *mcp.Call, mcp.Resolution) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(mcp.HeaderProtocolVersion, mcp.Version20250326)
	call := &mcp.Call{}
	if ref := mcp.ClassifyHeaders(r.Header, call); ref != nil {
		t.Fatal(ref.Message)
	}
	if err := mcp.ParseEnvelope([]byte(body), true, &call.Peek); err != nil {
		t.Fatal(err)
	}
	sess := &mcp.Session{Kind: mcp.TokenSession, Upstream: "up:1", UpstreamID: "u1", Version: mcp.Version20250326}
	return r, call, mcp.Resolution{Session: sess, Token: "tok", Pinned: "up:1", Key: mcp.SessionKey("up:1", "u1")}
}

// sideBodies returns the side requests sd recorded once the proxy has
// counted cancels notifications/cancelled sent (within 5s), or, for none,
// a moment after the deadline's work.
func sideBodies(p *Proxy, sd *side, c *counts, cancels int) []string {
	end := time.Now().Add(5 * time.Second)
	if cancels == 0 {
		time.Sleep(50 * time.Millisecond)
	}
	for c.get("cancel") < cancels && time.Now().Before(end) {
		time.Sleep(time.Millisecond)
	}
	p.Gov.Tasks().Wait()
	sd.mu.Lock()
	defer sd.mu.Unlock()
	return append([]string(nil), sd.bodies...)
}

// TestBatchDeadline: a batch's deadline cancels its upstream request
// and leaves, for the caller, an array with the -32001 error of each
// request it sent upstream (and the errors of its denied ones); the
// upstream is sent notifications/cancelled for each, in one batch. When
// the deadline passes during an SSE answer, the stream ends with the
// error of each request still unanswered, and only those are cancelled.
func TestBatchDeadline(t *testing.T) {
	const body = `[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"slow"}},{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"slow"}}]`
	denied := []byte(`{"jsonrpc":"2.0","id":9,"error":{"code":-32602,"message":"unknown tool"}}`)

	t.Run("waiting", func(t *testing.T) {
		p, c, sd := newTestProxy(t, Config{})
		r, call, res := batchPost(t, body)
		st := p.NewState(httptest.NewRecorder(), r, call, res)
		st.Spliced = [][]byte{denied}
		done, ref := st.Arm(20 * time.Millisecond)
		if ref != nil {
			t.Fatal(ref.Message)
		}
		defer done()
		defer st.HandlerDone()
		req := st.Attempt(r.Clone(r.Context()))
		select {
		case <-req.Context().Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the deadline did not cancel the batch's upstream request")
		}
		ref = st.TimeoutRefusal()
		var answers []map[string]any
		if err := json.Unmarshal(ref.Body(), &answers); err != nil || ref.Status != http.StatusOK {
			t.Fatalf("refusal %d %q: %v", ref.Status, ref.Body(), err)
		}
		got := map[string]float64{}
		for _, a := range answers {
			e, _ := a["error"].(map[string]any)
			code, _ := e["code"].(float64)
			got[fmt.Sprint(a["id"])] = code
		}
		if want := map[string]float64{"1": -32001, "b": -32001, "9": -32602}; !maps.Equal(got, want) {
			t.Fatalf("answers %v, want %v", got, want)
		}
		bodies := sideBodies(p, sd, c, 2)
		if len(bodies) != 1 || !strings.HasPrefix(bodies[0], "[") || !strings.Contains(bodies[0], `"requestId":1,`) ||
			!strings.Contains(bodies[0], `"requestId":"b",`) || strings.Contains(bodies[0], `"requestId":9`) || c.get("cancel") != 2 {
			t.Fatalf("side requests %q, %d counted", bodies, c.get("cancel"))
		}
	})

	t.Run("streaming", func(t *testing.T) {
		p, c, sd := newTestProxy(t, Config{})
		r, call, res := batchPost(t, body)
		w := httptest.NewRecorder()
		st := p.NewState(w, r, call, res)
		st.Spliced = [][]byte{denied}
		done, ref := st.Arm(50 * time.Millisecond)
		if ref != nil {
			t.Fatal(ref.Message)
		}
		defer done()
		req := st.Attempt(r.Clone(r.Context()))
		events := "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n"
		resp := sseResponse(req, "")
		resp.Body = &stallingBody{data: []byte(events), ctx: req.Context()}
		st.Answer(req, resp, false, "up:1")
		p.Relay(w, st, st.StreamBody())
		st.HandlerDone()
		out := w.Body.String()
		if !strings.Contains(out, `"id":1,"result"`) || !strings.Contains(out, `{"jsonrpc":"2.0","id":"b","error":{"code":-32001`) ||
			strings.Contains(out, `"id":1,"error"`) || !strings.Contains(out, "unknown tool") {
			t.Fatalf("client got %q", out)
		}
		if !st.IsExpired() || c.get("deadline_streaming") != 1 {
			t.Fatalf("expired %v, %d deadlines passed streaming", st.IsExpired(), c.get("deadline_streaming"))
		}
		if bodies := sideBodies(p, sd, c, 1); len(bodies) != 1 || !strings.Contains(bodies[0], `"requestId":"b",`) || strings.Contains(bodies[0], `"requestId":1,`) {
			t.Fatalf("side requests %q", bodies)
		}
	})
}

// latePost returns a tools/call POST of a 2025-06-18 session whose id
// comes after its first window bytes, the peek, as the TypeScript SDK
// writes it; the rest of its body is its checked body.
func latePost(t *testing.T, window int) (*http.Request, *mcp.Call, *mcp.CheckedBody, mcp.Resolution) {
	t.Helper()
	body := `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"slow","arguments":{"pad":"` + strings.Repeat("x", 2*window) + `"}},"id":63}`
	r := httptest.NewRequest(http.MethodPost, "/mcp", nil)
	r.Header.Set("Content-Type", "application/json")
	r.Header.Set(mcp.HeaderProtocolVersion, mcp.Version20250618)
	call := &mcp.Call{}
	if ref := mcp.ClassifyHeaders(r.Header, call); ref != nil {
		t.Fatal(ref.Message)
	}
	if err := mcp.ParseEnvelope([]byte(body[:window]), false, &call.Peek); err != nil {
		t.Fatal(err)
	}
	if call.First().Kind != mcp.KindRequest || call.First().ID != "" {
		t.Fatalf("the peek read %+v", call.First())
	}
	cb := mcp.NewCheckedBody([]byte(body[:window]), io.NopCloser(strings.NewReader(body[window:])), 0)
	r.Body = cb
	sess := &mcp.Session{Kind: mcp.TokenSession, Upstream: "up:1", UpstreamID: "u1", Version: mcp.Version20250618}
	return r, call, cb, mcp.Resolution{Session: sess, Token: "tok", Pinned: "up:1", Key: mcp.SessionKey("up:1", "u1")}
}

// TestLateIDDeadline: a request whose id follows the peek has its
// deadline. Once its body has been sent, the id read from it is that of
// its timeout error and of the notifications/cancelled the upstream
// gets; while its body is still being sent, the error carries id null
// and the upstream, which never had the whole request, is not told.
func TestLateIDDeadline(t *testing.T) {
	for _, sent := range []bool{true, false} {
		t.Run(fmt.Sprintf("sent=%v", sent), func(t *testing.T) {
			p, c, sd := newTestProxy(t, Config{})
			r, call, cb, res := latePost(t, 128)
			st := p.NewState(httptest.NewRecorder(), r, call, res)
			st.Checked = cb
			done, ref := st.Arm(20 * time.Millisecond)
			if ref != nil {
				t.Fatal(ref.Message)
			}
			defer done()
			defer st.HandlerDone()
			req := st.Attempt(r.Clone(r.Context()))
			if sent {
				if _, err := io.ReadAll(req.Body); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-req.Context().Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the deadline did not cancel the upstream request")
			}
			want, cancels := `"id":63,`, 1
			if !sent {
				want, cancels = `"id":null,`, 0
			}
			ref = st.TimeoutRefusal()
			if b := string(ref.Body()); !strings.Contains(b, want) || ref.Code != policy.CodeRequestTimeout {
				t.Fatalf("refusal %q, want the -32001 error with %s", b, want)
			}
			bodies := sideBodies(p, sd, c, cancels)
			if len(bodies) != cancels || c.get("cancel") != cancels || (sent && !strings.Contains(bodies[0], `"requestId":63,`)) {
				t.Fatalf("side requests %q, %d counted", bodies, c.get("cancel"))
			}
		})
	}
}

// TestMaxResponseEveryPost: max_response caps the SSE answer of every
// POST. A batch's answer past it ends with a -32603 error for each
// request still unanswered, whose upstream requests are cancelled; the
// answer of a request whose id followed the peek ends with the error for
// that id.
func TestMaxResponseEveryPost(t *testing.T) {
	big := strings.Repeat("a", 200)
	t.Run("batch", func(t *testing.T) {
		p, c, sd := newTestProxy(t, Config{})
		p.MaxResponse = 100
		r, call, res := batchPost(t, `[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"big"}},{"jsonrpc":"2.0","id":3,"method":"ping"}]`)
		events := "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n" +
			"data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"text\":\"" + big + "\"}}\n\n" +
			"data: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{}}\n\n"
		_, w := relayEvents(p, r, call, res, events)
		out := w.Body.String()
		if strings.Contains(out, "aaaa") || !strings.Contains(out, `"id":1,"result"`) || strings.Contains(out, `"id":3,"result"`) ||
			!strings.Contains(out, `"id":2,"error":{"code":-32603`) || !strings.Contains(out, `"id":3,"error":{"code":-32603`) {
			t.Fatalf("client got %q", out)
		}
		if bodies := sideBodies(p, sd, c, 2); len(bodies) != 1 || !strings.Contains(bodies[0], `"requestId":2,`) ||
			!strings.Contains(bodies[0], `"requestId":3,`) || strings.Contains(bodies[0], `"requestId":1,`) || c.get("too_large") != 1 {
			t.Fatalf("side requests %q, %d too large", bodies, c.get("too_large"))
		}
	})
	t.Run("late id", func(t *testing.T) {
		p, c, sd := newTestProxy(t, Config{})
		p.MaxResponse = 100
		r, call, cb, res := latePost(t, 128)
		w := httptest.NewRecorder()
		st := p.NewState(w, r, call, res)
		st.Checked = cb
		req := st.Attempt(r.Clone(r.Context()))
		if _, err := io.ReadAll(req.Body); err != nil {
			t.Fatal(err)
		}
		st.Answer(req, sseResponse(req, "data: {\"jsonrpc\":\"2.0\",\"id\":63,\"result\":{\"text\":\""+big+"\"}}\n\n"), false, "up:1")
		p.Relay(w, st, st.StreamBody())
		if out := w.Body.String(); strings.Contains(out, "aaaa") || !strings.Contains(out, `"id":63,"error":{"code":-32603`) {
			t.Fatalf("client got %q", out)
		}
		if bodies := sideBodies(p, sd, c, 1); len(bodies) != 1 || !strings.Contains(bodies[0], `"requestId":63,`) || c.get("too_large") != 1 {
			t.Fatalf("side requests %q, %d too large", bodies, c.get("too_large"))
		}
	})
}

// recordTransport records the requests sent through it and answers 200.
type recordTransport struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (rt *recordTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	rt.reqs = append(rt.reqs, r)
	rt.mu.Unlock()
	return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Header: http.Header{}, Request: r}, nil
}

// TestUnreadableAnswers: a 200 answer encoded though the proxy asked for
// none, or to a request and neither JSON nor SSE, is replaced by a 502
// with a JSON-RPC error, and the session such an initialize answer
// started upstream is deleted; JSON types with parameters, +json types,
// an empty 200 and no media type pass.
func TestUnreadableAnswers(t *testing.T) {
	for _, c := range []struct {
		name, ct, ce, body string
		want               int
	}{
		{"gzip", "application/json", "gzip", "x", http.StatusBadGateway},
		{"html", "text/html", "", "<html></html>", http.StatusBadGateway},
		{"json with charset", "application/json; charset=utf-8", "", "{}", http.StatusOK},
		{"json-rpc", "application/json-rpc", "", "{}", http.StatusOK},
		{"+json", "application/vnd.example+json", "", "{}", http.StatusOK},
		{"bad parameter", "application/json; charset=utf-8,", "", "{}", http.StatusOK},
		{"no type", "", "", "{}", http.StatusOK},
		{"empty html", "text/html", "", "", http.StatusOK},
		{"identity", "application/json", "identity", "{}", http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, _, _ := newTestProxy(t, Config{})
			rt := &recordTransport{}
			p.Inner = rt
			r, call := post(t, `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18"}}`)
			st := p.NewState(httptest.NewRecorder(), r, call, mcp.Resolution{})
			resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(c.body)),
				ContentLength: int64(len(c.body)), Request: r}
			if c.body == "" {
				resp.Body = http.NoBody
			}
			if c.ct != "" {
				resp.Header.Set("Content-Type", c.ct)
			}
			if c.ce != "" {
				resp.Header.Set("Content-Encoding", c.ce)
			}
			resp.Header.Set(mcp.HeaderSessionID, "upstream-session")
			// The client sent its initialize chunked, with a trailer.
			req := r.Clone(r.Context())
			req.ContentLength, req.TransferEncoding, req.Trailer = -1, []string{"chunked"}, http.Header{"X-Checksum": nil}
			out := st.Answer(req, resp, false, "127.0.0.1:1")
			if out.StatusCode != c.want {
				t.Fatalf("status %d, want %d", out.StatusCode, c.want)
			}
			p.Gov.Tasks().Wait()
			rt.mu.Lock()
			defer rt.mu.Unlock()
			deleted := len(rt.reqs) == 1 && rt.reqs[0].Method == http.MethodDelete && rt.reqs[0].Header.Get(mcp.HeaderSessionID) == "upstream-session"
			if c.want == http.StatusBadGateway && !deleted {
				t.Errorf("the upstream session of a refused initialize answer was not deleted: %d requests", len(rt.reqs))
			}
			if deleted {
				if d := rt.reqs[0]; d.ContentLength != 0 || d.TransferEncoding != nil || d.Trailer != nil || d.Header.Get("Content-Type") != "" {
					t.Errorf("the DELETE carries the POST's body framing: length %d, transfer encoding %q, trailer %v, type %q",
						d.ContentLength, d.TransferEncoding, d.Trailer, d.Header.Get("Content-Type"))
				}
			}
			if c.want == http.StatusOK && len(rt.reqs) > 0 {
				t.Errorf("%d side requests for a passed answer", len(rt.reqs))
			}
		})
	}
}

// owingLegacyLink returns the link of a legacy session, known under key,
// whose stream owes as many answers as it notes.
func owingLegacyLink(t *testing.T, p *Proxy, key string) (*legacyLink, mcp.Resolution) {
	t.Helper()
	l := &legacyLink{p: p, owed: map[string]string{}}
	l.awaiting = policy.NewAwaiting(l.expire)
	t.Cleanup(l.awaiting.Close)
	var full []string
	for i := range policy.MaxAwaited {
		full = append(full, strconv.Itoa(1000+i))
	}
	l.claim(full)
	res := mcp.Resolution{Session: &mcp.Session{Kind: mcp.TokenLegacy}, Key: key}
	legacyLinks.add(res.Key, l)
	t.Cleanup(func() { legacyLinks.remove(res.Key, l) })
	return l, res
}

// refuseAwaited checks that st's one call is awaited, has the upstream
// refuse its POST, and checks that it is awaited no more once done ran.
func refuseAwaited(t *testing.T, l *legacyLink, st *State, done func()) {
	t.Helper()
	if l.awaiting.Len() != 1 {
		t.Fatalf("%d calls awaited, want 1", l.awaiting.Len())
	}
	st.status, st.responded = http.StatusServiceUnavailable, true
	done()
	if n := l.awaiting.Len(); n != 0 {
		t.Errorf("%d calls still awaited after the upstream refused their POST", n)
	}
}

// TestLegacyRefusedPostForgetsAwaited: a POST of a legacy session whose
// stream already owes as many answers as it notes adds its call to the
// awaited ones (its deadline) without noting it owed; when the upstream
// refuses that POST, the call is no longer awaited (its deadline would
// otherwise answer, and cancel upstream, a call the upstream never took).
func TestLegacyRefusedPostForgetsAwaited(t *testing.T) {
	p, _, _ := newTestProxy(t, Config{})
	l, res := owingLegacyLink(t, p, "legacy-test-key")
	r, call := post(t, `{"jsonrpc":"2.0","id":"late","method":"tools/call","params":{"name":"slow"}}`)
	st := p.NewState(httptest.NewRecorder(), r, call, res)
	done, ref := st.Arm(time.Hour)
	if ref != nil {
		t.Fatal(ref.Message)
	}
	refuseAwaited(t, l, st, done)
}

// TestSpliceAnswersEveryJSONType: the errors of a batch's denied requests
// are added to the upstream's JSON answer whatever JSON media type it
// carries, as the answer check reads one (none, application/json-rpc,
// parameters).
func TestSpliceAnswersEveryJSONType(t *testing.T) {
	const body = `[{"jsonrpc":"2.0","id":1,"method":"ping"}]`
	denied := []byte(`{"jsonrpc":"2.0","id":9,"error":{"code":-32602,"message":"unknown tool"}}`)
	for _, c := range []struct{ ct, answer, want string }{
		{"application/json", `[{"jsonrpc":"2.0","id":1,"result":{}}]`, `[{"jsonrpc":"2.0","id":1,"result":{}},` + string(denied) + `]`},
		{"", `[{"jsonrpc":"2.0","id":1,"result":{}}]`, `[{"jsonrpc":"2.0","id":1,"result":{}},` + string(denied) + `]`},
		{"application/json-rpc", `[{"jsonrpc":"2.0","id":1,"result":{}}]`, `[{"jsonrpc":"2.0","id":1,"result":{}},` + string(denied) + `]`},
		{"application/json; charset=utf-8; q=1", `[{"jsonrpc":"2.0","id":1,"result":{}}]`, `[{"jsonrpc":"2.0","id":1,"result":{}},` + string(denied) + `]`},
	} {
		p, _, _ := newTestProxy(t, Config{})
		r, call, res := batchPost(t, body)
		st := p.NewState(httptest.NewRecorder(), r, call, res)
		st.Spliced = [][]byte{denied}
		req := st.Attempt(r.Clone(r.Context()))
		resp := jsonResponse(req, io.NopCloser(strings.NewReader(c.answer)), int64(len(c.answer)))
		if c.ct == "" {
			resp.Header.Del("Content-Type")
		} else {
			resp.Header.Set("Content-Type", c.ct)
		}
		resp.Header.Set("Content-Digest", "sha-256=:x:")
		resp.Trailer = http.Header{"Content-Digest": nil}
		resp = st.Answer(req, resp, false, "up:1")
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(got) != c.want {
			t.Errorf("Content-Type %q, answer %q: %d %s, want %s", c.ct, c.answer, resp.StatusCode, got, c.want)
		}
		if resp.Header.Get("Content-Digest") != "" || resp.Trailer != nil {
			t.Errorf("Content-Type %q: the upstream's digest goes with the spliced answer: %v, trailers %v", c.ct, resp.Header, resp.Trailer)
		}
		st.HandlerDone()
	}
}

// TestSpliceAnswersInto202: when the rest of a batch held no request, the
// errors of its denied requests are the whole answer: a 200 JSON array
// without the digest, entity tag or trailers of the upstream's 202.
func TestSpliceAnswersInto202(t *testing.T) {
	denied := []byte(`{"jsonrpc":"2.0","id":9,"error":{"code":-32602,"message":"unknown tool"}}`)
	p, _, _ := newTestProxy(t, Config{})
	r, call, res := batchPost(t, `[{"jsonrpc":"2.0","method":"notifications/x"}]`)
	st := p.NewState(httptest.NewRecorder(), r, call, res)
	defer st.HandlerDone()
	st.Spliced = [][]byte{denied}
	req := st.Attempt(r.Clone(r.Context()))
	resp := &http.Response{StatusCode: http.StatusAccepted, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{"Content-Digest": {"sha-256=:47DEQ=:"}, "Etag": {`"e"`}, "X-Upstream": {"yes"}},
		Body:   http.NoBody, Request: req, Trailer: http.Header{"X-Check": nil}}
	resp = st.Answer(req, resp, false, "up:1")
	got, _ := io.ReadAll(resp.Body)
	if want := "[" + string(denied) + "]"; resp.StatusCode != http.StatusOK || string(got) != want || resp.ContentLength != int64(len(want)) {
		t.Errorf("%d %s (length %d), want 200 %s", resp.StatusCode, got, resp.ContentLength, want)
	}
	if h := resp.Header; h.Get("Content-Digest") != "" || h.Get("ETag") != "" || h.Get("X-Upstream") != "yes" || resp.Trailer != nil {
		t.Errorf("headers %v, trailers %v: want the upstream's but its digest and tag, and no trailers", h, resp.Trailer)
	}
}

// TestGiveUpAfterAnswer: once a request's answer passed on its SSE
// stream, giving up the POST (the client left, the stream was not
// resumed) cancels nothing upstream; without the answer it cancels the
// request.
func TestGiveUpAfterAnswer(t *testing.T) {
	const body = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}`
	sess := &mcp.Session{Kind: mcp.TokenSession, Upstream: "up:1", UpstreamID: "u1", Version: mcp.Version20250618}
	res := mcp.Resolution{Session: sess, Token: "tok", Pinned: "up:1", Key: mcp.SessionKey("up:1", "u1")}
	for _, c := range []struct {
		events  string
		cancels int
	}{
		{"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n", 0},
		{"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n", 1},
	} {
		p, cnt, sd := newTestProxy(t, Config{})
		r, call := post(t, body)
		st, _ := relayEvents(p, r, call, res, c.events)
		st.giveUp("client did not resume the stream")
		if bodies := sideBodies(p, sd, cnt, c.cancels); len(bodies) != c.cancels {
			t.Errorf("after %q: side requests %q, want %d cancellation", c.events, bodies, c.cancels)
		}
		st.HandlerDone()
	}
}

// TestAmbiguousAnswersDropped: a message of a POST's SSE answer that a
// decoder ignoring case reads as a response (`{"ID":5,"Result":{}}`) is
// dropped as a stray, alone or in an array, so the client gets one answer
// for its request and none under another id.
func TestAmbiguousAnswersDropped(t *testing.T) {
	const body = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}`
	sess := &mcp.Session{Kind: mcp.TokenSession, Upstream: "up:1", UpstreamID: "u1", Version: mcp.Version20250618}
	res := mcp.Resolution{Session: sess, Token: "tok", Pinned: "up:1", Key: mcp.SessionKey("up:1", "u1")}
	events := "data: {\"jsonrpc\":\"2.0\",\"ID\":5,\"Result\":{\"x\":\"alone\"}}\n\n" +
		"data: [{\"jsonrpc\":\"2.0\",\"Id\":6,\"result\":{\"x\":\"member\"}},{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}]\n\n" +
		"data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"x\":\"answer\"}}\n\n"
	p, c, _ := newTestProxy(t, Config{})
	r, call := post(t, body)
	st, w := relayEvents(p, r, call, res, events)
	st.HandlerDone()
	out := w.Body.String()
	if strings.Contains(out, "alone") || strings.Contains(out, "member") || !strings.Contains(out, "notifications/progress") ||
		!strings.Contains(out, `"answer"`) || strings.Contains(out, "without an answer") {
		t.Fatalf("client got %q", out)
	}
	if c.get("stray") != 2 {
		t.Fatalf("counts %v, want 2 strays", c.m)
	}
}

// TestLegacyLateIDAfterAnswer: a legacy POST whose id follows the peek
// and whose upstream answered (here refused) before its body ended: the
// id read from the body afterwards is neither awaited nor owed, as the
// stream will carry no answer for it.
func TestLegacyLateIDAfterAnswer(t *testing.T) {
	p, _, _ := newTestProxy(t, Config{})
	l := &legacyLink{p: p, owed: map[string]string{}}
	l.awaiting = policy.NewAwaiting(l.expire)
	t.Cleanup(l.awaiting.Close)
	r, call, cb, _ := latePost(t, 64)
	res := mcp.Resolution{Session: &mcp.Session{Kind: mcp.TokenLegacy}, Key: "legacy-late-test-key"}
	legacyLinks.add(res.Key, l)
	t.Cleanup(func() { legacyLinks.remove(res.Key, l) })
	st := p.NewState(httptest.NewRecorder(), r, call, res)
	st.Checked = cb
	done, ref := st.Arm(time.Hour)
	if ref != nil {
		t.Fatal(ref.Message)
	}
	st.status, st.responded = http.StatusBadRequest, true
	done()
	if _, err := io.ReadAll(cb); err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	owed := len(l.owed)
	l.mu.Unlock()
	if n := l.awaiting.Len(); n != 0 || owed != 0 {
		t.Errorf("after the answer, the late id is awaited %d times and owed %d times, want none", n, owed)
	}
}

// TestLegacyRefusedLatePostForgetsAwaited: a request whose id follows the
// peek, in a session whose stream already owes as many answers as it
// notes, is awaited (its deadline) without being noted owed; when the
// upstream refuses its POST, it is no longer awaited, as one whose id is
// in the peek.
func TestLegacyRefusedLatePostForgetsAwaited(t *testing.T) {
	p, _, _ := newTestProxy(t, Config{})
	l, res := owingLegacyLink(t, p, "legacy-late-full-test-key")
	r, call, cb, _ := latePost(t, 64)
	st := p.NewState(httptest.NewRecorder(), r, call, res)
	st.Checked = cb
	done, ref := st.Arm(time.Hour)
	if ref != nil {
		t.Fatal(ref.Message)
	}
	if _, err := io.ReadAll(cb); err != nil {
		t.Fatal(err)
	}
	refuseAwaited(t, l, st, done)
}

// TestLegacyCancelledTableTurnsOver: an upstream need not answer a
// request its client cancelled (the TypeScript SDK never does), so the
// cancelled requests a legacy session holds are not all freed by their
// answers. Once the table is full, a new cancellation still gives its
// request up (no deadline, nothing owed) and keeps its id in use, in
// place of the oldest cancellation held.
func TestLegacyCancelledTableTurnsOver(t *testing.T) {
	p, _, _ := newTestProxy(t, Config{})
	l := &legacyLink{p: p, owed: map[string]string{}, cancelled: map[string]uint64{}}
	l.awaiting = policy.NewAwaiting(l.expire)
	t.Cleanup(l.awaiting.Close)
	for i := range policy.MaxAwaited + 1 {
		id := strconv.Itoa(i)
		if _, inUse := l.claim([]string{id}); inUse != "" {
			t.Fatalf("id %s in use", inUse)
		}
		if !l.awaiting.Add([]*policy.Awaited{{ID: id, Step: time.Hour, Cancel: func(string) {}}}, 0) {
			t.Fatalf("no room to await request %s", id)
		}
		l.cancel([]string{id}) // the upstream never answers it
	}
	last := strconv.Itoa(policy.MaxAwaited)
	l.mu.Lock()
	_, owed := l.owed[last]
	n := len(l.cancelled)
	l.mu.Unlock()
	if owed || l.awaiting.Running(last) {
		t.Errorf("request %s, cancelled once %d others were held, is still owed (%v) or awaited (%v)", last, policy.MaxAwaited, owed, l.awaiting.Running(last))
	}
	if n > policy.MaxAwaited {
		t.Errorf("%d cancelled requests held, want at most %d", n, policy.MaxAwaited)
	}
	if _, inUse := l.claim([]string{last}); inUse != last {
		t.Errorf("the last cancelled id is free again (in use %q)", inUse)
	}
	if _, inUse := l.claim([]string{"0"}); inUse != "" {
		t.Errorf("the oldest cancelled id is still held (in use %q)", inUse)
	}
}

// TestSessionlessUpstreamLogged: an initialize answered without a session
// id while requests without one are refused is logged, once a minute at
// most; with require_session off, or for an answer with an id, nothing is.
func TestSessionlessUpstreamLogged(t *testing.T) {
	const body = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}`
	answer := `{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"s","version":"1"}}}`
	now := time.Unix(1000, 0)
	for _, tc := range []struct {
		name    string
		require bool
		id      string
		answers int
		advance time.Duration
		want    int
	}{
		{"refused without a session", true, "", 3, 0, 1},
		{"logged again a minute later", true, "", 2, sessionlessEvery, 2},
		{"require_session off", false, "", 2, 0, 0},
		{"answered with a session id", true, "u1", 2, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _, _ := newTestProxy(t, Config{})
			core, logs := observer.New(zap.WarnLevel)
			p.Logger, p.RequireSession = zap.New(core), tc.require
			clock := now
			p.Now = func() time.Time { return clock }
			for i := range tc.answers {
				if i == tc.answers-1 {
					clock = clock.Add(tc.advance)
				}
				r, call := post(t, body)
				st := p.NewState(httptest.NewRecorder(), r, call, mcp.Resolution{})
				req := st.Attempt(r.Clone(r.Context()))
				resp := jsonResponse(req, io.NopCloser(strings.NewReader(answer)), int64(len(answer)))
				if tc.id != "" {
					resp.Header.Set(mcp.HeaderSessionID, tc.id)
				}
				resp = st.Answer(req, resp, false, "up:1")
				if got, err := io.ReadAll(resp.Body); err != nil || resp.StatusCode != http.StatusOK || string(got) != answer {
					t.Fatalf("answer %d %q (%v), want the upstream's", resp.StatusCode, got, err)
				}
				st.HandlerDone()
			}
			got := logs.FilterMessageSnippet("without a session id").All()
			if len(got) != tc.want {
				t.Fatalf("%d warnings, want %d: %v", len(got), tc.want, got)
			}
			for _, e := range got {
				if e.ContextMap()["upstream"] != "up:1" || !strings.Contains(e.Message, "require_session off") {
					t.Errorf("warning %q %v, want the upstream and the option", e.Message, e.ContextMap())
				}
			}
		})
	}
}

// fillingBody fills in its response's trailers when it ends, as net/http's
// client does.
type fillingBody struct {
	io.Reader
	resp    *http.Response
	trailer http.Header
}

func (b *fillingBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF {
		if b.resp.Trailer == nil {
			b.resp.Trailer = http.Header{}
		}
		maps.Copy(b.resp.Trailer, b.trailer)
	}
	return n, err
}

func (b *fillingBody) Close() error { return nil }

// TestAnswerTrailers: an answer relayed as it comes keeps the upstream's
// trailers but a session id, announced or not, which is gone from the
// trailers both before and after the body ends; an answer read whole, or
// taken over for the SSE relay, goes without trailers.
func TestAnswerTrailers(t *testing.T) {
	const answer = `{"jsonrpc":"2.0","id":1,"result":{}}`
	filled := http.Header{mcp.HeaderSessionID: {"raw-upstream-id"}, "X-Check": {"1"}}
	for _, c := range []struct {
		what, body string
		notify     bool
		sse        bool
		want       string
	}{
		{"a 202 to a notification", "", true, false, "map[X-Check:[1]]"},
		{"a JSON answer read whole", answer, false, false, "map[]"},
		{"an SSE answer", "data: " + answer + "\n\n", false, true, "map[]"},
	} {
		p, _, _ := newTestProxy(t, Config{})
		body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`
		if c.notify {
			body = `{"jsonrpc":"2.0","method":"notifications/x"}`
		}
		r, call := post(t, body)
		st := p.NewState(httptest.NewRecorder(), r, call, mcp.Resolution{})
		req := st.Attempt(r.Clone(r.Context()))
		resp := jsonResponse(req, nil, -1)
		if c.sse {
			resp.Header.Set("Content-Type", "text/event-stream")
		}
		if c.notify {
			resp.StatusCode = http.StatusAccepted
		}
		resp.Trailer = http.Header{mcp.HeaderSessionID: nil, "X-Check": nil}
		resp.Body = &fillingBody{Reader: strings.NewReader(c.body + "x"), resp: resp, trailer: filled}
		out := st.Answer(req, resp, false, "up:1")
		if _, ok := out.Trailer[mcp.HeaderSessionID]; ok {
			t.Errorf("%s: trailers %v announce a session id", c.what, out.Trailer)
		}
		if c.sse {
			_, _ = io.Copy(io.Discard, st.StreamBody())
		}
		_, _ = io.Copy(io.Discard, out.Body)
		_ = out.Body.Close()
		if got := fmt.Sprint(out.Trailer); got != c.want && !(c.want == "map[]" && out.Trailer == nil) {
			t.Errorf("%s: trailers %v after the body, want %s", c.what, out.Trailer, c.want)
		}
		st.HandlerDone()
	}
}

// TestProxyWriterInformational: the headers of an informational answer
// lose any session id, with or without a relay state, and those of the
// final answer keep theirs; a 499 passes when no deadline expired.
func TestProxyWriterInformational(t *testing.T) {
	p, _, _ := newTestProxy(t, Config{})
	r, call := post(t, `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	st := p.NewState(httptest.NewRecorder(), r, call, mcp.Resolution{})
	defer st.HandlerDone()
	for name, wrap := range map[string]func(http.ResponseWriter) http.ResponseWriter{"Writer": st.Writer, "PassWriter": PassWriter} {
		var infos []http.Header
		rec := httptest.NewRecorder()
		w := wrap(&infoRecorder{ResponseRecorder: rec, infos: &infos})
		w.Header().Set(mcp.HeaderSessionID, "raw")
		w.Header().Set("Link", "</a>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Set(mcp.HeaderSessionID, "token")
		w.WriteHeader(statusClientClosed)
		if len(infos) != 1 || infos[0].Get(mcp.HeaderSessionID) != "" || infos[0].Get("Link") == "" {
			t.Errorf("%s: informational headers %v", name, infos)
		}
		if rec.Code != statusClientClosed || rec.Header().Get(mcp.HeaderSessionID) != "token" {
			t.Errorf("%s: final %d %v", name, rec.Code, rec.Header())
		}
	}
}

// infoRecorder records the headers of each informational answer.
type infoRecorder struct {
	*httptest.ResponseRecorder
	infos *[]http.Header
}

func (i *infoRecorder) WriteHeader(code int) {
	if code >= 100 && code < 200 {
		*i.infos = append(*i.infos, i.Header().Clone())
		return
	}
	i.ResponseRecorder.WriteHeader(code)
}
