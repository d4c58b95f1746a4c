//go:build unix

package caddytest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"
)

// TestH2BodyWaitsInQueue: a POST body longer than max_peek whose request
// waits in the admission queue for longer than body_timeout, its client
// having sent every byte at once, is read on once admitted, over HTTP/1.1
// and HTTP/2: body_timeout bounds each read of the body, not the time
// the proxy takes before the next one.
func TestH2BodyWaitsInQueue(t *testing.T) {
	const bodyTimeout = time.Second
	fake := startFake(t, &fakeUpstream{on: map[string]func(*fakeCall){"tools/call:gated": gatedTool}})
	port := freePort(t)
	loadCaddyfileWith(t, h2cGlobal, proxySite(port, fake.addr(),
		fmt.Sprintf("\t\tmax_inflight 1\n\t\tqueue 4 %v\n\t\tbody_timeout %v\n\t\tmax_peek 4KiB\n", 3*boundedWait, bodyTimeout)))
	base := proxyURL(port)
	ctx, cancel := context.WithTimeout(context.Background(), 4*boundedWait)
	defer cancel()
	text := strings.Repeat("y", 2<<20)
	for i, proto := range protoClients(t) {
		sid := fake.openSession(t, base, sessionVersion)
		key := "hold-" + proto.name
		held := make(chan reply, 1)
		go func() { held <- post(ctx, proto.hc, base+"/mcp", gatedCall(10+i, "gated", key), inSession(sid, nil)) }()
		fake.awaitStarted(t, key)
		answer := make(chan reply, 1)
		go func() { answer <- post(ctx, proto.hc, base+"/mcp", echoCall(20+i, text), inSession(sid, nil)) }()
		// The echo waits in the queue, its body sent, past body_timeout.
		time.Sleep(2 * bodyTimeout)
		fake.open(key)
		if r := awaitReply(t, held, proto.name+" gated call"); !r.ok() {
			t.Errorf("%s: the gated call: %s", proto.name, r)
		}
		if r := awaitReply(t, answer, proto.name+" queued echo"); !r.ok() || !strings.Contains(r.body, text[:1000]) {
			t.Errorf("%s: the echo whose body waited %v in the queue: %s", proto.name, 2*bodyTimeout, r)
		}
	}
}

// openSSE opens a POST whose answer is an SSE stream and checks that it
// came over HTTP/major.
func openSSE(t *testing.T, ctx context.Context, hc *http.Client, major int, url, body string, hdr map[string]string) *http.Response {
	t.Helper()
	resp, err := openPost(ctx, hc, url, body, hdr)
	if err != nil {
		t.Fatal(err)
	}
	if resp.ProtoMajor != major || resp.StatusCode != http.StatusOK || !isSSE(resp) {
		resp.Body.Close()
		t.Fatalf("HTTP/%d POST: %s %d %q", major, resp.Proto, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	return resp
}

// TestH2DrainOnReload: GET streams multiplexed on one HTTP/2 connection
// are drained on a reload as over HTTP/1.1: each gets its retry hint and
// ends cleanly (no stream reset) within the drain window, and its
// upstream GET is closed.
func TestH2DrainOnReload(t *testing.T) {
	const (
		streams = 3
		drain   = 500 * time.Millisecond
		margin  = 1500 * time.Millisecond
	)
	u := startFake(t, &fakeUpstream{stream: eventThenIdle("1", "hi")})
	port := freePort(t)
	cfg := testCaddyfile("off", h2cGlobal, proxySite(port, u.addr(), fmt.Sprintf("\t\tdrain %v\n", drain)))
	loadConfig(t, cfg)
	base := proxyURL(port)
	hc := h2cClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	type watched struct {
		evs   <-chan sseEvent
		ended <-chan streamEnd
	}
	var ws []watched
	for i := range streams {
		tok := u.openSession(t, base, relayVersion)
		resp := mustOpenStream(t, ctx, hc, base+"/mcp", tok, relayVersion, fmt.Sprintf("h2d%d", i))
		if resp.ProtoMajor != 2 {
			t.Fatalf("the stream came over %s", resp.Proto)
		}
		evs, ended := watchEvents(resp.Body)
		if ev := nextEvent(t, evs, boundedWait, "first event"); ev.id != "1" {
			t.Fatalf("first block %+v", ev)
		}
		ws = append(ws, watched{evs, ended})
	}
	start := time.Now()
	loadConfig(t, cfg) // a reload
	for i, w := range ws {
		retries := 0
		for ev := range w.evs { // bounded: the stream ends within the drain, or at ctx's timeout
			switch {
			case ev.retry >= 0:
				retries++
			case !ev.comment:
				t.Errorf("stream %d: unexpected %+v after the reload", i, ev)
			}
		}
		e := <-w.ended
		after := e.at.Sub(start)
		if e.err != nil {
			t.Errorf("stream %d ended with %v, want a clean end", i, e.err)
		}
		if retries != 1 {
			t.Errorf("stream %d: %d retry hints, want 1", i, retries)
		}
		if after < drain*8/10 || after > drain+margin {
			t.Errorf("stream %d closed %v after the reload began, want between %v and %v", i, after, drain*8/10, drain+margin)
		}
		if g := u.streamOf(t, fmt.Sprintf("h2d%d", i)); !g.waitDone(boundedWait) || g.selfEnded.Load() {
			t.Errorf("stream %d: the proxy did not close the upstream GET", i)
		}
	}
}

// TestH2SlowConsumer: a GET stream whose HTTP/2 client stops reading
// (its stream's flow-control window, 16 KiB, fills) is cut within
// write_timeout and its upstream GET closed, while another stream on the
// same connection goes on receiving events.
func TestH2SlowConsumer(t *testing.T) {
	u := slowConsumerUpstream(t)
	checkSlowConsumer(t, u, startH2cSite(t, u.addr(), "\t\twrite_timeout 1s\n"), h2cClientWindow(t, 16<<10), 2)
}

// slowConsumerUpstream is an upstream whose GET stream "steady" sends an
// event every 50ms and whose other streams send 1 KB events as fast as
// the proxy reads them, far more than the buffers on the way hold.
func slowConsumerUpstream(t *testing.T) *fakeUpstream {
	pad := strings.Repeat("x", 1000)
	return startFake(t, &fakeUpstream{stream: func(s *fakeStream) error {
		if s.key == "steady" {
			for seq := 1; ; seq++ {
				if err := s.event(fmt.Sprint(seq), logNote("tick")); err != nil {
					return err
				}
				select {
				case <-s.ctx.Done():
					return s.ctx.Err()
				case <-time.After(50 * time.Millisecond):
				}
			}
		}
		for seq := 1; seq <= 100_000; seq++ {
			if err := s.event(fmt.Sprint(seq), `{"pad":"`+pad+`"}`); err != nil {
				return err
			}
		}
		return s.idle(nil)
	}})
}

// checkSlowConsumer opens, through hc (whose streams each buffer little
// unread), the streams "steady", which the test reads, and "stalled",
// which it does not, of slowConsumerUpstream u at base; both must come
// over HTTP/major. The proxy must cut the stalled stream and close its
// upstream GET, while the steady one goes on receiving events.
func checkSlowConsumer(t *testing.T, u *fakeUpstream, base string, hc *http.Client, major int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*boundedWait)
	defer cancel()
	steady := mustOpenStream(t, ctx, hc, base+"/mcp", u.openSessionWith(t, hc, base, relayVersion), relayVersion, "steady")
	evs, _ := watchEvents(steady.Body)
	nextEvent(t, evs, boundedWait, "steady event")
	stalled := mustOpenStream(t, ctx, hc, base+"/mcp", u.openSessionWith(t, hc, base, relayVersion), relayVersion, "stalled")
	if stalled.ProtoMajor != major || steady.ProtoMajor != major {
		t.Fatalf("streams over %s and %s", stalled.Proto, steady.Proto)
	}
	opened := time.Now()
	g := u.streamOf(t, "stalled")
	if !g.waitDone(boundedWait) || g.selfEnded.Load() {
		t.Fatalf("the proxy did not cut the stalled stream (upstream sent %d events)", g.sent.Load())
	}
	t.Logf("stalled stream's upstream closed %v after it opened (%d events sent)", g.doneAt.Sub(opened).Round(time.Millisecond), g.sent.Load())
	// The stalled client, reading at last, gets what the window held,
	// then the stream's end.
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, stalled.Body)
		ended <- err
	}()
	select {
	case err := <-ended:
		t.Logf("the stalled client's stream ended with %v", err)
	case <-time.After(boundedWait):
		t.Fatal("the stalled stream was not ended")
	}
	// The other stream of the connection still flows.
	for i := range 3 {
		skipReceived(evs)
		nextEvent(t, evs, boundedWait, fmt.Sprintf("steady event %d after the cut", i))
	}
}

// skipReceived discards the events already received.
func skipReceived(evs <-chan sseEvent) {
	for range len(evs) {
		<-evs
	}
}

// TestH2ResetMidAnswer: a client resets its HTTP/2 stream (RST_STREAM
// CANCEL) in the middle of a call's SSE answer. In a session (2025-11-25)
// that is a drop, not a cancellation: the call runs on upstream and the
// client resumes with Last-Event-ID on the same connection, getting the
// result. Stateless (2026-07-28), it cancels the upstream request, and
// the in-flight slot (max_inflight 1) is free for the next request once
// the proxy's handler of the call has returned.
func TestH2ResetMidAnswer(t *testing.T) {
	cancelled := make(chan string, 8)
	// stateless: the 2026-07-28 call below has no session.
	fake := startFake(t, &fakeUpstream{stateless: true, on: map[string]func(*fakeCall){"tools/call:slow": slowFakeTool(cancelled)}})
	base := startH2cSite(t, fake.addr(), "\t\tmax_inflight 1\n")
	hc := h2cClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*boundedWait)
	defer cancel()

	sid := fake.openSessionWith(t, hc, base, relayVersion)
	hdr := sessionHeaders(sid, relayVersion)
	call := `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"slow","arguments":{"key":"resume"},"_meta":{"progressToken":"p5"}}}`
	resp := openSSE(t, ctx, hc, 2, base+"/mcp", call, hdr)
	evs, _ := watchEvents(resp.Body)
	first := nextEvent(t, evs, boundedWait, "progress")
	if first.id == "" || !strings.Contains(first.data, "notifications/progress") {
		t.Fatalf("first event %+v", first)
	}
	resp.Body.Close() // RST_STREAM CANCEL
	time.Sleep(200 * time.Millisecond)
	fake.open("resume")
	get, err := getStream(ctx, hc, base+"/mcp", sid, relayVersion, "", map[string]string{"Last-Event-ID": first.id})
	if err != nil {
		t.Fatal(err)
	}
	if get.ProtoMajor != 2 || get.StatusCode != http.StatusOK {
		t.Fatalf("resumption: %s %d", get.Proto, get.StatusCode)
	}
	revs, rended := watchEvents(get.Body)
	got, end := drainEvents(revs, rended)
	if end.err != nil || len(got) != 1 || !strings.Contains(got[0].data, "done resume") {
		t.Errorf("resumed stream: %+v, ended %v; want the result, then a clean end", got, end.err)
	}
	select {
	case id := <-cancelled:
		t.Errorf("the call %s was cancelled upstream by the client's reset", id)
	default:
	}

	// Stateless: the reset cancels the call.
	hdr26 := map[string]string{"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "slow"}
	call26 := `{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"slow","arguments":{"key":"never"},` +
		`"_meta":{"progressToken":"p6",` + strings.TrimSuffix(strings.TrimPrefix(meta2026, `"_meta":{`), "}") + `}}}`
	resp = openSSE(t, ctx, hc, 2, base+"/mcp", call26, hdr26)
	evs, _ = watchEvents(resp.Body)
	nextEvent(t, evs, boundedWait, "stateless progress")
	resp.Body.Close()
	if id := awaitString(t, cancelled, "the stateless call's cancellation"); id != "6" {
		t.Errorf("cancelled %s, want 6", id)
	}
	// The upstream can see the cancel before the proxy's handler of the
	// call has returned, and with it the slot: the next request may find
	// it taken (503) a moment longer, never past boundedWait.
	echo26 := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"after"},` + meta2026 + `}}`
	var r reply
	if !waitUntil(boundedWait, 10*time.Millisecond, func() bool {
		r = post(ctx, hc, base+"/mcp", echo26, withHeaders(hdr26, map[string]string{"Mcp-Name": "echo"}))
		return r.ok() || r.status != http.StatusServiceUnavailable
	}) || !r.ok() || !strings.Contains(r.body, "after") {
		t.Errorf("the next request (max_inflight 1): %s", r)
	}
}

// TestH2AnswerCutByProxy: the proxy ends a call's SSE answer itself, past
// request_timeout or over max_response, over HTTP/1.1 and HTTP/2 alike:
// the client gets the JSON-RPC error as the last event and a clean end
// of the stream (no reset), and the upstream request is ended.
func TestH2AnswerCutByProxy(t *testing.T) {
	cancelled := make(chan string, 8)
	pad := strings.Repeat("z", 1000)
	fake := startFake(t, &fakeUpstream{on: map[string]func(*fakeCall){
		"tools/call:slow": slowFakeTool(cancelled),
		"tools/call:chatty": func(c *fakeCall) {
			for i := 1; i <= 100; i++ {
				if c.progress(i, pad) != nil {
					return
				}
			}
			c.text("chatty done")
		},
	}})
	base := startH2cSite(t, fake.addr(), "\t\trequest_timeout 500ms\n\t\tmax_response 8KiB\n")
	ctx, cancel := context.WithTimeout(context.Background(), 2*boundedWait)
	defer cancel()
	for i, proto := range protoClients(t) {
		sid := fake.openSessionWith(t, proto.hc, base, relayVersion)
		hdr := sessionHeaders(sid, relayVersion)
		for j, tc := range []struct {
			tool string
			code int
		}{{"slow", -32001}, {"chatty", -32603}} {
			id := fmt.Sprint(100 + 10*i + j)
			call := `{"jsonrpc":"2.0","id":` + id + `,"method":"tools/call","params":{"name":"` + tc.tool + `","arguments":{"key":"k` + id + `"},"_meta":{"progressToken":"p"}}}`
			resp := openSSE(t, ctx, proto.hc, proto.major, base+"/mcp", call, hdr)
			evs, end := drainEvents(watchEvents(resp.Body))
			resp.Body.Close()
			var got []sseEvent
			for _, ev := range evs {
				if ev.data != "" {
					got = append(got, ev)
				}
			}
			what := proto.name + " " + tc.tool
			if end.err != nil {
				t.Errorf("%s: the answer ended with %v, want a clean end", what, end.err)
			}
			if len(got) == 0 {
				t.Errorf("%s: no event", what)
				continue
			}
			rpcErrorFor(t, what, got[len(got)-1].data, id, tc.code)
		}
	}
}

// TestH2StreamsOnOneConnection: GET streams multiplexed on one HTTP/2
// connection count against client_max_streams one by one, as streams on
// separate HTTP/1.1 connections do, and a stream the client resets
// (RST_STREAM CANCEL) gives its slot back.
func TestH2StreamsOnOneConnection(t *testing.T) {
	u := startFake(t, &fakeUpstream{stream: eventThenIdle("1", "hi")})
	base := startH2cSite(t, u.addr(), "\t\tclient_max_streams 2\n")
	hc := h2cClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	tok := u.openSessionWith(t, hc, base, relayVersion)
	var open []*http.Response
	defer func() {
		for _, r := range open {
			r.Body.Close()
		}
	}()
	for i := range 2 {
		resp := mustOpenStream(t, ctx, hc, base+"/mcp", tok, relayVersion, fmt.Sprintf("m%d", i))
		if resp.ProtoMajor != 2 {
			t.Fatalf("stream %d over %s", i, resp.Proto)
		}
		open = append(open, resp)
	}
	over, err := getStream(ctx, hc, base+"/mcp", tok, relayVersion, "m2", nil)
	if err != nil {
		t.Fatal(err)
	}
	over.Body.Close()
	if over.StatusCode != http.StatusTooManyRequests {
		t.Errorf("a third stream on the connection: %d, want 429", over.StatusCode)
	}
	open[0].Body.Close()
	open = open[1:]
	if g := u.streamOf(t, "m0"); !g.waitDone(boundedWait) {
		t.Fatal("the reset stream's upstream GET was not closed")
	}
	var again *http.Response
	for range 100 { // the slot is released as the handler returns
		r, err := getStream(ctx, hc, base+"/mcp", tok, relayVersion, "m3", nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.StatusCode == http.StatusOK {
			again = r
			break
		}
		r.Body.Close()
		time.Sleep(20 * time.Millisecond)
	}
	if again == nil {
		t.Fatal("no stream admitted after one was reset")
	}
	open = append(open, again)
}

// TestH2SlowConsumerOfAnswer: the SSE answer of a call in a session, whose
// HTTP/2 client stops reading, is cut within write_timeout; the upstream
// answer, far larger than every buffer on the way, keeps being read (into
// the replay ring) to its end, so the upstream is not held back.
func TestH2SlowConsumerOfAnswer(t *testing.T) {
	fake, finished := floodUpstream(t)
	checkSlowConsumerOfAnswer(t, fake, finished, startH2cSite(t, fake.addr(), "\t\twrite_timeout 1s\n"), h2cClientWindow(t, 16<<10), 2)
}

// floodUpstream is an upstream whose tool "flood" answers with 20,000
// progress notifications of 1 KB, then its result, and reports on the
// channel how its answer ended.
func floodUpstream(t *testing.T) (*fakeUpstream, <-chan error) {
	const events = 20_000 // 20 MB
	pad := strings.Repeat("x", 1000)
	finished := make(chan error, 1)
	fake := startFake(t, &fakeUpstream{on: map[string]func(*fakeCall){"tools/call:flood": func(c *fakeCall) {
		var err error
		for i := 1; i <= events && err == nil; i++ {
			err = c.progress(i, pad)
		}
		if err == nil {
			c.text("flood done")
		}
		finished <- err
	}}})
	return fake, finished
}

// checkSlowConsumerOfAnswer calls flood of floodUpstream fake at base
// through hc, whose streams each buffer little unread, and reads nothing
// of the answer, which must come over HTTP/major: the upstream's answer
// must be read to its end all the same, and the client's cut.
func checkSlowConsumerOfAnswer(t *testing.T, fake *fakeUpstream, finished <-chan error, base string, hc *http.Client, major int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*boundedWait)
	defer cancel()
	sid := fake.openSessionWith(t, hc, base, relayVersion)
	call := `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"flood","arguments":{},"_meta":{"progressToken":"p9"}}}`
	opened := time.Now()
	resp := openSSE(t, ctx, hc, major, base+"/mcp", call, sessionHeaders(sid, relayVersion))
	defer resp.Body.Close()
	select {
	case err := <-finished:
		if err != nil {
			t.Fatalf("the upstream's answer failed: %v", err)
		}
		t.Logf("the upstream's answer finished %v after the call", time.Since(opened).Round(time.Millisecond))
	case <-time.After(boundedWait):
		t.Fatal("the upstream's answer never finished: the stalled client held it back")
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil {
		t.Errorf("the stalled client read the whole answer (%d bytes); it was not cut", n)
	}
	t.Logf("the stalled client's answer ended with %v after %d bytes", err, n)
}

// TestH2Keepalive: an idle GET stream over HTTP/2 gets keepalive comments
// every keepalive period, also with a write_timeout shorter than that
// period (the deadline of each comment's write must not outlive it), and
// still carries the upstream's next event.
func TestH2Keepalive(t *testing.T) {
	u, next := keepaliveUpstream(t)
	checkKeepalive(t, u, next, startH2cSite(t, u.addr(), "\t\tkeepalive 300ms\n\t\twrite_timeout 100ms\n"), h2cClient(t), 2)
}

// keepaliveUpstream is an upstream whose GET streams send an event, then
// idle until next is closed, then send a second event.
func keepaliveUpstream(t *testing.T) (*fakeUpstream, chan struct{}) {
	next := make(chan struct{})
	u := startFake(t, &fakeUpstream{stream: func(s *fakeStream) error {
		if err := s.event("1", logNote("hello")); err != nil {
			return err
		}
		if err := s.idle(next); err != nil {
			return err
		}
		return s.event("2", logNote("again"))
	}})
	return u, next
}

// checkKeepalive opens a GET stream of keepaliveUpstream u at base
// through hc, which must come over HTTP/major: after the first event the
// idle stream gets keepalive comments, then the second event once next
// is closed.
func checkKeepalive(t *testing.T, u *fakeUpstream, next chan struct{}, base string, hc *http.Client, major int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	resp := mustOpenStream(t, ctx, hc, base+"/mcp", u.openSessionWith(t, hc, base, relayVersion), relayVersion, "ka")
	if resp.ProtoMajor != major {
		t.Fatalf("the stream came over %s", resp.Proto)
	}
	evs, ended := watchEvents(resp.Body)
	if ev := nextEvent(t, evs, boundedWait, "first event"); ev.id != "1" {
		t.Fatalf("first block %+v", ev)
	}
	for i := range 4 {
		select {
		case ev := <-evs:
			if !ev.comment {
				t.Fatalf("idle stream delivered %+v, want keepalive comments", ev)
			}
		case e := <-ended:
			t.Fatalf("the idle stream ended after %d keepalives: %v", i, e.err)
		case <-time.After(boundedWait):
			t.Fatalf("no keepalive %d", i+1)
		}
	}
	close(next)
	timeout := time.After(boundedWait)
	for {
		select {
		case ev := <-evs:
			if ev.comment {
				continue
			}
			if ev.id != "2" {
				t.Fatalf("after the keepalives: %+v", ev)
			}
			return
		case e := <-ended:
			t.Fatalf("the stream ended before the upstream's second event: %v", e.err)
		case <-timeout:
			t.Fatal("no second event")
		}
	}
}

// TestH2RefusalKeepsConnection: a request refused with its body unread
// (over max_body, declared or not) ends its HTTP/2 stream alone: the
// client's next request goes on the same connection. (Over HTTP/1 the
// connection closes; over HTTP/2, where Go's server reads Connection:
// close as a graceful shutdown, it would end every stream the client
// multiplexes on it.)
func TestH2RefusalKeepsConnection(t *testing.T) {
	u := startFake(t, &fakeUpstream{})
	base := startH2cSite(t, u.addr(), "\t\tmax_body 4KiB\n")
	hc := h2cClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	tok := u.openSessionWith(t, hc, base, relayVersion)
	hdr := sessionHeaders(tok, relayVersion)
	url := base + "/mcp"
	big := echoCall(5, strings.Repeat("b", 8<<10))
	for _, tc := range []struct {
		what string
		send func(ctx context.Context) reply
	}{
		{"a body declared over max_body", func(ctx context.Context) reply { return post(ctx, hc, url, big, hdr) }},
		{"a body of unknown length over max_body", func(ctx context.Context) reply { return postUnsized(ctx, hc, url, big, hdr) }},
	} {
		if r := tc.send(ctx); r.err != nil || r.status != http.StatusRequestEntityTooLarge || r.hdr.Get("Connection") != "" {
			t.Errorf("%s over HTTP/2: %s, want 413", tc.what, r)
		}
		reused := false
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
		if r := post(httptrace.WithClientTrace(ctx, trace), hc, url, echoCall(6, "after"), hdr); !r.ok() || !reused {
			t.Errorf("the request after %s: %s, on the same connection: %v", tc.what, r, reused)
		}
	}
}

// startH2cSite runs a Caddy site on a free port that speaks HTTP/1.1 and
// cleartext HTTP/2, whose mcp_proxy goes to up with the lines of block,
// and returns its base URL.
func startH2cSite(t *testing.T, up, block string) string {
	t.Helper()
	port := freePort(t)
	loadCaddyfileWith(t, h2cGlobal, proxySite(port, up, block))
	return proxyURL(port)
}
