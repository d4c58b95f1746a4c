//go:build linux

package main

import (
	"encoding/json"
	"slices"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	d := func(xs ...int) []time.Duration {
		out := make([]time.Duration, len(xs))
		for i, x := range xs {
			out[i] = time.Duration(x)
		}
		return out
	}
	ten := d(1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i + 1)
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample p50", d(7), 50, 7},
		{"one sample p99", d(7), 99, 7},
		{"p0 is the minimum", ten, 0, 1},
		{"p100 is the maximum", ten, 100, 10},
		{"p50 of ten", ten, 50, 5},
		{"p90 of ten is exact rank 9", ten, 90, 9},
		{"p91 of ten rounds up", ten, 91, 10},
		{"p99 of ten", ten, 99, 10},
		{"p10 of ten", ten, 10, 1},
		{"p99 of hundred", hundred, 99, 99},
		{"p99.9 of hundred", hundred, 99.9, 100},
		{"p50 of hundred", hundred, 50, 50},
		{"p1 of hundred", hundred, 1, 1},
		{"two samples p50", d(1, 2), 50, 1},
		{"two samples p51", d(1, 2), 51, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.p, got, tt.want)
			}
		})
	}
}

func TestSummarizeSortsAndSummarizes(t *testing.T) {
	var s []time.Duration
	for i := 1000; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Microsecond)
	}
	got := summarize(s)
	want := latencySummary{N: 1000, P50: 500 * time.Microsecond, P90: 900 * time.Microsecond, P99: 990 * time.Microsecond, Max: 1000 * time.Microsecond}
	if got != want {
		t.Errorf("summarize = %+v, want %+v", got, want)
	}
	if !slices.IsSorted(s) {
		t.Error("samples not sorted in place")
	}
	if z := summarize(nil); z != (latencySummary{}) {
		t.Errorf("summarize(nil) = %+v", z)
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{3, 1, 2}, 2},
		{[]float64{4, 1, 3, 2}, 2.5},
	}
	for _, tt := range tests {
		in := slices.Clone(tt.in)
		if got := median(in); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
		if !slices.Equal(in, tt.in) {
			t.Errorf("median modified its input: %v", in)
		}
	}
	if got := medianDuration([]time.Duration{3 * time.Millisecond, time.Millisecond, 2 * time.Millisecond}); got != 2*time.Millisecond {
		t.Errorf("medianDuration = %v", got)
	}
}

func TestRotate(t *testing.T) {
	xs := []string{"a", "b", "c"}
	tests := []struct {
		k    int
		want []string
	}{
		{0, []string{"a", "b", "c"}},
		{1, []string{"b", "c", "a"}},
		{2, []string{"c", "a", "b"}},
		{3, []string{"a", "b", "c"}},
		{-1, []string{"c", "a", "b"}},
	}
	for _, tt := range tests {
		if got := rotate(xs, tt.k); !slices.Equal(got, tt.want) {
			t.Errorf("rotate(%v, %d) = %v, want %v", xs, tt.k, got, tt.want)
		}
	}
	if !slices.Equal(xs, []string{"a", "b", "c"}) {
		t.Error("rotate modified its input")
	}
	if rotate([]int(nil), 2) != nil {
		t.Error("rotate(nil) not nil")
	}
}

func TestParseMultiples(t *testing.T) {
	got, err := parseMultiples("1, 2,5,10,0.5")
	if err != nil || !slices.Equal(got, []float64{1, 2, 5, 10, 0.5}) {
		t.Errorf("parseMultiples = %v, %v", got, err)
	}
	for _, bad := range []string{"", ",", "1,x", "0", "-2", "1x", "inf", "NaN"} {
		if _, err := parseMultiples(bad); err == nil {
			t.Errorf("parseMultiples(%q) accepted", bad)
		}
	}
}

func TestFormatters(t *testing.T) {
	tests := []struct{ got, want string }{
		{ms(0), "0"},
		{ms(123 * time.Microsecond), "0.123"},
		{ms(1234 * time.Microsecond), "1.23"},
		{ms(12345 * time.Microsecond), "12.3"},
		{ms(1234 * time.Millisecond), "1234"},
		{rate(0), "0"},
		{rate(12.34), "12.3"},
		{rate(7654.4), "7654"},
		{ratio(1, 2), "0.50×"},
		{ratio(1, 0), "–"},
		{fmtMultiple(10), "10×"},
		{fmtMultiple(0.5), "0.5×"},
		{humanBytes(512), "512 B"},
		{humanBytes(1536), "1.5 KiB"},
		{humanBytes(24152 << 20), "23.6 GiB"},
		{pct(1.456), "146 %"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestSchedule(t *testing.T) {
	start := time.Unix(1000, 0)
	if got := schedule(start, 0, 800); !got.Equal(start) {
		t.Errorf("request 0 at %v", got)
	}
	if got := schedule(start, 800, 800); !got.Equal(start.Add(time.Second)) {
		t.Errorf("request 800 at 800/s at %v", got.Sub(start))
	}
	if got := schedule(start, 1, 8000); got.Sub(start) != 125*time.Microsecond {
		t.Errorf("interval at 8000/s = %v", got.Sub(start))
	}
}

func TestToolsCallBodyIsTheBriefsRequest(t *testing.T) {
	b := toolsCallBody(nil, 42)
	var v struct {
		JSONRPC string `json:"jsonrpc"`
		ID      int64  `json:"id"`
		Method  string `json:"method"`
		Params  struct {
			Name      string            `json:"name"`
			Arguments map[string]string `json:"arguments"`
		} `json:"params"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("invalid JSON %s: %v", b, err)
	}
	if v.JSONRPC != "2.0" || v.ID != 42 || v.Method != "tools/call" || v.Params.Name != "echo" || v.Params.Arguments["text"] != "hi" {
		t.Errorf("unexpected body %s", b)
	}
	if !json.Valid([]byte(initializeBody)) {
		t.Error("initialize body is not valid JSON")
	}
}

func TestRecorderClassifies(t *testing.T) {
	rec := &recorder{status: map[int]int64{}}
	dl := time.Second
	rec.add(callResult{out: outOK, status: 200}, 20*time.Millisecond, dl, true)
	rec.add(callResult{out: outOK, status: 200}, 30*time.Millisecond, dl, false)
	rec.add(callResult{out: outOK, status: 200}, 1100*time.Millisecond, dl, false) // late
	rec.add(callResult{out: outStatus, status: 503, retryAfter: true}, time.Millisecond, dl, false)
	rec.add(callResult{out: outStatus, status: 429}, time.Millisecond, dl, false)
	rec.add(callResult{out: outStatus, status: 502}, time.Millisecond, dl, false)
	rec.add(callResult{out: outTimeout}, dl, dl, false)
	rec.add(callResult{out: outError}, 0, dl, false)
	rec.add(callResult{out: outBadBody, status: 200}, 0, dl, false)
	if rec.ok != 2 || rec.ok2 != 1 || rec.timeouts != 2 || rec.errs != 1 || rec.badBody != 1 || rec.retryAftr != 1 {
		t.Errorf("recorder = %+v", rec)
	}
	if len(rec.admitted) != 2 || len(rec.refused) != 2 {
		t.Errorf("admitted %d, refused %d samples", len(rec.admitted), len(rec.refused))
	}
	if rec.status[503] != 1 || rec.status[429] != 1 || rec.status[502] != 1 {
		t.Errorf("status = %v", rec.status)
	}
}

func TestCheckGoal(t *testing.T) {
	plain := postMedian{Target: targetPlain, RPS: 7000, P99: 14 * time.Millisecond}
	tests := []struct {
		name  string
		mcp   postMedian
		holds bool
	}{
		{"equal", postMedian{Target: targetMCP, RPS: 7000, P99: 14 * time.Millisecond}, true},
		{"at both limits", postMedian{Target: targetMCP, RPS: 6300, P99: 15400 * time.Microsecond}, true},
		{"p99 too high", postMedian{Target: targetMCP, RPS: 7000, P99: 15500 * time.Microsecond}, false},
		{"throughput too low", postMedian{Target: targetMCP, RPS: 6200, P99: 14 * time.Millisecond}, false},
	}
	for _, tt := range tests {
		g := checkGoal([]postMedian{plain, tt.mcp})
		if !g.OK || g.Holds != tt.holds {
			t.Errorf("%s: %+v, want holds=%v", tt.name, g, tt.holds)
		}
	}
	if g := checkGoal([]postMedian{plain}); g.OK {
		t.Error("goal checked without mcp_proxy")
	}
}

func TestMedianOfRounds(t *testing.T) {
	mk := func(name string, round int, rps float64, p99 time.Duration) *postResult {
		return &postResult{Target: name, Round: round, RPS: rps, Lat: latencySummary{P99: p99}}
	}
	rounds := [][]*postResult{
		{mk("plain", 1, 100, 3), mk("mcp_proxy", 1, 90, 9)},
		{mk("mcp_proxy", 2, 80, 8), mk("plain", 2, 300, 1)},
		{mk("plain", 3, 200, 2), mk("mcp_proxy", 3, 70, 7)},
	}
	got := medianOfRounds(rounds, []string{"plain", "mcp_proxy", "direct"})
	if len(got) != 2 {
		t.Fatalf("got %d medians", len(got))
	}
	if got[0].Target != "plain" || got[0].RPS != 200 || got[0].P99 != 2 {
		t.Errorf("plain median = %+v", got[0])
	}
	if got[1].Target != "mcp_proxy" || got[1].RPS != 80 || got[1].P99 != 8 {
		t.Errorf("mcp_proxy median = %+v", got[1])
	}
}

func TestCaddyCPUPerReq(t *testing.T) {
	r := &postResult{Target: targetPlain, OK: 50_000, Window: 10 * time.Second, Usage: windowUsage{Caddy: procUsage{CPU: 1.0}}}
	if got := r.caddyCPUPerReq(); got != 200*time.Microsecond {
		t.Errorf("caddyCPUPerReq = %v", got)
	}
	if got := usPerReq(r.caddyCPUPerReq()); got != "200" {
		t.Errorf("usPerReq = %s", got)
	}
	r.Target = targetDirect
	if got := r.caddyCPUPerReq(); got != 0 {
		t.Errorf("direct: %v", got)
	}
}
