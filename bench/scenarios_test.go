//go:build linux

package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseProm(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines.
# TYPE go_goroutines gauge
go_goroutines 17
caddy_mcp_refusals_total{reason="capacity"} 5
caddy_mcp_refusals_total{reason="queue timeout"} 2 1700000000000
caddy_mcp_request_duration_seconds_count{class="heavy"} 100
caddy_mcp_request_duration_seconds_count{class="cheap"} 3
bad_line
weird{a="}"} 1
`
	p, err := parseProm(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if p.get("go_goroutines") != 17 {
		t.Errorf("go_goroutines = %v", p.get("go_goroutines"))
	}
	if got := p.sum("caddy_mcp_refusals_total"); got != 7 {
		t.Errorf("refusals sum = %v", got)
	}
	if got := p.sum("caddy_mcp_request_duration_seconds_count", `class="heavy"`); got != 100 {
		t.Errorf("heavy = %v", got)
	}
	if got := p.sum("caddy_mcp_request_duration_seconds"); got != 0 {
		t.Errorf("a prefix of another name must not match: %v", got)
	}
	later, _ := parseProm(strings.NewReader(`caddy_mcp_refusals_total{reason="capacity"} 15
caddy_mcp_refusals_total{reason="queue timeout"} 2
caddy_mcp_request_duration_seconds_count{class="heavy"} 160
caddy_mcp_service_level 3
caddy_mcp_service_level_changes_total{level="protective"} 1
`))
	d := mcpDelta(p, later)
	if !d.Scraped || d.AdmittedHeavy != 60 || d.Refusals["capacity"] != 10 || len(d.Refusals) != 1 || d.LevelAtEnd != 3 || d.LevelChanges["protective"] != 1 {
		t.Errorf("mcpDelta = %+v", d)
	}
	if got := floatMap(d.Refusals); got != "capacity×10" {
		t.Errorf("floatMap = %q", got)
	}
	if mcpDelta(nil, later).Scraped {
		t.Error("delta without a first scrape")
	}
}

func TestLevelPeakString(t *testing.T) {
	if got := (levelPeak{}).String(); got != "–" {
		t.Errorf("unpolled = %q", got)
	}
	p := levelPeak{Polled: 3, Level: 3, Monitors: map[string]float64{"sched_latency": 1, "heap": 0.2, "budget": 0.5}}
	if got := p.String(); got != "protective (budget 0.50, sched_latency 1.00)" {
		t.Errorf("String = %q", got)
	}
	if levelIndex("essential") != 2 || levelIndex("full") != 0 || levelName(1) != "degraded" {
		t.Error("level names")
	}
}

func TestStreamEventRoundTrip(t *testing.T) {
	for _, size := range []int{1024, 300} {
		ev := appendStreamEvent(nil, 123456, 1732770000123456789, size)
		if len(ev) != size {
			t.Errorf("size %d: event of %d bytes", size, len(ev))
		}
		if !strings.HasPrefix(string(ev), `data: {"jsonrpc":"2.0","method":"notifications/message"`) || !strings.HasSuffix(string(ev), "}}}\n\n") {
			t.Errorf("event %q", ev)
		}
		line := ev[:len(ev)-1] // the data line with its "\n"
		seq, ts, ok := parseStreamEvent(line)
		if !ok || seq != 123456 || ts != 1732770000123456789 {
			t.Errorf("parse = %d %d %v", seq, ts, ok)
		}
		if got := len(dataValue(line)); got != eventPayloadLen(size) {
			t.Errorf("payload %d, want %d", got, eventPayloadLen(size))
		}
	}
	if _, _, ok := parseStreamEvent([]byte(`data: {"seq":1}`)); ok {
		t.Error("event without ts accepted")
	}
}

func TestReadStreamTally(t *testing.T) {
	const size = 300
	var b strings.Builder
	b.WriteString(": open\n\n")
	now := time.Now().UnixNano()
	for _, seq := range []int64{1, 2, 3, 5, 4, 6} {
		b.Write(appendStreamEvent(nil, seq, now, size))
	}
	b.WriteString("data: garbage\n\n")
	b.WriteString(": keepalive\n\n")
	tally := &streamTally{maxLat: 3}
	readStream(strings.NewReader(b.String()), tally, eventPayloadLen(size))
	if tally.Events != 6 || tally.Gaps != 1 || tally.Reordered != 1 || tally.Corrupt != 1 || tally.Comments != 2 || tally.LastSeq != 6 {
		t.Errorf("tally = %+v", tally)
	}
	if len(tally.Lat) != 3 || tally.EndErr != nil || tally.Ended.IsZero() {
		t.Errorf("lat %d, end %v", len(tally.Lat), tally.EndErr)
	}
	// A broken stream reports its error.
	tally = &streamTally{}
	readStream(io.MultiReader(strings.NewReader(string(appendStreamEvent(nil, 1, now, size))), errReader{}), tally, 0)
	if tally.Events != 1 || tally.EndErr == nil {
		t.Errorf("broken stream: %+v", tally)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// The mock's GET stream, through httptest: headers and the open comment at
// once, then the plan's events, then the end of the response.
func TestMockStream(t *testing.T) {
	u := &upstream{}
	srv := httptest.NewServer(u)
	defer srv.Close()
	c := srv.Client()
	sid, err := initialize(context.Background(), c, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := openStream(context.Background(), c, srv.URL, "nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("unknown session: %v", err)
	}
	plan := newStreamPlan(50*time.Millisecond, 5*time.Millisecond, 1, 400)
	u.plan.Store(plan)
	resp, err := openStream(context.Background(), c, srv.URL, sid)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	plan.begin(time.Now())
	tally := &streamTally{maxLat: 100}
	readStream(resp.Body, tally, eventPayloadLen(400))
	plan.mu.Lock()
	sent := plan.sent
	plan.mu.Unlock()
	if tally.Events == 0 || tally.Events != sent || tally.Gaps != 0 || tally.Corrupt != 0 || tally.Comments != 1 || tally.EndErr != nil {
		t.Errorf("tally %+v, sent %d", tally, sent)
	}
	if sent > 11 {
		t.Errorf("paced at 5 ms for 50 ms, sent %d", sent)
	}
	if u.streamsTotal.Load() != 1 {
		t.Errorf("streams total %d", u.streamsTotal.Load())
	}
}

func TestMockStreamNeedsAccept(t *testing.T) {
	u := &upstream{}
	w := httptest.NewRecorder()
	u.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(initializeBody)))
	sid := w.Header().Get("Mcp-Session-Id")
	r := httptest.NewRequest(http.MethodGet, "/mcp", nil)
	r.Header.Set("Mcp-Session-Id", sid)
	w = httptest.NewRecorder()
	u.ServeHTTP(w, r)
	if w.Code != http.StatusNotAcceptable {
		t.Errorf("GET without Accept: %d", w.Code)
	}
}

func TestSummarizeBurst(t *testing.T) {
	cfg := burstConfig{Duration: 4 * time.Second, Bin: time.Second}
	s := time.Second
	records := [][]burstCall{
		{{start: -s, end: -s / 2, out: outOK, status: 200}, {start: 0, end: s / 2, out: outOK, status: 200}},
		{{start: 0, end: 2500 * time.Millisecond, out: outStatus, status: 503}, {start: 2500 * time.Millisecond, end: 5 * s, out: outOK, status: 200}},
		{{start: 3 * s, end: 3 * s, out: outStatus, status: 429}, {start: 3 * s, end: 4 * s, out: outError}, {start: 3 * s, end: 4 * s, out: outTimeout}},
	}
	res := &burstResult{Duration: cfg.Duration}
	summarizeBurst(res, records, cfg)
	a := res.After
	if res.Warm.Issued != 1 || a.Issued != 6 || a.OK != 2 || a.S503 != 1 || a.S429 != 1 || a.Errors != 1 || a.Timeouts != 1 || a.answered() != a.Issued {
		t.Errorf("after = %+v, warm = %+v", a, res.Warm)
	}
	if res.SecondHalf.Issued != 4 || res.SecondHalf.refused() != 1 {
		t.Errorf("second half = %+v", res.SecondHalf)
	}
	if got := a.refusedShare(); got < 0.333 || got > 0.334 {
		t.Errorf("refused share = %v", got)
	}
	if res.OKInWindow != 1 {
		t.Errorf("200s in the window = %d", res.OKInWindow)
	}
	// Bins 0..5 by completion, an empty bin (1–2) included.
	if len(res.Timeline) != 6 || res.Timeline[1].Issued != 0 || res.Timeline[2].S503 != 1 || res.Timeline[5].OK != 1 {
		t.Errorf("timeline = %+v", res.Timeline)
	}
	gs := burstGoals([]*burstResult{{Target: targetMCP, After: a, SecondHalf: res.SecondHalf}})
	if len(gs) != 2 || gs[0].Met || gs[1].Met {
		t.Errorf("goals = %+v", gs)
	}
}

func TestOverloadGoals(t *testing.T) {
	cfg := overloadConfig{Multiples: []float64{1, 2, 5, 10}, Capacity: 800, Duration: 5 * time.Second}
	mk := func(m float64, ok int64, refP99, admP99 time.Duration, received int64) *overloadResult {
		return &overloadResult{Target: targetMCP, Multiple: m, Duration: cfg.Duration, Scheduled: int64(4000 * m),
			OK: ok, Status: map[int]int64{503: int64(4000*m) - ok},
			Admitted: latencySummary{N: int(ok), P99: admP99}, Refused: latencySummary{N: 10, P99: refP99},
			Upstream: upstreamCounts{Received: received}}
	}
	rs := []*overloadResult{
		mk(1, 4000, 0, 40*time.Millisecond, 4000),
		mk(2, 3700, 2*time.Millisecond, 60*time.Millisecond, 3700),
		mk(5, 3500, 6*time.Millisecond, 90*time.Millisecond, 3501),
		mk(10, 3500, 10*time.Millisecond, 70*time.Millisecond, 3500),
	}
	gs := overloadGoals(cfg, rs)
	want := map[string]bool{
		"goodput ≥ 90 % of capacity (800/s) at 2×":                             true,
		"goodput ≥ 90 % of capacity (800/s) at 5×":                             false, // 700/s
		"goodput ≥ 85 % of capacity (800/s) at 10×":                            true,
		"refusal latency p99 ≤ 5.00 ms at 5×":                                  false,
		"refusal latency p99 ≤ 15.0 ms at 10×":                                 true,
		"admitted p99 at 5× ≤ 2× the 1× figure (40.0 ms)":                      false,
		"admitted p99 at 10× ≤ 2× the 1× figure (40.0 ms)":                     true,
		"the upstream receives no refused request at 5× (received ≤ admitted)": false,
		"the upstream receives no refused request at 2× (received ≤ admitted)": true,
	}
	seen := 0
	for _, g := range gs {
		if w, ok := want[g.Goal]; ok {
			seen++
			if !g.Known || g.Met != w {
				t.Errorf("%s: met %v (%s), want %v", g.Goal, g.Met, g.Measured, w)
			}
		}
	}
	if seen != len(want) {
		t.Errorf("found %d of %d goals in %+v", seen, len(want), gs)
	}
	var b strings.Builder
	writeGoals(&b, gs)
	if !strings.Contains(b.String(), "| goal (mcp_proxy) | measured | verdict |") || !strings.Contains(b.String(), "**not met**") {
		t.Errorf("goals table:\n%s", b.String())
	}
}

func TestStreamsGoalsAndReport(t *testing.T) {
	mk := func(tgt, mode string, inWindow int64, p99 time.Duration) *streamsResult {
		return &streamsResult{Target: tgt, Mode: mode, Streams: 100, Duration: 5 * time.Second, Sent: inWindow, Received: inWindow, InWindow: inWindow,
			CleanEnds: 100, Lat: latencySummary{N: 10, P50: p99 / 4, P99: p99}}
	}
	rs := []*streamsResult{
		mk(targetMCP, modeSaturation, 1_900_000, 0), mk(targetPlain, modeSaturation, 2_000_000, 0), mk(targetDirect, modeSaturation, 3_000_000, 0),
		mk(targetDirect, modePaced, 250_000, time.Millisecond), mk(targetPlain, modePaced, 250_000, 2*time.Millisecond), mk(targetMCP, modePaced, 250_000, 7*time.Millisecond),
	}
	rs[0].Gaps = 1
	gs := streamsGoals(rs)
	if len(gs) != 4 || !gs[0].Met || gs[1].Met || gs[2].Met || !gs[3].Met {
		t.Errorf("goals = %+v", gs)
	}
	if !strings.Contains(gs[2].Measured, "+6.00 ms") || !strings.Contains(gs[2].Measured, "plain adds +1.00 ms") {
		t.Errorf("paced goal = %s", gs[2].Measured)
	}
	var b strings.Builder
	writeStreamsReport(&b, reportMeta{Title: "streams test"}, rs, []string{"out/streams-saturation-events.svg"})
	out := b.String()
	for _, s := range []string{"### saturation", "### paced", "![streams-saturation-events](out/streams-saturation-events.svg)", "| plain | 2000000 | 2000000 | 400000 | 1.00× |", "| mcp_proxy | 1900000 | 1900000 | 380000 | 0.95× | 1 |", "+1.50 / +6.00"} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	// direct comes first whatever the run order.
	if strings.Index(out, "| direct | 3000000") > strings.Index(out, "| plain | 2000000") {
		t.Error("targets out of order")
	}
}

func TestIdleGoals(t *testing.T) {
	mk := func(tgt string, base, held int64) *idleResult {
		return &idleResult{Target: tgt, Opened: 1000, Base: memPoint{RSS: base, Goroutines: 10}, Settled: memPoint{RSS: held - 1024}, Held: memPoint{RSS: held, Goroutines: 4010}, Closed: memPoint{Goroutines: -1}}
	}
	plain := mk(targetPlain, 50<<20, 50<<20+1000*80*1024)
	mcp := mk(targetMCP, 50<<20, 50<<20+1000*36*1024)
	if got := mcp.growth(); got != 36*1024 {
		t.Errorf("growth = %v", got)
	}
	var b strings.Builder
	writeIdleReport(&b, reportMeta{Title: "idle test"}, []*idleResult{plain, mcp}, nil)
	out := b.String()
	for _, s := range []string{"| mcp_proxy | 1000 | 0 |", "| 36.0 |", "10 → 4010 (4.00 per stream)", "36.0 vs 80.0 KiB = 0.45×", "**met**"} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	if strings.Contains(out, "**not met**") {
		t.Errorf("a goal failed:\n%s", out)
	}
}

func TestCaddyfileGlobalAndOneSite(t *testing.T) {
	got := caddyfile(caddyfileParams{Upstream: "127.0.0.1:9000", MCPPort: 8002, Global: "mcp { session_memory 32MiB }"})
	want := `{
	admin off
	auto_https off
	persist_config off
	log {
		output discard
	}
	mcp {
		session_memory 32MiB
	}
}

http://127.0.0.1:8002 {
	mcp_proxy 127.0.0.1:9000
}
`
	if got != want {
		t.Errorf("caddyfile:\n%s\nwant:\n%s", got, want)
	}
}

func TestParseFlagsNewScenarios(t *testing.T) {
	flagOutput = io.Discard
	defer func() { flagOutput = os.Stderr }()
	o, err := parseFlags([]string{"burst"})
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 5*time.Second || o.service != 20*time.Millisecond || o.capacity != 16 || o.clients != 1000 || o.clientsBefore != 10 {
		t.Errorf("burst defaults: %+v", o)
	}
	o, err = parseFlags([]string{"streams"})
	if err != nil {
		t.Fatal(err)
	}
	if o.streams != 100 || o.eventSize != 1024 || o.streamRate != 50000 || o.duration != 5*time.Second {
		t.Errorf("streams defaults: %+v", o)
	}
	o, err = parseFlags([]string{"idle"})
	if err != nil {
		t.Fatal(err)
	}
	if o.streams != 5000 || o.openConcurrency != 256 {
		t.Errorf("idle defaults: %+v", o)
	}
	for _, bad := range [][]string{{"burst", "-clients-before", "1000"}, {"idle", "-streams", "20000"}, {"streams", "-event-size", "10"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
	if m, err := parseModes("paced, saturation"); err != nil || len(m) != 2 || m[0] != modePaced {
		t.Errorf("parseModes = %v, %v", m, err)
	}
	if _, err := parseModes("fast"); err == nil {
		t.Error("unknown mode accepted")
	}
}

func TestStreamsCharts(t *testing.T) {
	rs := []*streamsResult{
		{Target: targetPlain, Mode: modeSaturation, Rate: []float64{100, 200, 300}},
		{Target: targetMCP, Mode: modeSaturation, Rate: []float64{90, 190, 290}},
		{Target: targetPlain, Mode: modePaced, Rate: []float64{50, 50}},
	}
	modes, charts := streamsCharts(rs)
	if len(modes) != 2 || modes[0] != modeSaturation || modes[1] != modePaced || len(charts) != 2 {
		t.Fatalf("modes %v, %d charts", modes, len(charts))
	}
	sat := charts[0]
	if len(sat.Series) != 2 || sat.Series[1].Name != targetMCP {
		t.Fatalf("series %+v", sat.Series)
	}
	if x, y := sat.Series[0].X, sat.Series[0].Y; len(x) != 3 || x[0] != rateBin.Seconds() || y[2] != 300 {
		t.Errorf("plain series x %v y %v", x, y)
	}
	if svg := string(sat.SVG()); !strings.HasPrefix(svg, "<svg") || !strings.Contains(svg, "mcp_proxy") {
		t.Errorf("svg %.80q", svg)
	}
}

func TestStreamTallyBins(t *testing.T) {
	from := time.Unix(100, 0)
	tl := &streamTally{maxLat: 1, windowFrom: from, windowTo: from.Add(time.Second), Bins: make([]int64, int(time.Second/rateBin))}
	line := func(seq int) []byte {
		return appendStreamEvent(nil, int64(seq), from.UnixNano(), 200)
	}
	tl.line(line(1), from.Add(10*time.Millisecond), 0)
	tl.line(line(2), from.Add(150*time.Millisecond), 0)
	tl.line(line(3), from.Add(160*time.Millisecond), 0)
	tl.line(line(4), from.Add(2*time.Second), 0) // after the window
	if tl.Bins[0] != 1 || tl.Bins[1] != 2 || tl.InWindow != 3 {
		t.Errorf("bins %v, in window %d", tl.Bins, tl.InWindow)
	}
}

func TestWarmConns(t *testing.T) {
	for _, tc := range []struct {
		rate float64
		want int
	}{{800, 64}, {4000, 100}, {8000, 200}, {100000, 512}} {
		if got := warmConns(tc.rate); got != tc.want {
			t.Errorf("warmConns(%v) = %d, want %d", tc.rate, got, tc.want)
		}
	}
}
