package caddytest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeUpstream is the hand-written MCP server of the end-to-end tests, for
// the tests that need to control what an upstream answers, when, and how
// its streams behave; the tests that need a real MCP server use the go-sdk
// demo server (startUpstream).
//
// A POST initialize is answered with a fresh random Mcp-Session-Id; a
// request of a session it issued is answered by the handler of its method
// (see on), or by default: ping and unknown methods with an empty result,
// tools/list with the echo tool and every tool that has a handler,
// tools/call of echo with its text and of any other tool with an empty
// result. Answers are JSON, or SSE streams of one event with sse set, as
// the go-sdk server answers. A batch is answered with an array. A
// notification or a response gets 202. A GET of a known session opens an
// SSE stream run by stream (idle until the request ends without one;
// without one, a GET with Last-Event-ID gets 400); a DELETE ends the
// session. Anything of a session it did not issue gets
// 404, unless stateless is set. Every request is recorded (fakeLog), and
// calls can wait on gates (fakeGates).
type fakeUpstream struct {
	*upstream // the loopback server, once started by startFake

	// name is the serverInfo name; "fake" when empty.
	name string
	// sse answers every request with an SSE stream, as the go-sdk server
	// does by default, instead of a JSON body.
	sse bool
	// stateless serves requests of any session id, or of none, instead of
	// refusing the ids it did not issue with 404.
	stateless bool
	// versions are the protocol versions it serves, newest first, as an
	// SDK server checks them: initialize is answered with the client's
	// version when listed, else the newest; any other request that names
	// an unlisted version in MCP-Protocol-Version gets 400. Empty: every
	// version, the client's always agreed.
	versions []string
	// stream runs a GET stream; nil idles until the request ends. A nil
	// return marks the stream as ended by the upstream itself.
	stream func(s *fakeStream) error
	// on holds the handlers of requests, keyed by "method:tool" (a
	// tools/call of that tool), "method", or "*" (any request), looked up
	// in that order. A handler answers with the fakeCall's methods or
	// writes to its ResponseWriter itself.
	on map[string]func(c *fakeCall)

	fakeLog
	fakeGates

	once     sync.Once
	mu       sync.Mutex
	sessions map[string]bool
	gets     map[string]*fakeStream // GET streams by their X-Test-Stream header
	answers  map[string]*fakeStream // SSE answers to POSTs by raw JSON-RPC id

	created      atomic.Int64 // sessions issued
	deletedKnown atomic.Int64 // DELETEs that ended a live session
	busy         atomic.Int64 // GET streams and handled requests being served
}

// startFake serves u on loopback until the test ends; the gates open
// before the server closes, which waits for its requests.
func startFake(t *testing.T, u *fakeUpstream) *fakeUpstream {
	t.Helper()
	u.init()
	u.upstream = startUpstreamHandler(t, u.name, u)
	t.Cleanup(u.openAll)
	return u
}

func (u *fakeUpstream) init() {
	u.once.Do(func() {
		if u.name == "" {
			u.name = "fake"
		}
		u.sessions = map[string]bool{}
		u.gets = map[string]*fakeStream{}
		u.answers = map[string]*fakeStream{}
		u.fakeGates.init()
	})
}

// known reports whether the upstream issued session id sid and it lives.
func (u *fakeUpstream) known(sid string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.sessions[sid]
}

// live returns the number of sessions not deleted.
func (u *fakeUpstream) live() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.sessions)
}

// streamOf returns the GET stream opened with key. The proxy sends a
// stream's headers only after the upstream's, so it exists once the
// client has them.
func (u *fakeUpstream) streamOf(t *testing.T, key string) *fakeStream {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	s := u.gets[key]
	if s == nil {
		t.Fatalf("the upstream never saw GET stream %q", key)
	}
	return s
}

// allStreams returns every GET stream opened with a key, by key.
func (u *fakeUpstream) allStreams() map[string]*fakeStream {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := make(map[string]*fakeStream, len(u.gets))
	for k, s := range u.gets {
		out[k] = s
	}
	return out
}

// answer returns the SSE answer to the request with the raw JSON id, nil
// when none began.
func (u *fakeUpstream) answer(id string) *fakeStream {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.answers[id]
}

// openSession initializes a session through the proxy at base and returns
// the session id the client must send: the proxy's sealed token, never
// the upstream's own id.
func (u *fakeUpstream) openSession(t *testing.T, base, version string) string {
	t.Helper()
	return u.openSessionWith(t, rawClient, base, version)
}

// openSessionWith is openSession through the client hc.
func (u *fakeUpstream) openSessionWith(t *testing.T, hc *http.Client, base, version string) string {
	t.Helper()
	tok := openSessionWith(t, hc, base+"/mcp", version, nil)
	if u.known(tok) {
		t.Fatalf("the proxy handed out the upstream's own session id %q", tok)
	}
	return tok
}

func (u *fakeUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.init()
	seen, _, err := u.record(r)
	if v := r.Header.Get("Mcp-Protocol-Version"); v != "" && len(u.versions) > 0 && !slices.Contains(u.versions, v) &&
		(len(seen.msgs) != 1 || seen.msgs[0].Method != "initialize") {
		http.Error(w, "Bad Request: Unsupported protocol version", http.StatusBadRequest)
		return
	}
	switch r.Method {
	case http.MethodPost:
		msgs, batch := seen.msgs, seen.batch
		if err != nil || msgs == nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		if !batch && msgs[0].Method == "initialize" {
			u.initialize(w, r, msgs[0])
			return
		}
		if !u.stateless && !u.known(seen.sid) {
			http.Error(w, "unknown session", http.StatusNotFound)
			return
		}
		if batch {
			u.serveBatch(w, r, seen.sid, msgs)
			return
		}
		if !msgs[0].isRequest() {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		u.dispatch(&fakeCall{u: u, w: w, r: r, msg: msgs[0], id: string(msgs[0].ID), sid: seen.sid})
	case http.MethodGet:
		if !u.stateless && !u.known(seen.sid) {
			http.Error(w, "unknown session", http.StatusNotFound)
			return
		}
		if r.Header.Get("Last-Event-ID") != "" && u.stream == nil {
			// Without a stream func it keeps no events to replay, and
			// refuses a resumption as the go-sdk's server without an
			// event store does.
			http.Error(w, "stream replay unsupported", http.StatusBadRequest)
			return
		}
		u.busy.Add(1)
		defer u.busy.Add(-1)
		s := newFakeStream(w, r, r.Header.Get("X-Test-Stream"), seen.sid)
		defer s.end()
		if s.key != "" {
			u.mu.Lock()
			u.gets[s.key] = s
			u.mu.Unlock()
		}
		s.wmu.Lock() // a test may write an event as soon as the stream is listed
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		_ = s.rc.Flush()
		s.wmu.Unlock()
		run := u.stream
		if run == nil {
			run = func(s *fakeStream) error { return s.idle(nil) }
		}
		if run(s) == nil {
			s.selfEnded.Store(true)
		}
	case http.MethodDelete:
		u.mu.Lock()
		ok := u.sessions[seen.sid]
		delete(u.sessions, seen.sid)
		u.mu.Unlock()
		if !ok && !u.stateless {
			http.Error(w, "unknown session", http.StatusNotFound)
			return
		}
		if ok {
			u.deletedKnown.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// initialize starts a session and answers with the version the client
// asked for, or the newest of versions when it serves only those and not
// the client's.
func (u *fakeUpstream) initialize(w http.ResponseWriter, r *http.Request, m fakeMsg) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	sid := hex.EncodeToString(b[:])
	u.mu.Lock()
	u.sessions[sid] = true
	u.mu.Unlock()
	u.created.Add(1)
	u.addMinted(sid)
	w.Header().Set("Mcp-Session-Id", sid)
	c := &fakeCall{u: u, w: w, r: r, msg: m, id: string(m.ID)}
	version := m.params().ProtocolVersion
	if len(u.versions) > 0 && !slices.Contains(u.versions, version) {
		version = u.versions[0]
	}
	c.result(fmt.Sprintf(`{"protocolVersion":%q,"capabilities":{"tools":{}},"serverInfo":{"name":%q,"version":"1"}}`, version, u.name))
}

// serveBatch runs every message of a batch and answers the requests among
// them with an array (202 when there are none).
func (u *fakeUpstream) serveBatch(w http.ResponseWriter, r *http.Request, sid string, msgs []fakeMsg) {
	var out []string
	for _, m := range msgs {
		if m.isRequest() {
			u.dispatch(&fakeCall{u: u, w: w, r: r, msg: m, id: string(m.ID), sid: sid, batch: &out})
		}
	}
	if len(out) == 0 {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, "["+strings.Join(out, ",")+"]")
}

// dispatch answers a request with its handler, or by default.
func (u *fakeUpstream) dispatch(c *fakeCall) {
	name := c.msg.params().Name
	var h func(*fakeCall)
	if name != "" {
		h = u.on[c.msg.Method+":"+name]
	}
	if h == nil {
		h = u.on[c.msg.Method]
	}
	if h == nil {
		h = u.on["*"]
	}
	if h != nil {
		u.busy.Add(1)
		defer u.busy.Add(-1)
		h(c)
		return
	}
	switch {
	case c.msg.Method == "tools/list":
		tools := []string{"echo"}
		for k := range u.on {
			if t, ok := strings.CutPrefix(k, "tools/call:"); ok {
				tools = append(tools, t)
			}
		}
		slices.Sort(tools)
		var list []string
		for _, t := range tools {
			list = append(list, fmt.Sprintf(`{"name":%q,"inputSchema":{"type":"object"}}`, t))
		}
		c.result(`{"tools":[` + strings.Join(list, ",") + `]}`)
	case c.msg.Method == "tools/call" && name == "echo":
		c.text(c.arg("text"))
	default:
		c.result(`{}`)
	}
}

// fakeCall is one request a fakeUpstream answers.
type fakeCall struct {
	u     *fakeUpstream
	w     http.ResponseWriter
	r     *http.Request
	msg   fakeMsg
	id    string // the raw JSON id
	sid   string // the Mcp-Session-Id it came with
	batch *[]string
	s     *fakeStream // the SSE answer, once begun
}

// arg returns a string argument of a tools/call, "" when missing.
func (c *fakeCall) arg(name string) string {
	var args map[string]any
	_ = json.Unmarshal(c.msg.params().Arguments, &args)
	s, _ := args[name].(string)
	return s
}

// progressToken returns the raw progress token of the request, nil
// without one.
func (c *fakeCall) progressToken() json.RawMessage { return c.msg.params().Meta.ProgressToken }

// sse begins the answer as an SSE stream (200, text/event-stream, the
// header flushed), once, and returns it.
func (c *fakeCall) sse() *fakeStream {
	if c.s == nil {
		c.s = newFakeStream(c.w, c.r, c.id, c.sid)
		c.u.mu.Lock()
		c.u.answers[c.id] = c.s
		c.u.mu.Unlock()
		c.w.Header().Set("Content-Type", "text/event-stream")
		c.w.WriteHeader(http.StatusOK)
		_ = c.s.rc.Flush()
	}
	return c.s
}

// result answers with a JSON-RPC result: an event of the SSE answer when
// it began (or the upstream answers in SSE), a JSON body otherwise.
func (c *fakeCall) result(result string) {
	msg := `{"jsonrpc":"2.0","id":` + c.id + `,"result":` + result + `}`
	switch {
	case c.batch != nil:
		*c.batch = append(*c.batch, msg)
	case c.s != nil || c.u.sse:
		_ = c.sse().event("", msg)
	default:
		c.w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(c.w, msg)
	}
}

// text answers a tools/call with one text content.
func (c *fakeCall) text(text string) {
	b, _ := json.Marshal(text)
	c.result(`{"content":[{"type":"text","text":` + string(b) + `}]}`)
}

// progress sends a progress notification for the request's token on its
// SSE answer.
func (c *fakeCall) progress(p int, message string) error {
	return c.sse().event("", fmt.Sprintf(`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":%s,"progress":%d,"message":%q}}`,
		c.progressToken(), p, message))
}

// fakeStream is an SSE stream an upstream serves, a GET stream or the
// answer to a POST, and what became of it. Every write is flushed.
type fakeStream struct {
	key    string // the X-Test-Stream header of a GET, the raw JSON-RPC id of an answer
	sid    string
	r      *http.Request
	ctx    context.Context // the request's
	opened time.Time
	done   chan struct{} // closed when the request's context ends
	doneAt time.Time     // set before done is closed
	// selfEnded: the upstream ended the stream on its own, rather than
	// seeing its context end or a write fail.
	selfEnded atomic.Bool
	sent      atomic.Int64 // events written
	bytes     atomic.Int64 // bytes written

	w  http.ResponseWriter
	rc *http.ResponseController
	// wmu orders the writes, which a test may make from its own
	// goroutine, with the end of the stream's handler (over).
	wmu  sync.Mutex
	over bool
}

// errFakeStreamOver is a write to a stream whose handler returned.
var errFakeStreamOver = errors.New("the stream's handler returned")

func newFakeStream(w http.ResponseWriter, r *http.Request, key, sid string) *fakeStream {
	s := &fakeStream{key: key, sid: sid, r: r, ctx: r.Context(), opened: time.Now(), done: make(chan struct{}),
		w: w, rc: http.NewResponseController(w)}
	context.AfterFunc(r.Context(), func() {
		s.doneAt = time.Now()
		close(s.done)
	})
	return s
}

// end notes that the stream's handler returns: writes fail from now on
// instead of touching a finished response.
func (s *fakeStream) end() {
	s.wmu.Lock()
	s.over = true
	s.wmu.Unlock()
}

// write writes raw SSE text and flushes it.
func (s *fakeStream) write(text string) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.over {
		return errFakeStreamOver
	}
	if _, err := io.WriteString(s.w, text); err != nil {
		return err
	}
	s.bytes.Add(int64(len(text)))
	return s.rc.Flush()
}

// event writes one event, with an id line unless id is empty.
func (s *fakeStream) event(id, data string) error {
	var b strings.Builder
	if id != "" {
		b.WriteString("id: " + id + "\n")
	}
	b.WriteString("data: " + data + "\n\n")
	if err := s.write(b.String()); err != nil {
		return err
	}
	s.sent.Add(1)
	return nil
}

// idle waits until the request's context ends or until is closed; it
// returns nil in the latter case.
func (s *fakeStream) idle(until <-chan struct{}) error {
	select {
	case <-s.ctx.Done():
		return s.ctx.Err()
	case <-until:
		return nil
	}
}

// cancelled reports whether the proxy closed this stream's request before
// the upstream ended it.
func (s *fakeStream) cancelled() bool { return isClosed(s.done) && !s.selfEnded.Load() }

// waitDone waits up to d for the stream's request to end.
func (s *fakeStream) waitDone(d time.Duration) bool {
	select {
	case <-s.done:
		return true
	case <-time.After(d):
		return false
	}
}

// progressNote is a progress notification an upstream sends on a
// request's SSE answer.
const progressNote = `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}`

// logNote is a log notification carrying text.
func logNote(text string) string {
	return `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"` + text + `"}}`
}

// eventThenIdle is a stream func that sends one log notification with
// text (and id, unless empty), then idles until the proxy closes the stream.
func eventThenIdle(id, text string) func(*fakeStream) error {
	return func(s *fakeStream) error {
		if err := s.event(id, logNote(text)); err != nil {
			return err
		}
		return s.idle(nil)
	}
}

// commentThenIdle is a stream func that sends the comment ": ok", then
// idles until the proxy closes the stream.
func commentThenIdle(s *fakeStream) error {
	if err := s.write(": ok\n\n"); err != nil {
		return err
	}
	return s.idle(nil)
}

// fakeMsg is one JSON-RPC message as an upstream reads it: with Go's
// encoding/json, as most servers do (keys unescaped and matched
// case-insensitively, the last duplicate wins).
type fakeMsg struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  string          `json:"method"`
	Params  json.RawMessage `json:"params"`
}

// fakeParams are the params the fake reads.
type fakeParams struct {
	Name            string          `json:"name"`
	ProtocolVersion string          `json:"protocolVersion"`
	Arguments       json.RawMessage `json:"arguments"`
	Meta            struct {
		ProgressToken json.RawMessage `json:"progressToken"`
	} `json:"_meta"`
}

func (m fakeMsg) params() fakeParams {
	var p fakeParams
	_ = json.Unmarshal(m.Params, &p)
	return p
}

// isRequest reports a message that expects an answer.
func (m fakeMsg) isRequest() bool { return len(m.ID) > 0 && m.Method != "" }

// what is the method, and the tool of a tools/call: "tools/call:echo".
func (m fakeMsg) what() string {
	if name := m.params().Name; name != "" {
		return m.Method + ":" + name
	}
	return m.Method
}

// parseMessages reads a POST body: one message, or a batch.
func parseMessages(body []byte) (msgs []fakeMsg, batch bool, err error) {
	if bytes.HasPrefix(bytes.TrimSpace(body), []byte("[")) {
		err = json.Unmarshal(body, &msgs)
		return msgs, true, err
	}
	var m fakeMsg
	err = json.Unmarshal(body, &m)
	return []fakeMsg{m}, false, err
}

// fakeSeen is one request an upstream received.
type fakeSeen struct {
	at     time.Time
	method string // HTTP method
	path   string
	uri    string          // the request URI
	remote string          // the client's address
	msgs   []fakeMsg       // the messages of a POST body that parsed
	batch  bool            // they came as a batch
	read   bool            // a POST whose body was read to its end
	rpc    string          // JSON-RPC method of a POST of one message, "" for none
	name   string          // its params.name
	id     string          // its raw JSON id
	params json.RawMessage // its params
	sid    string          // Mcp-Session-Id
	// Mcp-Protocol-Version, Authorization and X-Client.
	version, auth, client string
	cert                  string // common name of the client certificate, "" without one
}

// cancelledID returns the raw JSON requestId of a notifications/cancelled.
func (s fakeSeen) cancelledID() string {
	var p struct {
		RequestID json.RawMessage `json:"requestId"`
	}
	if s.rpc != "notifications/cancelled" || json.Unmarshal(s.params, &p) != nil {
		return ""
	}
	return string(p.RequestID)
}

// fakeMaxBody bounds the body an upstream reads.
const fakeMaxBody = 16 << 20

// fakeLog records the requests an upstream receives, in arrival order,
// and the session ids it hands out.
type fakeLog struct {
	lmu    sync.Mutex
	seen   []fakeSeen
	minted []string
}

// record records r, reading a POST's body, which it returns with the
// error that ended the reading, if any.
func (l *fakeLog) record(r *http.Request) (fakeSeen, []byte, error) {
	s := fakeSeen{
		at: time.Now(), method: r.Method, path: r.URL.Path, uri: r.RequestURI, remote: r.RemoteAddr,
		sid: r.Header.Get("Mcp-Session-Id"), version: r.Header.Get("Mcp-Protocol-Version"),
		auth: r.Header.Get("Authorization"), client: r.Header.Get("X-Client"),
	}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		s.cert = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	var body []byte
	var err error
	if r.Method == http.MethodPost {
		body, err = io.ReadAll(io.LimitReader(r.Body, fakeMaxBody+1))
		if err == nil && len(body) > fakeMaxBody {
			err = errors.New("body too large")
		}
		s.read = err == nil
		if msgs, batch, perr := parseMessages(body); err == nil && perr == nil {
			s.msgs, s.batch = msgs, batch
			if !batch {
				s.rpc, s.name, s.id, s.params = msgs[0].Method, msgs[0].params().Name, string(msgs[0].ID), msgs[0].Params
			}
		}
	}
	l.lmu.Lock()
	l.seen = append(l.seen, s)
	l.lmu.Unlock()
	return s, body, err
}

// wrap returns h recording into l: a POST's body is read before h runs
// (h reads the same bytes, and the error that ended them), and the session
// id on the answer to a POST without one is recorded as minted.
func (l *fakeLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s, body, err := l.record(r)
		if r.Method == http.MethodPost {
			var rest io.Reader = bytes.NewReader(body)
			if err != nil {
				rest = io.MultiReader(rest, errReader{err})
			}
			r.Body = io.NopCloser(rest)
			if s.sid == "" {
				w = &headerHook{ResponseWriter: w, hook: func(h http.Header) {
					if sid := h.Get("Mcp-Session-Id"); sid != "" {
						l.addMinted(sid)
					}
				}}
			}
		}
		h.ServeHTTP(w, r)
	})
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// headerHook is a ResponseWriter that runs hook on the answer's header
// once, just before it is written.
type headerHook struct {
	http.ResponseWriter
	hook func(http.Header)
	done bool
}

func (h *headerHook) WriteHeader(code int) {
	if !h.done {
		h.done = true
		h.hook(h.Header())
	}
	h.ResponseWriter.WriteHeader(code)
}

func (h *headerHook) Write(p []byte) (int, error) {
	if !h.done {
		h.WriteHeader(http.StatusOK)
	}
	return h.ResponseWriter.Write(p)
}

func (h *headerHook) Flush() {
	if f, ok := h.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (h *headerHook) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// addMinted records a session id the upstream handed out.
func (l *fakeLog) addMinted(sid string) {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	l.minted = append(l.minted, sid)
}

// mintedIDs returns the session ids the upstream handed out, in order.
func (l *fakeLog) mintedIDs() []string {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	return append([]string(nil), l.minted...)
}

// mark returns the number of requests the upstream has seen so far.
func (l *fakeLog) mark() int {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	return len(l.seen)
}

// since returns the requests the upstream saw after mark.
func (l *fakeLog) since(mark int) []fakeSeen {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	return append([]fakeSeen(nil), l.seen[mark:]...)
}

// find returns the first recorded request pred accepts.
func (l *fakeLog) find(pred func(fakeSeen) bool) (fakeSeen, bool) {
	for _, s := range l.since(0) {
		if pred(s) {
			return s, true
		}
	}
	return fakeSeen{}, false
}

// count returns how many recorded requests pred accepts.
func (l *fakeLog) count(pred func(fakeSeen) bool) int {
	n := 0
	for _, s := range l.since(0) {
		if pred(s) {
			n++
		}
	}
	return n
}

// await waits up to d for a request pred accepts.
func (l *fakeLog) await(t *testing.T, what string, d time.Duration, pred func(fakeSeen) bool) fakeSeen {
	t.Helper()
	var s fakeSeen
	if !waitUntil(d, 5*time.Millisecond, func() (ok bool) { s, ok = l.find(pred); return ok }) {
		t.Fatalf("the upstream did not receive %s within %v", what, d)
	}
	return s
}

// saw reports whether a POST with the raw JSON id reached the upstream.
func (l *fakeLog) saw(id string) bool {
	_, ok := l.find(func(s fakeSeen) bool { return s.method == http.MethodPost && s.id == id })
	return ok
}

// ofMethod returns a predicate of the requests with the HTTP method.
func ofMethod(method string) func(fakeSeen) bool {
	return func(s fakeSeen) bool { return s.method == method }
}

// assertNotForwarded fails the test for every id that reached the
// upstream, and when the upstream got any request since mark.
func (l *fakeLog) assertNotForwarded(t *testing.T, mark int, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if l.saw(id) {
			t.Errorf("refused request %s reached the upstream", id)
		}
	}
	if got := l.since(mark); len(got) != 0 {
		t.Errorf("the upstream got %d requests while only refusals were expected: %+v", len(got), got)
	}
}

// ran returns what the upstream read of every message of the POST bodies
// it read to their end (method, or method:tool), in order.
func (l *fakeLog) ran() []string {
	var out []string
	for _, s := range l.since(0) {
		for _, m := range s.msgs {
			out = append(out, m.what())
		}
	}
	return out
}

// didRun reports whether the upstream read a message described as
// method[:tool].
func (l *fakeLog) didRun(what string) bool { return slices.Contains(l.ran(), what) }

// bodiesRead returns how many POST bodies the upstream read to their end.
func (l *fakeLog) bodiesRead() int {
	return l.count(func(s fakeSeen) bool { return s.read })
}

// bySession counts the requests with Mcp-Session-Id sid and, when method
// is not empty, that HTTP method.
func (l *fakeLog) bySession(sid, method string) int {
	return l.count(func(s fakeSeen) bool { return s.sid == sid && (method == "" || s.method == method) })
}

// recordedUpstream is a handler, the go-sdk demo server usually, whose
// requests are recorded.
type recordedUpstream struct {
	*upstream
	*fakeLog
}

// startRecorded serves h on loopback, recording its requests.
func startRecorded(t *testing.T, name string, h http.Handler) *recordedUpstream {
	t.Helper()
	l := new(fakeLog)
	return &recordedUpstream{upstream: startUpstreamHandler(t, name, l.wrap(h)), fakeLog: l}
}

// fakeGates hold tool calls until the test opens them.
type fakeGates struct {
	started chan string // the key of every gated call that began running

	gmu     sync.Mutex
	gates   map[string]chan struct{}
	allOpen bool
}

func (g *fakeGates) init() {
	g.started = make(chan string, 1024)
	g.gates = map[string]chan struct{}{}
}

// gate returns the channel that is closed when key's gate opens.
func (g *fakeGates) gate(key string) chan struct{} {
	g.gmu.Lock()
	defer g.gmu.Unlock()
	ch, ok := g.gates[key]
	if !ok {
		ch = make(chan struct{})
		if g.allOpen {
			close(ch)
		}
		g.gates[key] = ch
	}
	return ch
}

// open opens the gates of keys; a call with an open gate returns at once.
func (g *fakeGates) open(keys ...string) {
	for _, k := range keys {
		ch := g.gate(k)
		g.gmu.Lock()
		select {
		case <-ch:
		default:
			close(ch)
		}
		g.gmu.Unlock()
	}
}

// openAll opens every gate, and those asked for later.
func (g *fakeGates) openAll() {
	g.gmu.Lock()
	defer g.gmu.Unlock()
	g.allOpen = true
	for _, ch := range g.gates {
		select {
		case <-ch:
		default:
			close(ch)
		}
	}
}

// awaitStarted waits until the gated calls of keys run in the upstream.
func (g *fakeGates) awaitStarted(t *testing.T, keys ...string) {
	t.Helper()
	want := map[string]bool{}
	for _, k := range keys {
		want[k] = true
	}
	timeout := time.After(boundedWait)
	for len(want) > 0 {
		select {
		case k := <-g.started:
			delete(want, k)
		case <-timeout:
			t.Fatalf("gated calls never started upstream: %v", want)
		}
	}
}

// gatedTool is a tools/call handler that runs until the test opens the
// gate of the call's "key" argument (or the call is cancelled), and then
// answers "done <key>". With a progress token it first sends a progress
// notification: the answer becomes an SSE stream whose headers reach the
// client before the result.
func gatedTool(c *fakeCall) {
	key := c.arg("key")
	if c.progressToken() != nil && c.progress(1, "running") != nil {
		return
	}
	select {
	case c.u.started <- key:
	default:
	}
	select {
	case <-c.u.gate(key):
	case <-c.r.Context().Done():
		return
	case <-time.After(2 * boundedWait):
		c.text("gate " + key + " never opened")
		return
	}
	c.text("done " + key)
}

// killableServer serves a handler on loopback and can die abruptly: kill
// closes its listener and resets every connection, as a crashed process
// would; start serves again on the same address.
type killableServer struct {
	addr string
	h    http.Handler

	mu    sync.Mutex
	srv   *http.Server
	ln    net.Listener
	conns map[net.Conn]struct{}
}

// startKillable serves h on addr ("127.0.0.1:0" for any port) until the
// test ends.
func startKillable(t *testing.T, addr string, h http.Handler) *killableServer {
	t.Helper()
	s := &killableServer{addr: addr, h: h}
	s.start(t)
	t.Cleanup(s.kill)
	return s
}

// start serves on the server's address, which must be free.
func (s *killableServer) start(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", s.addr, err)
	}
	srv := &http.Server{Handler: s.h, ConnState: s.track, ReadHeaderTimeout: 10 * time.Second}
	s.mu.Lock()
	s.addr = ln.Addr().String()
	s.srv, s.ln, s.conns = srv, ln, map[net.Conn]struct{}{}
	s.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (s *killableServer) track(c net.Conn, state http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch state {
	case http.StateNew:
		if s.conns != nil {
			s.conns[c] = struct{}{}
		}
	case http.StateClosed, http.StateHijacked:
		delete(s.conns, c)
	}
}

// reset resets every open connection (RST, no FIN) and goes on serving
// new ones.
func (s *killableServer) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
}

// kill closes the listener and resets every open connection (RST, no
// FIN); handlers still running write into closed connections.
func (s *killableServer) kill() {
	s.mu.Lock()
	srv, ln, conns := s.srv, s.ln, s.conns
	s.srv, s.ln, s.conns = nil, nil, nil
	s.mu.Unlock()
	if ln == nil {
		return
	}
	_ = ln.Close()
	for c := range conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		_ = c.Close()
	}
	_ = srv.Close()
}
