package caddytest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/sse"
)

// The raw clients of the end-to-end tests: JSON-RPC bodies, sessions,
// POSTs and GET streams, SSE reading, and the checks of their answers.

// sessionVersion is the protocol version of the raw sessions most tests
// open.
const sessionVersion = "2025-06-18"

// boundedWait bounds every wait of the tests for something that should
// happen.
const boundedWait = 15 * time.Second

// initAt is an initialize request at version.
func initAt(id int, version string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"initialize","params":{"protocolVersion":%q,"capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`, id, version)
}

// initBody is an initialize request at sessionVersion.
func initBody(id int) string { return initAt(id, sessionVersion) }

// callBody is a tools/call of tool with JSON arguments; id is raw JSON.
func callBody(id, tool, args string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":%q,"arguments":%s}}`, id, tool, args)
}

// gatedCall is a call of a gated tool (see gatedTool) waiting for key.
func gatedCall(id int, tool, key string) string {
	return callBody(strconv.Itoa(id), tool, fmt.Sprintf(`{"key":%q}`, key))
}

func echoCall(id int, text string) string {
	return callBody(strconv.Itoa(id), "echo", fmt.Sprintf(`{"text":%q}`, text))
}

func rpcRequest(id int, method string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":%q}`, id, method)
}

const notifyInitialized = `{"jsonrpc":"2.0","method":"notifications/initialized"}`

// sessionHeaders are the headers of a request of session sid at version;
// none without a session.
func sessionHeaders(sid, version string) map[string]string {
	if sid == "" {
		return nil
	}
	return map[string]string{"Mcp-Session-Id": sid, "Mcp-Protocol-Version": version}
}

// inSession returns the headers of a request of session sid at
// sessionVersion, plus extra.
func inSession(sid string, extra map[string]string) map[string]string {
	return withHeaders(sessionHeaders(sid, sessionVersion), extra)
}

// withHeaders returns the union of header maps, later ones winning.
func withHeaders(maps ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range maps {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

// reply is an HTTP answer as a client got it.
type reply struct {
	status  int
	hdr     http.Header
	trailer http.Header
	body    string
	err     error
}

// refused reports an answer of the proxy's admission control or service
// level: 503 or 429 with a JSON-RPC error body.
func (r reply) refused() bool {
	return r.err == nil && (r.status == http.StatusServiceUnavailable || r.status == http.StatusTooManyRequests) &&
		strings.Contains(r.body, `"error"`)
}

// ok reports a 200 with a JSON-RPC result.
func (r reply) ok() bool {
	return r.err == nil && r.status == http.StatusOK && strings.Contains(r.body, `"result"`)
}

func (r reply) String() string {
	if r.err != nil {
		return r.err.Error()
	}
	return fmt.Sprintf("%d %s", r.status, strings.TrimSpace(r.body[:min(len(r.body), 300)]))
}

// readReply reads a response, or the error that came instead, whole.
func readReply(resp *http.Response, err error) reply {
	if err != nil {
		return reply{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return reply{status: resp.StatusCode, hdr: resp.Header, trailer: resp.Trailer, body: string(b), err: err}
}

// newPost builds a JSON-RPC POST with headers.
func newPost(ctx context.Context, url, body string, hdr map[string]string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return req, nil
}

// openPost sends a JSON-RPC POST through hc and returns the response
// unread; the request lives as long as ctx.
func openPost(ctx context.Context, hc *http.Client, url, body string, hdr map[string]string) (*http.Response, error) {
	req, err := newPost(ctx, url, body, hdr)
	if err != nil {
		return nil, err
	}
	return hc.Do(req)
}

// post sends a JSON-RPC POST through hc and reads the whole answer, within
// 2×boundedWait. It never fails the test, so it may run on any goroutine.
func post(ctx context.Context, hc *http.Client, url, body string, hdr map[string]string) reply {
	ctx, cancel := context.WithTimeout(ctx, 2*boundedWait)
	defer cancel()
	return readReply(openPost(ctx, hc, url, body, hdr))
}

// postJSON is post through rawClient.
func postJSON(ctx context.Context, url, body string, hdr map[string]string) reply {
	return post(ctx, rawClient, url, body, hdr)
}

// sendJSON posts on its own goroutine; the answer arrives on the channel.
func sendJSON(ctx context.Context, url, body string, hdr map[string]string) <-chan reply {
	ch := make(chan reply, 1)
	go func() { ch <- postJSON(ctx, url, body, hdr) }()
	return ch
}

func awaitReply(t *testing.T, ch <-chan reply, what string) reply {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(2 * boundedWait):
		t.Fatalf("%s: no answer", what)
	}
	return reply{}
}

// deleteSession ends a session through the proxy.
func deleteSession(ctx context.Context, hc *http.Client, url, sid, version string) reply {
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, url, nil)
	if err != nil {
		return reply{err: err}
	}
	for k, v := range sessionHeaders(sid, version) {
		req.Header.Set(k, v)
	}
	return readReply(hc.Do(req))
}

// initSession initializes a session at version through the proxy and
// returns its token, or the reply when there is none. It never fails the
// test.
func initSession(ctx context.Context, hc *http.Client, url, version string) (string, reply) {
	r := post(ctx, hc, url, initAt(1, version), nil)
	if !r.ok() {
		return "", r
	}
	return r.hdr.Get("Mcp-Session-Id"), r
}

// openSessionWith initializes a session at version through hc, with extra
// headers, and returns the session id the client must send.
func openSessionWith(t *testing.T, hc *http.Client, url, version string, hdr map[string]string) string {
	t.Helper()
	st, h, b := postWith(t, hc, url, initAt(1, version), hdr)
	sid := h.Get("Mcp-Session-Id")
	if st != http.StatusOK || sid == "" {
		t.Fatalf("initialize at %s: %d %q %s", version, st, sid, b)
	}
	if st, _, b := postWith(t, hc, url, notifyInitialized, withHeaders(hdr, sessionHeaders(sid, version))); st != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %d %s", st, b)
	}
	return sid
}

// rawSession initializes a session at sessionVersion through the proxy
// with raw requests and returns the sealed session id.
func rawSession(t *testing.T, url string, hdr map[string]string) string {
	t.Helper()
	return openSessionWith(t, rawClient, url, sessionVersion, hdr)
}

// sessionEcho calls the echo tool with the text "hi <id>" in a raw
// session and returns the status and body.
func sessionEcho(t *testing.T, url, sid string, id int) (int, string) {
	t.Helper()
	st, _, b := rawPost(t, url, echoCall(id, fmt.Sprintf("hi %d", id)), inSession(sid, nil))
	return st, b
}

// getStream sends a GET for a session's stream at version (no session
// headers without sid) and returns the response unread; key names the
// stream for a fake upstream.
func getStream(ctx context.Context, hc *http.Client, url, sid, version, key string, hdr map[string]string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	for k, v := range withHeaders(sessionHeaders(sid, version), hdr) {
		req.Header.Set(k, v)
	}
	if key != "" {
		req.Header.Set("X-Test-Stream", key)
	}
	return hc.Do(req)
}

// openStream is getStream for an answer that must be a 200 SSE stream.
func openStream(ctx context.Context, hc *http.Client, url, sid, version, key string) (*http.Response, error) {
	resp, err := getStream(ctx, hc, url, sid, version, key, nil)
	return sseOnly("GET "+key, resp, err)
}

// mustOpenStream is openStream that fails the test when the stream does
// not open, and closes it when the test ends.
func mustOpenStream(t *testing.T, ctx context.Context, hc *http.Client, url, sid, version, key string) *http.Response {
	t.Helper()
	resp, err := openStream(ctx, hc, url, sid, version, key)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// sseOnly passes a 200 SSE answer and turns anything else into an error,
// the answer read and closed.
func sseOnly(what string, resp *http.Response, err error) (*http.Response, error) {
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if resp.StatusCode != http.StatusOK || !isSSE(resp) {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %d %q: %s", what, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return resp, nil
}

func isSSE(resp *http.Response) bool {
	return strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
}

// sseAnswer checks that resp is a 200 SSE answer.
func sseAnswer(t *testing.T, what string, resp *http.Response, err error) *http.Response {
	t.Helper()
	resp, err = sseOnly(what, resp, err)
	if err != nil {
		t.Fatalf("%v, want a 200 SSE answer", err)
	}
	return resp
}

// sseEvent is one SSE block as a client received it.
type sseEvent struct {
	at      time.Time
	id      string
	hasID   bool
	data    string
	retry   int
	comment bool
}

// readEvents parses an SSE body, calling f for every block, until the
// body ends (nil) or fails, or f fails.
func readEvents(body io.Reader, f func(sseEvent) error) error {
	p := sse.NewParser(1<<20, 1<<20)
	buf := make([]byte, 4096)
	emit := func(ev *sse.Event) error {
		return f(sseEvent{at: time.Now(), id: ev.ID, hasID: ev.HasID, data: string(ev.Data), retry: ev.Retry, comment: ev.Comment})
	}
	for {
		n, err := body.Read(buf)
		if n > 0 {
			if ferr := p.Feed(buf[:n], emit); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) {
			_, ferr := p.Flush(emit)
			return ferr
		}
		if err != nil {
			return err
		}
	}
}

// streamEnd is how a client's stream ended.
type streamEnd struct {
	at  time.Time
	err error
}

// watchEvents reads a stream in its own goroutine: every block goes to the
// returned channel, which is closed at the end; then the end is sent on
// the second channel.
func watchEvents(body io.Reader) (<-chan sseEvent, <-chan streamEnd) {
	evs := make(chan sseEvent, 1024)
	end := make(chan streamEnd, 1)
	go func() {
		err := readEvents(body, func(ev sseEvent) error {
			select {
			case evs <- ev:
				return nil
			default:
				return errors.New("test reader: too many events")
			}
		})
		at := time.Now()
		close(evs)
		end <- streamEnd{at: at, err: err}
	}()
	return evs, end
}

// nextEvent returns the next block within d, failing the test otherwise.
func nextEvent(t *testing.T, evs <-chan sseEvent, d time.Duration, what string) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-evs:
		if !ok {
			t.Fatalf("%s: the stream ended", what)
		}
		return ev
	case <-time.After(d):
		t.Fatalf("%s: nothing within %v", what, d)
	}
	return sseEvent{}
}

// drainEvents reads the rest of a watched stream: its data events and
// retry hints in order, and how it ended. The channels end with the body,
// which ends at the latest when the request's context does.
func drainEvents(evs <-chan sseEvent, ended <-chan streamEnd) ([]sseEvent, streamEnd) {
	var out []sseEvent
	for ev := range evs {
		if !ev.comment {
			out = append(out, ev)
		}
	}
	return out, <-ended
}

// readUntil reads a body until what it read contains marker.
func readUntil(body io.Reader, marker string) ([]byte, error) {
	var seen []byte
	buf := make([]byte, 512)
	for !strings.Contains(string(seen), marker) {
		n, err := body.Read(buf)
		seen = append(seen, buf[:n]...)
		if err != nil {
			return seen, fmt.Errorf("before %q: %w (got %q)", marker, err, seen)
		}
	}
	return seen, nil
}

// firstEvent reads a stream until the end of its first SSE block.
func firstEvent(body io.Reader) error {
	_, err := readUntil(body, "\n\n")
	return err
}

// rpcErrorOf reads a JSON-RPC error message: its raw id, code and
// message; ok is false for anything else.
func rpcErrorOf(data string) (id string, code int, message string, ok bool) {
	var m struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Error   *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if json.Unmarshal([]byte(data), &m) != nil || m.JSONRPC != "2.0" || m.Error == nil {
		return "", 0, "", false
	}
	return string(m.ID), m.Error.Code, m.Error.Message, true
}

// isRPCError reports a JSON-RPC error body with a message, the given raw
// id ("" for any) and, when code is not 0, that code.
func isRPCError(body, id string, code int) bool {
	gotID, gotCode, msg, ok := rpcErrorOf(body)
	return ok && msg != "" && (id == "" || gotID == id) && (code == 0 || gotCode == code)
}

// rpcErrorFor checks that data is a JSON-RPC error for the request with
// the raw JSON id and the code, and returns its message.
func rpcErrorFor(t *testing.T, what, data, id string, code int) string {
	t.Helper()
	gotID, gotCode, msg, ok := rpcErrorOf(data)
	if !ok {
		t.Errorf("%s: %q is not a JSON-RPC error", what, data)
		return ""
	}
	if gotID != id || gotCode != code {
		t.Errorf("%s: error id %s code %d %q, want id %s code %d", what, gotID, gotCode, msg, id, code)
	}
	return msg
}

// assertResult checks a successful answer to the request with the raw
// JSON id that contains want.
func assertResult(t *testing.T, r reply, id, want string) {
	t.Helper()
	if r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, `"id":`+id+`,"result"`) || !strings.Contains(r.body, want) {
		t.Errorf("request %s: got %d %v %q, want 200 with a result containing %q", id, r.status, r.err, r.body, want)
	}
}

// assertRefused checks an admission refusal: the HTTP status, a
// Retry-After of retryAfter seconds, and a JSON-RPC error body for the
// request with the raw JSON id whose message names the reason.
func assertRefused(t *testing.T, r reply, status int, id, reason, retryAfter string) {
	t.Helper()
	if r.err != nil {
		t.Errorf("request %s: %v", id, r.err)
		return
	}
	if r.status != status {
		t.Errorf("request %s: status %d, want %d (%s)", id, r.status, status, r.body)
	}
	if got := r.hdr.Get("Retry-After"); got != retryAfter {
		t.Errorf("request %s: Retry-After %q, want %q", id, got, retryAfter)
	}
	if ct := r.hdr.Get("Content-Type"); ct != "application/json" {
		t.Errorf("request %s: Content-Type %q", id, ct)
	}
	gotID, code, msg, ok := rpcErrorOf(r.body)
	if !ok {
		t.Errorf("request %s: body is not a JSON-RPC error: %q", id, r.body)
		return
	}
	if gotID != id {
		t.Errorf("request %s: error carries id %s", id, gotID)
	}
	if code != -32000 || !strings.Contains(msg, reason) {
		t.Errorf("request %s: error %d %q, want -32000 naming %q", id, code, msg, reason)
	}
}

// waitUntil polls cond every step until it holds or d has passed, and
// reports whether it held.
func waitUntil(d, step time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(step)
	}
}

// pollUntil polls cond until it holds, for at most boundedWait.
func pollUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !waitUntil(boundedWait, 5*time.Millisecond, cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// parallel runs f(0) … f(n-1) on at most workers goroutines.
func parallel(n, workers int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(workers, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				f(i)
			}
		})
	}
	wg.Wait()
}

// burst runs send(0) … send(n-1), workers at a time, and counts the
// answers by the kind send gives each; sample holds an answer of each
// kind.
func burst(n, workers int, send func(i int) (kind string, r reply)) (counts map[string]int, sample map[string]reply) {
	var mu sync.Mutex
	counts, sample = map[string]int{}, map[string]reply{}
	parallel(n, workers, func(i int) {
		kind, r := send(i)
		mu.Lock()
		defer mu.Unlock()
		counts[kind]++
		sample[kind] = r
	})
	return counts, sample
}

// sampleEvery calls f now and then every d, on a goroutine of its own,
// until stop is called; stop returns once f has run for the last time.
func sampleEvery(d time.Duration, f func()) (stop func()) {
	done, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		tick := time.NewTicker(d)
		defer tick.Stop()
		for {
			f()
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		close(done)
		<-ended
	}
}

// isClosed reports whether ch is closed.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// settledGoroutines returns the goroutine count once it holds still for a
// few polls (at most about 2s).
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	stable := 0
	for i := 0; i < 100 && stable < 5; i++ {
		time.Sleep(20 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			stable++
		} else {
			n, stable = m, 0
		}
	}
	return n
}

// goroutineDump returns the stacks of every goroutine, for a failure
// message.
func goroutineDump() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// h2cGlobal is the global option that serves HTTP/2 over cleartext (h2c)
// beside HTTP/1.1, as an HTTPS site serves HTTP/2.
const h2cGlobal = "\tservers {\n\t\tprotocols h1 h2c\n\t}\n"

// h2cClient returns a client that speaks HTTP/2 over cleartext, every
// request on one connection.
func h2cClient(t *testing.T) *http.Client { return h2cClientWindow(t, 0) }

// h2cClientWindow is h2cClient whose streams each buffer at most window
// bytes the test has not read (flow control holds the proxy back past
// it); 0 for the transport's default.
func h2cClientWindow(t *testing.T, window int) *http.Client {
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &h2, DisableCompression: true}
	if window > 0 {
		tr.HTTP2 = &http.HTTP2Config{MaxReceiveBufferPerStream: window}
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// h1Client returns an HTTP/1.1 client of its own.
func h1Client(t *testing.T) *http.Client {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// protoClients are an HTTP/1.1 and an HTTP/2 client, with the major
// version each must be answered in.
func protoClients(t *testing.T) []struct {
	name  string
	major int
	hc    *http.Client
} {
	return []struct {
		name  string
		major int
		hc    *http.Client
	}{{"HTTP/1.1", 1, h1Client(t)}, {"HTTP/2", 2, h2cClient(t)}}
}

// legacyClient is one legacy HTTP+SSE stream as a client holds it.
type legacyClient struct {
	endpoint string
	events   chan string // data of the events after the endpoint
	closed   chan struct{}
	cancel   context.CancelFunc
}

// openLegacyStream opens a legacy stream (GET /sse) and reads its endpoint
// event. A stream that does not open is answered as a reply.
func openLegacyStream(ctx context.Context, hc *http.Client, url string) (*legacyClient, reply) {
	ctx, cancel := context.WithCancel(ctx)
	resp, err := getStream(ctx, hc, url, "", "", "", nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		cancel()
		return nil, readReply(resp, err)
	}
	// The endpoint event comes at once; a stream that does not send it
	// within 10s is given up.
	giveUp := time.AfterFunc(10*time.Second, cancel)
	br := bufio.NewReader(resp.Body)
	event := ""
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			resp.Body.Close()
			cancel()
			return nil, reply{status: resp.StatusCode, hdr: resp.Header, err: fmt.Errorf("no endpoint event: %w", err)}
		}
		line = strings.TrimRight(line, "\r\n")
		if v, ok := strings.CutPrefix(line, "event:"); ok {
			event = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "data:"); ok && event == "endpoint" {
			giveUp.Stop()
			c := &legacyClient{endpoint: strings.TrimSpace(v), events: make(chan string, 64), closed: make(chan struct{}), cancel: cancel}
			go func() {
				defer close(c.closed)
				defer resp.Body.Close()
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "data:"); ok {
						select {
						case c.events <- strings.TrimSpace(v):
						default:
						}
					}
				}
			}()
			return c, reply{status: resp.StatusCode, hdr: resp.Header}
		}
	}
}
