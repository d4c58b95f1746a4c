//go:build linux

// The session layer under attack: a flood of sessions from one client, a
// flood of legacy HTTP+SSE streams, raw upstream session ids presented
// every way a client can, upstream session ids the proxy cannot carry,
// the defaults of the session caps, the client key's fallback and what a
// session keeps of what the client chose. Each runs through a real Caddy
// in this process in front of real MCP peers on loopback.
//
// The flood tests scale down with loadScale (see load_test.go): under the
// race detector they open 15% (legacy: a fifth) of the sessions.

package caddytest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// watchUpstream is the demo MCP server (Streamable HTTP everywhere, legacy
// HTTP+SSE at /sse) with its requests recorded (recordedUpstream), and the
// session ids of the legacy endpoints it hands out. A request carrying
// X-Answer-Session-Id gets that value as the Mcp-Session-Id of its answer,
// so a test can make the upstream put an id on any answer (it is not
// recorded as minted); one carrying X-Slow is counted in running while it
// is served.
type watchUpstream struct {
	*recordedUpstream
	running atomic.Int64

	mu        sync.Mutex
	legacyIDs []string // session ids of the legacy endpoints handed out
}

func startWatchUpstream(t *testing.T, name string, opts *mcp.StreamableHTTPOptions) *watchUpstream {
	t.Helper()
	u := &watchUpstream{recordedUpstream: &recordedUpstream{fakeLog: new(fakeLog)}}
	inner := demo.Handler(demo.NewServer(name), "/sse", opts)
	recorded := u.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/sse" {
			w = &endpointSniffer{ResponseWriter: w, u: u}
		}
		inner.ServeHTTP(w, r)
	}))
	u.upstream = startUpstreamHandler(t, name, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Slow") != "" {
			u.running.Add(1)
			defer u.running.Add(-1)
		}
		if inject := r.Header.Get("X-Answer-Session-Id"); inject != "" && r.Method == http.MethodPost && r.URL.Path != "/sse" {
			w = &headerHook{ResponseWriter: w, hook: func(h http.Header) { h.Set("Mcp-Session-Id", inject) }}
		}
		recorded.ServeHTTP(w, r)
	}))
	return u
}

// deleted counts the DELETEs of upstream session id sid.
func (u *watchUpstream) deleted(sid string) int { return u.bySession(sid, http.MethodDelete) }

// deletesOf counts the DELETEs of the given ids, each at most once.
func (u *watchUpstream) deletesOf(ids map[string]bool) int {
	deleted := map[string]bool{}
	for _, s := range u.since(0) {
		if s.method == http.MethodDelete && ids[s.sid] {
			deleted[s.sid] = true
		}
	}
	return len(deleted)
}

// endpointSniffer records the upstream's own session id from the endpoint
// event of a legacy stream.
type endpointSniffer struct {
	http.ResponseWriter
	u    *watchUpstream
	done bool
}

var legacySessionParam = regexp.MustCompile(`sessionid=([^\s&"]+)`)

func (e *endpointSniffer) Write(p []byte) (int, error) {
	if !e.done {
		if m := legacySessionParam.FindSubmatch(p); m != nil {
			e.done = true
			e.u.mu.Lock()
			e.u.legacyIDs = append(e.u.legacyIDs, string(m[1]))
			e.u.mu.Unlock()
		}
	}
	return e.ResponseWriter.Write(p)
}

func (e *endpointSniffer) Flush() {
	if f, ok := e.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (e *endpointSniffer) Unwrap() http.ResponseWriter { return e.ResponseWriter }

// statusNow reads GET /mcp/status without failing the test.
func statusNow(ctx context.Context, adminPort int) (opsStatus, error) {
	var s opsStatus
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d/mcp/status", adminPort), nil)
	if err != nil {
		return s, err
	}
	resp, err := rawClient.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return s, err
	}
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("GET /mcp/status: %d %s", resp.StatusCode, b)
	}
	return s, json.Unmarshal(b, &s)
}

// statusAfterLoad reads GET /mcp/status once a config load has settled: a
// connection the admin endpoint of the previous config accepted may be
// closed unanswered, and is tried again.
func statusAfterLoad(t *testing.T, adminPort int, cond func(opsStatus) bool) opsStatus {
	t.Helper()
	var s opsStatus
	var err error
	if !waitUntil(boundedWait, 20*time.Millisecond, func() bool {
		s, err = statusNow(context.Background(), adminPort)
		return err == nil && cond(s)
	}) {
		t.Fatalf("GET /mcp/status after a config load: %+v %v", s.Resources, err)
	}
	return s
}

// TestSessionFlood: one client (X-Client: attacker) opens sessions as fast
// as it can, 50 at a time, in four waves of 2,000 sessions 2s apart,
// and sends a notification on each session it opened every 10s,
// while another (X-Client: good) initializes once and calls a tool every
// 100ms for the whole run. Every request of the good client succeeds; the
// service level stays full throughout (a full session table is handled by
// the table); the live sessions never pass max_sessions, nor the
// attacker's its share (client_max_sessions, by default a tenth of
// max_sessions); the attacker's idle sessions are evicted for capacity and
// deleted upstream, the good client's never.
func TestSessionFlood(t *testing.T) {
	scale := loadScale(t, 0.15)
	raiseNoFile(t)
	total := loadScaled(2000, scale, 200)
	workers := loadScaled(50, scale, 12)
	const (
		run = 13 * time.Second
		// Four waves: every eviction then fits the queue of upstream
		// DELETEs (8192), so each must reach the upstream.
		maxWaves   = 4
		waveEvery  = 2 * time.Second
		maxSess    = 200
		share      = 20 // max(16, maxSess/10)
		notifyEach = 10 * time.Second
	)
	up := startWatchUpstream(t, "flood", nil)
	port, adminPort := freePort(t), freePort(t)
	// The scheduler-latency monitor reads the CPU contention of the whole
	// machine, which this test's own clients cause (see loadSchedOff);
	// what is tested is that the session table never raises the level.
	global := fmt.Sprintf("\tmcp {\n\t\tmax_sessions %d\n\t\trefresh 50ms\n%s\t}\n", maxSess, loadSchedOff)
	loadWithAdmin(t, adminPort, global, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tclient_key {http.request.header.X-Client}\n\t}\n}\n", port, up.addr()))
	url := proxyURL(port) + "/mcp"
	if s := status(t, adminPort); s.Resources.Sessions.Limit != maxSess {
		t.Fatalf("sessions limit %d, want %d", s.Resources.Sessions.Limit, maxSess)
	}
	mfs := scrape(t, adminPort)
	capacity0 := metricValue(mfs, "caddy_mcp_session_evictions_total", "cause", "capacity")
	skipped0 := metricValue(mfs, "caddy_mcp_evicted_session_deletes_skipped_total")
	clientFull0 := metricValue(mfs, "caddy_mcp_session_errors_total", "kind", "client_full")

	ctx, cancel := context.WithTimeout(context.Background(), run+time.Minute)
	defer cancel()
	start := time.Now()
	end := start.Add(run)
	var wg sync.WaitGroup

	// The service level and the session count, every 100ms.
	var samples, notFull, maxUsed, sampleErrs atomic.Int64
	var firstBad atomic.Value
	wg.Go(func() {
		for i := 0; i < 1000 && time.Now().Before(end); i++ {
			s, err := statusNow(ctx, adminPort)
			if err != nil {
				sampleErrs.Add(1)
				firstBad.CompareAndSwap(nil, err.Error())
			} else {
				samples.Add(1)
				if s.Level != "full" {
					notFull.Add(1)
					firstBad.CompareAndSwap(nil, fmt.Sprintf("level %s after %v", s.Level, time.Since(start)))
				}
				for {
					m := maxUsed.Load()
					if s.Resources.Sessions.Used <= m || maxUsed.CompareAndSwap(m, s.Resources.Sessions.Used) {
						break
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	// The good client: one session, a tool call every 100ms.
	good := map[string]string{"X-Client": "good"}
	goodHC := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
	defer goodHC.CloseIdleConnections()
	var goodCalls, goodFails atomic.Int64
	var goodErr atomic.Value
	var goodToken atomic.Value
	wg.Go(func() {
		fail := func(what string, r reply) {
			goodFails.Add(1)
			goodErr.CompareAndSwap(nil, fmt.Sprintf("%s after %v: %v", what, time.Since(start), r))
		}
		r := post(ctx, goodHC, url, initBody(1), good)
		tok := r.hdr.Get("Mcp-Session-Id")
		if !r.ok() || tok == "" {
			fail("initialize", r)
			return
		}
		goodToken.Store(tok)
		if r := post(ctx, goodHC, url, notifyInitialized, inSession(tok, good)); r.err != nil || r.status != http.StatusAccepted {
			fail("notifications/initialized", r)
		}
		for i := 0; i < 1000 && time.Now().Before(end); i++ {
			next := time.Now().Add(100 * time.Millisecond)
			text := fmt.Sprintf("good-%d", i)
			r := post(ctx, goodHC, url, echoCall(i+2, text), inSession(tok, good))
			goodCalls.Add(1)
			if !r.ok() || !strings.Contains(r.body, `"text":"`+text+`"`) {
				fail("tools/call "+text, r)
			}
			time.Sleep(time.Until(next))
		}
	})

	// The attacker's notifications: every 10s, one on each session it
	// still believes live.
	attacker := map[string]string{"X-Client": "attacker"}
	atkHC := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers + 8}}
	defer atkHC.CloseIdleConnections()
	var liveMu sync.Mutex
	live := map[string]bool{}
	var notified, notifiedGone, notifyOther atomic.Int64
	var notifyStart atomic.Value // time.Time of the first round
	wg.Go(func() {
		tick := time.NewTicker(notifyEach)
		defer tick.Stop()
		over := time.NewTimer(time.Until(end))
		defer over.Stop()
		for range int(run/notifyEach) + 1 {
			select {
			case <-ctx.Done():
				return
			case <-over.C:
				return
			case <-tick.C:
			}
			notifyStart.CompareAndSwap(nil, time.Now())
			liveMu.Lock()
			toks := make([]string, 0, len(live))
			for tok := range live {
				toks = append(toks, tok)
			}
			liveMu.Unlock()
			parallel(len(toks), 16, func(i int) {
				r := post(ctx, atkHC, url, notifyInitialized, inSession(toks[i], attacker))
				switch {
				case r.err == nil && r.status == http.StatusAccepted:
					notified.Add(1)
				case r.err == nil && r.status == http.StatusNotFound && isRPCError(r.body, "", -32001):
					notifiedGone.Add(1)
					liveMu.Lock()
					delete(live, toks[i])
					liveMu.Unlock()
				default:
					notifyOther.Add(1)
				}
			})
		}
	})

	// The flood: waves of initializes, workers at a time, until the run
	// is over.
	// Each answer is a session ("ok"), a refusal with Retry-After and a
	// JSON-RPC error (its status), or "other"; "late" were not sent.
	atk := map[string]int{}
	var atkErr reply
	waves := 0
	for ; waves < maxWaves && time.Now().Before(end); waves++ {
		time.Sleep(time.Until(start.Add(time.Duration(waves) * waveEvery)))
		counts, sample := burst(total, workers, func(i int) (string, reply) {
			if time.Now().After(end) {
				return "late", reply{}
			}
			id := 1000 + waves*total + i
			r := post(ctx, atkHC, url, initBody(id), attacker)
			switch tok := r.hdr.Get("Mcp-Session-Id"); {
			case r.ok() && tok != "":
				liveMu.Lock()
				live[tok] = true
				liveMu.Unlock()
				return "ok", r
			case r.refused() && r.hdr.Get("Retry-After") != "" && isRPCError(r.body, strconv.Itoa(id), 0):
				return strconv.Itoa(r.status), r
			}
			return "other", r
		})
		for k, n := range counts {
			atk[k] += n
		}
		if r, ok := sample["other"]; ok && atkErr.status == 0 && atkErr.err == nil {
			atkErr = r
		}
	}
	floodTook := time.Since(start)
	wg.Wait()

	refusals := map[int]int{}
	atkSent := 0
	for k, n := range atk {
		if st, err := strconv.Atoi(k); err == nil {
			refusals[st] = n
		}
		if k != "late" {
			atkSent += n
		}
	}
	mfs = scrape(t, adminPort)
	capacity := metricValue(mfs, "caddy_mcp_session_evictions_total", "cause", "capacity") - capacity0
	clientFull := metricValue(mfs, "caddy_mcp_session_errors_total", "kind", "client_full") - clientFull0
	t.Logf("attacker: %d initializes in %d waves over %v: %d sessions, refused by status %v, %d other; "+
		"notifications: %d accepted, %d on evicted sessions (404), %d other; good client: %d calls; "+
		"status sampled %d times, most live sessions %d; capacity evictions %v, client_full refusals %v",
		atkSent, waves, floodTook.Round(time.Millisecond), atk["ok"], refusals, atk["other"],
		notified.Load(), notifiedGone.Load(), notifyOther.Load(), goodCalls.Load(),
		samples.Load(), maxUsed.Load(), capacity, clientFull)

	if float64(refusals[http.StatusTooManyRequests]) != clientFull {
		t.Errorf("%d attacker initializes got 429, caddy_mcp_session_errors_total{kind=client_full} grew by %v", refusals[http.StatusTooManyRequests], clientFull)
	}
	if goodFails.Load() != 0 {
		t.Errorf("the good client had %d failed requests of %d; first: %v", goodFails.Load(), goodCalls.Load()+1, goodErr.Load())
	}
	if goodCalls.Load() < int64(run/(100*time.Millisecond))/3 {
		t.Errorf("the good client made only %d calls in %v", goodCalls.Load(), run)
	}
	if samples.Load() < 20 || sampleErrs.Load() != 0 || notFull.Load() != 0 {
		t.Errorf("service level: %d samples, %d not full, %d failed reads; first: %v", samples.Load(), notFull.Load(), sampleErrs.Load(), firstBad.Load())
	}
	if m := maxUsed.Load(); m > maxSess || m > share+1 {
		t.Errorf("up to %d live sessions, want at most %d (the attacker's share %d and the good client's one)", m, share+1, share)
	}
	if atk["other"] != 0 {
		t.Errorf("%d attacker initializes were neither a session nor a refusal with Retry-After and a JSON-RPC error; one: %v", atk["other"], atkErr)
	}
	for st := range refusals {
		if st != http.StatusTooManyRequests && st != http.StatusServiceUnavailable {
			t.Errorf("attacker refused with status %d", st)
		}
	}
	if atk["ok"] <= share {
		t.Fatalf("the attacker opened only %d sessions", atk["ok"])
	}
	if want := float64(atk["ok"] - share); capacity < want {
		t.Errorf("caddy_mcp_session_evictions_total{cause=capacity} grew by %v, want at least %v (attacker sessions over its share)", capacity, want)
	}

	// The attacker's sessions left are its share at most, and the good
	// client's session is live.
	s := status(t, adminPort)
	if s.Resources.Sessions.Used > share+1 {
		t.Errorf("%d live sessions after the flood, want at most %d", s.Resources.Sessions.Used, share+1)
	}
	tok, _ := goodToken.Load().(string)
	if tok != "" {
		if st, _, b := rawPost(t, url, echoCall(9999, "after"), inSession(tok, good)); st != http.StatusOK {
			t.Errorf("the good client's session after the flood: %d %s", st, b)
		}
	}

	goodSids := map[string]bool{}
	for _, s := range up.since(0) {
		if s.client == "good" && s.sid != "" {
			goodSids[s.sid] = true
		}
	}

	// The attacker's sessions that took its notifications after the flood
	// are as idle as if they had not: their idle time runs from the flood.
	if ns, ok := notifyStart.Load().(time.Time); ok && notified.Load() > 0 && start.Add(floodTook).Before(ns) {
		since := time.Since(ns).Seconds()
		_, mine, _ := listSessions(t, adminPort, 1000, up.addr())
		checked := 0
		for _, s := range mine {
			isGood := false
			for sid := range goodSids {
				isGood = isGood || s.ID == up.adminID(sid)
			}
			if isGood {
				continue
			}
			checked++
			if s.Idle <= since {
				t.Errorf("attacker session %s idle for %.3fs, notified %.3fs ago: a notification made it active", s.ID, s.Idle, since)
			}
		}
		t.Logf("%d attacker sessions notified %.1fs ago are idle since the flood", checked, since)
	} else {
		t.Logf("no notification was taken after the flood: the idle time of notified sessions is not checked")
	}

	// Every evicted session is deleted upstream, by the delete workers.
	attackerSids := map[string]bool{}
	for _, sid := range up.mintedIDs() {
		if !goodSids[sid] {
			attackerSids[sid] = true
		}
	}
	if !waitUntil(15*time.Second, 50*time.Millisecond, func() bool { return float64(up.deletesOf(attackerSids)) >= capacity }) {
		t.Errorf("the upstream got DELETEs for %d attacker sessions, want at least %v (one per capacity eviction)", up.deletesOf(attackerSids), capacity)
	}
	if n := up.deletesOf(goodSids); n != 0 || len(goodSids) != 1 {
		t.Errorf("the good client's session (%d upstream ids) was deleted upstream %d times", len(goodSids), n)
	}
	if v := metricValue(scrape(t, adminPort), "caddy_mcp_evicted_session_deletes_skipped_total") - skipped0; v != 0 {
		t.Errorf("%v evicted sessions were not deleted upstream (queue full)", v)
	}
}

// TestSessionFloodNotificationsIdle: notifications do not keep a session
// alive. Half of a client's sessions (the older half) send a notification
// each; then new sessions push the client (or the table) over its cap: the
// notified sessions, still the idlest, are the ones evicted, and the admin
// API shows their idle time running on through the notifications.
func TestSessionFloodNotificationsIdle(t *testing.T) {
	for _, tc := range []struct {
		name, global, block string
		limit               int
	}{
		{"client share", "\tmcp {\n\t\tmax_sessions 200\n\t\trefresh 50ms\n\t}\n", "\t\t\tclient_key {http.request.header.X-Client}\n", 20},
		{"session table", "\tmcp {\n\t\tmax_sessions 20\n\t\tclient_max_sessions 0\n\t\trefresh 50ms\n\t}\n", "", 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := startWatchUpstream(t, "quiet", nil)
			port, adminPort := startOps(t, up.addr(), tc.global, tc.block)
			url := proxyURL(port) + "/mcp"
			hdr := map[string]string{"X-Client": "flooder"}
			capacity0 := metricValue(scrape(t, adminPort), "caddy_mcp_session_evictions_total", "cause", "capacity")
			half := tc.limit / 2
			open := func(n int) (toks, sids []string) {
				for i := range n {
					before := len(up.mintedIDs())
					st, h, b := rawPost(t, url, initBody(i+1), hdr)
					if st != http.StatusOK || h.Get("Mcp-Session-Id") == "" {
						t.Fatalf("initialize: %d %s", st, b)
					}
					toks = append(toks, h.Get("Mcp-Session-Id"))
					sids = append(sids, up.mintedIDs()[before])
				}
				return toks, sids
			}
			notifiedToks, notifiedSids := open(half)
			time.Sleep(400 * time.Millisecond)
			quietToks, quietSids := open(half)
			time.Sleep(400 * time.Millisecond)
			for _, tok := range notifiedToks {
				if st, _, b := rawPost(t, url, notifyInitialized, inSession(tok, hdr)); st != http.StatusAccepted {
					t.Fatalf("notification: %d %s", st, b)
				}
			}
			// The notified sessions are still the idlest.
			idle := map[string]float64{}
			_, mine, _ := listSessions(t, adminPort, 1000, up.addr())
			for _, s := range mine {
				idle[s.ID] = s.Idle
			}
			minNotified, maxQuiet := 1e9, 0.0
			for _, sid := range notifiedSids {
				minNotified = min(minNotified, idle[up.adminID(sid)])
			}
			for _, sid := range quietSids {
				maxQuiet = max(maxQuiet, idle[up.adminID(sid)])
			}
			if len(mine) != tc.limit || minNotified <= maxQuiet || minNotified < 0.7 {
				t.Errorf("%d sessions listed; after a notification each, the notified sessions are idle for %.3fs at least, the others %.3fs at most: want more, and 0.7s at least",
					len(mine), minNotified, maxQuiet)
			}

			newToks, _ := open(half)
			for i, tok := range notifiedToks {
				if st, _, b := rawPost(t, url, rpcRequest(50+i, "ping"), inSession(tok, hdr)); st != http.StatusNotFound || !strings.Contains(b, "-32001") {
					t.Errorf("ping in notified session %d: %d %s, want 404 (evicted as the idlest)", i, st, b)
				}
			}
			for i, tok := range append(quietToks, newToks...) {
				if st, _, b := rawPost(t, url, rpcRequest(80+i, "ping"), inSession(tok, hdr)); st != http.StatusOK {
					t.Errorf("ping in session %d, not notified: %d %s, want 200", i, st, b)
				}
			}
			if got := metricValue(scrape(t, adminPort), "caddy_mcp_session_evictions_total", "cause", "capacity") - capacity0; got != float64(half) {
				t.Errorf("%v capacity evictions, want %d", got, half)
			}
			if !waitUntil(10*time.Second, 10*time.Millisecond, func() bool {
				for _, sid := range notifiedSids {
					if up.deleted(sid) == 0 {
						return false
					}
				}
				return true
			}) {
				t.Errorf("the evicted sessions were not all deleted upstream")
			}
		})
	}
}

// TestSessionLegacyFlood: legacy HTTP+SSE streams are sessions. Under
// `max_sessions 200`, 500 legacy streams from one client: 200 open, the
// rest are refused with 503, Retry-After and a JSON-RPC error (an open
// stream is in flight, so never evicted for capacity); they are listed by
// the admin API, page by page; a POST to a stream's endpoint is answered
// on its stream and counts as the session's activity; evicting it through
// the admin API closes its stream, and its endpoint then answers 404; the
// endpoints never carry the upstream's session id. The per-client stream
// cap and session rate apply to legacy GETs (429).
func TestSessionLegacyFlood(t *testing.T) {
	scale := loadScale(t, 0.2)
	raiseNoFile(t)
	total := loadScaled(500, scale, 60)
	maxSess := loadScaled(200, scale, 20)
	workers := loadScaled(50, scale, 10)
	up := startWatchUpstream(t, "legacy", nil)
	port, port2, port3, adminPort := freePort(t), freePort(t), freePort(t), freePort(t)
	global := fmt.Sprintf("\tmcp {\n\t\tmax_sessions %d\n\t\tclient_max_sessions 0\n\t\trefresh 50ms\n%s\t}\n", maxSess, loadSchedOff)
	loadWithAdmin(t, adminPort, global,
		fmt.Sprintf(":%d {\n\tmcp_proxy %s\n}\n", port, up.addr())+
			fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tclient_max_streams 2\n\t}\n}\n", port2, up.addr())+
			fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tclient_session_rate 1 2\n\t}\n}\n", port3, up.addr()))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// One connection per stream.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	// Per-client caps: two streams open, the third is refused with 429.
	for _, tc := range []struct {
		name string
		port int
	}{{"client_max_streams 2", port2}, {"client_session_rate 1 2", port3}} {
		var open []*legacyClient
		for i := range 2 {
			c, r := openLegacyStream(ctx, hc, proxyURL(tc.port)+"/sse")
			if c == nil {
				t.Fatalf("%s: legacy stream %d: %v", tc.name, i, r)
			}
			open = append(open, c)
		}
		c, r := openLegacyStream(ctx, hc, proxyURL(tc.port)+"/sse")
		if c != nil {
			c.cancel()
			t.Errorf("%s: a third legacy stream opened", tc.name)
		} else if r.status != http.StatusTooManyRequests || r.hdr.Get("Retry-After") == "" || !isRPCError(r.body, "", 0) {
			t.Errorf("%s: third legacy stream: %v, want 429 with Retry-After and a JSON-RPC error", tc.name, r)
		}
		for _, c := range open {
			c.cancel()
		}
	}
	pollUntil(t, "the legacy sessions of closed streams to end", func() bool { return status(t, adminPort).Resources.Sessions.Used == 0 })

	// The flood.
	var mu sync.Mutex
	var streams []*legacyClient
	counts, sample := burst(total, workers, func(int) (string, reply) {
		c, r := openLegacyStream(ctx, hc, proxyURL(port)+"/sse")
		switch {
		case c != nil:
			mu.Lock()
			streams = append(streams, c)
			mu.Unlock()
			return "open", r
		case r.err == nil && r.status == http.StatusServiceUnavailable && r.hdr.Get("Retry-After") != "" && isRPCError(r.body, "", 0):
			return "refused", r
		}
		return "other", r
	})
	defer func() {
		for _, c := range streams {
			c.cancel()
		}
	}()
	t.Logf("%d legacy streams under max_sessions %d: %d open, %d refused with 503, %d other", total, maxSess, len(streams), counts["refused"], counts["other"])
	if len(streams) != maxSess || counts["refused"] != total-maxSess || counts["other"] != 0 {
		t.Fatalf("%d open, %d refused, %d other (one: %v): want %d open, the rest refused with 503", len(streams), counts["refused"], counts["other"], sample["other"], maxSess)
	}
	if s := status(t, adminPort); s.Resources.Sessions.Used != int64(maxSess) || s.Resources.Sessions.Limit != int64(maxSess) {
		t.Errorf("status sessions %+v, want %d of %d", s.Resources.Sessions, maxSess, maxSess)
	}
	limit := max(maxSess/8, 5)
	_, mine, pages := listSessions(t, adminPort, limit, up.addr())
	if len(mine) != maxSess || pages < maxSess/limit {
		t.Errorf("listed %d sessions in %d pages of %d, want %d", len(mine), pages, limit, maxSess)
	}
	for _, s := range mine {
		if s.Version != "2024-11-05" || s.Streams != 1 || s.InFlight != 1 {
			t.Errorf("legacy session %+v: want version 2024-11-05, one stream, in flight", s)
			break
		}
	}

	// The endpoints carry a sealed route, never the upstream's id.
	up.mu.Lock()
	upstreamIDs := append([]string(nil), up.legacyIDs...)
	up.mu.Unlock()
	if len(upstreamIDs) < maxSess {
		t.Errorf("the upstream handed out %d legacy endpoints, want %d at least", len(upstreamIDs), maxSess)
	}
	for _, c := range streams {
		if !strings.HasPrefix(c.endpoint, "/sse?mcpgate_route=") || strings.Contains(c.endpoint, "sessionid") {
			t.Errorf("endpoint given to the client: %q", c.endpoint)
			break
		}
		for _, id := range upstreamIDs {
			if strings.Contains(c.endpoint, id) {
				t.Fatalf("endpoint %q carries the upstream's session id %q", c.endpoint, id)
			}
		}
	}

	// A POST to a stream's endpoint is answered on that stream and counts
	// as its session's activity.
	time.Sleep(1500 * time.Millisecond)
	victim := streams[len(streams)/2]
	st, _, b := rawPost(t, proxyURL(port)+victim.endpoint, rpcRequest(77, "ping"), nil)
	if st != http.StatusAccepted {
		t.Fatalf("legacy POST: %d %s", st, b)
	}
	select {
	case ev := <-victim.events:
		if !strings.Contains(ev, `"id":77`) || !strings.Contains(ev, `"result"`) {
			t.Errorf("event after the legacy POST: %s", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no answer on the stream after the legacy POST")
	}
	_, mine, _ = listSessions(t, adminPort, 1000, up.addr())
	sort.Slice(mine, func(i, j int) bool { return mine[i].Idle < mine[j].Idle })
	if len(mine) < 2 || mine[0].Idle > 0.5 || mine[1].Idle < 1.0 {
		t.Fatalf("after a POST to one legacy session, the least idle sessions: %+v", mine[:min(2, len(mine))])
	}

	// Evicting it through the admin API closes its stream, and only its.
	var evicted struct {
		Evicted int `json:"evicted"`
	}
	adminJSON(t, adminPort, http.MethodDelete, "/mcp/sessions/"+mine[0].ID, "", http.StatusOK, &evicted)
	if evicted.Evicted != 1 {
		t.Errorf("evicted %d sessions, want 1", evicted.Evicted)
	}
	select {
	case <-victim.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the evicted legacy session's stream is still open")
	}
	time.Sleep(300 * time.Millisecond)
	closed := 0
	for _, c := range streams {
		if isClosed(c.closed) {
			closed++
		}
	}
	if closed != 1 {
		t.Errorf("%d streams closed after evicting one session", closed)
	}
	st, _, b = rawPost(t, proxyURL(port)+victim.endpoint, rpcRequest(78, "ping"), nil)
	if st != http.StatusNotFound || !isRPCError(b, "78", -32001) {
		t.Errorf("legacy POST to the evicted session: %d %s, want 404", st, b)
	}
	// Its place is free for a new stream.
	c, r := openLegacyStream(ctx, hc, proxyURL(port)+"/sse")
	if c == nil {
		t.Fatalf("a legacy stream after the eviction: %v", r)
	}
	streams = append(streams, c)

	for _, c := range streams {
		c.cancel()
	}
	pollUntil(t, "every legacy session to end with its stream", func() bool { return status(t, adminPort).Resources.Sessions.Used == 0 })
}

// startBothEras serves a stateful watched demo upstream named name behind
// an opsSite on port and a stateless one behind another on port2, with
// the admin endpoint on, and returns the stateful one and the ports.
func startBothEras(t *testing.T, name string) (up *watchUpstream, port, port2, adminPort int) {
	t.Helper()
	up = startWatchUpstream(t, name, nil)
	stateless := startWatchUpstream(t, "stateless", &mcp.StreamableHTTPOptions{Stateless: true})
	port, port2, adminPort = freePort(t), freePort(t), freePort(t)
	loadWithAdmin(t, adminPort, opsGlobal, opsSite(port, up.addr(), "")+opsSite(port2, stateless.addr(), ""))
	return up, port, port2, adminPort
}

// TestSessionSealed: a session is entered only with its sealed token. The
// upstream's raw session id, presented as Mcp-Session-Id (with no version
// header, a 2025-06-18 one, or a 2026-07-28 one with Mcp-Method), on a
// GET, on a DELETE or as a legacy route, gets 404 and never reaches the
// upstream. The sealed token with a 2026-07-28 version header is handled
// in its session's era. An upstream id on an answer that starts no
// session is dropped: it neither reaches the client nor opens a session.
func TestSessionSealed(t *testing.T) {
	up, port, port2, adminPort := startBothEras(t, "sealed")
	url := proxyURL(port) + "/mcp"
	tok := rawSession(t, url, nil)
	ids := up.mintedIDs()
	if len(ids) != 1 || ids[0] == tok {
		t.Fatalf("upstream ids %v, token %q", ids, tok)
	}
	raw := ids[0]
	if st, b := sessionEcho(t, url, tok, 2); st != http.StatusOK {
		t.Fatalf("echo with the token: %d %s", st, b)
	}
	sessions := status(t, adminPort).Resources.Sessions.Used
	mfs := scrape(t, adminPort)
	dropped0 := metricValue(mfs, "caddy_mcp_upstream_session_ids_total", "result", "dropped")

	// The raw id, every way.
	seen, requests := up.bySession(raw, ""), up.requests.Load()
	call2026 := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},` + meta2026 + `}}`
	for _, tc := range []struct {
		name string
		body string
		hdr  map[string]string
	}{
		{"no version header", echoCall(7, "x"), map[string]string{"Mcp-Session-Id": raw}},
		{"2025-06-18", echoCall(7, "x"), map[string]string{"Mcp-Session-Id": raw, "Mcp-Protocol-Version": "2025-06-18"}},
		{"2026-07-28", call2026, map[string]string{"Mcp-Session-Id": raw, "Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"}},
	} {
		st, h, b := rawPost(t, url, tc.body, tc.hdr)
		if st != http.StatusNotFound || !isRPCError(b, "7", -32001) || h.Get("Mcp-Session-Id") != "" {
			t.Errorf("raw upstream id, %s: %d %s, want 404 with -32001", tc.name, st, b)
		}
	}
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		req, _ := http.NewRequest(method, url, nil)
		req.Header.Set("Accept", "text/event-stream")
		req.Header.Set("Mcp-Session-Id", raw)
		req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
		if st, _, b := do(t, req); st != http.StatusNotFound || !isRPCError(b, "", -32001) {
			t.Errorf("raw upstream id on a %s: %d %s, want 404", method, st, b)
		}
	}
	if st, _, b := rawPost(t, url+"?mcpgate_route="+raw, rpcRequest(8, "ping"), nil); st != http.StatusNotFound {
		t.Errorf("raw upstream id as a legacy route: %d %s, want 404", st, b)
	}
	if got := up.requests.Load() - requests; got != 0 || up.bySession(raw, "") != seen {
		t.Errorf("%d requests with the raw id reached the upstream", got)
	}
	if up.deleted(raw) != 0 {
		t.Errorf("a DELETE with the raw id reached the upstream")
	}

	// The sealed token with a 2026-07-28 version header: handled in the
	// session's era, which answers a version header of another era with
	// 400, as its servers do; the upstream sees nothing of it.
	st, h, b := rawPost(t, url, call2026, map[string]string{"Mcp-Session-Id": tok, "Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"})
	if st != http.StatusBadRequest || !isRPCError(b, "7", -32600) || h.Get("Mcp-Session-Id") != "" {
		t.Errorf("tools/call with the token and a 2026-07-28 header: %d %s", st, b)
	} else if up.bySession(raw, "") != seen {
		t.Errorf("tools/call with the token and a 2026-07-28 header reached the upstream")
	}

	// An upstream id on a tools/call answer opens nothing.
	st, h, b = rawPost(t, url, echoCall(9, "planted"), withHeaders(inSession(tok, nil), map[string]string{"X-Answer-Session-Id": "planted-by-upstream"}))
	if st != http.StatusOK || !strings.Contains(b, `"text":"planted"`) || h.Get("Mcp-Session-Id") != "" {
		t.Errorf("tools/call answered with a new upstream id: %d, client got Mcp-Session-Id %q: %s", st, h.Get("Mcp-Session-Id"), b)
	}
	if st, _, b := rawPost(t, url, echoCall(10, "x"), inSession("planted-by-upstream", nil)); st != http.StatusNotFound {
		t.Errorf("the planted id as a session: %d %s", st, b)
	}
	// A 2026-07-28 answer (no session) carrying an upstream id.
	st, h, b = rawPost(t, proxyURL(port2)+"/mcp", call2026, map[string]string{
		"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo", "X-Answer-Session-Id": "stateless-planted"})
	if st != http.StatusOK || !strings.Contains(b, `"text":"x"`) || h.Get("Mcp-Session-Id") != "" {
		t.Errorf("2026-07-28 tools/call answered with an upstream id: %d, client got Mcp-Session-Id %q: %s", st, h.Get("Mcp-Session-Id"), b)
	}
	if got := status(t, adminPort).Resources.Sessions.Used; got != sessions {
		t.Errorf("%d live sessions after answers with planted ids, want %d", got, sessions)
	}
	if got := metricValue(scrape(t, adminPort), "caddy_mcp_upstream_session_ids_total", "result", "dropped") - dropped0; got != 2 {
		t.Errorf("caddy_mcp_upstream_session_ids_total{result=dropped} grew by %v, want 2", got)
	}
}

// rawIDUpstream is an MCP upstream written on raw TCP, so its answers can
// carry header lines net/http would never write: it answers an initialize
// POSTed to /case/<name> with the Mcp-Session-Id header line(s) of that
// case, and records the Mcp-Session-Id of every DELETE by path.
type rawIDUpstream struct {
	ln    net.Listener
	cases map[string]string // case name → header lines, each ending in CRLF

	mu      sync.Mutex
	deletes map[string][]string // path → Mcp-Session-Id of each DELETE
	conns   []net.Conn
}

func startRawIDUpstream(t *testing.T, cases map[string]string) *rawIDUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawIDUpstream{ln: ln, cases: cases, deletes: map[string][]string{}}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns = append(u.conns, c)
			u.mu.Unlock()
			go u.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		u.mu.Lock()
		defer u.mu.Unlock()
		for _, c := range u.conns {
			c.Close()
		}
	})
	return u
}

func (u *rawIDUpstream) addr() string { return u.ln.Addr().String() }

func (u *rawIDUpstream) serve(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(time.Minute))
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
		req.Body.Close()
		var resp string
		switch req.Method {
		case http.MethodDelete:
			u.mu.Lock()
			u.deletes[req.URL.Path] = append(u.deletes[req.URL.Path], req.Header.Get("Mcp-Session-Id"))
			u.mu.Unlock()
			resp = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
		case http.MethodPost:
			var msg struct {
				ID     json.RawMessage `json:"id"`
				Method string          `json:"method"`
			}
			_ = json.Unmarshal(body, &msg)
			if msg.Method != "initialize" {
				resp = "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
				break
			}
			answer := fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"raw","version":"1"}}}`, msg.ID)
			resp = fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s",
				len(answer), u.cases[strings.TrimPrefix(req.URL.Path, "/case/")], answer)
		default:
			resp = "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
		}
		_ = c.SetWriteDeadline(time.Now().Add(time.Minute))
		if _, err := io.WriteString(c, resp); err != nil {
			return
		}
	}
}

func (u *rawIDUpstream) deletesOf(path string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.deletes[path]...)
}

// TestSessionUnusableUpstreamID: an upstream that answers initialize with
// a session id the proxy cannot carry (10 KB, 900 KB, with a space,
// folded over two header lines, empty, repeated) gets its client a 502
// with a JSON-RPC error carrying the initialize's id, never a 200 without
// a session; the upstream session is deleted when its id can be sent back
// as a header value; each is counted as unusable.
func TestSessionUnusableUpstreamID(t *testing.T) {
	long := strings.Repeat("a", 10<<10)
	huge := strings.Repeat("b", 900<<10)
	cases := map[string]string{
		"ok":       "Mcp-Session-Id: usable-id\r\n",
		"10k":      "Mcp-Session-Id: " + long + "\r\n",
		"900k":     "Mcp-Session-Id: " + huge + "\r\n",
		"space":    "Mcp-Session-Id: with space\r\n",
		"folded":   "Mcp-Session-Id: fold\r\n ed\r\n",
		"empty":    "Mcp-Session-Id: \r\n",
		"repeated": "Mcp-Session-Id: one\r\nMcp-Session-Id: two\r\n",
	}
	up := startRawIDUpstream(t, cases)
	port, adminPort := startOps(t, up.addr(), opsGlobal, "")
	base := proxyURL(port) + "/case/"
	unusable0 := metricValue(scrape(t, adminPort), "caddy_mcp_upstream_session_ids_total", "result", "unusable")

	// The upstream itself works: a usable id makes a session.
	st, h, b := rawPost(t, base+"ok", initBody(100), nil)
	if st != http.StatusOK || h.Get("Mcp-Session-Id") == "" || h.Get("Mcp-Session-Id") == "usable-id" {
		t.Fatalf("initialize with a usable id: %d %q %s", st, h.Get("Mcp-Session-Id"), b)
	}
	sessions := status(t, adminPort).Resources.Sessions.Used

	wantUnusable := 0
	for i, tc := range []struct {
		name   string
		delete string // the DELETE the upstream must get, "" for none
		// folded: net/http's client may join the continuation line into
		// one value (then it is an id with a space) or refuse the answer
		// (then reverse_proxy fails it); either way the client gets a 502.
		folded bool
	}{
		{"10k", long, false},
		{"900k", huge, false},
		{"space", "with space", false},
		{"folded", "fold ed", true},
		{"empty", "", false},
		{"repeated", "", false},
	} {
		id := strconv.Itoa(101 + i)
		st, h, b := rawPost(t, base+tc.name, initBody(101+i), nil)
		show := b[:min(len(b), 200)]
		switch {
		case st == http.StatusOK:
			t.Errorf("%s: initialize answered 200 (Mcp-Session-Id %.40q): %s", tc.name, h.Get("Mcp-Session-Id"), show)
			continue
		case st != http.StatusBadGateway || !isRPCError(b, id, 0) || h.Get("Mcp-Session-Id") != "":
			t.Errorf("%s: %d, Mcp-Session-Id %.40q: %s; want 502 with a JSON-RPC error with id %s", tc.name, st, h.Get("Mcp-Session-Id"), show, id)
			continue
		}
		if tc.delete == "" {
			wantUnusable++
			continue
		}
		wait := 10 * time.Second
		if tc.folded {
			wait = 2 * time.Second
		}
		if !waitUntil(wait, 10*time.Millisecond, func() bool { return len(up.deletesOf("/case/"+tc.name)) > 0 }) {
			if tc.folded {
				t.Logf("%s: the answer was refused before the proxy saw an id (%s)", tc.name, show)
				continue
			}
			t.Errorf("%s: the upstream got no DELETE for the session it opened", tc.name)
			continue
		}
		wantUnusable++
		if got := up.deletesOf("/case/" + tc.name); len(got) != 1 || got[0] != tc.delete {
			short := make([]string, len(got))
			for i, g := range got {
				short[i] = fmt.Sprintf("%.20q (%d bytes)", g, len(g))
			}
			t.Errorf("%s: the upstream got DELETEs for %v, want one for %.20q (%d bytes)", tc.name, short, tc.delete, len(tc.delete))
		} else if tc.folded {
			t.Logf("%s: the continuation line was joined into %q, refused as unusable and deleted upstream", tc.name, got[0])
		}
	}
	time.Sleep(200 * time.Millisecond)
	for _, name := range []string{"empty", "repeated"} {
		if got := up.deletesOf("/case/" + name); len(got) != 0 {
			t.Errorf("%s: the upstream got DELETEs %q for an id that cannot be sent", name, got)
		}
	}
	if got := metricValue(scrape(t, adminPort), "caddy_mcp_upstream_session_ids_total", "result", "unusable") - unusable0; got != float64(wantUnusable) {
		t.Errorf("caddy_mcp_upstream_session_ids_total{result=unusable} grew by %v, want %d", got, wantUnusable)
	}
	if got := status(t, adminPort).Resources.Sessions.Used; got != sessions {
		t.Errorf("%d live sessions after the unusable ids, want %d", got, sessions)
	}
}

// TestSessionDefaults: with `mcp { memory_limit 64MiB }` max_sessions is
// memory_limit ÷ session_memory (64) and client_max_sessions max(16, a
// tenth) = 16; without a memory limit of its own max_sessions follows the
// process's (GOMEMLIMIT, the cgroup) or is 10000. /mcp/status shows both
// caps in force, and the client cap holds: a 17th session of one client
// evicts its idlest.
func TestSessionDefaults(t *testing.T) {
	up := startWatchUpstream(t, "defaults", nil)
	port, adminPort := startOps(t, up.addr(), "\tmcp {\n\t\tmemory_limit 64MiB\n\t\trefresh 50ms\n\t}\n", "")
	url := proxyURL(port) + "/mcp"

	resourcesOf := func() map[string]any {
		t.Helper()
		var raw struct {
			Resources map[string]any `json:"resources"`
		}
		adminJSON(t, adminPort, http.MethodGet, "/mcp/status", "", http.StatusOK, &raw)
		return raw.Resources
	}
	limitOf := func(res map[string]any) float64 {
		s, _ := res["sessions"].(map[string]any)
		v, _ := s["limit"].(float64)
		return v
	}
	res := resourcesOf()
	if got := limitOf(res); got != 64 {
		t.Errorf("resources.sessions.limit %v with memory_limit 64MiB, want 64", got)
	}
	if v, ok := res["client_max_sessions"]; !ok || v != float64(16) {
		t.Errorf("resources.client_max_sessions %v (present: %v), want 16; resources: %v", v, ok, res)
	}

	// The default client cap holds.
	capacity0 := metricValue(scrape(t, adminPort), "caddy_mcp_session_evictions_total", "cause", "capacity")
	for i := range 17 {
		if st, _, b := rawPost(t, url, initBody(i+1), nil); st != http.StatusOK {
			t.Fatalf("initialize %d: %d %s", i, st, b)
		}
	}
	if got := status(t, adminPort).Resources.Sessions.Used; got != 16 {
		t.Errorf("%d live sessions of one client, want 16", got)
	}
	if got := metricValue(scrape(t, adminPort), "caddy_mcp_session_evictions_total", "cause", "capacity") - capacity0; got != 1 {
		t.Errorf("%v capacity evictions, want 1", got)
	}

	// No memory limit of its own.
	loadWithAdmin(t, adminPort, opsGlobal, opsSite(port, up.addr(), ""))
	s := statusAfterLoad(t, adminPort, func(s opsStatus) bool { return s.Resources.Sessions.Limit != 64 })
	want := int64(10000)
	if mem := s.Resources.Memory.Limit; mem > 0 {
		want = max(1, mem/(1<<20))
	}
	if s.Resources.Sessions.Limit != want {
		t.Errorf("resources.sessions.limit %d with memory limit %d, want %d", s.Resources.Sessions.Limit, s.Resources.Memory.Limit, want)
	}
	if v, ok := resourcesOf()["client_max_sessions"]; !ok || v != float64(max(16, want/10)) {
		t.Errorf("resources.client_max_sessions %v (present: %v), want %d", v, ok, max(16, want/10))
	}
}

// TestSessionClientKeyFallback: a client_key that resolves to nothing
// falls back to the client's address. With client_max_inflight 1, a slow
// call from 127.0.0.1 makes a second from the same address get 429, while
// a call from 127.0.0.2 runs beside it.
func TestSessionClientKeyFallback(t *testing.T) {
	up := startWatchUpstream(t, "fallback", nil)
	port := freePort(t)
	loadCaddyfile(t, fmt.Sprintf(":%d {\n\tmcp_proxy %s {\n\t\tclient_key {http.request.header.X-None}\n\t\tclient_max_inflight 1\n\t}\n}\n", port, up.addr()))
	url := proxyURL(port) + "/mcp"
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	}
	one, two := from("127.0.0.1"), from("127.0.0.2")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	session := func(hc *http.Client) string {
		t.Helper()
		r := post(ctx, hc, url, initBody(1), nil)
		tok := r.hdr.Get("Mcp-Session-Id")
		if !r.ok() || tok == "" {
			t.Fatalf("initialize: %v", r)
		}
		if r := post(ctx, hc, url, notifyInitialized, inSession(tok, nil)); r.status != http.StatusAccepted {
			t.Fatalf("notifications/initialized: %v", r)
		}
		return tok
	}
	tokOne, tokTwo := session(one), session(two)
	slow := callBody("5", "countdown", `{"from":3,"delay_ms":700}`)
	slowHdr := func(tok string) map[string]string { return inSession(tok, map[string]string{"X-Slow": "1"}) }

	var wg sync.WaitGroup
	var first, beside reply
	wg.Go(func() { first = post(ctx, one, url, slow, slowHdr(tokOne)) })
	pollUntil(t, "the first slow call to run upstream", func() bool { return up.running.Load() == 1 })
	wg.Go(func() { beside = post(ctx, two, url, slow, slowHdr(tokTwo)) })
	pollUntil(t, "the call from 127.0.0.2 to run beside it", func() bool { return up.running.Load() == 2 })
	second := post(ctx, one, url, echoCall(6, "x"), inSession(tokOne, nil))
	if second.status != http.StatusTooManyRequests || second.hdr.Get("Retry-After") == "" || !isRPCError(second.body, "6", 0) {
		t.Errorf("a second call from 127.0.0.1: %v, want 429 with Retry-After and a JSON-RPC error", second)
	}
	wg.Wait()
	if !first.ok() || !strings.Contains(first.body, "liftoff") {
		t.Errorf("the slow call from 127.0.0.1: %v", first)
	}
	if !beside.ok() || !strings.Contains(beside.body, "liftoff") {
		t.Errorf("the slow call from 127.0.0.2: %v", beside)
	}
	// Its slot is back once the call ends.
	if r := post(ctx, one, url, echoCall(7, "y"), inSession(tokOne, nil)); !r.ok() {
		t.Errorf("a call from 127.0.0.1 after the slow one: %v", r)
	}
}

// bigHeaders is opsGlobal with the server's header limit raised to 1MiB.
const bigHeaders = opsGlobal + "\tservers {\n\t\tmax_header_size 1MiB\n\t}\n"

// TestSessionQueryNotStored: what a session keeps of what its client chose
// is small: an initialize POSTed with a 100 KB query string makes a
// working session whose bytes, as the admin API shows them, are a few
// hundred, and whose DELETE, when it is evicted, goes to the path without
// the query.
func TestSessionQueryNotStored(t *testing.T) {
	up := startWatchUpstream(t, "query", nil)
	// Caddy's own limit on a request's header section, request line
	// included, is 16KiB by default: it is raised so the query reaches
	// mcp_proxy.
	port, adminPort := startOps(t, up.addr(), bigHeaders, "")
	url := proxyURL(port) + "/mcp"
	query := "pad=" + strings.Repeat("q", 100<<10)
	st, h, b := rawPost(t, url+"?"+query, initBody(1), nil)
	tok := h.Get("Mcp-Session-Id")
	if st != http.StatusOK || tok == "" {
		t.Fatalf("initialize with a 100 KB query: %d %s", st, b[:min(len(b), 300)])
	}
	if st, _, b := rawPost(t, url, notifyInitialized, inSession(tok, nil)); st != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %d %s", st, b)
	}
	if st, b := sessionEcho(t, url, tok, 2); st != http.StatusOK || !strings.Contains(b, "result") {
		t.Errorf("echo in the session: %d %s", st, b)
	}
	ids := up.mintedIDs()
	if len(ids) != 1 {
		t.Fatalf("upstream ids %v", ids)
	}
	only := smallSession(t, adminPort, up, ids[0], "the query")
	adminJSON(t, adminPort, http.MethodDelete, "/mcp/sessions/"+only.ID, "", http.StatusOK, nil)
	pollUntil(t, "the evicted session's DELETE upstream", func() bool { return up.deleted(ids[0]) == 1 })
	var uris []string
	for _, s := range up.since(0) {
		if s.method == http.MethodDelete {
			uris = append(uris, s.uri)
		}
	}
	if len(uris) != 1 || uris[0] != "/mcp" {
		short := make([]string, len(uris))
		for i, u := range uris {
			short[i] = fmt.Sprintf("%.40s (%d bytes)", u, len(u))
		}
		t.Errorf("DELETEs upstream to %v, want one to /mcp", short)
	}
}

// TestSessionAdoptedHostNotStored: a session this process did not create
// (created before a restart, or by another instance sharing the session
// key) is adopted by its first request, and the registry then keeps what
// that request says: its Host header, which the client chose, must not be
// kept at any length. The server's header limit is raised to 1MiB, as an
// operator serving large tokens or cookies would.
func TestSessionAdoptedHostNotStored(t *testing.T) {
	up := startWatchUpstream(t, "adopted", nil)
	port, adminPort := startOps(t, up.addr(), bigHeaders, "")
	url := proxyURL(port) + "/mcp"
	tok := rawSession(t, url, nil)
	// A stop forgets every live session; the next config adopts them.
	if err := caddy.Stop(); err != nil {
		t.Fatal(err)
	}
	loadWithAdmin(t, adminPort, bigHeaders, opsSite(port, up.addr(), ""))
	statusAfterLoad(t, adminPort, func(s opsStatus) bool { return s.Resources.Sessions.Used == 0 })
	req, _ := newPost(context.Background(), url, echoCall(3, "adopted"), inSession(tok, nil))
	req.Host = strings.Repeat("h", 200<<10)
	if st, _, b := do(t, req); st != http.StatusOK || !strings.Contains(b, `"text":"adopted"`) {
		t.Fatalf("the first request after the stop, with a 200 KB Host: %d %.300s", st, b)
	}
	smallSession(t, adminPort, up, up.mintedIDs()[0], "the 200 KB Host")
}

// smallSession checks that the only live session of up is the one of
// upstream session id sid, and that it holds a few hundred bytes: not
// what (its client chose) too.
func smallSession(t *testing.T, adminPort int, up *watchUpstream, sid, what string) adminSession {
	t.Helper()
	_, mine, _ := listSessions(t, adminPort, 1000, up.addr())
	if len(mine) != 1 || mine[0].ID != up.adminID(sid) {
		t.Fatalf("sessions %+v", mine)
	}
	if mine[0].Bytes <= 0 || mine[0].Bytes > 1024 {
		t.Errorf("the session holds %d bytes, want a few hundred (%s is not kept)", mine[0].Bytes, what)
	}
	return mine[0]
}

// TestSessionNegotiatedVersion: a session is what its upstream negotiated.
// A go-sdk client with its default options tries server/discover, then
// initializes at 2025-11-25; a client that offers 2026-07-28 in its
// initialize (with the Mcp-Method header that revision requires) gets
// 2025-11-25 and a session id from a 2025-era upstream all the same.
// Either way the session is a 2025-era session: listed with the negotiated
// version, and deleted upstream when it is evicted, so a client cannot
// leave sessions behind upstream by the version it offers. An initialize
// the upstream refuses (an error answer, here a stateless 2026-07-28
// server that has no initialize) starts no session, even when the answer
// carries an id.
func TestSessionNegotiatedVersion(t *testing.T) {
	up, port, port2, adminPort := startBothEras(t, "negotiated")
	url := proxyURL(port) + "/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// evict evicts the session of upstream id sid through the admin API
	// and reports whether the upstream got its DELETE.
	evict := func(sid, negotiated string) {
		t.Helper()
		var one struct {
			Sessions []adminSession `json:"sessions"`
		}
		adminJSON(t, adminPort, http.MethodGet, "/mcp/sessions/"+up.adminID(sid), "", http.StatusOK, &one)
		if len(one.Sessions) != 1 {
			t.Fatalf("sessions %+v", one.Sessions)
		}
		if one.Sessions[0].Version != negotiated {
			t.Errorf("the session is listed at protocol version %s; the upstream negotiated %s", one.Sessions[0].Version, negotiated)
		}
		adminJSON(t, adminPort, http.MethodDelete, "/mcp/sessions/"+up.adminID(sid), "", http.StatusOK, nil)
		if !waitUntil(5*time.Second, 10*time.Millisecond, func() bool { return up.deleted(sid) > 0 }) {
			t.Errorf("the evicted session (negotiated %s) was not deleted upstream", negotiated)
		}
	}

	cs := connect(t, ctx, url, nil, nil)
	defer cs.Close()
	if got, err := echo(ctx, cs, "v"); err != nil || got != "v" {
		t.Fatalf("echo: %q %v", got, err)
	}
	ids := up.mintedIDs()
	if len(ids) != 1 {
		t.Fatalf("upstream ids %v", ids)
	}
	evict(ids[0], cs.InitializeResult().ProtocolVersion)

	offer := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2026-07-28","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`
	st, h, b := rawPost(t, url, offer, map[string]string{"Mcp-Method": "initialize"})
	var answer struct {
		Result struct {
			ProtocolVersion string `json:"protocolVersion"`
		} `json:"result"`
	}
	data := b
	if i := strings.Index(b, "data: "); i >= 0 {
		data = strings.TrimSpace(b[i+len("data: "):])
	}
	if st != http.StatusOK || h.Get("Mcp-Session-Id") == "" || json.Unmarshal([]byte(data), &answer) != nil || answer.Result.ProtocolVersion == "" {
		t.Fatalf("initialize offering 2026-07-28: %d %q %s", st, h.Get("Mcp-Session-Id"), b)
	}
	tok := h.Get("Mcp-Session-Id")
	hdr := map[string]string{"Mcp-Session-Id": tok, "Mcp-Protocol-Version": answer.Result.ProtocolVersion}
	if st, _, b := rawPost(t, url, notifyInitialized, hdr); st != http.StatusAccepted {
		t.Fatalf("notifications/initialized: %d %s", st, b)
	}
	if st, _, b := rawPost(t, url, echoCall(2, "offered"), hdr); st != http.StatusOK || !strings.Contains(b, `"text":"offered"`) {
		t.Errorf("echo in the session: %d %s", st, b)
	}
	ids = up.mintedIDs()
	evict(ids[len(ids)-1], answer.Result.ProtocolVersion)

	// An initialize answered with an error that carries an id.
	sessions := status(t, adminPort).Resources.Sessions.Used
	body := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2026-07-28","capabilities":{},"clientInfo":{"name":"raw","version":"1"},` + meta2026 + `}}`
	st, h, b = rawPost(t, proxyURL(port2)+"/mcp", body, map[string]string{
		"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "initialize", "X-Answer-Session-Id": "planted-on-an-error"})
	if st < 400 || h.Get("Mcp-Session-Id") != "" {
		t.Errorf("initialize refused by the upstream with an id on the answer: %d, client got Mcp-Session-Id %.40q: %s", st, h.Get("Mcp-Session-Id"), b)
	}
	if got := status(t, adminPort).Resources.Sessions.Used; got != sessions {
		t.Errorf("%d live sessions after an initialize the upstream refused, want %d", got, sessions)
	}
}

// TestLegacyRouteCarriesPostsOnly: a legacy route token (the endpoint URL
// a 2024-11-05 client is given) carries the session's POSTs only: a
// client's Mcp-Session-Id header on such a POST never reaches the
// upstream (it could name another session of an upstream that reads
// it), and a GET or DELETE of the endpoint URL gets 405 without reaching
// the upstream (a legacy server answers a GET with a new session, whose
// endpoint, with its raw id, would reach the client unsealed).
func TestLegacyRouteCarriesPostsOnly(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	legacy := legacyServerWith("event: endpoint\ndata: /messages?sessionId=s1\n\n", func(string) string { return "" })
	up := startUpstreamHandler(t, "legacy", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Method+" "+r.URL.String()+" sid="+fmt.Sprint(r.Header.Values("Mcp-Session-Id")))
		mu.Unlock()
		legacy.ServeHTTP(w, r)
	}))
	port := freePort(t)
	loadCaddyfile(t, proxySite(port, up.addr(), ""))
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	lc, r := openLegacyStream(ctx, rawClient, proxyURL(port)+"/sse")
	if lc == nil {
		t.Fatalf("legacy stream: %s", r)
	}
	defer lc.cancel()
	const raw = "another-raw-upstream-session-id"
	if rep := postJSON(ctx, proxyURL(port)+lc.endpoint, `{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		map[string]string{"Mcp-Session-Id": raw}); rep.status != http.StatusAccepted {
		t.Fatalf("a POST to the endpoint: %s", rep)
	}
	for _, method := range []string{http.MethodGet, http.MethodDelete} {
		req, err := http.NewRequestWithContext(ctx, method, proxyURL(port)+lc.endpoint, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", "text/event-stream")
		st, hdr, body := do(t, req)
		if st != http.StatusMethodNotAllowed || hdr.Get("Allow") != http.MethodPost || !strings.Contains(body, "POST only") {
			t.Errorf("%s of the endpoint URL: %d Allow %q %s, want 405 with Allow: POST", method, st, hdr.Get("Allow"), body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 {
		t.Fatalf("the upstream saw %q, want the stream's GET and the POST", seen)
	}
	if strings.Contains(seen[1], raw) || !strings.HasPrefix(seen[1], "POST /messages?sessionId=s1") {
		t.Errorf("the upstream saw the POST as %q, want it on the session's endpoint without the client's Mcp-Session-Id", seen[1])
	}
}
