//go:build linux

package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseTargetsBaseline(t *testing.T) {
	got, err := parseTargets("mcp_proxy,baseline,baseline")
	if err != nil || strings.Join(got, ",") != "mcp_proxy,baseline" {
		t.Errorf("parseTargets = %v, %v", got, err)
	}
}

func TestParseFlagsStreamKind(t *testing.T) {
	flagOutput = io.Discard
	defer func() { flagOutput = os.Stderr }()
	o, err := parseFlags([]string{"streams"})
	if err != nil || o.streamKind != kindGet {
		t.Errorf("default kind %q, %v", o.streamKind, err)
	}
	o, err = parseFlags([]string{"streams", "-stream-kind", "answer", "-baseline", "/tmp/caddy-base"})
	if err != nil || o.streamKind != kindAnswer || o.baselineBin != "/tmp/caddy-base" {
		t.Errorf("answer: %+v, %v", o, err)
	}
	for _, bad := range [][]string{{"streams", "-stream-kind", "post"}, {"post", "-stream-kind", "answer"}, {"idle", "-stream-kind", "answer"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

func TestParseFlagsPostCall(t *testing.T) {
	flagOutput = io.Discard
	defer func() { flagOutput = os.Stderr }()
	o, err := parseFlags([]string{"post"})
	if err != nil || o.postCall != postCallTool {
		t.Errorf("default %q, %v", o.postCall, err)
	}
	if o, err = parseFlags([]string{"post", "-post-call", "list"}); err != nil || o.postCall != postCallList {
		t.Errorf("list: %+v, %v", o, err)
	}
	for _, bad := range [][]string{{"post", "-post-call", "get"}, {"streams", "-post-call", "list"}, {"overload", "-post-call", "list"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

// run refuses the targets a scenario cannot measure before it starts
// anything.
func TestRunRefusesTargets(t *testing.T) {
	flagOutput = io.Discard
	defer func() { flagOutput = os.Stderr }()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"overload", "-q", "-targets", "mcp_proxy,baseline", "-baseline", exe}, "only the post, streams, idle and idleedge"},
		{[]string{"post", "-q", "-targets", "mcp_proxy,baseline"}, "needs -baseline"},
		{[]string{"post", "-q", "-targets", "baseline", "-baseline", t.TempDir()}, "not an executable file"},
		{[]string{"post", "-q", "-targets", "baseline", "-baseline", filepath.Join(t.TempDir(), "none")}, "-baseline"},
		{[]string{"burst", "-q", "-targets", "mcp_auth"}, "only the post and streams"},
		{[]string{"idleedge", "-q", "-targets", "plain,mcp_auth"}, "only the post and streams"},
	} {
		err := run(tc.args)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run(%q) = %v, want %q", tc.args, err, tc.want)
		}
	}
}

func TestBenchEnvBaselineProcess(t *testing.T) {
	withPID := func(pid int) *caddyProc { return &caddyProc{cmd: &exec.Cmd{Process: &os.Process{Pid: pid}}} }
	e := &benchEnv{caddy: withPID(101), admin: "127.0.0.1:1", base: withPID(202), baseAdmin: "127.0.0.1:2"}
	if e.caddyPID(target{Name: targetMCP}) != 101 || e.caddyPID(target{Name: targetBase}) != 202 || e.caddyPID(target{Name: targetDirect}) != 101 {
		t.Error("caddyPID")
	}
	if e.adminFor(target{Name: targetAuth}) != "127.0.0.1:1" || e.adminFor(target{Name: targetBase}) != "127.0.0.1:2" {
		t.Error("adminFor")
	}
	if !isMCPTarget(targetBase) || !isMCPTarget(targetAuth) || isMCPTarget(targetPlain) {
		t.Error("isMCPTarget")
	}
}

func TestBaselineCaddyfile(t *testing.T) {
	o := &options{mcpBlock: "max_inflight 16", global: "mcp { session_memory 32MiB }", plainBlock: "ignored", policyBlock: "ignored"}
	got := caddyfile(baselineParams(o, "127.0.0.1:9000", 8004, "127.0.0.1:8005"))
	want := `{
	admin 127.0.0.1:8005
	auto_https off
	persist_config off
	log {
		output discard
	}
	mcp {
		session_memory 32MiB
	}
}

http://127.0.0.1:8004 {
	mcp_proxy 127.0.0.1:9000 {
		max_inflight 16
	}
}
`
	if got != want {
		t.Errorf("baseline caddyfile:\n%s\nwant:\n%s", got, want)
	}
}

// The stream tool's answer through httptest: SSE headers and the open
// comment at once, the plan's events, then the call's result.
func TestMockAnswerStream(t *testing.T) {
	u := &upstream{}
	srv := httptest.NewServer(u)
	defer srv.Close()
	c := srv.Client()
	sid, err := initialize(context.Background(), c, srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	// Without a plan the stream tool is any tool: a JSON answer.
	var buf strings.Builder
	req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(string(streamCallBody(7))))
	setMCPHeaders(req.Header, sid)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	buf.Write(b)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" || !strings.Contains(buf.String(), okMarker) {
		t.Errorf("no plan: %s %q", ct, buf.String())
	}

	plan := newStreamPlan(50*time.Millisecond, 5*time.Millisecond, 1, 400)
	u.plan.Store(plan)
	resp, err = openAnswer(context.Background(), c, srv.URL, sid, 42)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if u.streamsOpen.Load() != 1 {
		t.Errorf("streams open %d", u.streamsOpen.Load())
	}
	plan.begin(time.Now())
	tally := &streamTally{maxLat: 100}
	readStream(resp.Body, tally, eventPayloadLen(400))
	plan.mu.Lock()
	sent := plan.sent
	plan.mu.Unlock()
	if tally.Events == 0 || tally.Events != sent || tally.Gaps != 0 || tally.Corrupt != 0 || tally.Comments != 1 || tally.EndErr != nil {
		t.Errorf("tally %+v, sent %d", tally, sent)
	}
	if tally.Results != 1 || tally.RPCErrors != 0 {
		t.Errorf("results %d, errors %d", tally.Results, tally.RPCErrors)
	}
	if c := u.counts(); c.Received != 2 || c.Served != 2 {
		t.Errorf("counts %+v", c)
	}
	if _, err := openAnswer(context.Background(), c, srv.URL, "nope", 43); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("unknown session: %v", err)
	}
}

func TestStreamCallBody(t *testing.T) {
	if got := string(streamCallBody(12)); got != `{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"stream","arguments":{}}}` {
		t.Errorf("body %s", got)
	}
	if !isStreamTool(streamCallBody(1)) || isStreamTool(toolsCallBody(nil, 1)) {
		t.Error("isStreamTool")
	}
}

// JSON-RPC responses on a stream are counted apart from events and from
// corrupt lines.
func TestReadStreamRPCResponses(t *testing.T) {
	var b strings.Builder
	b.Write(appendStreamEvent(nil, 1, time.Now().UnixNano(), 300))
	b.WriteString("id: mcpgate-x-1\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"error\":{\"code\":-32603,\"message\":\"the upstream ended the stream without an answer\"}}\n\n")
	b.WriteString("data: {\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{}}\n\n")
	b.WriteString("data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n") // no seq: corrupt
	tally := &streamTally{}
	readStream(strings.NewReader(b.String()), tally, eventPayloadLen(300))
	if tally.Events != 1 || tally.Results != 1 || tally.RPCErrors != 1 || tally.Corrupt != 1 {
		t.Errorf("tally %+v", tally)
	}
	if tally.FirstRPCError != "-32603 the upstream ended the stream without an answer" {
		t.Errorf("first error %q", tally.FirstRPCError)
	}
}

func TestAnswerStreamsLossless(t *testing.T) {
	r := &streamsResult{Kind: kindAnswer, Streams: 2, Sent: 10, Received: 10, CleanEnds: 2, Results: 2}
	if !r.lossless() {
		t.Error("complete answers not lossless")
	}
	r.Results = 1
	if r.lossless() {
		t.Error("a missing result is lossless")
	}
	r.Results, r.RPCErrors = 2, 1
	if r.lossless() {
		t.Error("an error is lossless")
	}
	r.Kind = kindGet
	r.Results, r.RPCErrors = 0, 0
	if !r.lossless() {
		t.Error("GET streams need no results")
	}
	r.Usage.Caddy.CPU, r.UsageSpan = 0.5, 2*time.Second
	if got := r.cpuPerEvent(); got != 100*time.Millisecond {
		t.Errorf("cpuPerEvent = %v", got)
	}
}

func TestReportsWithBaseline(t *testing.T) {
	// post
	rounds := samplePost()
	mk := func(round int, rps float64, p99 time.Duration) *postResult {
		return &postResult{Target: targetBase, Round: round, RPS: rps, OK: int64(rps * 10),
			Lat:    latencySummary{N: int(rps * 10), P50: 4 * time.Millisecond, P90: p99 / 2, P99: p99, Max: 2 * p99},
			Status: map[int]int64{}, Before: quietness{Quiet: true}}
	}
	rounds[0] = append(rounds[0], mk(1, 6800, 15*time.Millisecond))
	rounds[1] = append(rounds[1], mk(2, 6000, 14*time.Millisecond))
	var b strings.Builder
	writePostReport(&b, reportMeta{Title: "post test", BaseCaddyfile: "{\n}\n"}, rounds, []string{targetDirect, targetPlain, targetMCP, targetBase})
	out := b.String()
	for _, s := range []string{
		"| baseline | 6400 | 4.00 | 7.25 | 14.5 | 29.0 |",
		"mcp_proxy against the baseline build (mcp_proxy ÷ baseline, medians of rounds): req/s 1.07×, p50 1.00×, p99 1.00×, Caddy CPU per request –. Per round (req/s, p99): 1: 1.00× / 1.00×; 2: 1.15× / 1.00×; median of the per-round ratios: 1.07× / 1.00×.",
		"<summary>Caddyfile (baseline process)</summary>",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("post report lacks %q:\n%s", s, out)
		}
	}
	b.Reset()
	writePostReport(&b, reportMeta{Title: "post test"}, samplePost(), []string{targetDirect, targetPlain, targetMCP})
	if strings.Contains(b.String(), "baseline") {
		t.Errorf("baseline line without the baseline:\n%s", b.String())
	}

	// streams
	ms := func(tgt string, inWindow int64, p99 time.Duration, cpu float64) *streamsResult {
		return &streamsResult{Target: tgt, Mode: modePaced, Kind: kindAnswer, Streams: 100, Duration: 5 * time.Second, Sent: inWindow, Received: inWindow, InWindow: inWindow,
			CleanEnds: 100, Results: 100, Lat: latencySummary{N: 10, P50: p99 / 4, P99: p99}, Usage: windowUsage{Caddy: procUsage{CPU: cpu}}, UsageSpan: 5 * time.Second}
	}
	rs := []*streamsResult{ms(targetBase, 250_000, 4*time.Millisecond, 0.5), ms(targetMCP, 250_000, 6*time.Millisecond, 0.6), ms(targetAuth, 250_000, 8*time.Millisecond, 0.7)}
	rs[2].RPCErrors, rs[2].FirstRPCError = 1, "-32603 boom"
	b.Reset()
	writeStreamsReport(&b, reportMeta{Title: "streams test"}, rs, nil)
	out = b.String()
	for _, s := range []string{
		"| call results / JSON-RPC errors |",
		"| mcp_auth | 250000 | 250000 | 50000 | – | 0 | 0 | 0 | 100 / 0 / 0 | 2.00 / 8.00 / 0 | – | 0 | 100 / 1 |",
		"| mcp_proxy | 60 % | 12.00 |",
		"mcp_proxy against the baseline build (mcp_proxy ÷ baseline): delivered/s 1.00×, latency p50 1.50×, p99 1.50×, Caddy CPU per event 1.20×.",
		"- mcp_auth, first JSON-RPC error on a stream: `-32603 boom`",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("streams report lacks %q:\n%s", s, out)
		}
	}
	// mcp_proxy, mcp_auth, baseline: in that order whatever the run order.
	if i, j, k := strings.Index(out, "| mcp_proxy | 250000"), strings.Index(out, "| mcp_auth | 250000"), strings.Index(out, "| baseline | 250000"); !(i < j && j < k) {
		t.Errorf("targets out of order:\n%s", out)
	}

	// idle
	mi := func(tgt string, held int64, g float64) *idleResult {
		return &idleResult{Target: tgt, Opened: 1000, Base: memPoint{RSS: 50 << 20, Goroutines: 10, HeapInuse: 1 << 20},
			Settled: memPoint{RSS: held}, Held: memPoint{RSS: held, Goroutines: 10 + g*1000, HeapInuse: 1<<20 + 1000*20*1024}, Closed: memPoint{Goroutines: -1}}
	}
	b.Reset()
	writeIdleReport(&b, reportMeta{Title: "idle test"}, []*idleResult{mi(targetMCP, 50<<20+1000*36*1024, 2), mi(targetBase, 50<<20+1000*30*1024, 3)}, nil)
	if s := "mcp_proxy against the baseline build (mcp_proxy ÷ baseline): RSS per stream 36.0 vs 30.0 KiB = 1.20×; goroutines per stream 2.00 vs 3.00; heap in use per stream 20.0 vs 20.0 KiB = 1.00×."; !strings.Contains(b.String(), s) {
		t.Errorf("idle report lacks %q:\n%s", s, b.String())
	}
}
