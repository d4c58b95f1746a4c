//go:build unix

package caddytest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// relayVersion is the protocol version the relay tests' clients speak: the
// first that honours retry hints.
const relayVersion = "2025-11-25"

// TestRelayKeepalive checks that an idle GET stream gets `:` comments
// every keepalive period, and that the stream, comments and all, ends when
// the upstream ends it.
func TestRelayKeepalive(t *testing.T) {
	end := make(chan struct{})
	u := startFake(t, &fakeUpstream{stream: func(s *fakeStream) error {
		if err := s.event("1", logNote("hello")); err != nil {
			return err
		}
		return s.idle(end)
	}})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tkeepalive 100ms\n\t}\n}\n", port, u.addr()))
	base := proxyURL(port)
	tok := u.openSession(t, base, relayVersion)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	resp := mustOpenStream(t, ctx, rawClient, base+"/mcp", tok, relayVersion, "idle")
	evs, ended := watchEvents(resp.Body)

	if ev := nextEvent(t, evs, 5*time.Second, "first event"); ev.comment || ev.id != "1" || !strings.Contains(ev.data, "hello") {
		t.Fatalf("first block %+v, want the upstream's event 1", ev)
	}
	const want = 4
	var times []time.Time
	for len(times) < want {
		ev := nextEvent(t, evs, 3*time.Second, fmt.Sprintf("keepalive %d", len(times)+1))
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
	if g := u.streamOf(t, "idle"); !g.waitDone(2*time.Second) || !g.selfEnded.Load() {
		t.Error("the upstream stream did not end on its own")
	}
}

// tinyRecvBufClient returns a client whose connections have a 4 KiB TCP
// receive buffer, set before connecting so the advertised window stays
// small.
func tinyRecvBufClient() *http.Client {
	return &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: tinyRecvBufDialer().DialContext}}
}

// tinyRecvBufDialer dials connections with a 4 KiB TCP receive buffer.
func tinyRecvBufDialer() *net.Dialer {
	return &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error { return setRcvBuf(c, 4096) }}
}

// TestRelayClientGoneWhileWriteBlocked: a GET stream relayed from its
// handler (stream_handoff off), whose client stops reading and then
// half-closes its connection while the proxy's write to it is blocked
// (the client's window is full, so only a deadline ends that write): the
// proxy sees the client gone, cuts the write short through Caddy's
// response writers (its write idle timeout among them), closes the
// upstream stream and ends the client's stream (caddy_mcp_streams_active
// back to 0), long before write_timeout (1m) or Caddy's write idle
// timeout (1m) would end the write.
func TestRelayClientGoneWhileWriteBlocked(t *testing.T) {
	pad := strings.Repeat("x", 1000)
	u := startFake(t, &fakeUpstream{stream: func(s *fakeStream) error {
		// As fast as the proxy reads; at most 100 MB, far more than
		// the buffers on the way hold.
		for seq := 1; seq <= 100_000; seq++ {
			if err := s.event(strconv.Itoa(seq), `{"pad":"`+pad+`"}`); err != nil {
				return err
			}
		}
		return s.idle(nil)
	}})
	port := freePort(t)
	loadCaddyfileWith(t, "\tservers {\n\t\tlistener_wrappers {\n\t\t\tmcp_connections {\n\t\t\t\twrite_buffer 16KiB\n\t\t\t}\n\t\t}\n\t}\n",
		fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tstream_handoff off\n\t\twrite_timeout 1m\n\t}\n}\n", port, u.addr()))
	base := proxyURL(port)
	sid := u.openSession(t, base, relayVersion)

	conns := make(chan net.Conn, 1)
	d := tinyRecvBufDialer()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			if err == nil {
				select {
				case conns <- c:
				default: // only the first is the stream's
				}
			}
			return c, err
		}}}
	streams := func() float64 { return liveMetric(t, "caddy_mcp_streams_active") }
	waitStreams := func(want float64) bool {
		for range 200 {
			if streams() == want {
				return true
			}
			time.Sleep(50 * time.Millisecond)
		}
		return false
	}
	if !waitStreams(0) {
		t.Fatalf("%v streams of earlier tests still active", streams())
	}
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	mustOpenStream(t, ctx, hc, base+"/mcp", sid, relayVersion, "flood")
	conn := <-conns
	g := u.streamOf(t, "flood")

	// The client reads nothing more: the proxy's writes block, its queue
	// fills, it stops reading the upstream, and the upstream's writes
	// stop. Wait for that: no event sent for 500ms.
	last, still := g.sent.Load(), 0
	for i := 0; i < 200 && still < 5; i++ {
		time.Sleep(100 * time.Millisecond)
		if n := g.sent.Load(); n == last {
			still++
		} else {
			last, still = n, 0
		}
	}
	if still < 5 {
		t.Fatalf("the upstream never stalled (%d events sent)", last)
	}
	if g.cancelled() {
		t.Fatal("the proxy closed the stream before its client went away")
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if !g.waitDone(10 * time.Second) {
		t.Fatalf("the upstream stream was still open 10s after its client went away while a write to it was blocked (%d events sent)", g.sent.Load())
	}
	if g.selfEnded.Load() {
		t.Error("the upstream ended the stream itself; the proxy never closed it")
	}
	if !waitStreams(0) {
		t.Errorf("the client's stream was still active 10s after it went away: the write to it was not cut short")
	}
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
	u := startFake(t, &fakeUpstream{stream: func(s *fakeStream) error {
		n := events
		if strings.HasPrefix(s.key, "stalled-") {
			n = stalledCap
		}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for seq := 1; seq <= n; seq++ {
			if err := s.event(strconv.Itoa(seq), fmt.Sprintf(`{"seq":%d,"pad":"%s"}`, seq, pad)); err != nil {
				return err
			}
			select {
			case <-s.ctx.Done():
				return s.ctx.Err()
			case <-tick.C:
			}
		}
		return nil
	}})
	port := freePort(t)
	loadCaddyfileWith(t, "\tservers {\n\t\tlistener_wrappers {\n\t\t\tmcp_connections {\n\t\t\t\twrite_buffer 16KiB\n\t\t\t}\n\t\t}\n\t}\n",
		fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\twrite_timeout 1s\n\t\tstream_buffer 50 256KiB\n\t}\n}\n", port, u.addr()))
	base := proxyURL(port)
	tokens := make([]string, healthy+stalled)
	for i := range tokens {
		tokens[i] = u.openSession(t, base, relayVersion)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	okClient := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	slowClient := tinyRecvBufClient()
	heapBefore := heapInuse()

	// Heap samples while the streams run.
	var peakHeap atomic.Uint64
	stopSampling := sampleEvery(100*time.Millisecond, func() {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		if ms.HeapInuse > peakHeap.Load() {
			peakHeap.Store(ms.HeapInuse)
		}
	})

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
			resp := mustOpenStream(t, ctx, slowClient, base+"/mcp", tokens[i], relayVersion, key)
			stalledAt[key] = time.Now()
			stalledResps = append(stalledResps, resp)
			continue
		}
		key := fmt.Sprintf("healthy-%d", i)
		resp := mustOpenStream(t, ctx, okClient, base+"/mcp", tokens[i], relayVersion, key)
		wg.Go(func() {
			defer resp.Body.Close()
			next := 1
			err := readEvents(resp.Body, func(ev sseEvent) error {
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
		g := u.streamOf(t, key)
		bound := writeTimeout + time.Second + margin
		if !g.waitDone(time.Until(at.Add(bound))) {
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
	stopSampling()
	for i, err := range results {
		if err != nil {
			t.Errorf("healthy client %d: %v", i, err)
		}
	}
	var emitted int64
	for key, g := range u.allStreams() {
		emitted += g.bytes.Load()
		if strings.HasPrefix(key, "healthy-") && (g.cancelled() || g.sent.Load() != events) {
			t.Errorf("%s: upstream sent %d events, cancelled %v", key, g.sent.Load(), g.cancelled())
		}
	}
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
	u := startFake(t, &fakeUpstream{stream: eventThenIdle("1", "hi")})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, u.addr()))
	base := proxyURL(port)
	// The sessions exist before the baseline, so no per-session state
	// (or pooled initialize connection) comes and goes with the streams;
	// each holds fewer streams than the per-session stream cap.
	var toks []string
	for range 10 {
		toks = append(toks, u.openSession(t, base, relayVersion))
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
			resp, err := openStream(ctx, hc, base+"/mcp", toks[i%len(toks)], relayVersion, fmt.Sprintf("s%d", i))
			if err != nil {
				errs[i] = err
				return
			}
			resps[i] = resp
			got := errors.New("first event received")
			err = readEvents(resp.Body, func(ev sseEvent) error {
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
		gets := u.allStreams()
		for _, g := range gets {
			if !g.cancelled() {
				open++
			}
		}
		seen := len(gets)
		now = runtime.NumGoroutine()
		if seen == streams && open == 0 && now <= baseline+slack || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("goroutines: %d before, %d with %d streams open, %d %v after the clients closed",
		baseline, peak, streams, now, time.Since(closedAt).Round(time.Millisecond))
	if seen := len(u.allStreams()); seen != streams {
		t.Errorf("upstream saw %d GETs, want %d", seen, streams)
	}
	if open > 0 {
		t.Errorf("%d upstream GETs still open 5s after their clients left", open)
	}
	if now > baseline+slack {
		t.Errorf("%d goroutines 5s after every stream closed, baseline %d (+%d allowed)\n%s", now, baseline, slack, goroutineDump())
	}
}

// TestRelayClosesUpstreamGET checks that a GET stream its client closes
// has its upstream request closed promptly.
func TestRelayClosesUpstreamGET(t *testing.T) {
	u := startFake(t, &fakeUpstream{stream: eventThenIdle("", "hi")})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, u.addr()))
	base := proxyURL(port)
	for _, version := range []string{"2025-06-18", "2025-11-25"} {
		t.Run(version, func(t *testing.T) {
			tok := u.openSession(t, base, version)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp := mustOpenStream(t, ctx, rawClient, base+"/mcp", tok, version, "close-"+version)
			evs, _ := watchEvents(resp.Body)
			if ev := nextEvent(t, evs, 5*time.Second, "first event"); !strings.Contains(ev.data, "hi") {
				t.Fatalf("first block %+v", ev)
			}
			g := u.streamOf(t, "close-"+version)
			closed := time.Now()
			resp.Body.Close()
			if !g.waitDone(2 * time.Second) {
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
	u := startFake(t, &fakeUpstream{stream: eventThenIdle("1", "hi")})
	port := freePort(t)
	cfg := fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tdrain 500ms\n\t}\n}\n", port, u.addr())
	loadCaddyfile(t, cfg)
	base := proxyURL(port)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	type watched struct {
		resp  *http.Response
		evs   <-chan sseEvent
		ended <-chan streamEnd
	}
	var ws []watched
	for i := range streams {
		tok := u.openSession(t, base, relayVersion)
		resp := mustOpenStream(t, ctx, rawClient, base+"/mcp", tok, relayVersion, fmt.Sprintf("d%d", i))
		evs, ended := watchEvents(resp.Body)
		if ev := nextEvent(t, evs, 5*time.Second, "first event"); ev.id != "1" {
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
		g := u.streamOf(t, fmt.Sprintf("d%d", i))
		if !g.waitDone(2*time.Second) || g.selfEnded.Load() {
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
	u := startFake(t, &fakeUpstream{on: map[string]func(*fakeCall){"*": func(c *fakeCall) {
		s := c.sse()
		if s.event("", progressNote) != nil {
			return
		}
		if s.event("", `{"jsonrpc":"2.0","id":`+c.id+`,"result":{"content":[{"type":"text","text":"`+big+`"}]}}`) != nil {
			return
		}
		if s.idle(nil) == nil {
			s.selfEnded.Store(true)
		}
	}}})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tmax_event_size 2KiB\n\t}\n}\n", port, u.addr()))
	base := proxyURL(port)
	tok := u.openSession(t, base, relayVersion)

	for _, id := range []string{`7`, `"call-8"`} {
		t.Run(id, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			body := `{"jsonrpc":"2.0","id":` + id + `,"method":"tools/call","params":{"name":"big","arguments":{},"_meta":{"progressToken":"p"}}}`
			resp, err := openPost(ctx, rawClient, base+"/mcp", body, sessionHeaders(tok, relayVersion))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !isSSE(resp) {
				t.Fatalf("tools/call: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			var got []sseEvent
			var raw bytes.Buffer
			err = readEvents(io.TeeReader(resp.Body, &raw), func(ev sseEvent) error {
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
			rpcErrorFor(t, "last event", got[1].data, id, -32603)
			c := u.answer(id)
			if c == nil {
				t.Fatal("the call never reached the upstream")
			}
			if !c.waitDone(2*time.Second) || c.selfEnded.Load() {
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
	u := startFake(t, &fakeUpstream{stream: func(s *fakeStream) error {
		if err := s.event("1", logNote("one")); err != nil {
			return err
		}
		if err := s.idle(endOf(s.key)); err != nil {
			return err
		}
		return s.event("2", logNote("two"))
	}})
	on, off := loadHandoffPair(t, u.addr(), "")
	for _, tc := range []struct {
		name    string
		port    int
		handoff bool
	}{{"handoff", on, true}, {"handler", off, false}} {
		t.Run(tc.name, func(t *testing.T) {
			base := proxyURL(tc.port)
			tok := u.openSession(t, base, relayVersion)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			resp := mustOpenStream(t, ctx, rawClient, base+"/mcp", tok, relayVersion, tc.name)
			chunked := slices.Contains(resp.TransferEncoding, "chunked")
			if tc.handoff && (chunked || !resp.Close) {
				t.Errorf("handed-off stream: Transfer-Encoding %v, Connection: close %v; want close-delimited", resp.TransferEncoding, resp.Close)
			}
			if !tc.handoff && !chunked {
				t.Errorf("stream kept by the handler: Transfer-Encoding %v, want chunked", resp.TransferEncoding)
			}
			evs, ended := watchEvents(resp.Body)
			if ev := nextEvent(t, evs, 5*time.Second, "first event"); ev.id != "1" || !strings.Contains(ev.data, "one") {
				t.Fatalf("first block %+v", ev)
			}
			close(endOf(tc.name))
			if ev := nextEvent(t, evs, 5*time.Second, "second event"); ev.id != "2" || !strings.Contains(ev.data, "two") {
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

// loadHandoffPair loads two sites in front of up, with the lines of block
// inside their mcp_proxy: one hands GET streams off from Caddy's HTTP
// server (the default), the other keeps them in the handler
// (stream_handoff off). It returns their ports.
func loadHandoffPair(t *testing.T, up, block string) (on, off int) {
	t.Helper()
	on, off = freePort(t), freePort(t)
	loadCaddyfile(t, proxySite(on, up, block)+proxySite(off, up, block+"\t\tstream_handoff off\n"))
	return on, off
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
	u := startFake(t, &fakeUpstream{stream: eventThenIdle("1", "hi")})
	port := freePort(t)
	cmd := startCaddyProcess(t, fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n}\n:%d {\n\tmcp_proxy %s {\n\t\tdrain 1s\n\t}\n}\n", port, u.addr()), port)
	base := proxyURL(port)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var ends []<-chan streamEnd
	var evss []<-chan sseEvent
	for i := range streams {
		tok := u.openSession(t, base, relayVersion)
		resp := mustOpenStream(t, ctx, rawClient, base+"/mcp", tok, relayVersion, fmt.Sprintf("stop%d", i))
		if !resp.Close {
			t.Errorf("stream %d was not handed off (no Connection: close)", i)
		}
		evs, ended := watchEvents(resp.Body)
		if ev := nextEvent(t, evs, 5*time.Second, "first event"); ev.id != "1" {
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
	u := startFake(t, &fakeUpstream{stream: eventThenIdle("1", "over tls")})
	port := freePort(t)
	ca := newTestCA(t)
	certFile, keyFile := ca.writeFiles("localhost", ca.issue("localhost", "localhost"))
	loadCaddyfile(t, fmt.Sprintf("https://localhost:%d {\n\ttls %s %s\n\tmcp_proxy %s {\n\t\tkeepalive 100ms\n\t}\n}\n", port, certFile, keyFile, u.addr()))
	base := fmt.Sprintf("https://localhost:%d", port)
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // a self-signed certificate
		DisableKeepAlives: true,
		// HTTP/1.1 only, so the stream can be handed off.
		TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{},
	}}
	tok := u.openSessionWith(t, hc, base, relayVersion)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp := mustOpenStream(t, ctx, hc, base+"/mcp", tok, relayVersion, "tls")
	if resp.ProtoMajor != 1 || !resp.Close || slices.Contains(resp.TransferEncoding, "chunked") {
		t.Errorf("stream over %s, Connection: close %v, Transfer-Encoding %v; want a handed-off HTTP/1.1 stream", resp.Proto, resp.Close, resp.TransferEncoding)
	}
	evs, _ := watchEvents(resp.Body)
	if ev := nextEvent(t, evs, 5*time.Second, "first event"); ev.id != "1" || !strings.Contains(ev.data, "over tls") {
		t.Fatalf("first block %+v", ev)
	}
	if ev := nextEvent(t, evs, 5*time.Second, "keepalive"); !ev.comment {
		t.Fatalf("idle stream delivered %+v, want a keepalive comment", ev)
	}
	g := u.streamOf(t, "tls")
	resp.Body.Close()
	if !g.waitDone(2*time.Second) || g.selfEnded.Load() {
		t.Fatal("the upstream GET was not closed within 2s of its client closing the stream")
	}
}

// TestRelayAnswerWithIDWrittenAnotherWay: a go-sdk server writes a
// string id back as it decoded it ("ab" for "\u0061b"); the relay still
// takes that event for the request's answer and adds no error of its own
// for a stream that "ended without the answer".
func TestRelayAnswerWithIDWrittenAnotherWay(t *testing.T) {
	up := startUpstream(t, "demo", nil)
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, up.addr(), ""))
	url := proxyURL(port) + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	sid := rawSession(t, url, nil)
	r := postJSON(ctx, url, `{"jsonrpc":"2.0","id":"\u0061b","method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}`, inSession(sid, nil))
	msgs := messagesOf(t, r)
	if len(msgs) != 1 || !strings.Contains(msgs[0], `"result"`) {
		t.Errorf("answer to an escaped id: %q, want the upstream's result alone", msgs)
	}
}
