//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// upstream is the mock MCP server: a plain net/http server that answers
// JSON-RPC POSTs and opens GET SSE streams (sse.go). initialize gets a
// session id and the protocol version the client asked for (when the mock
// knows it); tools/call gets a fixed text result after the service time,
// or, for the slow tools when they are on, a late answer (slowtools.go);
// notifications/cancelled gets 202 and is counted. At most capacity tools/call
// requests are in service at once; the rest wait in an unbounded FIFO
// queue, like a naive server, and leave it only when served or when their
// request is cancelled (the client or the proxy went away).
type upstream struct {
	service  time.Duration
	capacity int           // 0: unlimited
	slots    chan struct{} // nil when unlimited; a send takes a slot, FIFO

	srv  *http.Server
	ln   net.Listener
	addr string

	sessions sync.Map // session id -> struct{}

	// Counters, cumulative over the upstream's life.
	received   atomic.Int64 // tools/call requests received
	served     atomic.Int64 // tools/call requests answered with 200
	abandoned  atomic.Int64 // tools/call requests cancelled while queued or in service
	inits      atomic.Int64 // initialize requests answered
	badSession atomic.Int64 // requests with an unknown Mcp-Session-Id (answered 404)
	cancelled  atomic.Int64 // notifications/cancelled received (answered 202)
	other      atomic.Int64 // anything else (answered 202 or 4xx)
	queued     atomic.Int64 // tools/call requests waiting for a slot now
	inService  atomic.Int64 // tools/call requests in service now
	peakQueue  atomic.Int64 // highest queued seen since the last reset

	// GET SSE streams, and SSE answers of the stream tool (see sse.go).
	plan         atomic.Pointer[streamPlan] // nil: streams stay idle, no stream tool
	streamsOpen  atomic.Int64               // streams open now
	streamsTotal atomic.Int64               // streams ever opened

	// Slow tools (see slowtools.go); off while slow is 0.
	slow        time.Duration // how long a slow tool takes before answering
	slowStreams atomic.Int64  // slow_stream calls running now (progress sent)
	slowJSON    atomic.Int64  // slow_json calls running now

	// stateless answers tools/call and tools/list that carry no
	// Mcp-Session-Id, as a Streamable HTTP server without sessions does
	// (idleedge); an unknown session id is still answered 404.
	stateless bool
}

// mockOptions are the in-process mock's settings besides its service time
// and capacity.
type mockOptions struct {
	// IdleTimeout is how long the mock keeps an idle keep-alive
	// connection (its http.Server's IdleTimeout); 0 keeps
	// mockDefaultIdle.
	IdleTimeout time.Duration
	// Stateless: see upstream.stateless.
	Stateless bool
}

// mockDefaultIdle is the in-process mock's keep-alive idle timeout unless
// mockOptions set one.
const mockDefaultIdle = 60 * time.Second

// upstreamCounts is a snapshot of the upstream's counters.
type upstreamCounts struct {
	Received, Served, Abandoned, Inits, BadSession, Cancelled, Other int64
}

func (c upstreamCounts) sub(o upstreamCounts) upstreamCounts {
	return upstreamCounts{
		Received:   c.Received - o.Received,
		Served:     c.Served - o.Served,
		Abandoned:  c.Abandoned - o.Abandoned,
		Inits:      c.Inits - o.Inits,
		BadSession: c.BadSession - o.BadSession,
		Cancelled:  c.Cancelled - o.Cancelled,
		Other:      c.Other - o.Other,
	}
}

// startUpstream listens on a free loopback port and serves.
func startUpstream(service time.Duration, capacity int, opts mockOptions) (*upstream, error) {
	if capacity < 0 {
		return nil, fmt.Errorf("capacity %d: want 0 (unlimited) or more", capacity)
	}
	if opts.IdleTimeout < 0 {
		return nil, fmt.Errorf("idle timeout %s: want 0 (the default) or more", opts.IdleTimeout)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("upstream listen: %w", err)
	}
	u := newUpstream(ln, service, capacity)
	if opts.IdleTimeout > 0 {
		u.srv.IdleTimeout = opts.IdleTimeout
	}
	u.stateless = opts.Stateless
	go func() { _ = u.srv.Serve(ln) }()
	return u, nil
}

// newUpstream makes the mock for the listener ln without serving yet.
func newUpstream(ln net.Listener, service time.Duration, capacity int) *upstream {
	u := &upstream{service: service, capacity: capacity, ln: ln, addr: ln.Addr().String()}
	if capacity > 0 {
		u.slots = make(chan struct{}, capacity)
	}
	u.srv = &http.Server{
		Handler:           u,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       mockDefaultIdle,
		ErrorLog:          nil,
	}
	return u
}

// close stops the server and drops its connections.
func (u *upstream) close() {
	_ = u.srv.Close()
}

func (u *upstream) counts() upstreamCounts {
	return upstreamCounts{
		Received:   u.received.Load(),
		Served:     u.served.Load(),
		Abandoned:  u.abandoned.Load(),
		Inits:      u.inits.Load(),
		BadSession: u.badSession.Load(),
		Cancelled:  u.cancelled.Load(),
		Other:      u.other.Load(),
	}
}

// busy reports how many tools/call requests are queued or in service.
func (u *upstream) busy() int64 { return u.queued.Load() + u.inService.Load() }

// resetPeak starts a new peak-queue window and returns the previous peak.
func (u *upstream) resetPeak() int64 { return u.peakQueue.Swap(u.queued.Load()) }

// capacityPerSecond is how many tools/call per second an upstream of
// capacity calls in service, each taking service, can serve at most; 0
// when unlimited or with no service time.
func capacityPerSecond(capacity int, service time.Duration) float64 {
	if capacity <= 0 || service <= 0 {
		return 0
	}
	return float64(capacity) / service.Seconds()
}

// rpcEnvelope is the part of a JSON-RPC request the mock reads.
type rpcEnvelope struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
}

const maxMockBody = 1 << 20

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet {
		u.serveStream(w, r)
		return
	}
	if r.Method != http.MethodPost {
		u.other.Add(1)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxMockBody))
	if err != nil {
		u.other.Add(1)
		return
	}
	var env rpcEnvelope
	if err := json.Unmarshal(body, &env); err != nil {
		u.other.Add(1)
		writeJSON(w, http.StatusBadRequest, `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}`)
		return
	}
	switch env.Method {
	case "initialize":
		sid := newSessionID()
		u.sessions.Store(sid, struct{}{})
		u.inits.Add(1)
		w.Header().Set("Mcp-Session-Id", sid)
		writeJSON(w, http.StatusOK, `{"jsonrpc":"2.0","id":`+string(idOrNull(env.ID))+
			`,"result":{"protocolVersion":"`+negotiatedVersion(body)+`","capabilities":{"tools":{}},"serverInfo":{"name":"bench-mock","version":"1.0.0"}}}`)
	case "tools/call":
		if !u.inSession(w, r, env.ID) {
			return
		}
		if u.slow > 0 && u.serveSlowTool(w, r, env.ID, body) {
			return
		}
		// The stream tool exists only while a streams plan is set, so the
		// other scenarios' calls are not parsed any further.
		if p := u.plan.Load(); p != nil && isStreamTool(body) {
			u.serveAnswerStream(w, r, p, env.ID)
			return
		}
		if !u.serve(r.Context()) {
			u.abandoned.Add(1)
			return
		}
		u.served.Add(1)
		writeJSON(w, http.StatusOK, `{"jsonrpc":"2.0","id":`+string(idOrNull(env.ID))+`,"result":{"content":[{"type":"text","text":"ok"}]}}`)
	case "tools/list":
		if !u.inSession(w, r, env.ID) {
			return
		}
		if !u.serve(r.Context()) {
			u.abandoned.Add(1)
			return
		}
		u.served.Add(1)
		writeJSON(w, http.StatusOK, `{"jsonrpc":"2.0","id":`+string(idOrNull(env.ID))+`,"result":`+mockToolsList+`}`)
	case "notifications/cancelled":
		u.cancelled.Add(1)
		w.WriteHeader(http.StatusAccepted)
	default:
		// Notifications and anything else are accepted without a body.
		u.other.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}
}

// inSession counts a received request and reports whether its session is
// known; it answers 404 when not.
func (u *upstream) inSession(w http.ResponseWriter, r *http.Request, id json.RawMessage) bool {
	u.received.Add(1)
	sid := r.Header.Get("Mcp-Session-Id")
	if u.stateless && sid == "" {
		return true
	}
	if _, ok := u.sessions.Load(sid); !ok {
		u.badSession.Add(1)
		writeJSON(w, http.StatusNotFound, `{"jsonrpc":"2.0","id":`+string(idOrNull(id))+`,"error":{"code":-32001,"message":"session not found"}}`)
		return false
	}
	return true
}

// serve waits for a slot in FIFO order, then spends the service time. It
// reports false when the request was cancelled first.
func (u *upstream) serve(ctx context.Context) bool {
	if u.slots != nil {
		q := u.queued.Add(1)
		for {
			p := u.peakQueue.Load()
			if q <= p || u.peakQueue.CompareAndSwap(p, q) {
				break
			}
		}
		// Goroutines blocked on a channel send are woken in arrival
		// order, so this is a FIFO queue.
		select {
		case u.slots <- struct{}{}:
			u.queued.Add(-1)
		case <-ctx.Done():
			u.queued.Add(-1)
			return false
		}
		defer func() { <-u.slots }()
	}
	u.inService.Add(1)
	defer u.inService.Add(-1)
	if u.service <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(u.service)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

func idOrNull(id json.RawMessage) []byte {
	if len(id) == 0 {
		return []byte("null")
	}
	return id
}

func newSessionID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// waitIdle waits until no tools/call request is queued or in service, or
// until timeout; it reports whether the upstream became idle.
func (u *upstream) waitIdle(ctx context.Context, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if u.busy() == 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return u.busy() == 0
}

// mockTools are the tools the mock lists: echo, which the post scenario
// calls, and others, eight of which the policy of BENCHMARKS.md's
// governance runs denies to the harness's token (t1_*, admin_*, shell_*,
// exec_*, run_*).
var mockTools = []string{
	"echo", "stream", "search", "fetch", "summarize", "translate", "weather", "calendar", "notes", "todo",
	"t1_delete", "t1_purge", "t2_export", "admin_users", "admin_keys", "shell_exec", "exec_script", "run_job", "run_query", "t2_import",
}

// mockToolsList is the result of the mock's tools/list.
var mockToolsList = func() string {
	var b strings.Builder
	b.WriteString(`{"tools":[`)
	for i, name := range mockTools {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name":%q,"description":"The %s tool of the bench mock: it takes a text and answers ok.","inputSchema":{"type":"object","properties":{"text":{"type":"string","description":"what to %s"}},"required":["text"]}}`, name, name, name)
	}
	b.WriteString(`]}`)
	return b.String()
}()
