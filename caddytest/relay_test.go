//go:build unix

package caddytest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mcpgate/mcpgate/sse"
)

// relayVersion is the protocol version the relay tests' clients speak: the
// first that honours retry hints.
const relayVersion = "2025-11-25"

// relayUpstream is a hand-written MCP server whose streams the tests
// control. A POST initialize is answered in JSON with a fresh
// Mcp-Session-Id; a GET of a session it issued opens an SSE stream run by
// the test's stream func; another POST of a known session is answered by
// the test's call func (a JSON {} result without one). It records every
// GET stream under the client's X-Relay-Stream header, with the moment its
// request context ended, which is when the proxy closed the upstream
// connection (or the handler returned).
type relayUpstream struct {
	*upstream
	stream func(g *relayGET, w *relayWriter) error
	call   func(w http.ResponseWriter, r *http.Request, id string)

	mu       sync.Mutex
	sessions map[string]bool
	gets     map[string]*relayGET
}

// relayGET is one GET stream the upstream served.
type relayGET struct {
	key    string
	opened time.Time
	done   chan struct{} // closed when the request's context ends
	doneAt time.Time     // set before done is closed
	// selfEnded: the stream function returned nil, ending the stream on
	// its own, rather than seeing its context end or a write fail.
	selfEnded atomic.Bool
	sent      atomic.Int64 // events written
	bytes     atomic.Int64 // bytes written
}

// cancelled reports whether the proxy closed this stream's upstream
// request before the upstream ended it.
func (g *relayGET) cancelled() bool {
	select {
	case <-g.done:
		return !g.selfEnded.Load()
	default:
		return false
	}
}

// relayWriter writes SSE to an upstream response, flushing every write.
type relayWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	ctx context.Context
	g   *relayGET
}

func (e *relayWriter) write(s string) error {
	if _, err := io.WriteString(e.w, s); err != nil {
		return err
	}
	if e.g != nil {
		e.g.bytes.Add(int64(len(s)))
	}
	return e.rc.Flush()
}

// event writes one event, with an id line unless id is empty.
func (e *relayWriter) event(id, data string) error {
	var b strings.Builder
	if id != "" {
		b.WriteString("id: " + id + "\n")
	}
	b.WriteString("data: " + data + "\n\n")
	if err := e.write(b.String()); err != nil {
		return err
	}
	if e.g != nil {
		e.g.sent.Add(1)
	}
	return nil
}

// idle waits until the request's context ends or until is closed; it
// returns nil in the latter case.
func (e *relayWriter) idle(until <-chan struct{}) error {
	select {
	case <-e.ctx.Done():
		return e.ctx.Err()
	case <-until:
		return nil
	}
}

// eventThenIdle is a stream func that sends one log notification with
// text (and id, unless empty), then idles until the proxy closes the stream.
func eventThenIdle(id, text string) func(*relayGET, *relayWriter) error {
	return func(_ *relayGET, w *relayWriter) error {
		if err := w.event(id, `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"`+text+`"}}`); err != nil {
			return err
		}
		return w.idle(nil)
	}
}

func startRelayUpstream(t *testing.T, stream func(*relayGET, *relayWriter) error, call func(http.ResponseWriter, *http.Request, string)) *relayUpstream {
	t.Helper()
	u := &relayUpstream{stream: stream, call: call, sessions: map[string]bool{}, gets: map[string]*relayGET{}}
	u.upstream = startUpstreamHandler(t, "relay", http.HandlerFunc(u.serve))
	return u
}

func (u *relayUpstream) known(r *http.Request) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.sessions[r.Header.Get("Mcp-Session-Id")]
}

func (u *relayUpstream) serve(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		var msg struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
			Params struct {
				ProtocolVersion string `json:"protocolVersion"`
			} `json:"params"`
		}
		if err != nil || json.Unmarshal(body, &msg) != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		if msg.Method == "initialize" {
			var b [16]byte
			_, _ = rand.Read(b[:])
			sid := hex.EncodeToString(b[:])
			u.mu.Lock()
			u.sessions[sid] = true
			u.mu.Unlock()
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Mcp-Session-Id", sid)
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":%q,"capabilities":{},"serverInfo":{"name":"relay","version":"1"}}}`,
				msg.ID, msg.Params.ProtocolVersion)
			return
		}
		if !u.known(r) {
			http.Error(w, "unknown session", http.StatusNotFound)
			return
		}
		if len(msg.ID) == 0 {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		if u.call != nil {
			u.call(w, r, string(msg.ID))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{}}`, msg.ID)
	case http.MethodGet:
		if !u.known(r) {
			http.Error(w, "unknown session", http.StatusNotFound)
			return
		}
		g := &relayGET{key: r.Header.Get("X-Relay-Stream"), opened: time.Now(), done: make(chan struct{})}
		context.AfterFunc(r.Context(), func() {
			g.doneAt = time.Now()
			close(g.done)
		})
		u.mu.Lock()
		u.gets[g.key] = g
		u.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusOK)
		ew := &relayWriter{w: w, rc: http.NewResponseController(w), ctx: r.Context(), g: g}
		_ = ew.rc.Flush()
		if u.stream(g, ew) == nil {
			g.selfEnded.Store(true)
		}
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// get returns the GET stream opened with key. The proxy sends a stream's
// headers only after the upstream's, so it exists once the client has them.
func (u *relayUpstream) get(t *testing.T, key string) *relayGET {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	g := u.gets[key]
	if g == nil {
		t.Fatalf("the upstream never saw GET stream %q", key)
	}
	return g
}

// initSession initializes a session through the proxy at the given
// version and returns the session id the client must send: the proxy's
// sealed token, never the upstream's own id.
func (u *relayUpstream) initSession(t *testing.T, base, version string) string {
	t.Helper()
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":%q,"capabilities":{},"clientInfo":{"name":"relay","version":"1"}}}`, version)
	st, hdr, b := rawPost(t, base+"/mcp", body, nil)
	tok := hdr.Get("Mcp-Session-Id")
	if st != http.StatusOK || tok == "" {
		t.Fatalf("initialize: %d, session %q: %s", st, tok, b)
	}
	if u.known(&http.Request{Header: http.Header{"Mcp-Session-Id": {tok}}}) {
		t.Fatalf("the proxy handed out the upstream's own session id %q", tok)
	}
	return tok
}

// initSessionWith is initSession through the client hc.
func (u *relayUpstream) initSessionWith(t *testing.T, hc *http.Client, base, version string) string {
	t.Helper()
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":%q,"capabilities":{},"clientInfo":{"name":"relay","version":"1"}}}`, version)
	req, err := http.NewRequest(http.MethodPost, base+"/mcp", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	tok := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || tok == "" {
		t.Fatalf("initialize: %d, session %q: %s", resp.StatusCode, tok, b)
	}
	return tok
}

// openRelayGET opens a GET stream through the proxy; key names it for the
// upstream.
func openRelayGET(ctx context.Context, hc *http.Client, base, token, version, key string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/mcp", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Mcp-Session-Id", token)
	req.Header.Set("Mcp-Protocol-Version", version)
	req.Header.Set("X-Relay-Stream", key)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", key, err)
	}
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %d %q: %s", key, resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	return resp, nil
}

// relayEvent is one SSE block as a client received it.
type relayEvent struct {
	at      time.Time
	id      string
	hasID   bool
	data    string
	retry   int
	comment bool
}

// readRelayEvents parses an SSE body, calling f for every block, until
// the body ends (nil) or fails, or f fails.
func readRelayEvents(body io.Reader, f func(relayEvent) error) error {
	p := sse.NewParser(1<<20, 1<<20)
	buf := make([]byte, 4096)
	emit := func(ev *sse.Event) error {
		return f(relayEvent{at: time.Now(), id: ev.ID, hasID: ev.HasID, data: string(ev.Data), retry: ev.Retry, comment: ev.Comment})
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

// relayStreamEnd is how a client's stream ended.
type relayStreamEnd struct {
	at  time.Time
	err error
}

// watchRelayStream reads a stream in its own goroutine: every block goes
// to the returned channel, which is closed at the end; then the end is
// sent on the second channel.
func watchRelayStream(body io.Reader) (<-chan relayEvent, <-chan relayStreamEnd) {
	evs := make(chan relayEvent, 1024)
	end := make(chan relayStreamEnd, 1)
	go func() {
		err := readRelayEvents(body, func(ev relayEvent) error {
			select {
			case evs <- ev:
				return nil
			default:
				return errors.New("test reader: too many events")
			}
		})
		at := time.Now()
		close(evs)
		end <- relayStreamEnd{at: at, err: err}
	}()
	return evs, end
}

// nextRelayEvent returns the next block within d, failing the test
// otherwise.
func nextRelayEvent(t *testing.T, evs <-chan relayEvent, d time.Duration, what string) relayEvent {
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
	return relayEvent{}
}

// waitRelayDone waits for an upstream GET's request context to end.
func waitRelayDone(g *relayGET, d time.Duration) bool {
	select {
	case <-g.done:
		return true
	case <-time.After(d):
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

func heapInuse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// TestRelayKeepalive checks that an idle GET stream gets `:` comments
// every keepalive period, and that the stream, comments and all, ends when
// the upstream ends it.
func TestRelayKeepalive(t *testing.T) {
	end := make(chan struct{})
	u := startRelayUpstream(t, func(g *relayGET, w *relayWriter) error {
		if err := w.event("1", `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"hello"}}`); err != nil {
			return err
		}
		return w.idle(end)
	}, nil)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tkeepalive 100ms\n\t}\n}\n", port, u.addr()))
	base := proxyURL(port)
	tok := u.initSession(t, base, relayVersion)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp, err := openRelayGET(ctx, rawClient, base, tok, relayVersion, "idle")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	evs, ended := watchRelayStream(resp.Body)

	if ev := nextRelayEvent(t, evs, 5*time.Second, "first event"); ev.comment || ev.id != "1" || !strings.Contains(ev.data, "hello") {
		t.Fatalf("first block %+v, want the upstream's event 1", ev)
	}
	const want = 4
	var times []time.Time
	for len(times) < want {
		ev := nextRelayEvent(t, evs, 3*time.Second, fmt.Sprintf("keepalive %d", len(times)+1))
		if !ev.comment {
			t.Fatalf("idle stream delivered %+v, want only keepalive comments", ev)
		}
		times = append(times, ev.at)
	}
	var gaps []time.Duration
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, times[i].Sub(times[i-1]).Round(time.Millisecond))
	}
	t.Logf("keepalive comments %v apart", gaps)

	close(end)
	endAt := time.Now()
	late := 0
	timeout := time.After(5 * time.Second)
	for open := true; open; {
		select {
		case ev, ok := <-evs:
			if !ok {
				open = false
				break
			}
			if !ev.comment {
				t.Errorf("after the upstream ended: %+v", ev)
			}
			late++
		case <-timeout:
			t.Fatalf("the stream did not end within 5s of the upstream ending it (%d comments since)", late)
		}
	}
	select {
	case e := <-ended:
		if e.err != nil {
			t.Fatalf("stream ended with %v, want a clean end", e.err)
		}
		t.Logf("stream ended %v after the upstream ended it (%d comments in between)", e.at.Sub(endAt).Round(time.Millisecond), late)
		// One keepalive may race the end; a stream that kept sending them
		// would not have ended at all.
		if late > 1 {
			t.Errorf("%d keepalive comments after the upstream ended the stream", late)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end within 5s of the upstream ending it")
	}
	if g := u.get(t, "idle"); !waitRelayDone(g, 2*time.Second) || !g.selfEnded.Load() {
		t.Error("the upstream stream did not end on its own")
	}
}

// tinyRecvBufClient returns a client whose connections have a 4 KiB TCP
// receive buffer, set before connecting so the advertised window stays
// small.
func tinyRecvBufClient() *http.Client {
	d := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); err != nil {
			return err
		}
		return serr
	}}
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: d.DialContext}}
}

// TestRelaySlowConsumers runs 10 stalled clients (tiny receive buffer,
// never read past the headers) among 30 that read everything, while the
// upstream sends 1 KiB events to every stream at a steady rate. The
// proxy's listener caps every connection's kernel send buffer at 16 KiB
// (mcp_connections write_buffer): on loopback the kernel would otherwise
// grow it to about 4 MiB, which a stalled client at 50 KiB/s takes over a
// minute to fill before any write blocks. Each
// stalled stream must be cut by the proxy (its upstream GET closed) soon
// after it stalls, the healthy ones must get every event in order, and the
// heap must not grow with the events sent.
func TestRelaySlowConsumers(t *testing.T) {
	const (
		healthy      = 30
		stalled      = 10
		events       = 100 // per healthy stream
		interval     = 20 * time.Millisecond
		writeTimeout = time.Second
		// A stalled stream's upstream runs until the proxy closes it; this
		// only bounds a broken proxy.
		stalledCap = 1500
		// A stalled stream is timed from the moment its client has the
		// headers and stops reading; before a write blocks, about 50 KiB
		// of buffers (the client's 8 KiB receive buffer, the proxy's
		// 32 KiB send buffer, bufio on both sides) fill at 50 KiB/s. The
		// margin covers that and scheduling.
		margin = 3 * time.Second
	)
	pad := strings.Repeat("x", 1024-len(`id: 100\ndata: {"seq":100,"pad":""}\n\n`)-2)
	u := startRelayUpstream(t, func(g *relayGET, w *relayWriter) error {
		n := events
		if strings.HasPrefix(g.key, "stalled-") {
			n = stalledCap
		}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for seq := 1; seq <= n; seq++ {
			if err := w.event(strconv.Itoa(seq), fmt.Sprintf(`{"seq":%d,"pad":"%s"}`, seq, pad)); err != nil {
				return err
			}
			select {
			case <-w.ctx.Done():
				return w.ctx.Err()
			case <-tick.C:
			}
		}
		return nil
	}, nil)
	port := freePort(t)
	loadCaddyfileWith(t, "\tservers {\n\t\tlistener_wrappers {\n\t\t\tmcp_connections {\n\t\t\t\twrite_buffer 16KiB\n\t\t\t}\n\t\t}\n\t}\n",
		fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\twrite_timeout 1s\n\t\tstream_buffer 50 256KiB\n\t}\n}\n", port, u.addr()))
	base := proxyURL(port)
	tokens := make([]string, healthy+stalled)
	for i := range tokens {
		tokens[i] = u.initSession(t, base, relayVersion)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	okClient := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	slowClient := tinyRecvBufClient()
	heapBefore := heapInuse()

	// Heap samples while the streams run.
	var peakHeap atomic.Uint64
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peakHeap.Load() {
				peakHeap.Store(ms.HeapInuse)
			}
			select {
			case <-stopSampling:
				return
			case <-tick.C:
			}
		}
	}()

	var wg sync.WaitGroup
	results := make([]error, healthy+stalled)
	stalledAt := map[string]time.Time{}
	var stalledResps []*http.Response
	defer func() {
		for _, r := range stalledResps {
			r.Body.Close()
		}
	}()
	for i := range healthy + stalled {
		if i%4 == 3 { // every fourth client stalls
			key := fmt.Sprintf("stalled-%d", i)
			resp, err := openRelayGET(ctx, slowClient, base, tokens[i], relayVersion, key)
			if err != nil {
				t.Fatal(err)
			}
			stalledAt[key] = time.Now()
			stalledResps = append(stalledResps, resp)
			continue
		}
		key := fmt.Sprintf("healthy-%d", i)
		resp, err := openRelayGET(ctx, okClient, base, tokens[i], relayVersion, key)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer resp.Body.Close()
			next := 1
			err := readRelayEvents(resp.Body, func(ev relayEvent) error {
				if ev.comment {
					return nil
				}
				var msg struct{ Seq int }
				if err := json.Unmarshal([]byte(ev.data), &msg); err != nil {
					return fmt.Errorf("event %d: %v", next, err)
				}
				if msg.Seq != next || ev.id != strconv.Itoa(next) {
					return fmt.Errorf("got seq %d id %q, want %d: a gap or reordering", msg.Seq, ev.id, next)
				}
				next++
				return nil
			})
			if err == nil && next != events+1 {
				err = fmt.Errorf("stream ended after %d events, want %d", next-1, events)
			}
			results[i] = err
		})
	}
	if len(stalledAt) != stalled {
		t.Fatalf("%d stalled clients, want %d", len(stalledAt), stalled)
	}

	// Every stalled stream is cut: the proxy closes its upstream GET.
	var latencies []time.Duration
	for key, at := range stalledAt {
		g := u.get(t, key)
		bound := writeTimeout + time.Second + margin
		if !waitRelayDone(g, time.Until(at.Add(bound))) {
			t.Errorf("%s: the proxy did not close the stalled stream within %v of its last read (upstream sent %d events)", key, bound, g.sent.Load())
			continue
		}
		if g.selfEnded.Load() {
			t.Errorf("%s: the upstream ended the stream itself; the proxy never cut it", key)
		}
		latencies = append(latencies, g.doneAt.Sub(at))
	}
	// A stalled client that finally reads gets what the buffers held, then
	// the end of a connection the proxy closed.
	stalledEnds := make(chan error, len(stalledResps))
	for _, r := range stalledResps {
		go func() {
			_, err := io.Copy(io.Discard, r.Body)
			stalledEnds <- err
		}()
	}
	for range stalledResps {
		select {
		case err := <-stalledEnds:
			if err == nil {
				t.Log("a stalled client read a clean end of stream")
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a stalled client's connection was still open 5s after the proxy closed its upstream")
		}
	}
	wg.Wait()
	close(stopSampling)
	<-sampled
	for i, err := range results {
		if err != nil {
			t.Errorf("healthy client %d: %v", i, err)
		}
	}
	var emitted int64
	u.mu.Lock()
	for key, g := range u.gets {
		emitted += g.bytes.Load()
		if strings.HasPrefix(key, "healthy-") && (g.cancelled() || g.sent.Load() != events) {
			t.Errorf("%s: upstream sent %d events, cancelled %v", key, g.sent.Load(), g.cancelled())
		}
	}
	u.mu.Unlock()
	heapAfter := heapInuse()
	slices.Sort(latencies)
	if len(latencies) > 0 {
		t.Logf("stalled streams closed %v..%v after their client stopped reading (write_timeout %v)",
			latencies[0].Round(time.Millisecond), latencies[len(latencies)-1].Round(time.Millisecond), writeTimeout)
	}
	growth := int64(heapAfter) - int64(heapBefore)
	t.Logf("upstream emitted %.1f MiB; heap in use %.1f MiB before, %.1f MiB peak, %.1f MiB after (growth %+.1f MiB)",
		float64(emitted)/(1<<20), float64(heapBefore)/(1<<20), float64(peakHeap.Load())/(1<<20), float64(heapAfter)/(1<<20), float64(growth)/(1<<20))
	if growth > 32<<20 {
		t.Errorf("heap grew by %.1f MiB, want < 32 MiB", float64(growth)/(1<<20))
	}
}

// TestRelayGoroutinesReturn opens 300 GET streams, takes one event from
// each and closes them all from the client side: the proxy must close
// every upstream GET and the goroutine count must come back to where it
// was.
func TestRelayGoroutinesReturn(t *testing.T) {
	const (
		streams  = 300
		parallel = 16
		slack    = 10
	)
	u := startRelayUpstream(t, eventThenIdle("1", "hi"), nil)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, u.addr()))
	base := proxyURL(port)
	// The sessions exist before the baseline, so no per-session state
	// (or pooled initialize connection) comes and goes with the streams;
	// each holds fewer streams than the per-session stream cap.
	var toks []string
	for range 10 {
		toks = append(toks, u.initSession(t, base, relayVersion))
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	defer hc.CloseIdleConnections()
	baseline := settledGoroutines()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resps := make([]*http.Response, streams)
	errs := make([]error, streams)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i := range streams {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			resp, err := openRelayGET(ctx, hc, base, toks[i%len(toks)], relayVersion, fmt.Sprintf("s%d", i))
			if err != nil {
				errs[i] = err
				return
			}
			resps[i] = resp
			got := errors.New("first event received")
			err = readRelayEvents(resp.Body, func(ev relayEvent) error {
				if ev.comment {
					return nil
				}
				if ev.id != "1" || !strings.Contains(ev.data, "hi") {
					return fmt.Errorf("first event %+v", ev)
				}
				return got
			})
			if err != got {
				errs[i] = fmt.Errorf("stream %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	peak := runtime.NumGoroutine()
	for _, r := range resps {
		if r != nil {
			r.Body.Close()
		}
	}
	closedAt := time.Now()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}

	var open, now int
	deadline := time.Now().Add(5 * time.Second)
	for {
		open = 0
		u.mu.Lock()
		for _, g := range u.gets {
			if !g.cancelled() {
				open++
			}
		}
		seen := len(u.gets)
		u.mu.Unlock()
		now = runtime.NumGoroutine()
		if seen == streams && open == 0 && now <= baseline+slack || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("goroutines: %d before, %d with %d streams open, %d %v after the clients closed",
		baseline, peak, streams, now, time.Since(closedAt).Round(time.Millisecond))
	u.mu.Lock()
	seen := len(u.gets)
	u.mu.Unlock()
	if seen != streams {
		t.Errorf("upstream saw %d GETs, want %d", seen, streams)
	}
	if open > 0 {
		t.Errorf("%d upstream GETs still open 5s after their clients left", open)
	}
	if now > baseline+slack {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("%d goroutines 5s after every stream closed, baseline %d (+%d allowed)\n%s", now, baseline, slack, buf)
	}
}

// TestRelayClosesUpstreamGET checks that a GET stream its client closes
// has its upstream request closed promptly.
func TestRelayClosesUpstreamGET(t *testing.T) {
	u := startRelayUpstream(t, eventThenIdle("", "hi"), nil)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, u.addr()))
	base := proxyURL(port)
	for _, version := range []string{"2025-06-18", "2025-11-25"} {
		t.Run(version, func(t *testing.T) {
			tok := u.initSession(t, base, version)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := openRelayGET(ctx, rawClient, base, tok, version, "close-"+version)
			if err != nil {
				t.Fatal(err)
			}
			evs, _ := watchRelayStream(resp.Body)
			if ev := nextRelayEvent(t, evs, 5*time.Second, "first event"); !strings.Contains(ev.data, "hi") {
				t.Fatalf("first block %+v", ev)
			}
			g := u.get(t, "close-"+version)
			closed := time.Now()
			resp.Body.Close()
			if !waitRelayDone(g, 2*time.Second) {
				t.Fatal("the upstream GET was still open 2s after its client closed the stream")
			}
			if g.selfEnded.Load() {
				t.Fatal("the upstream stream ended on its own")
			}
			t.Logf("upstream GET closed %v after the client closed", g.doneAt.Sub(closed).Round(time.Microsecond))
		})
	}
}

// TestRelayDrainOnReload reloads the config under 5 open GET streams of
// 2025-11-25 clients: each gets a retry hint and is closed between 80% and
// 100% of the drain delay after the reload began.
func TestRelayDrainOnReload(t *testing.T) {
	const (
		streams = 5
		drain   = 500 * time.Millisecond
		margin  = 1500 * time.Millisecond
	)
	u := startRelayUpstream(t, eventThenIdle("1", "hi"), nil)
	port := freePort(t)
	cfg := fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tdrain 500ms\n\t}\n}\n", port, u.addr())
	loadCaddyfile(t, cfg)
	base := proxyURL(port)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	type watched struct {
		resp  *http.Response
		evs   <-chan relayEvent
		ended <-chan relayStreamEnd
	}
	var ws []watched
	for i := range streams {
		tok := u.initSession(t, base, relayVersion)
		resp, err := openRelayGET(ctx, rawClient, base, tok, relayVersion, fmt.Sprintf("d%d", i))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		evs, ended := watchRelayStream(resp.Body)
		if ev := nextRelayEvent(t, evs, 5*time.Second, "first event"); ev.id != "1" {
			t.Fatalf("first block %+v", ev)
		}
		ws = append(ws, watched{resp, evs, ended})
	}

	start := time.Now()
	loadCaddyfile(t, cfg) // the same config again: a reload
	t.Logf("reload returned after %v", time.Since(start).Round(time.Millisecond))

	var closes []time.Duration
	for i, w := range ws {
		var retryAt time.Time
		retries := 0
		for ev := range w.evs { // bounded: the stream ends within the drain, or at ctx's timeout
			switch {
			case ev.retry >= 0:
				retries++
				retryAt = ev.at
				if ev.retry != 1000 {
					t.Errorf("stream %d: retry %d ms, want the default hint 1000", i, ev.retry)
				}
			case !ev.comment:
				t.Errorf("stream %d: unexpected %+v after the reload", i, ev)
			}
		}
		e := <-w.ended
		after := e.at.Sub(start)
		closes = append(closes, after)
		if retries != 1 || retryAt.After(e.at) {
			t.Errorf("stream %d: %d retry hints before the close, want 1", i, retries)
		}
		if after < drain*8/10 || after > drain+margin {
			t.Errorf("stream %d closed %v after the reload began, want between %v and %v", i, after, drain*8/10, drain+margin)
		}
		g := u.get(t, fmt.Sprintf("d%d", i))
		if !waitRelayDone(g, 2*time.Second) || g.selfEnded.Load() {
			t.Errorf("stream %d: the proxy did not close the upstream GET", i)
		} else if d := g.doneAt.Sub(start); d < drain*8/10 {
			t.Errorf("stream %d: upstream GET closed %v after the reload began, before the drain", i, d)
		}
	}
	slices.Sort(closes)
	t.Logf("streams closed %v after the reload began", closes)
	if closes[0] == closes[len(closes)-1] {
		t.Errorf("every stream closed at the same moment %v; want them spread", closes[0])
	}
}

// TestRelayMaxEventSize sends a tools/call whose SSE answer holds an event
// over max_event_size: the client gets the events before it, then a
// JSON-RPC error for its request, and the stream ends; the upstream
// request is closed.
func TestRelayMaxEventSize(t *testing.T) {
	big := strings.Repeat("x", 4096)
	var mu sync.Mutex
	calls := map[string]*relayGET{} // the POSTs, keyed by JSON-RPC id
	u := startRelayUpstream(t, func(g *relayGET, w *relayWriter) error { return w.idle(nil) },
		func(w http.ResponseWriter, r *http.Request, id string) {
			c := &relayGET{key: id, opened: time.Now(), done: make(chan struct{})}
			context.AfterFunc(r.Context(), func() {
				c.doneAt = time.Now()
				close(c.done)
			})
			mu.Lock()
			calls[id] = c
			mu.Unlock()
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			ew := &relayWriter{w: w, rc: http.NewResponseController(w), ctx: r.Context(), g: c}
			if ew.event("", `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}`) != nil {
				return
			}
			if ew.event("", `{"jsonrpc":"2.0","id":`+id+`,"result":{"content":[{"type":"text","text":"`+big+`"}]}}`) != nil {
				return
			}
			if ew.idle(nil) == nil {
				c.selfEnded.Store(true)
			}
		})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tmax_event_size 2KiB\n\t}\n}\n", port, u.addr()))
	base := proxyURL(port)
	tok := u.initSession(t, base, relayVersion)

	for _, id := range []string{`7`, `"call-8"`} {
		t.Run(id, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			body := `{"jsonrpc":"2.0","id":` + id + `,"method":"tools/call","params":{"name":"big","arguments":{},"_meta":{"progressToken":"p"}}}`
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/mcp", strings.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			req.Header.Set("Mcp-Session-Id", tok)
			req.Header.Set("Mcp-Protocol-Version", relayVersion)
			resp, err := rawClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				t.Fatalf("tools/call: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			var got []relayEvent
			var raw bytes.Buffer
			err = readRelayEvents(io.TeeReader(resp.Body, &raw), func(ev relayEvent) error {
				if !ev.comment {
					got = append(got, ev)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("the stream did not end cleanly: %v (received %q)", err, raw.String())
			}
			endAt := time.Now()
			if bytes.Contains(raw.Bytes(), []byte(big[:2048])) {
				t.Error("the oversized event reached the client")
			}
			if len(got) != 2 || !strings.Contains(got[0].data, "notifications/progress") {
				t.Fatalf("client received %q; want the progress event, then the error", raw.String())
			}
			var msg struct {
				JSONRPC string          `json:"jsonrpc"`
				ID      json.RawMessage `json:"id"`
				Error   *struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(got[1].data), &msg); err != nil || msg.JSONRPC != "2.0" || msg.Error == nil {
				t.Fatalf("last event %q is not a JSON-RPC error: %v", got[1].data, err)
			}
			if string(msg.ID) != id || msg.Error.Code != -32603 {
				t.Errorf("error id %s code %d, want id %s code -32603", msg.ID, msg.Error.Code, id)
			}
			mu.Lock()
			c := calls[id]
			mu.Unlock()
			if c == nil {
				t.Fatal("the call never reached the upstream")
			}
			if !waitRelayDone(c, 2*time.Second) || c.selfEnded.Load() {
				t.Fatal("the proxy did not close the upstream request after the oversized event")
			}
			t.Logf("upstream request closed %v relative to the client's end of stream", c.doneAt.Sub(endAt).Round(time.Microsecond))
		})
	}
}

// TestRelayHandoff checks the wire form of a GET stream handed off from
// Caddy's HTTP server (the default) and of one kept by the handler
// (stream_handoff off): the first is delimited by the connection's close,
// the second chunked; both deliver every event and end cleanly when the
// upstream ends the stream.
func TestRelayHandoff(t *testing.T) {
	var mu sync.Mutex
	ends := map[string]chan struct{}{}
	endOf := func(key string) chan struct{} {
		mu.Lock()
		defer mu.Unlock()
		if ends[key] == nil {
			ends[key] = make(chan struct{})
		}
		return ends[key]
	}
	u := startRelayUpstream(t, func(g *relayGET, w *relayWriter) error {
		if err := w.event("1", `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"one"}}`); err != nil {
			return err
		}
		if err := w.idle(endOf(g.key)); err != nil {
			return err
		}
		return w.event("2", `{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"two"}}`)
	}, nil)
	on, off := freePort(t), freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n:%d {\n\tmcp_proxy %s {\n\t\tstream_handoff off\n\t}\n}\n",
		on, u.addr(), off, u.addr()))
	for _, tc := range []struct {
		name    string
		port    int
		handoff bool
	}{{"handoff", on, true}, {"handler", off, false}} {
		t.Run(tc.name, func(t *testing.T) {
			base := proxyURL(tc.port)
			tok := u.initSession(t, base, relayVersion)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp, err := openRelayGET(ctx, rawClient, base, tok, relayVersion, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			chunked := slices.Contains(resp.TransferEncoding, "chunked")
			if tc.handoff && (chunked || !resp.Close) {
				t.Errorf("handed-off stream: Transfer-Encoding %v, Connection: close %v; want close-delimited", resp.TransferEncoding, resp.Close)
			}
			if !tc.handoff && !chunked {
				t.Errorf("stream kept by the handler: Transfer-Encoding %v, want chunked", resp.TransferEncoding)
			}
			evs, ended := watchRelayStream(resp.Body)
			if ev := nextRelayEvent(t, evs, 5*time.Second, "first event"); ev.id != "1" || !strings.Contains(ev.data, "one") {
				t.Fatalf("first block %+v", ev)
			}
			close(endOf(tc.name))
			if ev := nextRelayEvent(t, evs, 5*time.Second, "second event"); ev.id != "2" || !strings.Contains(ev.data, "two") {
				t.Fatalf("second block %+v", ev)
			}
			select {
			case e := <-ended:
				if e.err != nil {
					t.Fatalf("stream ended with %v, want a clean end", e.err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the stream did not end within 5s of the upstream ending it")
			}
		})
	}
}

// TestRelayDrainOnStop stops a Caddy process (SIGTERM) under 3 open GET
// streams, which are handed off from its HTTP server: each gets a retry
// hint and is closed between 80% and 100% of the drain delay, and the
// process exits only after that.
func TestRelayDrainOnStop(t *testing.T) {
	const (
		streams = 3
		drain   = time.Second
		margin  = 1500 * time.Millisecond
	)
	u := startRelayUpstream(t, eventThenIdle("1", "hi"), nil)
	port := freePort(t)
	cmd := startCaddyProcess(t, fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\n:%d {\n\tmcp_proxy %s {\n\t\tdrain 1s\n\t}\n}\n", port, u.addr()), port)
	base := proxyURL(port)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var ends []<-chan relayStreamEnd
	var evss []<-chan relayEvent
	for i := range streams {
		tok := u.initSession(t, base, relayVersion)
		resp, err := openRelayGET(ctx, rawClient, base, tok, relayVersion, fmt.Sprintf("stop%d", i))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if !resp.Close {
			t.Errorf("stream %d was not handed off (no Connection: close)", i)
		}
		evs, ended := watchRelayStream(resp.Body)
		if ev := nextRelayEvent(t, evs, 5*time.Second, "first event"); ev.id != "1" {
			t.Fatalf("first block %+v", ev)
		}
		evss, ends = append(evss, evs), append(ends, ended)
	}

	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan time.Time, 1)
	go func() {
		_ = cmd.Wait()
		exited <- time.Now()
	}()
	var last time.Duration
	for i := range streams {
		retries := 0
		for ev := range evss[i] { // bounded: the stream ends within the drain, or at ctx's timeout
			if ev.retry >= 0 {
				retries++
			}
		}
		e := <-ends[i]
		after := e.at.Sub(start)
		last = max(last, after)
		if retries != 1 {
			t.Errorf("stream %d: %d retry hints before the close, want 1", i, retries)
		}
		if after < drain*8/10 || after > drain+margin {
			t.Errorf("stream %d closed %v after SIGTERM, want between %v and %v", i, after, drain*8/10, drain+margin)
		}
	}
	select {
	case at := <-exited:
		t.Logf("streams closed by %v, process exited %v after SIGTERM", last.Round(time.Millisecond), at.Sub(start).Round(time.Millisecond))
		if at.Sub(start) < last {
			t.Errorf("the process exited %v after SIGTERM, before its last stream closed (%v)", at.Sub(start), last)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the process did not exit within 10s of SIGTERM")
	}
}

// TestRelayHandoffTLS hands off a GET stream on an HTTPS connection of an
// HTTP/1.1 client (as Node's fetch opens them): the events arrive, the
// keepalive goes out on the taken-over TLS connection, and closing the
// client's stream closes the upstream GET at once.
func TestRelayHandoffTLS(t *testing.T) {
	u := startRelayUpstream(t, eventThenIdle("1", "over tls"), nil)
	port := freePort(t)
	certFile, keyFile := selfSignedCert(t, "localhost")
	loadCaddyfile(t, fmt.Sprintf("https://localhost:%d {\n\ttls %s %s\n\tmcp_proxy %s {\n\t\tkeepalive 100ms\n\t}\n}\n", port, certFile, keyFile, u.addr()))
	base := fmt.Sprintf("https://localhost:%d", port)
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // a self-signed certificate
		DisableKeepAlives: true,
		// HTTP/1.1 only, so the stream can be handed off.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	tok := u.initSessionWith(t, hc, base, relayVersion)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := openRelayGET(ctx, hc, base, tok, relayVersion, "tls")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.ProtoMajor != 1 || !resp.Close || slices.Contains(resp.TransferEncoding, "chunked") {
		t.Errorf("stream over %s, Connection: close %v, Transfer-Encoding %v; want a handed-off HTTP/1.1 stream", resp.Proto, resp.Close, resp.TransferEncoding)
	}
	evs, _ := watchRelayStream(resp.Body)
	if ev := nextRelayEvent(t, evs, 5*time.Second, "first event"); ev.id != "1" || !strings.Contains(ev.data, "over tls") {
		t.Fatalf("first block %+v", ev)
	}
	if ev := nextRelayEvent(t, evs, 5*time.Second, "keepalive"); !ev.comment {
		t.Fatalf("idle stream delivered %+v, want a keepalive comment", ev)
	}
	g := u.get(t, "tls")
	resp.Body.Close()
	if !waitRelayDone(g, 2*time.Second) || g.selfEnded.Load() {
		t.Fatal("the upstream GET was not closed within 2s of its client closing the stream")
	}
}

// selfSignedCert writes a self-signed certificate for host and its key as
// PEM files in the test's temporary directory.
func selfSignedCert(t *testing.T, host string) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: host},
		DNSNames:     []string{host},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
