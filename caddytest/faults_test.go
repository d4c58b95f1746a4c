//go:build linux

// Fault scenarios through a real Caddy: configs that fail to load while
// thousands of streams are open, upstreams that die or answer badly,
// health-check blips under pinned sessions, upstream comments on streams,
// the proxy's own requests through the upstream's transport and header
// rules, a full session table, the drain of a stopping process after a
// reload, and configuration that would do nothing.

package caddytest

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// faultWait bounds the waits of the fault tests.
const faultWait = 10 * time.Second

// faultAdminLoad posts a config of the given media type to the admin
// endpoint's /load and returns the status and body.
func faultAdminLoad(t *testing.T, adminPort int, contentType, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/load", adminPort), strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", contentType)
	st, _, b := do(t, req)
	return st, b
}

// faultNoFile makes room for need open files: the soft limit goes up to
// the hard limit, and the hard limit up to need when the process may
// raise it. It returns the soft limit.
func faultNoFile(t *testing.T, need uint64) uint64 {
	t.Helper()
	raiseNoFile(t)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur < need {
		want := syscall.Rlimit{Cur: need, Max: max(need, lim.Max)}
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			lim = want
		}
	}
	return lim.Cur
}

// faultSignal is one event an upstream sends on every open stream; next
// is the one after it, set before done is closed.
type faultSignal struct {
	done chan struct{}
	msg  string
	next *faultSignal
}

// faultBroadcast sends events to every stream of an upstream.
type faultBroadcast struct{ cur atomic.Pointer[faultSignal] }

func newFaultBroadcast() *faultBroadcast {
	b := new(faultBroadcast)
	b.cur.Store(&faultSignal{done: make(chan struct{})})
	return b
}

// current is the next signal a stream opening now waits for.
func (b *faultBroadcast) current() *faultSignal { return b.cur.Load() }

// send fires the current signal with msg; one goroutine sends.
func (b *faultBroadcast) send(msg string) {
	s := b.cur.Load()
	s.msg, s.next = msg, &faultSignal{done: make(chan struct{})}
	b.cur.Store(s.next)
	close(s.done)
}

// TestLoadReloadFailure holds 1,000 SSE GET streams open through
// mcp_proxy (5,000 with MCPGATE_SOAK=1, fewer under the race detector and
// with -short, see loadScale; those the open-file limit leaves no room for
// over HTTP/1.1 go over HTTP/2) and posts configs to the admin endpoint's
// /load. (a) A JSON config whose mcp app has invalid level thresholds and
// (b) a Caddyfile whose mcp_proxy cannot provision (its session key comes
// from an unset environment variable) are refused with 400 and change
// nothing: the upstream holds every GET open, every client still receives
// the upstream's events, /mcp/status answers with the running settings,
// the running config is the same, new sessions work, and no goroutine is
// left behind. (c) A good config then drains the old streams, each with a
// retry hint, spread between 80% and 100% of the drain delay; new sessions
// are served by the new config, old ones keep working, and once the
// streams are gone the goroutines, held bytes and owned goroutines come
// back to where they were.
func TestLoadReloadFailure(t *testing.T) {
	scale := loadScale(t, 0.2)
	full := 1000
	if os.Getenv("MCPGATE_SOAK") == "1" {
		full = 5000
	}
	n := loadScaled(full, scale, 50)
	// A stream over HTTP/1.1 holds four descriptors of this process: the
	// client's connection, Caddy's end of it, Caddy's upstream connection
	// and the upstream's end of that one. Streams beyond what the open-file
	// limit allows that way go over HTTP/2 (h2c), many to a client
	// connection, and hold two.
	const spareFDs = 1024
	lim := int(faultNoFile(t, uint64(4*n+spareFDs)))
	if lim < spareFDs+2*n {
		if lim < spareFDs+2*50 {
			t.Skipf("open-file limit %d leaves no room for streams", lim)
		}
		n = (lim - spareFDs) / 2
		t.Logf("open-file limit %d: %d streams", lim, n)
	}
	h1 := min(n, (lim-spareFDs-2*n)/2)
	// Thousands of streams closed within 100ms keep two cores busy for a
	// while.
	margin := 2*time.Second + time.Duration(n)*time.Millisecond/2
	const (
		perSession = 16 // streams per session, under the registry's cap of 32
		drain      = 500 * time.Millisecond
		slack      = 10 // goroutines that may come and go
	)

	sig := newFaultBroadcast()
	up := startFake(t, &fakeUpstream{name: "load", stream: func(s *fakeStream) error {
		next := sig.current()
		if err := s.event("", logNote("hello")); err != nil {
			return err
		}
		for {
			select {
			case <-s.ctx.Done():
				return s.ctx.Err()
			case <-next.done:
				if err := s.event("", logNote(next.msg)); err != nil {
					return err
				}
				next = next.next
			}
		}
	}})
	port, adminPort := freePort(t), freePort(t)
	// No session caps: every session comes from one client address.
	global := "\tservers {\n\t\tprotocols h1 h2c\n\t}\n\tmcp {\n\t\tmax_sessions 0\n\t\tclient_max_sessions 0\n" + loadSchedOff + "\t}\n"
	site := func(extra string) string {
		return fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tdrain 500ms\n\t\tkeepalive 5m\n%s\t}\n}\n", port, up.addr(), extra)
	}
	loadWithAdmin(t, adminPort, global, site(""))
	base := proxyURL(port)
	url := base + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tr := &http.Transport{MaxIdleConnsPerHost: 32, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	// Every stream has a connection of its own.
	sc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DisableCompression: true}}
	var h2 http.Protocols
	h2.SetUnencryptedHTTP2(true)
	h2tr := &http.Transport{Protocols: &h2, DisableCompression: true}
	defer h2tr.CloseIdleConnections()
	h2c := &http.Client{Transport: h2tr}

	toks := openSessions(t, ctx, hc, url, (n+perSession-1)/perSession, 16)
	var firstErr atomic.Value
	// The baseline is taken with the sessions open and every idle
	// connection closed (reverse_proxy's idle pool to the upstream
	// included), so only what the streams leave behind counts.
	settle := func() int {
		tr.CloseIdleConnections()
		h2tr.CloseIdleConnections()
		up.CloseClientConnections()
		runtime.GC()
		return settledGoroutines()
	}
	baseline := settle()
	held0, owned0 := liveMetric(t, "caddy_mcp_held_bytes"), liveMetric(t, "caddy_mcp_goroutines_owned")

	// What each client saw; a stream's entry is written by its reader
	// only, and read once the reader is done.
	type clientStream struct {
		retries int
		retryMS int
		endAt   time.Time
		err     error
	}
	streams := make([]clientStream, n)
	seen := map[string]*atomic.Int64{"a": new(atomic.Int64), "b": new(atomic.Int64)}
	var ended atomic.Int64
	var readers sync.WaitGroup
	openStart := time.Now()
	parallel(n, 32, func(i int) {
		client := sc
		if i >= h1 {
			client = h2c
		}
		resp, err := openStream(ctx, client, base+"/mcp", toks[i/perSession], loadVersion, "s"+strconv.Itoa(i))
		if err == nil && (i >= h1) != (resp.ProtoMajor == 2) {
			err = fmt.Errorf("stream %d over %s", i, resp.Proto)
		}
		if err != nil {
			firstErr.CompareAndSwap(nil, err.Error())
			return
		}
		first := make(chan bool, 1)
		readers.Go(func() {
			defer resp.Body.Close()
			st := &streams[i]
			gotFirst := false
			st.err = readEvents(resp.Body, func(ev sseEvent) error {
				switch {
				case ev.retry >= 0:
					st.retries++
					st.retryMS = ev.retry
				case ev.comment:
				case !gotFirst:
					gotFirst = true
					first <- strings.Contains(ev.data, "hello")
				default:
					for phase, c := range seen {
						if strings.Contains(ev.data, "phase-"+phase) {
							c.Add(1)
						}
					}
				}
				return nil
			})
			st.endAt = time.Now()
			ended.Add(1)
			if !gotFirst {
				first <- false
			}
		})
		select {
		case ok := <-first:
			if !ok {
				firstErr.CompareAndSwap(nil, fmt.Sprintf("stream %d: no hello event", i))
			}
		case <-time.After(faultWait):
			firstErr.CompareAndSwap(nil, fmt.Sprintf("stream %d: no first event within %v", i, faultWait))
		}
	})
	if e := firstErr.Load(); e != nil {
		t.Fatal(e)
	}
	if !waitUntil(faultWait, 10*time.Millisecond, func() bool { return up.busy.Load() == int64(n) }) {
		t.Fatalf("the upstream holds %d GET streams, want %d", up.busy.Load(), n)
	}
	withStreams := settledGoroutines()
	t.Logf("%d streams (%d over HTTP/1.1, %d over HTTP/2) on %d sessions open in %v; goroutines %d before, %d with the streams",
		n, h1, n-h1, len(toks), time.Since(openStart).Round(time.Millisecond), baseline, withStreams)

	getConfig := func() string {
		t.Helper()
		st, _, b := adminCall(t, adminPort, http.MethodGet, "/config/", "")
		if st != http.StatusOK {
			t.Fatalf("GET /config/: %d %s", st, b)
		}
		return b
	}
	running := getConfig()
	status0 := status(t, adminPort)
	unchanged := func(phase string) {
		t.Helper()
		if e := ended.Load(); e != 0 {
			t.Errorf("%s: %d of %d streams ended", phase, e, n)
		}
		if b := up.busy.Load(); b != int64(n) {
			t.Errorf("%s: the upstream holds %d GET streams, want %d", phase, b, n)
		}
		sig.send("phase-" + phase)
		if !waitUntil(30*time.Second, 10*time.Millisecond, func() bool { return seen[phase].Load() == int64(n) }) {
			t.Errorf("%s: %d of %d clients received the upstream's event", phase, seen[phase].Load(), n)
		}
		s := status(t, adminPort)
		if s.Level != status0.Level || fmt.Sprint(s.Thresholds) != fmt.Sprint(status0.Thresholds) || s.Resources.Sessions.Limit != status0.Resources.Sessions.Limit {
			t.Errorf("%s: /mcp/status shows level %s, thresholds %v, session limit %d; before: %s, %v, %d",
				phase, s.Level, s.Thresholds, s.Resources.Sessions.Limit, status0.Level, status0.Thresholds, status0.Resources.Sessions.Limit)
		}
		if cfg := getConfig(); cfg != running {
			t.Errorf("%s: the running config changed:\n%s\nwas\n%s", phase, cfg, running)
		}
		tok, r := initSession(ctx, rawClient, url, loadVersion)
		switch {
		case tok == "":
			t.Errorf("%s: initialize: %v", phase, r)
		case r.hdr.Get("X-Mcp-Config") != "":
			t.Errorf("%s: a new session was answered by another config (X-Mcp-Config %q)", phase, r.hdr.Get("X-Mcp-Config"))
		default:
			if d := deleteSession(ctx, rawClient, url, tok, loadVersion); d.status != http.StatusOK {
				t.Errorf("%s: DELETE of a new session: %v", phase, d)
			}
		}
		if g := settledGoroutines(); g > withStreams+slack {
			t.Errorf("%s: %d goroutines, %d before the load (+%d allowed)", phase, g, withStreams, slack)
		}
	}

	// (a) A JSON config whose mcp app has invalid thresholds.
	var cfg map[string]any
	if err := json.Unmarshal([]byte(running), &cfg); err != nil {
		t.Fatalf("the running config: %v", err)
	}
	apps, _ := cfg["apps"].(map[string]any)
	mcpApp, _ := apps["mcp"].(map[string]any)
	if mcpApp == nil {
		t.Fatalf("the running config has no mcp app: %s", running)
	}
	mcpApp["degraded"], mcpApp["essential"], mcpApp["protective"] = 0.9, 0.5, 0.2
	badJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, _, body := adminCall(t, adminPort, http.MethodPost, "/load", string(badJSON))
	if st != http.StatusBadRequest {
		t.Errorf("(a) POST /load with invalid thresholds: %d %s, want 400", st, body)
	}
	t.Logf("(a) invalid thresholds: %d %s", st, strings.TrimSpace(body))
	unchanged("a")

	// (b) A Caddyfile whose mcp_proxy fails to provision.
	if v, ok := os.LookupEnv("MCPGATE_TEST_UNSET_KEY"); ok {
		t.Fatalf("MCPGATE_TEST_UNSET_KEY is set (%q); the test needs it unset", v)
	}
	st, body = faultAdminLoad(t, adminPort, "text/caddyfile",
		testCaddyfile(fmt.Sprintf("127.0.0.1:%d", adminPort), global, site("\t\tsession_key {env.MCPGATE_TEST_UNSET_KEY}\n")))
	if st != http.StatusBadRequest || !strings.Contains(body, "session key") {
		t.Errorf("(b) POST /load with an unset session key: %d %s, want 400 naming the session key", st, body)
	}
	t.Logf("(b) unset session key: %d %s", st, strings.TrimSpace(body))
	unchanged("b")

	// (c) A good config, changed: its answers carry a header.
	start := time.Now()
	st, body = faultAdminLoad(t, adminPort, "text/caddyfile",
		testCaddyfile(fmt.Sprintf("127.0.0.1:%d", adminPort), global, site("\t\theader_down X-Mcp-Config v2\n")))
	took := time.Since(start)
	if st != http.StatusOK {
		t.Fatalf("(c) POST /load of a good config: %d %s", st, body)
	}
	if !waitUntil(drain+30*time.Second, 10*time.Millisecond, func() bool { return ended.Load() == int64(n) }) {
		t.Fatalf("(c) %d of %d streams ended after the reload", ended.Load(), n)
	}
	readers.Wait()
	var bad []string
	first, last := time.Duration(1<<62), time.Duration(0)
	var lastH1, lastH2 time.Duration
	for i := range streams {
		s := &streams[i]
		after := s.endAt.Sub(start)
		first, last = min(first, after), max(last, after)
		if i < h1 {
			lastH1 = max(lastH1, after)
		} else {
			lastH2 = max(lastH2, after)
		}
		switch {
		case s.err != nil:
			bad = append(bad, fmt.Sprintf("stream %d ended with %v", i, s.err))
		case s.retries != 1 || s.retryMS != 1000:
			bad = append(bad, fmt.Sprintf("stream %d got %d retry hints (last %d ms), want one of 1000 ms", i, s.retries, s.retryMS))
		case after < drain*8/10 || after > took+drain+margin:
			bad = append(bad, fmt.Sprintf("stream %d closed %v after the reload began", i, after))
		}
	}
	if len(bad) > 0 {
		t.Errorf("(c) %d of %d streams not drained as configured (drain %v, load took %v); %s",
			len(bad), n, drain, took, strings.Join(bad[:min(5, len(bad))], "; "))
	}
	if last-first < drain/20 {
		t.Errorf("(c) every stream closed within %v (%v to %v after the reload began); want them spread over the drain", last-first, first, last)
	}
	t.Logf("(c) reload took %v; streams closed %v to %v after it began (the last over HTTP/1.1 at %v, over HTTP/2 at %v)",
		took.Round(time.Millisecond), first.Round(time.Millisecond), last.Round(time.Millisecond), lastH1.Round(time.Millisecond), lastH2.Round(time.Millisecond))

	// New sessions are the new config's; old ones keep working.
	var r reply
	for try := 0; try < 5; try++ {
		r = post(ctx, rawClient, url, initAt(1, loadVersion), nil)
		if r.err == nil || !isDialReset(r.err) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !r.ok() || r.hdr.Get("X-Mcp-Config") != "v2" {
		t.Fatalf("(c) initialize after the reload: %v, X-Mcp-Config %q; want an answer of the new config", r, r.hdr.Get("X-Mcp-Config"))
	}
	tok := r.hdr.Get("Mcp-Session-Id")
	resp, err := openStream(ctx, sc, base+"/mcp", tok, loadVersion, "new")
	if err != nil {
		t.Fatalf("(c) GET stream of a new session: %v", err)
	}
	if err := firstEvent(resp.Body); err != nil {
		t.Errorf("(c) GET stream of a new session: %v", err)
	}
	resp.Body.Close()
	if p := post(ctx, rawClient, url, rpcRequest(9, "ping"), sessionHeaders(toks[0], loadVersion)); !p.ok() {
		t.Errorf("(c) ping in a session opened before the reload: %v", p)
	}
	if d := deleteSession(ctx, rawClient, url, tok, loadVersion); d.status != http.StatusOK {
		t.Errorf("(c) DELETE of the new session: %v", d)
	}

	if !waitUntil(faultWait, 20*time.Millisecond, func() bool { return up.busy.Load() == 0 }) {
		t.Errorf("(c) the upstream still holds %d GET streams", up.busy.Load())
	}
	if !waitUntil(faultWait, 20*time.Millisecond, func() bool {
		return liveMetric(t, "caddy_mcp_held_bytes") == held0 && liveMetric(t, "caddy_mcp_goroutines_owned") == owned0
	}) {
		t.Errorf("(c) caddy_mcp_held_bytes %v (baseline %v), caddy_mcp_goroutines_owned %v (baseline %v)",
			liveMetric(t, "caddy_mcp_held_bytes"), held0, liveMetric(t, "caddy_mcp_goroutines_owned"), owned0)
	}
	now := settle()
	t.Logf("goroutines: %d before the streams, %d with them, %d after the reload drained them", baseline, withStreams, now)
	if now > baseline+slack {
		t.Errorf("(c) %d goroutines once the streams were gone, baseline %d (+%d allowed)\n%s", now, baseline, slack, goroutineDump())
	}
}

// TestFaultUpstreamDies kills an upstream (listener closed, every
// connection reset) while each of two sessions, at 2025-06-18 and
// 2025-11-25, has a call waiting for a JSON answer, a call whose SSE
// answer has begun, and a GET stream. Every pending call is answered: the
// JSON call with a 502 whose body is a JSON-RPC error carrying its id, the
// SSE call with a final JSON-RPC error event for its id before a clean
// end (and a retry hint after it for the 2025-11-25 client), the GET
// stream with a clean end (and a retry hint for the 2025-11-25 client).
// The next request of a session, whose upstream cannot be dialled, gets
// 503 with Retry-After and a JSON-RPC error, not 404.
func TestFaultUpstreamDies(t *testing.T) {
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseAll)
	hold := func(ctx context.Context) {
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	u := &fakeUpstream{name: "fault", on: map[string]func(*fakeCall){"*": func(c *fakeCall) {
		// An SSE answer that has begun: a progress notification, and
		// nothing more.
		if strings.HasPrefix(c.id, "2") && c.sse().event("", progressNote) != nil {
			return
		}
		hold(c.r.Context())
	}}, stream: func(s *fakeStream) error {
		if err := s.event("", logNote("hello")); err != nil {
			return err
		}
		hold(s.ctx)
		return nil
	}}
	srv := startKillable(t, "127.0.0.1:0", u)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tkeepalive 10s\n\t}\n}\n", port, srv.addr))
	base := proxyURL(port)
	url := base + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	type pending struct {
		version, tok   string
		jsonID, sseID  string
		json           <-chan reply
		sseEvs, getEvs <-chan sseEvent
		sseEnd, getEnd <-chan streamEnd
	}
	var ps []*pending
	for i, v := range []string{"2025-06-18", "2025-11-25"} {
		p := &pending{version: v, tok: openSessionWith(t, rawClient, url, v, nil), jsonID: strconv.Itoa(11 + i), sseID: strconv.Itoa(21 + i)}
		hdr := sessionHeaders(p.tok, v)
		p.json = sendJSON(ctx, url, callBody(p.jsonID, "slow", "{}"), hdr)
		resp, err := openPost(ctx, rawClient, url, callBody(p.sseID, "stream", "{}"), hdr)
		resp = sseAnswer(t, "call "+p.sseID, resp, err)
		defer resp.Body.Close()
		p.sseEvs, p.sseEnd = watchEvents(resp.Body)
		if ev := nextEvent(t, p.sseEvs, faultWait, "call "+p.sseID); !strings.Contains(ev.data, "notifications/progress") {
			t.Fatalf("call %s: first event %+v, want the progress notification", p.sseID, ev)
		}
		get := mustOpenStream(t, ctx, rawClient, base+"/mcp", p.tok, v, "get-"+v)
		p.getEvs, p.getEnd = watchEvents(get.Body)
		if ev := nextEvent(t, p.getEvs, faultWait, "GET at "+v); !strings.Contains(ev.data, "hello") {
			t.Fatalf("GET at %s: first event %+v", v, ev)
		}
		u.await(t, "call "+p.jsonID, faultWait, func(s fakeSeen) bool { return s.id == p.jsonID })
		ps = append(ps, p)
	}

	killed := time.Now()
	srv.kill()
	releaseAll()

	for _, p := range ps {
		retryWanted := p.version == "2025-11-25"
		r := awaitReply(t, p.json, "call "+p.jsonID)
		if r.err != nil || r.status != http.StatusBadGateway || r.hdr.Get("Content-Type") != "application/json" {
			t.Errorf("call %s (%s) waiting for a JSON answer: %d %q %v %q, want 502 with a JSON-RPC error",
				p.jsonID, p.version, r.status, r.hdr.Get("Content-Type"), r.err, r.body)
		}
		if r.err == nil {
			rpcErrorFor(t, "call "+p.jsonID, r.body, p.jsonID, -32603)
		}

		evs, end := drainEvents(p.sseEvs, p.sseEnd)
		errAt, retryAt := -1, -1
		for i, ev := range evs {
			switch {
			case ev.retry >= 0:
				retryAt = i
				if ev.retry != 1000 {
					t.Errorf("call %s (%s): retry %d ms, want the default hint 1000", p.sseID, p.version, ev.retry)
				}
			case ev.data != "":
				errAt = i
			}
		}
		switch {
		case end.err != nil:
			t.Errorf("call %s (%s): the SSE answer ended with %v, want a clean end", p.sseID, p.version, end.err)
		case errAt < 0:
			t.Errorf("call %s (%s): no event after the upstream died (%+v)", p.sseID, p.version, evs)
		default:
			msg := rpcErrorFor(t, "call "+p.sseID+" final event", evs[errAt].data, p.sseID, -32603)
			t.Logf("call %s (%s): final event %q, %v after the kill", p.sseID, p.version, msg, end.at.Sub(killed).Round(time.Millisecond))
		}
		if retryWanted && retryAt < errAt {
			t.Errorf("call %s (%s): no retry hint after the final event (%+v)", p.sseID, p.version, evs)
		}
		if !retryWanted && retryAt >= 0 {
			t.Errorf("call %s (%s): a retry hint for a client that does not honour it", p.sseID, p.version)
		}

		evs, end = drainEvents(p.getEvs, p.getEnd)
		retries := 0
		for _, ev := range evs {
			if ev.retry >= 0 {
				retries++
			} else {
				t.Errorf("GET at %s: unexpected %+v after the upstream died", p.version, ev)
			}
		}
		if end.err != nil {
			t.Errorf("GET at %s ended with %v, want a clean end", p.version, end.err)
		}
		want := 0
		if retryWanted {
			want = 1
		}
		if retries != want {
			t.Errorf("GET at %s: %d retry hints, want %d", p.version, retries, want)
		}
	}

	// The session's upstream cannot be dialled now.
	r := postJSON(ctx, url, callBody("31", "echo", "{}"), sessionHeaders(ps[0].tok, ps[0].version))
	if r.err != nil || r.status != http.StatusServiceUnavailable || r.hdr.Get("Retry-After") != "1" {
		t.Errorf("request of a session whose upstream is down: %d Retry-After %q %v %q, want 503 with Retry-After 1",
			r.status, r.hdr.Get("Retry-After"), r.err, r.body)
	}
	if r.err == nil {
		rpcErrorFor(t, "request 31", r.body, "31", -32000)
	}
}

// TestFaultUnansweredStream has an upstream answer a tools/call with
// Content-Type text/event-stream but without the response: a notification
// and the end of the stream, a plain JSON body, and no body at all (with
// Content-Length: 0, and chunked). The client gets, each time, a JSON-RPC
// error event for its request as the stream's last event, not an empty
// 200.
func TestFaultUnansweredStream(t *testing.T) {
	up := startFake(t, &fakeUpstream{name: "fault", on: map[string]func(*fakeCall){"*": func(c *fakeCall) {
		w := c.w
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		switch c.id {
		case "41":
			_, _ = io.WriteString(w, "data: "+progressNote+"\n\n")
		case "42":
			_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":42,"result":{}}`)
		case "44":
			// The header goes out at once; the body, chunked, is empty.
			_ = http.NewResponseController(w).Flush()
		}
		// Without a write or flush (43) net/http sends Content-Length: 0.
	}}})
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr()))
	url := proxyURL(port) + "/mcp"
	for _, version := range []string{"2025-06-18", "2025-11-25"} {
		tok := openSessionWith(t, rawClient, url, version, nil)
		for _, tc := range []struct{ id, what string }{
			{"41", "a notification, then the end"},
			{"42", "plain JSON"},
			{"43", "an empty body (Content-Length 0)"},
			{"44", "an empty chunked body"},
		} {
			t.Run(version+"/"+tc.what, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), faultWait)
				defer cancel()
				resp, err := openPost(ctx, rawClient, url, callBody(tc.id, "x", "{}"), sessionHeaders(tok, version))
				resp = sseAnswer(t, "call "+tc.id, resp, err)
				defer resp.Body.Close()
				var raw bytes.Buffer
				var evs []sseEvent
				err = readEvents(io.TeeReader(resp.Body, &raw), func(ev sseEvent) error {
					if !ev.comment && ev.data != "" {
						evs = append(evs, ev)
					}
					return nil
				})
				if err != nil {
					t.Fatalf("the answer did not end cleanly: %v (received %q)", err, raw.String())
				}
				if len(evs) == 0 {
					t.Fatalf("the client received no event (%q)", raw.String())
				}
				if tc.id == "41" && (len(evs) != 2 || !strings.Contains(evs[0].data, "notifications/progress")) {
					t.Errorf("received %q; want the notification, then the error", raw.String())
				}
				msg := rpcErrorFor(t, "last event", evs[len(evs)-1].data, tc.id, -32603)
				t.Logf("received %q (%s)", raw.String(), msg)
			})
		}
	}
}

// TestFaultCancelReachesUpstream: a 2025-06-18 client that goes away
// before its request's answer carried any event — once after the SSE
// answer began, once before any answer — makes the proxy abort the
// upstream request and post notifications/cancelled with the request's
// id in the session. An SSE answer that began is kept for the replay age
// (1s here) for a client that might resume it.
func TestFaultCancelReachesUpstream(t *testing.T) {
	const replayAge = time.Second
	var mu sync.Mutex
	aborted := map[string]chan struct{}{}
	release := make(chan struct{})
	u := startFake(t, &fakeUpstream{name: "fault", on: map[string]func(*fakeCall){"*": func(c *fakeCall) {
		done := make(chan struct{})
		mu.Lock()
		aborted[c.id] = done
		mu.Unlock()
		if c.id == "51" {
			c.sse()
		}
		select {
		case <-c.r.Context().Done():
			close(done)
		case <-release:
		}
	}}})
	t.Cleanup(func() { close(release) })
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\treplay 100 1MiB 1s\n\t}\n}\n", port, u.addr()))
	url := proxyURL(port) + "/mcp"
	const version = "2025-06-18"
	tok := openSessionWith(t, rawClient, url, version, nil)
	sids := u.mintedIDs()
	if len(sids) != 1 {
		t.Fatalf("the upstream minted %d sessions", len(sids))
	}
	upstreamAborted := func(id string) bool {
		mu.Lock()
		done := aborted[id]
		mu.Unlock()
		if done == nil {
			return false
		}
		select {
		case <-done:
			return true
		case <-time.After(faultWait):
			return false
		}
	}
	cancelled := func(id string, gone time.Time, within time.Duration) {
		t.Helper()
		c := u.await(t, "notifications/cancelled for request "+id, within, func(s fakeSeen) bool { return s.cancelledID() == id })
		if c.sid != sids[0] || c.method != http.MethodPost || c.path != "/mcp" {
			t.Errorf("notifications/cancelled for %s: %s %s in session %q, want POST /mcp in %q", id, c.method, c.path, c.sid, sids[0])
		}
		t.Logf("notifications/cancelled for request %s reached the upstream %v after the client left", id, c.at.Sub(gone).Round(time.Millisecond))
		if !upstreamAborted(id) {
			t.Errorf("the upstream request %s was not aborted", id)
		}
	}

	// The SSE answer began and carried nothing.
	cctx, ccancel := context.WithCancel(context.Background())
	resp, err := openPost(cctx, rawClient, url, callBody("51", "slow", "{}"), sessionHeaders(tok, version))
	resp = sseAnswer(t, "call 51", resp, err)
	gone := time.Now()
	resp.Body.Close()
	ccancel()
	cancelled("51", gone, replayAge+faultWait)

	// No answer yet.
	cctx, ccancel = context.WithCancel(context.Background())
	defer ccancel()
	reply := sendJSON(cctx, url, callBody("52", "slow", "{}"), sessionHeaders(tok, version))
	u.await(t, "call 52", faultWait, func(s fakeSeen) bool { return s.id == "52" })
	gone = time.Now()
	ccancel()
	<-reply
	cancelled("52", gone, faultWait)
}

// blipUpstream serves the demo MCP server with health-check faults on
// demand: /health answers health (200 when 0), and failNext makes the next
// POST answer 500.
type blipUpstream struct {
	h        http.Handler
	health   atomic.Int32
	failNext atomic.Bool
	served   atomic.Int64 // requests the MCP server answered
	inits    atomic.Int64 // POSTs without a session (initialize)
}

func newBlipUpstream(name string) *blipUpstream {
	return &blipUpstream{h: demo.Handler(demo.NewServer(name), "/sse", nil)}
}

func (b *blipUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/health" {
		st := int(b.health.Load())
		if st == 0 {
			st = http.StatusOK
		}
		w.WriteHeader(st)
		return
	}
	if r.Method == http.MethodPost && b.failNext.CompareAndSwap(true, false) {
		http.Error(w, "injected failure", http.StatusInternalServerError)
		return
	}
	b.served.Add(1)
	if r.Method == http.MethodPost && r.Header.Get("Mcp-Session-Id") == "" {
		b.inits.Add(1)
	}
	b.h.ServeHTTP(w, r)
}

// openBlip serves blip upstreams A (on a server the test can kill) and B
// behind one mcp_proxy with lb_policy first and the lines of block, and
// opens a session, which must go to A.
func openBlip(t *testing.T, block string) (a, b *blipUpstream, as *killableServer, url, sid string) {
	t.Helper()
	a, b = newBlipUpstream("A"), newBlipUpstream("B")
	as = startKillable(t, "127.0.0.1:0", a)
	bs := startUpstreamHandler(t, "B", b)
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, as.addr+" "+bs.addr(), "\t\tlb_policy first\n"+block))
	url = proxyURL(port) + "/mcp"
	sid, on := blipOpen(t, url, a, b)
	if on != "A" {
		t.Fatalf("the first session went to %s, want A (lb_policy first)", on)
	}
	return a, b, as, url, sid
}

// blipOpen opens a session and reports which upstream created it.
func blipOpen(t *testing.T, url string, a, b *blipUpstream) (sid, on string) {
	t.Helper()
	a0, b0 := a.inits.Load(), b.inits.Load()
	sid = rawSession(t, url, nil)
	switch {
	case a.inits.Load() > a0:
		return sid, "A"
	case b.inits.Load() > b0:
		return sid, "B"
	}
	t.Fatal("neither upstream created the session")
	return "", ""
}

// blipEcho calls echo in session sid and checks that upstream up answered.
func blipEcho(t *testing.T, url, sid string, id int, up *blipUpstream, what string) {
	t.Helper()
	before := up.served.Load()
	st, body := sessionEcho(t, url, sid, id)
	if st != http.StatusOK || !strings.Contains(body, fmt.Sprintf("hi %d", id)) {
		t.Errorf("%s: %d %s, want the echo", what, st, body)
	}
	if up.served.Load() == before {
		t.Errorf("%s: not served by the session's upstream", what)
	}
}

// TestFaultPassiveHealthBlip: sessions pinned to upstream A survive A
// being marked down by passive health checks (one 500 with max_fails 1):
// the session's next request still goes to A and succeeds, while new
// sessions go to B. When A cannot be reached at all a session request
// gets 503 with Retry-After set to the fail duration and a JSON-RPC
// error, not 404; when A is back on the same port the session works
// again.
func TestFaultPassiveHealthBlip(t *testing.T) {
	a, b, as, url, sid := openBlip(t, "\t\tfail_duration 10s\n\t\tmax_fails 1\n\t\tunhealthy_status 5xx\n")
	blipEcho(t, url, sid, 2, a, "a request while A is healthy")

	a.failNext.Store(true)
	if st, body := sessionEcho(t, url, sid, 3); st != http.StatusInternalServerError {
		t.Fatalf("the injected failure: %d %s, want A's 500", st, body)
	}
	blipEcho(t, url, sid, 4, a, "the session's next request, A marked down")
	if sid2, on := blipOpen(t, url, a, b); on != "B" {
		t.Errorf("a new session went to %s while A is marked down, want B", on)
	} else {
		blipEcho(t, url, sid2, 5, b, "a request of the session on B")
	}

	as.kill()
	st, hdr, got := rawPost(t, url, `{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi 6"}}}`, inSession(sid, nil))
	if st != http.StatusServiceUnavailable || hdr.Get("Retry-After") != "10" || hdr.Get("Content-Type") != "application/json" {
		t.Errorf("a request while A is unreachable: %d Retry-After %q %q %s, want 503 with Retry-After 10 (the fail duration)",
			st, hdr.Get("Retry-After"), hdr.Get("Content-Type"), got)
	}
	rpcErrorFor(t, "request 6", got, "6", -32000)

	as.start(t)
	blipEcho(t, url, sid, 7, a, "the session's request once A is back")
}

// TestFaultActiveHealthBlip: while A's active health check answers 500, a
// session pinned to A keeps being served by A and new sessions go to B;
// once the check passes again new sessions go to A.
func TestFaultActiveHealthBlip(t *testing.T) {
	a, b, _, url, sid := openBlip(t, "\t\thealth_uri /health\n\t\thealth_interval 100ms\n\t\thealth_timeout 1s\n")
	a.health.Store(http.StatusInternalServerError)
	var sid2 string
	pollUntil(t, "new sessions to go to B", func() bool {
		s, on := blipOpen(t, url, a, b)
		sid2 = s
		return on == "B"
	})
	blipEcho(t, url, sid, 2, a, "the session's request while A's health check fails")
	blipEcho(t, url, sid2, 3, b, "a request of the session on B")
	a.health.Store(http.StatusOK)
	pollUntil(t, "new sessions to go to A again", func() bool {
		_, on := blipOpen(t, url, a, b)
		return on == "A"
	})
	blipEcho(t, url, sid, 4, a, "the session's request after A recovered")
}

// TestFaultStreamComment: an upstream GET stream that opens with the
// comment ": ok" and then stays silent reaches the client with that
// comment at once, long before the proxy's keepalive (10s), whether the
// stream is handed off or relayed by the handler.
func TestFaultStreamComment(t *testing.T) {
	u := startFake(t, &fakeUpstream{stream: commentThenIdle})
	on, off := loadHandoffPair(t, u.addr(), "\t\tkeepalive 10s\n")
	for _, tc := range []struct {
		name string
		port int
	}{{"handoff", on}, {"handler", off}} {
		t.Run(tc.name, func(t *testing.T) {
			base := proxyURL(tc.port)
			tok := u.openSession(t, base, relayVersion)
			ctx, cancel := context.WithTimeout(context.Background(), faultWait)
			defer cancel()
			opened := time.Now()
			resp := mustOpenStream(t, ctx, rawClient, base+"/mcp", tok, relayVersion, "comment-"+tc.name)
			got := make(chan []byte, 1)
			go func() {
				var seen []byte
				buf := make([]byte, 64)
				for !bytes.Contains(seen, []byte("\n\n")) {
					n, err := resp.Body.Read(buf)
					seen = append(seen, buf[:n]...)
					if err != nil {
						break
					}
				}
				got <- seen
			}()
			select {
			case b := <-got:
				if string(b) != ": ok\n\n" {
					t.Errorf("the stream began with %q, want the upstream's %q", b, ": ok\n\n")
				}
				if d := time.Since(opened); d > 3*time.Second {
					t.Errorf("the comment arrived %v after the GET, want it at once", d)
				} else {
					t.Logf("the comment arrived %v after the GET", d.Round(time.Microsecond))
				}
			case <-time.After(5 * time.Second):
				t.Fatal("nothing within 5s of the GET")
			}
		})
	}
}

// faultClientCN is the common name of the client certificate the proxy
// presents to a TLS upstream.
const faultClientCN = "mcpgate-test-client"

// TestFaultSideRequestsTLS: the requests the proxy sends of its own accord
// go through the upstream's own transport and header rules. The upstream
// is the demo MCP server over TLS, requiring a client certificate signed
// by the test's CA; mcp_proxy reaches it with `transport http {
// tls_trust_pool file …; tls_client_auth … }` and sets `header_up
// Authorization`. A notifications/cancelled for a call whose client left,
// and the DELETE of a session evicted through the admin API, reach the
// upstream over the client-certificate connection, with the header and
// the upstream's own Mcp-Session-Id.
func TestFaultSideRequestsTLS(t *testing.T) {
	ca := newTestCA(t)
	clientCert, clientKey := ca.writeFiles("client", ca.issue(faultClientCN))
	rec := new(fakeLog)
	srv := httptest.NewUnstartedServer(rec.wrap(demo.Handler(demo.NewServer("tls"), "", nil)))
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{ca.issue("127.0.0.1", "127.0.0.1")},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.pool,
		MinVersion:   tls.VersionTLS12,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	port, adminPort := freePort(t), freePort(t)
	loadWithAdmin(t, adminPort, "", fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\ttransport http {\n\t\t\ttls_trust_pool file %s\n\t\t\ttls_client_auth %s %s\n\t\t}\n\t\theader_up Authorization \"Bearer side-test\"\n\t\treplay 100 1MiB 1s\n\t}\n}\n",
		port, addr, ca.file, clientCert, clientKey))
	url := proxyURL(port) + "/mcp"
	tok := rawSession(t, url, nil)
	sids := rec.mintedIDs()
	if len(sids) != 1 {
		t.Fatalf("the upstream minted %d sessions", len(sids))
	}
	if n := rec.count(func(s fakeSeen) bool { return s.auth != "Bearer side-test" || s.cert != faultClientCN }); n != 0 {
		t.Fatalf("%d of the client's requests reached the upstream without the header or the client certificate", n)
	}
	side := func(what string, s fakeSeen) {
		t.Helper()
		if s.auth != "Bearer side-test" || s.cert != faultClientCN || s.sid != sids[0] || s.path != "/mcp" {
			t.Errorf("%s: Authorization %q, client certificate %q, Mcp-Session-Id %q, path %q; want %q, %q, %q, /mcp",
				what, s.auth, s.cert, s.sid, s.path, "Bearer side-test", faultClientCN, sids[0])
		}
	}

	// A call whose client leaves: the upstream is told.
	ctx, cancel := context.WithCancel(context.Background())
	reply := sendJSON(ctx, url, callBody("77", "countdown", `{"from":100,"delay_ms":100}`), inSession(tok, nil))
	rec.await(t, "call 77", faultWait, func(s fakeSeen) bool { return s.id == "77" })
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-reply
	c := rec.await(t, "notifications/cancelled for call 77", 2*faultWait, func(s fakeSeen) bool { return s.cancelledID() == "77" })
	side("notifications/cancelled", c)

	// An evicted session is deleted upstream.
	id := (&upstream{Server: srv}).adminID(sids[0])
	var evicted struct {
		Evicted int `json:"evicted"`
	}
	adminJSON(t, adminPort, http.MethodDelete, "/mcp/sessions/"+id, "", http.StatusOK, &evicted)
	if evicted.Evicted != 1 {
		t.Fatalf("evicted %d sessions, want 1", evicted.Evicted)
	}
	d := rec.await(t, "the DELETE of the evicted session", faultWait, func(s fakeSeen) bool { return s.method == http.MethodDelete })
	side("DELETE", d)
	if d.version != sessionVersion {
		t.Errorf("DELETE: Mcp-Protocol-Version %q, want %q", d.version, sessionVersion)
	}
	if st, body := sessionEcho(t, url, tok, 78); st != http.StatusNotFound {
		t.Errorf("a request of the evicted session: %d %s, want 404", st, body)
	}
}

// TestFaultSessionTableFull: with `mcp { max_sessions 1 }` and the one
// session holding a GET stream open (in flight, so it cannot be evicted),
// a new initialize is refused with 503, Retry-After and a JSON-RPC error,
// and never reaches the upstream; once the stream is closed the idle
// session gives way to a new one.
func TestFaultSessionTableFull(t *testing.T) {
	u := startFake(t, &fakeUpstream{stream: eventThenIdle("1", "hi")})
	port := freePort(t)
	loadCaddyfileWith(t, "\tmcp {\n\t\tmax_sessions 1\n\t}\n", fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, u.addr()))
	base := proxyURL(port)
	url := base + "/mcp"
	tok := u.openSession(t, base, relayVersion)
	ctx, cancel := context.WithTimeout(context.Background(), 2*faultWait)
	defer cancel()
	resp := mustOpenStream(t, ctx, rawClient, base+"/mcp", tok, relayVersion, "held")
	evs, _ := watchEvents(resp.Body)
	nextEvent(t, evs, faultWait, "first event")

	r := postJSON(ctx, url, initializeBody, nil)
	assertRefused(t, r, http.StatusServiceUnavailable, "1", "session limit", "1")
	if n := u.live(); n != 1 {
		t.Errorf("the upstream has %d sessions, want 1: a refused initialize reached it", n)
	}

	resp.Body.Close()
	pollUntil(t, "a new session once the stream is closed", func() bool {
		r = postJSON(ctx, url, initializeBody, nil)
		if r.status == http.StatusServiceUnavailable {
			return false
		}
		if r.status != http.StatusOK || r.hdr.Get("Mcp-Session-Id") == "" {
			t.Fatalf("initialize: %d %v %s", r.status, r.err, r.body)
		}
		return true
	})
	st, _, body := rawPost(t, url, `{"jsonrpc":"2.0","id":2,"method":"ping"}`, sessionHeaders(tok, relayVersion))
	if st != http.StatusNotFound {
		t.Errorf("a request of the evicted session: %d %s, want 404", st, body)
	}
}

// TestFaultDrainOnStopFollowsReload runs Caddy as a process with `drain
// 5s`, opens 20 streams, reloads to `drain 300ms` through the admin API,
// opens 3 more streams and stops the process (SIGTERM). The streams of the
// running config are closed with a retry hint between 80% and 100% of
// 300ms. The process waits for open streams only as long as the running
// config's drain and a second: the 20 streams opened before the reload,
// whose own drain would end 4 to 5 s after the reload, are closed then,
// each with its retry hint as the drain would, and the process exits
// within about 1.3 s, not 5 s. (Stopping makes the process exit, so it
// cannot be done in this process.)
func TestFaultDrainOnStopFollowsReload(t *testing.T) {
	const (
		oldStreams = 20
		newStreams = 3
		drain      = 300 * time.Millisecond
		bound      = 3 * time.Second // well below the old drain's 4s
		margin     = time.Second
	)
	u := startFake(t, &fakeUpstream{stream: eventThenIdle("1", "hi")})
	port, adminPort := freePort(t), freePort(t)
	cf := func(d string) string {
		return fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n}\n:%d {\n\tmcp_proxy %s {\n\t\tdrain %s\n\t}\n}\n", adminPort, port, u.addr(), d)
	}
	p := startBuiltCaddy(t, cf("5s"), port, adminPort)
	base := proxyURL(port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type watched struct {
		evs   <-chan sseEvent
		ended <-chan streamEnd
	}
	open := func(key string) watched {
		t.Helper()
		tok := u.openSession(t, base, relayVersion)
		resp := mustOpenStream(t, ctx, rawClient, base+"/mcp", tok, relayVersion, key)
		evs, ended := watchEvents(resp.Body)
		if ev := nextEvent(t, evs, faultWait, key); ev.id != "1" {
			t.Fatalf("%s: first block %+v", key, ev)
		}
		return watched{evs, ended}
	}
	var olds, news []watched
	for i := range oldStreams {
		olds = append(olds, open(fmt.Sprintf("old%d", i)))
	}
	if st, body := faultAdminLoad(t, adminPort, "text/caddyfile", cf("300ms")); st != http.StatusOK {
		t.Fatalf("reload: %d %s", st, body)
	}
	for i := range newStreams {
		news = append(news, open(fmt.Sprintf("new%d", i)))
	}

	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	type closed struct {
		after   time.Duration
		retries int
		err     error
	}
	collect := func(ws []watched) (out []closed) {
		for _, w := range ws {
			got, end := drainEvents(w.evs, w.ended)
			c := closed{after: end.at.Sub(start), err: end.err}
			for _, ev := range got {
				if ev.retry >= 0 {
					c.retries++
				}
			}
			out = append(out, c)
		}
		return out
	}
	newClosed, oldClosed := collect(news), collect(olds)
	var exit time.Duration
	select {
	case <-p.exited:
		exit = time.Since(start)
	case <-time.After(faultWait):
		t.Fatalf("the process did not exit within %v of SIGTERM", faultWait)
	}
	summary := func(cs []closed) string {
		var b strings.Builder
		for i, c := range cs {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%v (%d hints)", c.after.Round(time.Millisecond), c.retries)
		}
		return b.String()
	}
	t.Logf("after SIGTERM, the streams of the running config closed at %s; those opened before the reload at %s; the process exited at %v",
		summary(newClosed), summary(oldClosed), exit.Round(time.Millisecond))

	t.Run("running config's drain", func(t *testing.T) {
		for i, c := range newClosed {
			if c.retries != 1 || c.err != nil || c.after < drain*8/10 || c.after > drain+margin {
				t.Errorf("stream %d of the running config: %d retry hints, end %v, closed %v after SIGTERM; want one hint, a clean end, between %v and %v",
					i, c.retries, c.err, c.after, drain*8/10, drain+margin)
			}
		}
		for i, c := range oldClosed {
			if c.err != nil || c.after > bound {
				t.Errorf("stream %d opened before the reload: end %v, closed %v after SIGTERM; want a clean end within %v", i, c.err, c.after, bound)
			}
		}
		if exit > bound {
			t.Errorf("the process exited %v after SIGTERM, want within %v (drain 300ms and a second)", exit, bound)
		}
	})
	t.Run("streams closed on exit get the retry hint", func(t *testing.T) {
		missing := 0
		for _, c := range oldClosed {
			if c.retries != 1 {
				missing++
			}
		}
		if missing > 0 {
			t.Errorf("%d of the %d streams still open when the process stopped waiting got no retry hint", missing, len(oldClosed))
		}
	})
}

// TestFaultConfigDoesNothing: configuration that would do nothing is an
// error naming the fix — a queue without max_inflight, a subdirective
// given twice, a tool rule with max_inflight 0 and a timeout — while the
// same settings in a form that does something load.
func TestFaultConfigDoesNothing(t *testing.T) {
	for _, tc := range []struct {
		name, block, want string
	}{
		{"queue without max_inflight", "queue 10 1s", "set max_inflight or remove queue"},
		{"max_inflight twice", "max_inflight 5\n\t\tmax_inflight 6", "max_inflight given twice: give it once"},
		{"drain twice", "drain 1s\n\t\tdrain 2s", "drain given twice: give it once"},
		{"tool max_inflight 0 with a wait", "tool x max_inflight 0 wait 1s", "set max_inflight or remove wait"},
		{"queue with max_inflight", "max_inflight 5\n\t\tqueue 10 1s", ""},
		{"queue with an adaptive limit", "limit adaptive\n\t\tqueue 10 1s", ""},
		{"tool max_inflight 0", "tool x max_inflight 0", ""},
		{"two tool rules", "tool x max_inflight 1\n\t\ttool y max_inflight 2 wait 1s", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			cf := fmt.Sprintf("{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n\tlog {\n\t\toutput discard\n\t}\n}\n:%d {\n\tmcp_proxy 127.0.0.1:9 {\n\t\t%s\n\t}\n}\n", port, tc.block)
			cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				err = caddy.Load(cfg, true)
				if err == nil {
					t.Cleanup(func() { _ = caddy.Stop() })
				}
			}
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("%s: %v, want it to load", tc.block, err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("%s: err = %v, want it to mention %q", tc.block, err, tc.want)
			case tc.want != "":
				t.Logf("%v", err)
				if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond); err == nil {
					c.Close()
					t.Errorf("a config that failed to load listens on %d", port)
				}
			}
		})
	}
}

// TestFaultUpstreamIdleConnectionClosed: mcp_proxy closes an idle
// connection to its upstream itself, after 4s, less than the 5s after
// which the usual MCP servers close theirs (a request sent on a connection
// as the upstream closes it would fail with 502). That a `keepalive` of
// the http transport takes precedence is TestWrapTransportIdleTimeout's.
func TestFaultUpstreamIdleConnectionClosed(t *testing.T) {
	var opened, closed atomic.Int32
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"jsonrpc":"2.0","id":1,"result":{}}`))
	}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			opened.Add(1)
		case http.StateClosed:
			closed.Add(1)
		}
	}
	up.Start()
	defer up.Close()
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, up.Listener.Addr().String(), "\t\trequire_session off\n"))
	st, _, body := rawPost(t, proxyURL(port)+"/mcp", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`,
		map[string]string{"MCP-Protocol-Version": "2025-06-18"})
	if st != http.StatusOK || opened.Load() != 1 {
		t.Fatalf("%d %s, %d upstream connections", st, body, opened.Load())
	}
	// reverse_proxy's own default would keep it for 2m, past this wait.
	pollUntil(t, "the proxy to close its idle upstream connection", func() bool { return closed.Load() == 1 })
}

// gzipped is s compressed with gzip.
func gzipped(s string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = io.WriteString(zw, s)
	_ = zw.Close()
	return b.Bytes()
}

// TestFaultEncodedAnswers: the proxy asks upstreams for unencoded
// answers whatever the client accepts, so a list result it filters is
// one it can read (a gzip-capable client once got the denied tool in
// the upstream's compressed list); an upstream that encodes its answer
// anyway gets the client a 502 with a JSON-RPC error, never bytes the
// proxy did not read.
func TestFaultEncodedAnswers(t *testing.T) {
	const list = `"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}},{"name":"secret","inputSchema":{"type":"object"}}]}}`
	var ignoreIdentity, hopOnly atomic.Bool
	var asked atomic.Value
	u := startFake(t, &fakeUpstream{name: "zip", on: map[string]func(*fakeCall){
		"tools/list": func(c *fakeCall) {
			asked.Store(c.r.Header.Get("Accept-Encoding"))
			msg := `{"jsonrpc":"2.0","id":` + c.id + `,` + list
			c.w.Header().Set("Content-Type", "application/json")
			if ignoreIdentity.Load() || strings.Contains(c.r.Header.Get("Accept-Encoding"), "gzip") {
				if hopOnly.Load() {
					// reverse_proxy would remove the field, not the coding.
					c.w.Header().Set("Connection", "Content-Encoding")
				}
				c.w.Header().Set("Content-Encoding", "gzip")
				_, _ = c.w.Write(gzipped(msg))
				return
			}
			_, _ = io.WriteString(c.w, msg)
		},
	}})
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, u.addr(), rulesBlock("deny tool secret")))
	url := proxyURL(port) + "/mcp"
	hdr := sessionHeaders(openSessionWith(t, rawClient, url, sessionVersion, nil), sessionVersion)
	hdr["Accept-Encoding"] = "gzip, br"
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	r := postJSON(ctx, url, rpcRequest(9, "tools/list"), hdr)
	if !r.ok() || !strings.Contains(r.body, `"echo"`) || strings.Contains(r.body, `"secret"`) {
		t.Errorf("tools/list from a gzip-capable client: %s; want the list with echo and without secret", r)
	}
	if got, _ := asked.Load().(string); got != "identity" {
		t.Errorf("the upstream was asked for Accept-Encoding %q, want identity", got)
	}
	ignoreIdentity.Store(true)
	r = postJSON(ctx, url, rpcRequest(10, "tools/list"), hdr)
	if r.status != http.StatusBadGateway || !strings.Contains(r.body, `"id":10`) || !strings.Contains(r.body, "-32603") || strings.Contains(r.body, "secret") {
		t.Errorf("an encoded answer: %s; want 502 with a JSON-RPC error for id 10", r)
	}
	hopOnly.Store(true)
	r = postJSON(ctx, url, rpcRequest(11, "tools/list"), hdr)
	if r.status != http.StatusBadGateway || !strings.Contains(r.body, `"id":11`) || !strings.Contains(r.body, "-32603") {
		t.Errorf("an encoded answer whose Connection header names Content-Encoding: %s; want 502 with a JSON-RPC error for id 11", r)
	}
}

// TestFaultFailedStartChangesNothing: a reload that fails when Caddy
// starts its apps (a listener whose port is taken) changes none of the
// running settings, whatever order Caddy starts the apps in (map order:
// the mcp app may start before the http app fails, so several attempts).
func TestFaultFailedStartChangesNothing(t *testing.T) {
	u := startFake(t, &fakeUpstream{name: "keep"})
	port, admin := freePort(t), freePort(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	global := func(sessions, inflight int) string {
		return fmt.Sprintf("\tmcp {\n\t\trefresh 50ms\n\t\tmax_sessions %d\n\t\tmax_inflight %d\n\t}\n", sessions, inflight)
	}
	good := testCaddyfile(fmt.Sprintf("127.0.0.1:%d", admin), global(1000, 500), opsSite(port, u.addr(), ""))
	bad := testCaddyfile(fmt.Sprintf("127.0.0.1:%d", admin), global(3, 2),
		opsSite(port, u.addr(), "")+fmt.Sprintf("http://127.0.0.1:%d {\n\trespond ok\n}\n", takenPort))
	loadConfig(t, good)
	before := status(t, admin)
	for attempt := 1; attempt <= 12; attempt++ {
		if st, b := faultAdminLoad(t, admin, "text/caddyfile", bad); st == http.StatusOK {
			t.Fatalf("the config with a taken port loaded: %s", b)
		}
		s := freshStatus(t, admin)
		if s.Resources.Sessions.Limit != before.Resources.Sessions.Limit || s.Resources.InFlight.Limit != before.Resources.InFlight.Limit {
			t.Fatalf("attempt %d: the failed reload changed the running settings: sessions limit %d → %d, in-flight limit %d → %d",
				attempt, before.Resources.Sessions.Limit, s.Resources.Sessions.Limit, before.Resources.InFlight.Limit, s.Resources.InFlight.Limit)
		}
	}
	// A config that loads still applies its settings.
	if st, b := faultAdminLoad(t, admin, "text/caddyfile", testCaddyfile(fmt.Sprintf("127.0.0.1:%d", admin), global(7, 5), opsSite(port, u.addr(), ""))); st != http.StatusOK {
		t.Fatalf("a good reload: %d %s", st, b)
	}
	if s := status(t, admin); s.Resources.Sessions.Limit != 7 || s.Resources.InFlight.Limit != 5 {
		t.Errorf("after a good reload: sessions limit %d, in-flight limit %d, want 7 and 5", s.Resources.Sessions.Limit, s.Resources.InFlight.Limit)
	}
}

// faultRawAnswer takes the upstream connection of call c over and writes
// raw on it: a response the net/http server would not send.
func faultRawAnswer(c *fakeCall, raw string) net.Conn {
	conn, _, err := http.NewResponseController(c.w).Hijack()
	if err != nil {
		panic(err)
	}
	_, _ = io.WriteString(conn, raw)
	return conn
}

// faultCutJSON is the start of a JSON answer to call id that declares 200
// bytes and holds 30 of them.
func faultCutJSON(id string) string {
	return "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n" + `{"jsonrpc":"2.0","id":` + id + `,"res`
}

// faultFreed waits until the proxy holds no request slot and no stream.
func faultFreed(t *testing.T, admin int, what string) {
	t.Helper()
	if !waitUntil(faultWait, 20*time.Millisecond, func() bool {
		s := status(t, admin)
		return s.Resources.InFlight.Used == 0 && s.Resources.Active == 0
	}) {
		s := status(t, admin)
		t.Errorf("%s: slots not freed: in flight %d, streams active %d", what, s.Resources.InFlight.Used, s.Resources.Active)
	}
}

// TestFaultJSONAnswerStallsPastDeadline: an upstream sends the header of
// a JSON answer and part of its body, then nothing. The request's
// deadline (request_timeout, or its tool's timeout) holds through the
// body: the client gets 200 with the -32001 error for its id, the
// upstream gets notifications/cancelled in its session, and the request's
// slot is free.
func TestFaultJSONAnswerStallsPastDeadline(t *testing.T) {
	for _, tc := range []struct{ name, block, tool string }{
		{"request_timeout", "\t\t\trequest_timeout 300ms\n", "stall"},
		{"tool timeout", "\t\t\ttool stall timeout 300ms\n", "stall"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			u := startFake(t, &fakeUpstream{name: "stall", on: map[string]func(*fakeCall){
				"tools/call:stall": func(c *fakeCall) {
					conn := faultRawAnswer(c, faultCutJSON(c.id))
					select {
					case <-release:
					case <-time.After(2 * faultWait):
					}
					_ = conn.Close()
				},
			}})
			t.Cleanup(func() { close(release) })
			port, admin := startOps(t, u.addr(), opsGlobal, tc.block)
			url := proxyURL(port) + "/mcp"
			tok := openSessionWith(t, rawClient, url, sessionVersion, nil)
			sids := u.mintedIDs()
			ctx, cancel := context.WithTimeout(context.Background(), faultWait)
			defer cancel()
			r := postJSON(ctx, url, callBody("9", tc.tool, "{}"), sessionHeaders(tok, sessionVersion))
			if r.status != http.StatusOK {
				t.Fatalf("stalled JSON answer: %s, want 200 with the deadline's error", r)
			}
			if m := rpcErrorFor(t, "stalled JSON answer", r.body, "9", -32001); !strings.Contains(m, "request timed out") {
				t.Errorf("stalled JSON answer: message %q", m)
			}
			note := u.await(t, "notifications/cancelled for 9", faultWait, func(s fakeSeen) bool { return s.cancelledID() == "9" })
			if len(sids) != 1 || note.sid != sids[0] {
				t.Errorf("notifications/cancelled came in session %q, want the upstream's %q", note.sid, sids)
			}
			faultFreed(t, admin, "stalled JSON answer")
		})
	}
}

// faultLatestSession serves u behind an mcp_proxy with the lines of block
// and opens a raw session at 2025-11-25; it returns the endpoint, the
// session's token and the admin port.
func faultLatestSession(t *testing.T, u *fakeUpstream, block string) (url, tok string, admin int) {
	t.Helper()
	port, admin := startOps(t, u.addr(), opsGlobal, block)
	url = proxyURL(port) + "/mcp"
	return url, openSessionWith(t, rawClient, url, "2025-11-25", nil), admin
}

// TestFaultUpstreamPolls: an upstream that closes a call's SSE answer
// right after a priming event, for its client to poll (SEP-1699), gets
// the poll from the proxy, which relays what follows on the stream its
// client holds: a client that does not resume streams itself gets the
// answer, and a deadline holds through the poll (the client gets -32001,
// the upstream notifications/cancelled, and the slots are freed). The
// poll of a call the client sent chunked, with Expect: 100-continue and
// a Content-Digest, is a GET with none of them (a request with trailers
// is refused before; see TestHostileRequestTrailers).
func TestFaultUpstreamPolls(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]string{}   // the raw ids of the calls, by priming event id
	framing := map[string]string{} // the body framing of each poll, by call
	answer := true
	u := startFake(t, &fakeUpstream{name: "poll", on: map[string]func(*fakeCall){
		"tools/call:poll": func(c *fakeCall) {
			mu.Lock()
			calls["p-"+c.id] = c.id
			mu.Unlock()
			_ = c.sse().write("id: p-" + c.id + "\nretry: 20\ndata: \n\n")
		},
	}, stream: func(s *fakeStream) error {
		mu.Lock()
		id, ok := calls[s.r.Header.Get("Last-Event-ID")]
		ans := answer
		if ok {
			framing[id] = fmt.Sprintf("length %d, transfer encoding %q, trailer %v, expect %q, digest %q",
				s.r.ContentLength, s.r.TransferEncoding, s.r.Trailer, s.r.Header.Get("Expect"), s.r.Header.Get("Content-Digest"))
		}
		mu.Unlock()
		if !ok || !ans {
			return s.idle(nil)
		}
		return s.event("r-"+id, `{"jsonrpc":"2.0","id":`+id+`,"result":{"content":[{"type":"text","text":"polled"}]}}`)
	}})
	url, tok, admin := faultLatestSession(t, u, "\t\t\trequest_timeout 500ms\n")
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()

	r := postJSON(ctx, url, callBody("4", "poll", "{}"), sessionHeaders(tok, "2025-11-25"))
	assertResult(t, r, "4", "polled")
	if strings.Contains(r.body, `"error"`) {
		t.Errorf("polled answer: %q", r.body)
	}
	if get := u.await(t, "the poll", faultWait, func(s fakeSeen) bool { return s.method == http.MethodGet }); get.sid != u.mintedIDs()[0] {
		t.Errorf("polled in session %q, want the upstream's", get.sid)
	}

	req, err := newPost(ctx, url, callBody("6", "poll", "{}"), sessionHeaders(tok, "2025-11-25"))
	if err != nil {
		t.Fatal(err)
	}
	req.Body, req.ContentLength, req.GetBody = io.NopCloser(io.MultiReader(req.Body)), -1, nil
	req.Header.Set("Expect", "100-continue")
	req.Header.Set("Content-Digest", "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:")
	assertResult(t, readReply(rawClient.Do(req)), "6", "polled")
	mu.Lock()
	if want := `length 0, transfer encoding [], trailer map[], expect "", digest ""`; framing["6"] != want {
		t.Errorf("the poll of a chunked call: %s, want %s", framing["6"], want)
	}
	mu.Unlock()

	mu.Lock()
	answer = false
	mu.Unlock()
	r = postJSON(ctx, url, callBody("5", "poll", "{}"), sessionHeaders(tok, "2025-11-25"))
	if r.status != http.StatusOK || !strings.Contains(r.body, `"id":5,"error":{"code":-32001`) {
		t.Errorf("a poll past the deadline: %s, want the -32001 error", r)
	}
	u.await(t, "notifications/cancelled for 5", faultWait, func(s fakeSeen) bool { return s.cancelledID() == "5" })
	faultFreed(t, admin, "a poll past the deadline")
}

// TestFaultPrimingWrittenAnew: where the proxy writes events anew
// (pin_tools here, or rules), an upstream's priming event (an id and an
// empty data field) keeps its empty data line. A client's SSE parser
// dispatches only an event with a data field (WHATWG; the TypeScript
// SDK's eventsource-parser), and the TypeScript SDK's client takes its
// Last-Event-ID from dispatched events only: without the line, a client
// whose stream breaks before the next event cannot resume it.
func TestFaultPrimingWrittenAnew(t *testing.T) {
	u := startFake(t, &fakeUpstream{name: "prime", on: map[string]func(*fakeCall){
		"tools/call:prime": func(c *fakeCall) {
			_ = c.sse().write("id: p-1\nretry: 20\ndata: \n\n")
			c.text("primed")
		},
	}})
	url, tok, _ := faultLatestSession(t, u, "\t\t\tpin_tools warn\n")
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	r := postJSON(ctx, url, callBody("4", "prime", "{}"), sessionHeaders(tok, "2025-11-25"))
	assertResult(t, r, "4", "primed")
	if first, _, _ := strings.Cut(r.body, "\n\n"); first != "id: p-1\nretry: 20\ndata:" {
		t.Errorf("the priming event reached the client as %q, want it with its data line", first)
	}
}

// TestFaultJSONAnswerBreaksOff: a JSON answer whose body breaks off (the
// connection closes before its declared length) gets the client a 502
// with a JSON-RPC -32603 error for its id, not a cut-off 200. A JSON
// answer larger than max_event_size is relayed as it comes, whole.
func TestFaultJSONAnswerBreaksOff(t *testing.T) {
	big := strings.Repeat("x", 10<<10)
	u := startFake(t, &fakeUpstream{name: "cut", on: map[string]func(*fakeCall){
		"tools/call:cut": func(c *fakeCall) {
			conn := faultRawAnswer(c, faultCutJSON(c.id))
			time.Sleep(50 * time.Millisecond)
			_ = conn.Close()
		},
		"tools/call:big": func(c *fakeCall) { c.text(big) },
	}})
	port, admin := startOps(t, u.addr(), opsGlobal, "\t\t\tmax_event_size 4KiB\n")
	url := proxyURL(port) + "/mcp"
	tok := openSessionWith(t, rawClient, url, sessionVersion, nil)
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	r := postJSON(ctx, url, callBody("7", "cut", "{}"), sessionHeaders(tok, sessionVersion))
	if r.status != http.StatusBadGateway || r.err != nil {
		t.Errorf("broken JSON answer: %s, want 502", r)
	}
	rpcErrorFor(t, "broken JSON answer", r.body, "7", -32603)
	r = postJSON(ctx, url, callBody("8", "big", "{}"), sessionHeaders(tok, sessionVersion))
	if !r.ok() || !strings.Contains(r.body, big) {
		t.Errorf("JSON answer over max_event_size: %d, %d bytes, want the whole answer", r.status, len(r.body))
	}
	faultFreed(t, admin, "broken JSON answer")
}

// TestFaultAnswerNeitherJSONNorSSE: a 200 answer to a POST carrying a
// request whose media type is neither JSON nor an event stream (a load
// balancer's page) is no answer a client can read: the client gets 502
// with a JSON-RPC -32603 error for its request, or, for a 2025-03-26
// batch, an array with one for each of its requests. So does an answer
// with two Content-Type fields, which clients read differently. An error
// status keeps its body byte for byte, and a notification's 202 passes.
func TestFaultAnswerNeitherJSONNorSSE(t *testing.T) {
	const page = "<html><body>Bad gateway from some LB</body></html>"
	u := startFake(t, &fakeUpstream{name: "html", on: map[string]func(*fakeCall){
		"tools/call:html": func(c *fakeCall) {
			c.w.Header().Set("Content-Type", "text/html")
			c.w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(c.w, page)
		},
		"tools/call:two": func(c *fakeCall) {
			// Read by its first Content-Type, a JSON answer; by the
			// TypeScript SDK, which reads the fields joined, an SSE one.
			c.w.Header()["Content-Type"] = []string{"application/json", "text/event-stream"}
			c.w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(c.w, "data: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n")
		},
		"tools/call:refused": func(c *fakeCall) {
			c.w.Header().Set("Content-Type", "text/html")
			c.w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(c.w, page)
		},
	}})
	port, admin := startOps(t, u.addr(), opsGlobal, "")
	url := proxyURL(port) + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	tok := openSessionWith(t, rawClient, url, sessionVersion, nil)
	r := postJSON(ctx, url, callBody("5", "html", "{}"), sessionHeaders(tok, sessionVersion))
	if r.status != http.StatusBadGateway || !strings.HasPrefix(r.hdr.Get("Content-Type"), "application/json") {
		t.Errorf("HTML answer: %s, want 502 with JSON", r)
	}
	rpcErrorFor(t, "HTML answer", r.body, "5", -32603)
	r = postJSON(ctx, url, callBody("7", "two", "{}"), sessionHeaders(tok, sessionVersion))
	if r.status != http.StatusBadGateway || r.hdr.Get("Content-Type") != "application/json" || len(r.hdr.Values("Content-Type")) != 1 {
		t.Errorf("an answer with two media types: %s %v, want 502 with JSON", r, r.hdr.Values("Content-Type"))
	}
	rpcErrorFor(t, "an answer with two media types", r.body, "7", -32603)

	r = postJSON(ctx, url, callBody("6", "refused", "{}"), sessionHeaders(tok, sessionVersion))
	if r.status != http.StatusBadRequest || r.body != page {
		t.Errorf("HTML error page: %s, want the upstream's 400 as it was", r)
	}
	r = postJSON(ctx, url, `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`, sessionHeaders(tok, sessionVersion))
	if r.status != http.StatusAccepted {
		t.Errorf("notification: %s, want 202", r)
	}

	old := openSessionWith(t, rawClient, url, "2025-03-26", nil)
	batch := "[" + callBody("21", "html", "{}") + "," + callBody("22", "html", "{}") + "]"
	r = postJSON(ctx, url, batch, sessionHeaders(old, "2025-03-26"))
	var answers []json.RawMessage
	if r.status != http.StatusBadGateway || json.Unmarshal([]byte(r.body), &answers) != nil || len(answers) != 2 {
		t.Fatalf("HTML answer to a batch: %s, want 502 with an array of two errors", r)
	}
	rpcErrorFor(t, "HTML answer to a batch", string(answers[0]), "21", -32603)
	rpcErrorFor(t, "HTML answer to a batch", string(answers[1]), "22", -32603)
	faultFreed(t, admin, "HTML answer")
}

// faultAnswers counts, in msgs, the responses for each raw id, and notes
// the code of the last error for each.
func faultAnswers(t *testing.T, msgs []string) (n map[string]int, code map[string]int) {
	t.Helper()
	n, code = map[string]int{}, map[string]int{}
	var add func(data []byte)
	add = func(data []byte) {
		var all []json.RawMessage
		if json.Unmarshal(data, &all) == nil {
			for _, m := range all {
				add(m)
			}
			return
		}
		var m struct {
			ID     json.RawMessage `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Code int `json:"code"`
			} `json:"error"`
		}
		if json.Unmarshal(data, &m) != nil || m.Result == nil && m.Error == nil {
			return
		}
		n[string(m.ID)]++
		if m.Error != nil {
			code[string(m.ID)] = m.Error.Code
		}
	}
	for _, d := range msgs {
		add([]byte(d))
	}
	return n, code
}

// TestFaultStrayAnswersDropped: the SSE answer to a POST carries its
// requests' answers, once each, and no other: a second answer for a
// request, and an answer under an id the POST did not send (alone or in
// an array), are dropped and counted, for a single request (which then
// gets the proxy's error when its own never came) and for a 2025-03-26
// batch.
func TestFaultStrayAnswersDropped(t *testing.T) {
	answer := func(id, text string) string {
		return `{"jsonrpc":"2.0","id":` + id + `,"result":{"content":[{"type":"text","text":"` + text + `"}]}}`
	}
	u := startFake(t, &fakeUpstream{name: "stray", on: map[string]func(*fakeCall){
		"tools/call:twice": func(c *fakeCall) {
			s := c.sse()
			_ = s.event("", answer(c.id, "first"))
			_ = s.event("", answer(c.id, "second"))
		},
		"tools/call:other": func(c *fakeCall) {
			s := c.sse()
			_ = s.event("", answer("424242", "not yours"))
			_ = s.event("", "["+answer("424243", "not yours")+","+progressNote+"]")
		},
		"tools/call:batch": func(c *fakeCall) {
			// The whole batch is answered here, on one stream.
			s := c.sse()
			_ = s.event("", answer("31", "first"))
			_ = s.event("", answer("31", "again"))
			_ = s.event("", answer("999", "not yours"))
			_ = s.event("", "["+answer("32", "first")+","+answer("32", "again")+","+progressNote+"]")
		},
		"tools/call:quiet": func(*fakeCall) {},
	}})
	port, admin := startOps(t, u.addr(), opsGlobal, "")
	url := proxyURL(port) + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	before := liveMetric(t, "caddy_mcp_stray_answers_total")
	tok := openSessionWith(t, rawClient, url, sessionVersion, nil)

	r := postJSON(ctx, url, callBody("11", "twice", "{}"), sessionHeaders(tok, sessionVersion))
	n, _ := faultAnswers(t, messagesOf(t, r))
	if len(n) != 1 || n["11"] != 1 || !strings.Contains(r.body, "first") || strings.Contains(r.body, "second") {
		t.Errorf("two answers for one request: the client got %v in %q, want the first only", n, r.body)
	}
	r = postJSON(ctx, url, callBody("12", "other", "{}"), sessionHeaders(tok, sessionVersion))
	n, code := faultAnswers(t, messagesOf(t, r))
	if len(n) != 1 || n["12"] != 1 || code["12"] != -32603 || !strings.Contains(r.body, "notifications/progress") {
		t.Errorf("answers under other ids: the client got %v (codes %v) in %q, want the proxy's -32603 for 12 only, and the notification", n, code, r.body)
	}

	old := openSessionWith(t, rawClient, url, "2025-03-26", nil)
	batch := "[" + callBody("31", "batch", "{}") + "," + callBody("32", "quiet", "{}") + "]"
	r = postJSON(ctx, url, batch, sessionHeaders(old, "2025-03-26"))
	n, _ = faultAnswers(t, messagesOf(t, r))
	if len(n) != 2 || n["31"] != 1 || n["32"] != 1 || strings.Contains(r.body, "again") || !strings.Contains(r.body, "notifications/progress") {
		t.Errorf("batch: the client got %v in %q, want one answer for 31 and 32 each, and the notification", n, r.body)
	}
	if got := liveMetric(t, "caddy_mcp_stray_answers_total") - before; got != 6 {
		t.Errorf("caddy_mcp_stray_answers_total grew by %v, want 6", got)
	}
	faultFreed(t, admin, "stray answers")
}

// TestFaultLegacyStreamDropsAwaitedCalls: a legacy (2024-11-05) session's
// calls are accepted with 202 and answered on its stream. When the
// upstream drops the stream (the connection reset), each call still
// awaiting its answer gets a -32603 error on the client's stream before
// that ends, the answer can come nowhere else; a call answered before the
// drop gets no second answer. With a deadline set (the proxy acts on the
// answers) and without.
func TestFaultLegacyStreamDropsAwaitedCalls(t *testing.T) {
	for _, tc := range []struct{ name, block string }{
		{"request_timeout", "\t\trequest_timeout 30s\n"},
		{"plain", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			drop := make(chan struct{})
			onStream := make(chan string, 8)
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodGet {
					openLegacyEvents(w, legacyEndpointEvent)
					for {
						select {
						case msg := <-onStream:
							fmt.Fprintf(w, "event: message\ndata: %s\n\n", msg)
							w.(http.Flusher).Flush()
						case <-drop:
							conn, _, err := http.NewResponseController(w).Hijack()
							if err == nil {
								if tc, ok := conn.(*net.TCPConn); ok {
									_ = tc.SetLinger(0)
								}
								_ = conn.Close()
							}
							return
						case <-r.Context().Done():
							return
						case <-time.After(2 * faultWait):
							return
						}
					}
				}
				var m struct {
					ID json.RawMessage `json:"id"`
				}
				b, _ := io.ReadAll(r.Body)
				_ = json.Unmarshal(b, &m)
				w.WriteHeader(http.StatusAccepted)
				if id := string(m.ID); id == "1" || id == "7" {
					onStream <- `{"jsonrpc":"2.0","id":` + id + `,"result":{}}`
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 2*faultWait)
			defer cancel()
			lc, port := legacyStreamTo(t, ctx, h, tc.block)
			url := proxyURL(port) + lc.endpoint
			if r := postJSON(ctx, url, initAt(1, "2024-11-05"), nil); r.status != http.StatusAccepted {
				t.Fatalf("initialize: %s", r)
			}
			var seen []string
			for _, id := range []string{"5", "6", "7"} {
				if r := postJSON(ctx, url, callBody(id, "slow", "{}"), nil); r.status != http.StatusAccepted {
					t.Fatalf("tools/call %s: %s", id, r)
				}
			}
			for len(seen) < 2 {
				select {
				case ev := <-lc.events:
					seen = append(seen, ev)
				case <-time.After(faultWait):
					t.Fatalf("the answers to initialize and call 7 did not come on the stream (events %q)", seen)
				}
			}
			close(drop)
			for done := false; !done; {
				select {
				case ev := <-lc.events:
					seen = append(seen, ev)
				case <-lc.closed:
					for more := true; more; {
						select {
						case ev := <-lc.events:
							seen = append(seen, ev)
						default:
							more = false
						}
					}
					done = true
				case <-time.After(faultWait):
					t.Fatalf("the client's stream did not end after the upstream dropped it (events %q)", seen)
				}
			}
			n, code := faultAnswers(t, seen)
			if len(n) != 4 || n["1"] != 1 || n["5"] != 1 || n["6"] != 1 || n["7"] != 1 || code["5"] != -32603 || code["6"] != -32603 || code["1"] != 0 || code["7"] != 0 {
				t.Errorf("answers on the client's stream: %v (codes %v) in %q; want a -32603 error for 5 and 6, the results for 1 and 7", n, code, seen)
			}
		})
	}
}

// TestFaultLegacyEndedSessionRefused: a legacy session is its stream; once
// the upstream ended it, a POST to its endpoint gets 404 from the proxy
// and is not forwarded: the upstream no longer has the session (the
// TypeScript SDK's SSE server never answers a POST for a session it does
// not know), and the client learns at once to open a new stream.
func TestFaultLegacyEndedSessionRefused(t *testing.T) {
	end := make(chan struct{})
	var posts atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			openLegacyEvents(w, legacyEndpointEvent)
			select {
			case <-end:
			case <-r.Context().Done():
			}
			return
		}
		posts.Add(1)
		w.WriteHeader(http.StatusAccepted)
	})
	ctx, cancel := context.WithTimeout(context.Background(), faultWait)
	defer cancel()
	lc, port := legacyStreamTo(t, ctx, h, "")
	url := proxyURL(port) + lc.endpoint
	if r := postJSON(ctx, url, initAt(1, "2024-11-05"), nil); r.status != http.StatusAccepted {
		t.Fatalf("initialize: %s", r)
	}
	close(end)
	select {
	case <-lc.closed:
	case <-time.After(faultWait):
		t.Fatal("the client's stream did not end with the upstream's")
	}
	if r := postJSON(ctx, url, rpcRequest(2, "ping"), nil); r.status != http.StatusNotFound {
		t.Errorf("a POST to the ended session: %s, want 404", r)
	}
	if n := posts.Load(); n != 1 {
		t.Errorf("the upstream got %d POSTs, want the initialize alone", n)
	}
}

// TestFaultUpstreamForgetsSession: an upstream that answers a session's
// request with 404 no longer has the session; the client gets the 404
// (and starts anew), and the proxy forgets the session rather than count
// it until it idles out.
func TestFaultUpstreamForgetsSession(t *testing.T) {
	u := startFake(t, &fakeUpstream{name: "expiring"})
	port, admin := startOps(t, u.addr(), opsGlobal, "")
	url := proxyURL(port) + "/mcp"
	before := status(t, admin).Resources.Sessions.Used
	tok := openSessionWith(t, rawClient, url, sessionVersion, nil)
	if got := status(t, admin).Resources.Sessions.Used; got != before+1 {
		t.Fatalf("sessions in the table: %d before, %d after initialize", before, got)
	}
	u.mu.Lock()
	clear(u.sessions)
	u.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	if r := postJSON(ctx, url, echoCall(3, "x"), sessionHeaders(tok, sessionVersion)); r.status != http.StatusNotFound {
		t.Errorf("a request of a session the upstream forgot: %s, want its 404", r)
	}
	if got := status(t, admin).Resources.Sessions.Used; got != before {
		t.Errorf("sessions in the table: %d before, %d after the upstream's 404; want it forgotten", before, got)
	}
}

// TestFaultLegacyEmptyAccept: the MCP Java SDK's legacy HTTP+SSE
// transport (HttpServletSseServerTransportProvider, Spring WebMvc/WebFlux)
// accepts a POST with "200 OK" and no body, then answers on the stream:
// the client gets that 200, as the answers of a legacy POST come on the
// stream.
func TestFaultLegacyEmptyAccept(t *testing.T) {
	h := legacyServer(legacyEndpointEvent, http.StatusOK, func(id string) string {
		return `{"jsonrpc":"2.0","id":` + id + `,"result":{}}`
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*faultWait)
	defer cancel()
	lc, port := legacyStreamTo(t, ctx, h, "")
	url := proxyURL(port) + lc.endpoint
	if r := postJSON(ctx, url, initAt(1, "2024-11-05"), nil); r.status != http.StatusOK {
		t.Errorf("initialize: %s, want the upstream's 200", r)
	}
	if r := postJSON(ctx, url, callBody("5", "x", "{}"), nil); r.status != http.StatusOK {
		t.Errorf("tools/call: %s, want the upstream's 200", r)
	}
}

// freshStatus reads /mcp/status on a connection of its own: a reload that
// fails rolls the admin endpoint back, which may close a connection kept
// alive from before it.
func freshStatus(t *testing.T, adminPort int) opsStatus {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/mcp/status", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var s opsStatus
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /mcp/status: %d %v", resp.StatusCode, err)
	}
	return s
}
