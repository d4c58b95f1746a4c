//go:build linux

package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestParseFlagsIdleEdge(t *testing.T) {
	flagOutput = io.Discard
	defer func() { flagOutput = os.Stderr }()
	o, err := parseFlags([]string{"idleedge"})
	if err != nil {
		t.Fatal(err)
	}
	if o.rounds != 70 || o.upstreamIdle != 5*time.Second || o.edgeJitter != 5*time.Millisecond || o.seed != 1 || o.timeout != 10*time.Second || o.service != 0 || o.capacity != 0 {
		t.Errorf("idleedge defaults: %+v", o)
	}
	o, err = parseFlags([]string{"idleedge", "-rounds", "200", "-upstream-idle", "200ms", "-edge-jitter", "2ms", "-seed", "7"})
	if err != nil || o.rounds != 200 || o.upstreamIdle != 200*time.Millisecond || o.edgeJitter != 2*time.Millisecond || o.seed != 7 {
		t.Errorf("idleedge flags: %+v, %v", o, err)
	}
	if cfg := edgeConfigOf(o); cfg != (edgeConfig{Rounds: 200, UpstreamIdle: 200 * time.Millisecond, Jitter: 2 * time.Millisecond, Seed: 7, Timeout: 10 * time.Second}) {
		t.Errorf("config %+v", cfg)
	}
	for _, bad := range [][]string{
		{"idleedge", "-rounds", "0"}, {"idleedge", "-rounds", "1001"}, {"idleedge", "-upstream-idle", "5ms"}, {"idleedge", "-upstream-idle", "2m"},
		{"idleedge", "-edge-jitter", "6ms"}, {"idleedge", "-edge-jitter", "-1ms"}, {"idleedge", "-upstream-idle", "15ms", "-edge-jitter", "8ms"},
		{"idleedge", "-timeout", "2m"}, {"post", "-upstream-idle", "5s"}, {"post", "-rounds", "200"},
	} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

func TestEdgeJitters(t *testing.T) {
	a, b := edgeJitters(1, 500, 5*time.Millisecond), edgeJitters(1, 500, 5*time.Millisecond)
	if !slices.Equal(a, b) {
		t.Error("same seed, other jitters")
	}
	if slices.Equal(a, edgeJitters(2, 500, 5*time.Millisecond)) {
		t.Error("another seed, same jitters")
	}
	neg, pos := 0, 0
	for _, j := range a {
		if j < -5*time.Millisecond || j > 5*time.Millisecond {
			t.Fatalf("jitter %s out of bounds", j)
		}
		if j < 0 {
			neg++
		} else {
			pos++
		}
	}
	if neg < 150 || pos < 150 {
		t.Errorf("jitters lopsided: %d below 0, %d from 0 up", neg, pos)
	}
	if z := edgeJitters(1, 3, 0); !slices.Equal(z, []time.Duration{0, 0, 0}) {
		t.Errorf("no jitter: %v", z)
	}
}

func TestEdgeMCPBlock(t *testing.T) {
	for in, want := range map[string]string{
		"":                                "require_session off",
		"transport http { keepalive 2m }": "require_session off; transport http { keepalive 2m }",
		"require_session on":              "require_session on",
	} {
		if got := edgeMCPBlock(in); got != want {
			t.Errorf("edgeMCPBlock(%q) = %q, want %q", in, got, want)
		}
	}
	cf := caddyfile(caddyfileParams{Upstream: "127.0.0.1:9000", MCPPort: 8002, MCPBlock: edgeMCPBlock("")})
	if !strings.Contains(cf, "\tmcp_proxy 127.0.0.1:9000 {\n\t\trequire_session off\n\t}\n") {
		t.Errorf("caddyfile:\n%s", cf)
	}
}

// The stateless mock answers requests without a session; one with an
// unknown session is still 404.
func TestMockStateless(t *testing.T) {
	u := &upstream{stateless: true}
	post := func(body, sid string) *httptest.ResponseRecorder { return mockPost(u, body, sid) }
	if w := post(string(toolsListBody(nil, 3)), ""); w.Code != 200 || !strings.Contains(w.Body.String(), listMarker) {
		t.Errorf("tools/list without a session: %d %.100s", w.Code, w.Body)
	}
	if w := post(string(toolsListBody(nil, 4)), "nope"); w.Code != 404 {
		t.Errorf("unknown session: %d", w.Code)
	}
	u.stateless = false
	if w := post(string(toolsListBody(nil, 5)), ""); w.Code != 404 {
		t.Errorf("without a session, not stateless: %d", w.Code)
	}
}

// The rounds against the mock itself, over loopback: every request on a
// connection of its own, both POSTs of every round answered.
func TestRunEdgeAgainstMock(t *testing.T) {
	up, err := startUpstream(0, 0, mockOptions{IdleTimeout: 30 * time.Millisecond, Stateless: true})
	if err != nil {
		t.Fatal(err)
	}
	defer up.close()
	if up.srv.IdleTimeout != 30*time.Millisecond {
		t.Errorf("idle timeout %s", up.srv.IdleTimeout)
	}
	cfg := edgeConfig{Rounds: 3, UpstreamIdle: 30 * time.Millisecond, Jitter: time.Millisecond, Seed: 1, Timeout: 5 * time.Second}
	r := runEdge(context.Background(), target{Name: targetPlain, URL: "http://" + up.addr + "/mcp"}, cfg, func(string, ...any) {})
	if r.Rounds != 3 || r.Second[200] != 3 || r.First[200] != 3 || r.firstFailures() != 0 || r.secondOther() != 0 || len(r.Failed) != 0 || r.FirstErr != "" {
		t.Errorf("result %+v", r)
	}
	if c := up.counts(); c.Served != 6 || c.BadSession != 0 {
		t.Errorf("mock counts %+v", c)
	}
	if def, err := startUpstream(0, 0, mockOptions{}); err != nil || def.srv.IdleTimeout != mockDefaultIdle || def.stateless {
		t.Errorf("default mock: %v", err)
	} else {
		def.close()
	}
}

// Statuses and failed rounds are tallied per POST of the round.
func TestRunEdgeTally(t *testing.T) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Header.Get("Mcp-Protocol-Version") != protocolVersion || r.Header.Get("Mcp-Session-Id") != "" || !r.Close {
			t.Errorf("request headers %v, close %v", r.Header, r.Close)
		}
		switch n.Add(1) {
		case 2:
			w.WriteHeader(http.StatusBadGateway)
		case 4:
			c, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				c.Close()
			}
		case 5:
			w.WriteHeader(http.StatusServiceUnavailable)
		case 6:
			w.WriteHeader(http.StatusTeapot)
		}
	}))
	defer srv.Close()
	cfg := edgeConfig{Rounds: 4, UpstreamIdle: 10 * time.Millisecond, Jitter: 0, Seed: 1, Timeout: 5 * time.Second}
	r := runEdge(context.Background(), target{Name: targetMCP, URL: srv.URL}, cfg, func(string, ...any) {})
	if r.Rounds != 4 || r.Second[200] != 1 || r.Second[502] != 1 || r.secondOther() != 2 || r.firstFailures() != 1 || r.First[503] != 1 {
		t.Errorf("result %+v", r)
	}
	want := []edgeFail{{Round: 1, Status: 502}, {Round: 2, Status: 0}, {Round: 3, Status: 418}}
	if !slices.Equal(r.Failed, want) || r.FirstErr == "" {
		t.Errorf("failed %+v, first error %q", r.Failed, r.FirstErr)
	}

	// A round cut by the end of the run (here: cancelled while its first
	// POST is answered) is left out.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var m atomic.Int32
	cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if m.Add(1) == 3 {
			cancel()
		}
	}))
	defer cut.Close()
	r = runEdge(ctx, target{Name: targetMCP, URL: cut.URL}, cfg, func(string, ...any) {})
	if r.Rounds != 1 || r.First[200] != 1 || r.Second[200] != 1 {
		t.Errorf("cut run %+v", r)
	}
}

func TestWriteEdgeReport(t *testing.T) {
	cfg := edgeConfig{Rounds: 70, UpstreamIdle: 5 * time.Second, Jitter: 5 * time.Millisecond, Seed: 1, Timeout: 10 * time.Second}
	run := &edgeRun{
		Results: []*edgeResult{
			{Target: targetPlain, Rounds: 70, First: map[int]int{200: 69, 502: 1}, Second: map[int]int{200: 61, 502: 8, 0: 1},
				Failed:   []edgeFail{{Round: 3, Jitter: -1322 * time.Microsecond, Status: 502}, {Round: 9, Jitter: 1536 * time.Microsecond, Status: 0}},
				FirstErr: "EOF"},
			{Target: targetMCP, Rounds: 70, First: map[int]int{200: 70}, Second: map[int]int{200: 70}},
			{Target: targetBase, Rounds: 60, First: map[int]int{200: 60}, Second: map[int]int{200: 59, 504: 1}},
		},
		Before: quietness{OthersBefore: 0.05, Quiet: true},
		Usage:  windowUsage{Machine: 0.5, Caddy: procUsage{CPU: 0.02}, Harness: procUsage{CPU: 0.03}},
	}
	var b strings.Builder
	meta := reportMeta{Title: edgeTitle(cfg), Command: "go run ./bench idleedge -targets plain,mcp_proxy", Setup: edgeSetup(cfg, "mock upstream: service time 0s, capacity unlimited")}
	writeEdgeReport(&b, meta, cfg, run)
	out := b.String()
	for _, s := range []string{
		"## idleedge: POST, wait the upstream's 5s idle timeout ±5ms, POST; 70 rounds per target\n",
		"Command: `go run ./bench idleedge -targets plain,mcp_proxy`",
		"wait 5s + a jitter uniform in ±5ms (seed 1; every target the same sequence)",
		"| target | rounds | second POST 200 | second POST 502 | second POST other | first POST failures | upstream idle timeout | jitter | non-200 statuses (second; first) |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
		"| plain | 70 | 61 | 8 | 1 | 1 | 5s | ±5ms | none×1, 502×8; 502×1 |",
		"| mcp_proxy | 70 | 70 | 0 | 0 | 0 | 5s | ±5ms | –; – |",
		"| baseline | 60 of 70 | 59 | 0 | 1 | 0 | 5s | ±5ms | 504×1; – |",
		"- plain, rounds whose second POST failed (round: jitter ms, status): 3: -1.32 ms 502, 9: +1.54 ms none\n",
		"- plain, first transport error: `EOF`\n",
		"- other processes used 5 % of one core just before the run and 45 % on average during it; Caddy 2 %, the harness 3 %\n",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	if got := failList([]edgeFail{{1, 0, 502}, {2, time.Millisecond, 502}, {3, 0, 502}}, 2); got != "1: +0.00 ms 502, 2: +1.00 ms 502, … 1 more" {
		t.Errorf("failList = %q", got)
	}
}
