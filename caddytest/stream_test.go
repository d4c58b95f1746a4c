package caddytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpgate/mcpgate/internal/demo"
	"github.com/mcpgate/mcpgate/sse"
)

// dropOnce is a client transport that breaks the SSE response of the
// first tools/call POST whose progress token is target after it has
// delivered `after` events, as a network drop would, and records the
// Last-Event-ID of every GET.
type dropOnce struct {
	base    http.RoundTripper
	target  string
	after   int
	dropped atomic.Bool
	mu      sync.Mutex
	resumes []string
	wire    []*bytes.Buffer // the SSE bytes every stream delivered to the client
}

// tee records what the client reads from an SSE body.
func (d *dropOnce) tee(rc io.ReadCloser) io.ReadCloser {
	buf := new(bytes.Buffer)
	d.mu.Lock()
	d.wire = append(d.wire, buf)
	d.mu.Unlock()
	return &teeBody{ReadCloser: rc, d: d, buf: buf}
}

type teeBody struct {
	io.ReadCloser
	d   *dropOnce
	buf *bytes.Buffer
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	t.d.mu.Lock()
	t.buf.Write(p[:n])
	t.d.mu.Unlock()
	return n, err
}

// progress returns, per progress token, the progress values of the
// notifications the client received on the wire, in order.
func (d *dropOnce) progress(t *testing.T) map[string][]float64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string][]float64{}
	for _, b := range d.wire {
		p := sse.NewParser(1<<20, 1<<20)
		err := p.Feed(b.Bytes(), func(ev *sse.Event) error {
			var msg struct {
				Method string `json:"method"`
				Params struct {
					Token    any     `json:"progressToken"`
					Progress float64 `json:"progress"`
				} `json:"params"`
			}
			if json.Unmarshal(ev.Data, &msg) == nil && msg.Method == "notifications/progress" {
				tok := fmt.Sprint(msg.Params.Token)
				out[tok] = append(out[tok], msg.Params.Progress)
			}
			return nil
		})
		if err != nil {
			t.Errorf("client received malformed SSE: %v", err)
		}
	}
	return out
}

func (d *dropOnce) RoundTrip(r *http.Request) (*http.Response, error) {
	var body []byte
	if r.Method == http.MethodPost && r.Body != nil {
		body, _ = io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	if r.Method == http.MethodGet {
		if id := r.Header.Get("Last-Event-ID"); id != "" {
			d.mu.Lock()
			d.resumes = append(d.resumes, id)
			d.mu.Unlock()
		}
	}
	resp, err := d.base.RoundTrip(r)
	if err != nil {
		return resp, err
	}
	switch {
	case r.Method == http.MethodGet && r.Header.Get("Last-Event-ID") != "":
		resp.Body = d.tee(resp.Body)
	case r.Method == http.MethodPost && bytes.Contains(body, []byte(`"progressToken":"`)):
		if bytes.Contains(body, []byte(`"progressToken":"`+d.target+`"`)) && d.dropped.CompareAndSwap(false, true) {
			resp.Body = &dropAfter{ReadCloser: resp.Body, left: d.after}
		}
		resp.Body = d.tee(resp.Body)
	}
	return resp, nil
}

func (d *dropOnce) resumed() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.resumes...)
}

// dropAfter passes through `left` complete SSE events, then fails.
type dropAfter struct {
	io.ReadCloser
	left    int
	pending []byte
	failed  bool
}

var errDropped = errors.New("connection dropped by test")

func (d *dropAfter) Read(p []byte) (int, error) {
	if d.failed {
		return 0, errDropped
	}
	for len(d.pending) == 0 {
		buf := make([]byte, 4096)
		n, err := d.ReadCloser.Read(buf)
		d.pending = append(d.pending, buf[:n]...)
		if err != nil && n == 0 {
			return 0, err
		}
	}
	// Deliver up to the end of the next event, counting events.
	i := bytes.Index(d.pending, []byte("\n\n"))
	if i < 0 {
		n := copy(p, d.pending)
		d.pending = d.pending[n:]
		return n, nil
	}
	if d.left == 0 {
		d.failed = true
		d.ReadCloser.Close()
		return 0, errDropped
	}
	n := copy(p, d.pending[:i+2])
	d.pending = d.pending[n:]
	if n == i+2 {
		d.left--
	}
	return n, nil
}

// TestStreamResumesAfterDrop drops a tool call's SSE stream mid-call: the
// client resumes with Last-Event-ID through the proxy and receives the rest
// exactly once (counted on the wire), whether or not the upstream keeps its
// own event store. A second stream of the same session runs alongside and
// keeps its events.
func TestStreamResumesAfterDrop(t *testing.T) {
	for _, store := range []bool{false, true} {
		t.Run(fmt.Sprintf("event_store=%v", store), func(t *testing.T) {
			opts := &mcp.StreamableHTTPOptions{}
			if store {
				opts.EventStore = mcp.NewMemoryEventStore(nil)
			}
			up := startUpstream(t, "up", opts)
			port := freePort(t)
			loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr()))

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var mu sync.Mutex
			client := mcp.NewClient(&mcp.Implementation{Name: "resume", Version: "1"}, nil)
			tr := &dropOnce{base: &http.Transport{}, target: "dropped", after: 3}
			cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{
				Endpoint: proxyURL(port) + "/mcp", HTTPClient: &http.Client{Transport: tr}, MaxRetries: 3,
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()

			const steps = 8
			var wg sync.WaitGroup
			results := make(map[string]error)
			for _, tok := range []string{"dropped", "steady"} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					res, err := cs.CallTool(ctx, &mcp.CallToolParams{
						Meta:      mcp.Meta{"progressToken": tok},
						Name:      "countdown",
						Arguments: map[string]any{"from": steps, "delay_ms": 100},
					})
					if err == nil && (res.IsError || len(res.Content) != 1 || res.Content[0].(*mcp.TextContent).Text != "liftoff") {
						err = fmt.Errorf("unexpected result %+v", res)
					}
					mu.Lock()
					results[tok] = err
					mu.Unlock()
				}()
			}
			wg.Wait()
			for tok, err := range results {
				if err != nil {
					t.Errorf("%s call: %v", tok, err)
				}
			}
			t.Logf("resumed with %v", tr.resumed())
			if !tr.dropped.Load() || len(tr.resumed()) == 0 {
				t.Fatalf("the stream was not dropped and resumed (dropped=%v resumes=%v)", tr.dropped.Load(), tr.resumed())
			}
			progress := tr.progress(t)
			for _, tok := range []string{"dropped", "steady"} {
				got := progress[tok]
				if len(got) != steps {
					t.Errorf("%s: %d progress notifications, want %d exactly once: %v", tok, len(got), steps, got)
					continue
				}
				for i, p := range got {
					if p != float64(i+1) {
						t.Errorf("%s: progress %v, want 1..%d in order", tok, got, steps)
						break
					}
				}
			}
		})
	}
}

// roundTripFunc is a client transport made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestStreamUpstreamConnectionReset resets the connections between the
// proxy and a go-sdk upstream mid-call: the proxy resumes the call's
// stream from the upstream's event store (a GET with the upstream's
// Last-Event-ID) and its client, which saw no break and cannot resume a
// stream itself, gets every progress notification once and the result. An upstream without an event store
// refuses the resumption, and the client gets the proxy's error at once.
func TestStreamUpstreamConnectionReset(t *testing.T) {
	for _, store := range []bool{true, false} {
		t.Run(fmt.Sprintf("event_store=%v", store), func(t *testing.T) {
			opts := &mcp.StreamableHTTPOptions{}
			if store {
				opts.EventStore = mcp.NewMemoryEventStore(nil)
			}
			up := startKillable(t, "127.0.0.1:0", demo.Handler(demo.NewServer("up"), "/sse", opts))
			port := freePort(t)
			loadCaddyfile(t, proxySite(port, up.addr, ""))
			ctx, cancel := context.WithTimeout(context.Background(), 3*boundedWait)
			defer cancel()
			var mu sync.Mutex
			var progress []float64
			client := mcp.NewClient(&mcp.Implementation{Name: "reset", Version: "1"}, &mcp.ClientOptions{
				ProgressNotificationHandler: func(_ context.Context, req *mcp.ProgressNotificationClientRequest) {
					mu.Lock()
					progress = append(progress, req.Params.Progress)
					n := len(progress)
					mu.Unlock()
					if n == 3 {
						up.reset()
					}
				},
			})
			// The client cannot resume: what it gets, the proxy resumed.
			noResume := roundTripFunc(func(r *http.Request) (*http.Response, error) {
				if r.Header.Get("Last-Event-ID") != "" {
					return nil, errors.New("the client resumed a stream")
				}
				return http.DefaultTransport.RoundTrip(r)
			})
			cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{
				Endpoint: proxyURL(port) + "/mcp", HTTPClient: &http.Client{Transport: noResume}, MaxRetries: 1,
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer cs.Close()
			const steps = 8
			res, err := cs.CallTool(ctx, &mcp.CallToolParams{
				Meta: mcp.Meta{"progressToken": "p"}, Name: "countdown",
				Arguments: map[string]any{"from": steps, "delay_ms": 100},
			})
			mu.Lock()
			got := slices.Clone(progress)
			mu.Unlock()
			if !store {
				if err == nil || !strings.Contains(err.Error(), "the upstream connection failed before the answer") {
					t.Errorf("without an event store: %+v, %v; want the proxy's error", res, err)
				}
				return
			}
			if err != nil || res.IsError || len(res.Content) != 1 || res.Content[0].(*mcp.TextContent).Text != "liftoff" {
				t.Fatalf("the call: %+v, %v", res, err)
			}
			if len(got) != steps {
				t.Errorf("progress %v, want 1..%d once each", got, steps)
			}
			for i, p := range got {
				if p != float64(i+1) {
					t.Errorf("progress %v, want 1..%d in order", got, steps)
					break
				}
			}
		})
	}
}

// TestStreamResumeOverSessionLimitKeepsCall: a client resumes a dropped
// call while its session holds its most streams (32 open GET streams):
// the resumption cannot be tracked and ends, but the call goes on
// upstream, to be resumed later (a refused resumption once closed the
// stream it resumed, cancelling the call for good).
func TestStreamResumeOverSessionLimitKeepsCall(t *testing.T) {
	u := startFake(t, &fakeUpstream{on: map[string]func(*fakeCall){"tools/call:gated": gatedTool}})
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, u.addr(), ""))
	url := proxyURL(port) + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), 3*boundedWait)
	defer cancel()
	sid := u.openSession(t, proxyURL(port), sessionVersion)
	pctx, pcancel := context.WithCancel(ctx)
	resp, err := openPost(pctx, rawClient, url, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"gated","arguments":{"key":%q},"_meta":{"progressToken":"p%d"}}}`, 5, "k1", 5), inSession(sid, nil))
	resp = sseAnswer(t, "call", resp, err)
	evs, _ := watchEvents(resp.Body)
	first := nextEvent(t, evs, boundedWait, "first event")
	pcancel()
	time.Sleep(200 * time.Millisecond)
	for i := range 32 {
		mustOpenStream(t, ctx, rawClient, url, sid, sessionVersion, fmt.Sprintf("g%d", i))
	}
	time.Sleep(300 * time.Millisecond) // the last streams are registered with the session
	gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
	defer gcancel()
	r, err := getStream(gctx, rawClient, url, sid, sessionVersion, "", map[string]string{"Last-Event-ID": first.id})
	if err == nil {
		b, _ := io.ReadAll(io.LimitReader(r.Body, 4096))
		r.Body.Close()
		t.Logf("resume over the limit: %d %q", r.StatusCode, b)
	}
	if waitUntil(3*time.Second, 20*time.Millisecond, func() bool { s := u.answer("5"); return s != nil && s.cancelled() }) {
		t.Errorf("the refused resumption cancelled the call upstream (its answer can never come)")
	}
}

// TestStreamSilentLongerThanWriteTimeout: a stream may be silent for
// longer than write_timeout after an event, over HTTP/1.1 and HTTP/2:
// write_timeout bounds each write, not the silence between them. Over
// HTTP/2 a write deadline left armed resets the stream when it passes,
// with no write in flight (the client read "stream error: INTERNAL_ERROR"
// one write_timeout after the event). Both a GET stream and the SSE
// answer of a tools/call (progress, then its result after the silence)
// are checked.
func TestStreamSilentLongerThanWriteTimeout(t *testing.T) {
	// A write_timeout short enough to wait out, long enough that no write
	// to a client that reads takes it (also under -race on a busy
	// machine): the deadline must pass in the silence, not in a write.
	const writeTimeout = 2 * time.Second
	const silence = writeTimeout + time.Second
	cancelled := make(chan string, 8)
	fake := startFake(t, &fakeUpstream{on: map[string]func(*fakeCall){"tools/call:slow": slowFakeTool(cancelled)}})
	port := freePort(t)
	loadCaddyfileWith(t, h2cGlobal, proxySite(port, fake.addr(),
		fmt.Sprintf("\t\twrite_timeout %v\n\t\tkeepalive 5m\n", writeTimeout)))
	base := proxyURL(port)
	ctx, cancel := context.WithTimeout(context.Background(), 2*boundedWait)
	defer cancel()
	for _, proto := range protoClients(t) {
		checkSilentStream(t, ctx, fake, base, proto.name, proto.major, proto.hc, silence)
	}
}

// checkSilentStream opens a GET stream of a new session of fake through
// hc, which must come over HTTP/major, and checks that it carries an
// event after a silence longer than write_timeout, and so does the SSE
// answer of a call (slowFakeTool) silent as long after its progress.
func checkSilentStream(t *testing.T, ctx context.Context, fake *fakeUpstream, base, name string, major int, hc *http.Client, silence time.Duration) {
	t.Helper()
	sid := fake.openSessionWith(t, hc, base, sessionVersion)
	key := "silent-" + name
	resp, err := openStream(ctx, hc, base+"/mcp", sid, sessionVersion, key)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != major {
		t.Fatalf("%s: the stream came over %s", name, resp.Proto)
	}
	events := make(chan sseEvent, 8)
	ended := make(chan error, 1)
	go func() {
		ended <- readEvents(resp.Body, func(ev sseEvent) error {
			if !ev.comment {
				events <- ev
			}
			return nil
		})
	}()
	note := func(n int) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"%d"}}`, n)
	}
	for n := range 2 {
		if err := fake.streamOf(t, key).event("", note(n)); err != nil {
			t.Fatalf("%s: the upstream's event %d: %v (the proxy ended the stream in the silence)", name, n, err)
		}
		select {
		case ev := <-events:
			if ev.data != note(n) {
				t.Fatalf("%s: event %q, want %q", name, ev.data, note(n))
			}
		case err := <-ended:
			t.Fatalf("%s: the GET stream ended before event %d: %v", name, n, err)
		case <-time.After(boundedWait):
			t.Fatalf("%s: no event %d", name, n)
		}
		if n == 0 {
			time.Sleep(silence)
		}
	}
	_ = resp.Body.Close()

	// The SSE answer of a call: progress, silence, the result.
	gateKey := "gate-" + name
	answer := make(chan reply, 1)
	go func() {
		answer <- post(ctx, hc, base+"/mcp", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow","arguments":{"key":"`+gateKey+`"},"_meta":{"progressToken":"p7"}}}`, inSession(sid, nil))
	}()
	time.Sleep(silence)
	fake.open(gateKey)
	r := awaitReply(t, answer, name+" call")
	if r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, "done "+gateKey) {
		t.Errorf("%s: the call silent for %v after its progress: %s", name, silence, r)
	}
}

// TestStreamUpstreamBreakResumed: an upstream whose answer stream breaks
// after an event id of its own can go on from that id; the go-sdk client
// resumes with Last-Event-ID, as it does through plain reverse_proxy, and
// gets the result from the upstream rather than an error from the proxy.
func TestStreamUpstreamBreakResumed(t *testing.T) {
	var callID atomic.Value // the raw JSON id of the call that broke
	up := startFake(t, &fakeUpstream{sse: true, on: map[string]func(*fakeCall){
		"tools/call:flaky": func(c *fakeCall) {
			callID.Store(c.id)
			_ = c.sse().event("ev-1", `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"working"}}`)
			panic(http.ErrAbortHandler) // the connection breaks
		},
	}, stream: func(s *fakeStream) error {
		if s.r.Header.Get("Last-Event-ID") != "ev-1" {
			return s.idle(nil)
		}
		id, _ := callID.Load().(string)
		return s.event("ev-2", `{"jsonrpc":"2.0","id":`+id+`,"result":{"content":[{"type":"text","text":"resumed"}]}}`)
	}})
	port, plain := freePort(t), freePort(t)
	loadCaddyfile(t, proxySite(port, up.addr(), "")+fmt.Sprintf(":%d {\n\treverse_proxy %s\n}\n", plain, up.addr()))
	for _, through := range []struct{ name, url string }{
		{"plain reverse_proxy", proxyURL(plain) + "/mcp"},
		{"mcp_proxy", proxyURL(port) + "/mcp"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
		cs := connect(t, ctx, through.url, nil, nil)
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "flaky"})
		switch {
		case err != nil:
			t.Errorf("through %s: the call failed: %v", through.name, err)
		case res.IsError || len(res.Content) != 1:
			t.Errorf("through %s: result %+v", through.name, res)
		default:
			if tc, ok := res.Content[0].(*mcp.TextContent); !ok || tc.Text != "resumed" {
				t.Errorf("through %s: content %+v, want the resumed result", through.name, res.Content[0])
			}
		}
		_ = cs.Close()
		cancel()
	}
}
