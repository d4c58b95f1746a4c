//go:build linux

package main

import (
	"bytes"
	"encoding/xml"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMDTable(t *testing.T) {
	tb := mdTable{Header: []string{"name", "a|b", "n"}, Right: rightFrom(3, 2)}
	tb.add("x", "1|2", "3")
	tb.add("short")
	var b strings.Builder
	tb.write(&b)
	want := "| name | a\\|b | n |\n|---|---|---:|\n| x | 1\\|2 | 3 |\n| short |  |  |\n"
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestCPUModelAndMeminfo(t *testing.T) {
	cpuinfo := "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t: fpu\n\nprocessor\t: 1\nmodel name\t: Other\n"
	if got := cpuModel(cpuinfo); got != "Intel(R) Xeon(R) Processor" {
		t.Errorf("cpuModel = %q", got)
	}
	if got := cpuModel("processor: 0\n"); got != "" {
		t.Errorf("cpuModel without a model = %q", got)
	}
	meminfo := "MemTotal:       24731776 kB\nMemFree:        19117228 kB\n"
	if got := statusKiB(meminfo, "MemTotal:"); got != 24731776 {
		t.Errorf("MemTotal = %d", got)
	}
	if got := statusKiB("VmRSS:\t  1234 kB\n", "VmRSS:"); got != 1234 {
		t.Errorf("VmRSS = %d", got)
	}
}

func TestParseSysCPU(t *testing.T) {
	stat := "cpu  100 5 50 800 20 1 4 0 7 0\ncpu0 50 2 25 400 10 0 2 0 0 0\nintr 1\n"
	got, err := parseSysCPU(stat)
	if err != nil {
		t.Fatal(err)
	}
	// busy = user+nice+system+irq+softirq+steal = 100+5+50+1+4+0; total adds idle and iowait.
	if got.Busy != 160 || got.Total != 980 {
		t.Errorf("parseSysCPU = %+v", got)
	}
	if c := busyCores(sysCPU{0, 0}, sysCPU{Busy: 50, Total: 100}, 2); c != 1 {
		t.Errorf("busyCores = %v", c)
	}
	if _, err := parseSysCPU("intr 1\n"); err == nil {
		t.Error("no cpu line accepted")
	}
}

func TestCaddyfile(t *testing.T) {
	got := caddyfile(caddyfileParams{Upstream: "127.0.0.1:9000", PlainPort: 8001, MCPPort: 8002})
	want := `{
	admin off
	auto_https off
	persist_config off
	log {
		output discard
	}
}

http://127.0.0.1:8001 {
	reverse_proxy 127.0.0.1:9000
}

http://127.0.0.1:8002 {
	mcp_proxy 127.0.0.1:9000
}
`
	if got != want {
		t.Errorf("caddyfile:\n%s\nwant:\n%s", got, want)
	}

	got = caddyfile(caddyfileParams{
		Upstream: "127.0.0.1:9000", PlainPort: 8001, MCPPort: 8002, AdminAddr: "127.0.0.1:2019",
		MCPBlock: "max_inflight 16; max_queue 8\n  lb_policy first", PlainBlock: "flush_interval -1",
	})
	for _, s := range []string{
		"\tadmin 127.0.0.1:2019\n",
		"\treverse_proxy 127.0.0.1:9000 {\n\t\tflush_interval -1\n\t}\n",
		"\tmcp_proxy 127.0.0.1:9000 {\n\t\tmax_inflight 16\n\t\tmax_queue 8\n\t\tlb_policy first\n\t}\n",
	} {
		if !strings.Contains(got, s) {
			t.Errorf("caddyfile lacks %q:\n%s", s, got)
		}
	}
}

func TestSplitBlock(t *testing.T) {
	got := splitBlock("max_inflight 16; transport http { keepalive 30s; dial_timeout 2s }\n header_up X-A \"a;b{c}\"")
	want := []string{"max_inflight 16", "transport http {", "\tkeepalive 30s", "\tdial_timeout 2s", "}", `header_up X-A "a;b{c}"`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("splitBlock = %q, want %q", got, want)
	}
	if got := splitBlock("  ;; \n"); len(got) != 0 {
		t.Errorf("empty block = %q", got)
	}
}

func TestCommandLine(t *testing.T) {
	got := commandLine([]string{"overload", "-duration", "3s", "-mcp-block", "max_inflight 16; max_queue 8", "-x", ""})
	want := `go run ./bench overload -duration 3s -mcp-block 'max_inflight 16; max_queue 8' -x ''`
	if got != want {
		t.Errorf("commandLine = %s, want %s", got, want)
	}
	if got := shellQuote("it's"); got != `'it'\''s'` {
		t.Errorf("shellQuote = %s", got)
	}
}

func TestParseFlags(t *testing.T) {
	flagOutput = io.Discard
	defer func() { flagOutput = os.Stderr }()
	o, err := parseFlags([]string{"post"})
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 10*time.Second || o.service != 0 || o.capacity != 0 || o.concurrency != 32 || o.rounds != 3 || o.warmup != 2*time.Second {
		t.Errorf("post defaults: %+v", o)
	}
	o, err = parseFlags([]string{"overload", "-duration", "3s"})
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 3*time.Second || o.service != 20*time.Millisecond || o.capacity != 16 || o.multiples != "1,2,5,10" || o.deadline != time.Second {
		t.Errorf("overload defaults: %+v", o)
	}
	o, err = parseFlags([]string{"-service", "20ms", "-capacity", "16", "post"})
	if err != nil {
		t.Fatal(err)
	}
	if o.scenario != "post" || o.service != 20*time.Millisecond || o.capacity != 16 {
		t.Errorf("flags before the scenario: %+v", o)
	}
	for _, bad := range [][]string{{}, {"nope"}, {"post", "extra"}, {"overload", "-capacity", "0"}, {"post", "-rounds", "0"}, {"post", "-service", "-1s"}, {"post", "-upstream-idle", "1s"}, {"idleedge", "-rounds", "1001"}, {"idleedge", "-upstream-idle", "1ms"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

func TestParseTargets(t *testing.T) {
	got, err := parseTargets("mcp, plain,direct,mcp_proxy")
	if err != nil || strings.Join(got, ",") != "mcp_proxy,plain,direct" {
		t.Errorf("parseTargets = %v, %v", got, err)
	}
	if _, err := parseTargets("nginx"); err == nil {
		t.Error("unknown target accepted")
	}
}

func samplePost() [][]*postResult {
	mk := func(name string, round int, rps float64, p50, p99 time.Duration) *postResult {
		return &postResult{Target: name, Round: round, RPS: rps, OK: int64(rps * 10),
			Lat:    latencySummary{N: int(rps * 10), P50: p50, P90: p99 / 2, P99: p99, Max: 2 * p99},
			Status: map[int]int64{}, Before: quietness{Quiet: true}}
	}
	r := [][]*postResult{
		{mk(targetDirect, 1, 25000, time.Millisecond, 5*time.Millisecond), mk(targetPlain, 1, 7000, 4*time.Millisecond, 14*time.Millisecond), mk(targetMCP, 1, 6800, 4*time.Millisecond, 15*time.Millisecond)},
		{mk(targetPlain, 2, 7200, 4*time.Millisecond, 13*time.Millisecond), mk(targetMCP, 2, 6900, 4*time.Millisecond, 14*time.Millisecond), mk(targetDirect, 2, 24000, time.Millisecond, 6*time.Millisecond)},
	}
	r[1][1].Status[502] = 3
	r[1][1].Before = quietness{Quiet: false, OthersBefore: 1.5}
	return r
}

func TestWritePostReport(t *testing.T) {
	var b strings.Builder
	meta := reportMeta{
		Title: "post test", Command: "go run ./bench post", Date: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC),
		Machine: machineInfo{NProc: 2, GOMAXPROCS: 2, Model: "Test CPU", MemTotal: 1 << 30, GoVersion: "go1.26", Kernel: "6.1"},
		Setup:   []string{"setup line"}, Caddyfile: "{\n}\n",
	}
	writePostReport(&b, meta, samplePost(), []string{targetDirect, targetPlain, targetMCP})
	out := b.String()
	for _, s := range []string{
		"## post test\n",
		"Command: `go run ./bench post`",
		"| date | 2026-01-02 03:04 UTC |",
		"| CPU model | Test CPU |",
		"| memory | 1.0 GiB |",
		"- setup line\n",
		"```caddyfile\n{\n}\n```",
		"### Per round",
		"| 2 | mcp_proxy | 6900 | 4.00 | 7.00 | 14.0 | 28.0 | 502×3 |",
		"(busy before: 150 %)",
		"### Median of 2 rounds",
		"| plain | 7100 | 4.00 | 6.75 | 13.5 | 27.0 | 1.00× | 1.00× |",
		"| mcp_proxy | 6850 | 4.00 | 7.25 | 14.5 | 29.0 | 0.96× | 1.07× |",
		"p99 1.07×, req/s 0.96× — **holds** in this run.",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
}

func sampleOverload() (overloadConfig, []*overloadResult) {
	cfg := overloadConfig{Multiples: []float64{1, 2}, Capacity: 800, Duration: 2 * time.Second, Deadline: time.Second}
	mk := func(name string, m float64, ok int64) *overloadResult {
		return &overloadResult{
			Target: name, Multiple: m, Rate: 800 * m, Duration: cfg.Duration, Scheduled: int64(1600 * m),
			OK: ok, OKSecondHalf: ok / 4, Status: map[int]int64{503: 10, 429: 2, 502: 1}, RetryAfter: 10,
			Admitted: latencySummary{N: int(ok), P50: 20 * time.Millisecond, P99: 40 * time.Millisecond},
			Refused:  latencySummary{N: 12, P50: time.Millisecond, P99: 3 * time.Millisecond},
			Upstream: upstreamCounts{Received: 1000, Served: 900, Abandoned: 100}, UpstreamDrained: true,
			Before: quietness{Quiet: true},
		}
	}
	// Out of order on purpose: the report sorts by target, then multiple.
	return cfg, []*overloadResult{mk(targetMCP, 2, 1500), mk(targetPlain, 1, 1550), mk(targetMCP, 1, 1580), mk(targetPlain, 2, 300)}
}

func TestWriteOverloadReport(t *testing.T) {
	cfg, rs := sampleOverload()
	var b strings.Builder
	writeOverloadReport(&b, reportMeta{Title: "overload test", Command: "go run ./bench overload"}, cfg, rs,
		[]string{"bench/results/overload-goodput.svg"})
	out := b.String()
	for _, s := range []string{
		"### Client view",
		"| mcp_proxy | 1× | 800 | 800 | 790 | 99 % | 395 | 10 | 2 | 502×1 | 1.00 / 3.00 | 20.0 / 40.0 | 0 | 0 | 0 |",
		"| plain | 2× | 1600 | 1600 | 150 | 19 % |",
		"### Server view",
		"| plain | 1× | 1000 | 900 | 100 | 0 | 0.0 | 0 | 10 |",
		"![overload-goodput](bench/results/overload-goodput.svg)",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	// Targets keep their first-seen order (mcp_proxy first here) and
	// multiples ascend within a target.
	i1, i2 := strings.Index(out, "| mcp_proxy | 1× |"), strings.Index(out, "| mcp_proxy | 2× |")
	i3 := strings.Index(out, "| plain | 1× |")
	if !(i1 < i2 && i2 < i3) {
		t.Errorf("rows out of order: %d %d %d", i1, i2, i3)
	}
}

func TestNiceCeil(t *testing.T) {
	tests := []struct{ in, want float64 }{
		{0, 1}, {-3, 1}, {0.7, 0.8}, {1, 1}, {1.1, 1.5}, {2, 2}, {2.2, 2.5}, {3, 3}, {3.5, 4}, {840, 1000}, {1050, 1500}, {7.5, 8}, {9, 10}, {0.013, 0.015},
	}
	for _, tt := range tests {
		if got := niceCeil(tt.in); got < tt.want*(1-1e-9) || got > tt.want*(1+1e-9) {
			t.Errorf("niceCeil(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestSVGIsWellFormed(t *testing.T) {
	cfg, rs := sampleOverload()
	g, p := overloadCharts(cfg, rs)
	if len(g.Series) != 2 || g.Series[0].Name != targetMCP || len(g.Series[0].X) != 2 || g.Series[0].X[0] != 1 {
		t.Errorf("goodput series = %+v", g.Series)
	}
	g.Title = `goodput <&> "quotes"`
	for _, c := range []*lineChart{g, p, {Title: "empty"}, {Title: "one point", Series: []series{{Name: "a", X: []float64{3}, Y: []float64{5}}}, LogX: true}} {
		svg := c.SVG()
		dec := xml.NewDecoder(bytes.NewReader(svg))
		for {
			_, err := dec.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("%s: invalid XML: %v\n%s", c.Title, err, svg)
			}
		}
		if !bytes.HasPrefix(svg, []byte("<svg ")) {
			t.Errorf("%s: not an svg document", c.Title)
		}
	}
	svg := string(g.SVG())
	for _, s := range []string{"goodput &lt;&amp;&gt; &#34;quotes&#34;", ">mcp_proxy<", ">plain<", "<polyline", "capacity 800/s", ">1×<", ">2×<"} {
		if !strings.Contains(svg, s) {
			t.Errorf("svg lacks %q", s)
		}
	}
}

func TestRelPath(t *testing.T) {
	got, err := relPath(".", "bench/results/x.svg")
	if err != nil || got != "bench/results/x.svg" {
		t.Errorf("relPath = %q, %v", got, err)
	}
	got, err = relPath("bench", "bench/out/x.svg")
	if err != nil || got != "out/x.svg" {
		t.Errorf("relPath = %q, %v", got, err)
	}
}

func TestParseIdleSteps(t *testing.T) {
	tests := []struct {
		in      string
		streams int
		want    []int
	}{
		{"", 5000, []int{1000, 2000, 3000, 4000, 5000}},
		{"", 1001, []int{201, 401, 601, 801, 1001}},
		{"", 3, []int{1, 2, 3}},
		{"250,500,1000", 1000, []int{250, 500, 1000}},
		{" 250, 500 ", 1000, []int{250, 500, 1000}},
		{"1000", 1000, []int{1000}},
	}
	for _, tt := range tests {
		got, err := parseIdleSteps(tt.in, tt.streams)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("parseIdleSteps(%q, %d) = %v, %v; want %v", tt.in, tt.streams, got, err, tt.want)
		}
	}
	for _, bad := range []string{"0", "-5", "x", "500,250", "500,500", "2000", "250,,500"} {
		if got, err := parseIdleSteps(bad, 1000); err == nil {
			t.Errorf("parseIdleSteps(%q) = %v, want an error", bad, got)
		}
	}
	flagOutput = io.Discard
	defer func() { flagOutput = os.Stderr }()
	o, err := parseFlags([]string{"idle", "-streams", "1000", "-idle-steps", "250,500"})
	if err != nil || !slices.Equal(o.steps, []int{250, 500, 1000}) {
		t.Errorf("parseFlags: steps %v, %v", o.steps, err)
	}
	if _, err := parseFlags([]string{"idle", "-streams", "1000", "-idle-steps", "5000"}); err == nil {
		t.Error("a step over -streams accepted")
	}
}

// sampleIdle is two targets' results with steps at 500 and 1000 streams.
func sampleIdle() []*idleResult {
	mk := func(tgt string, perStream int64) *idleResult {
		sessions := memPoint{RSS: 60 << 20, Goroutines: 20, HeapInuse: 30 << 20}
		at := func(n int64) memPoint {
			return memPoint{RSS: sessions.RSS + n*perStream, Goroutines: 20 + 2*float64(n), HeapInuse: -1}
		}
		return &idleResult{
			Target: tgt, Opened: 1000, Base: memPoint{RSS: 40 << 20}, Sessions: sessions,
			Steps: []idleStep{{Streams: 500, Open: 500, Mem: at(500)}, {Streams: 1000, Open: 1000, Mem: at(1000)}},
		}
	}
	return []*idleResult{mk(targetPlain, 40<<10), mk(targetMCP, 20<<10)}
}

func TestIdleStepsReport(t *testing.T) {
	var b strings.Builder
	writeIdleSteps(&b, sampleIdle())
	out := b.String()
	for _, s := range []string{
		"### Memory against streams",
		"| plain | 0 | 60.0 MiB | 0 B | – | – | 20 | – | 30.0 MiB |",
		"| plain | 500 | 79.5 MiB | 19.5 MiB | 40.0 | 40.0 | 1020 | 2.00 | – |",
		"| mcp_proxy | 1000 | 79.5 MiB | 19.5 MiB | 20.0 | 20.0 | 2020 | 2.00 | – |",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("steps table lacks %q:\n%s", s, out)
		}
	}
	b.Reset()
	writeIdleSteps(&b, []*idleResult{{Target: targetMCP}})
	if b.Len() != 0 {
		t.Errorf("a table without steps:\n%s", b.String())
	}
	b.Reset()
	writeIdleReport(&b, reportMeta{Title: "idle"}, sampleIdle(), []string{"bench/out/idle-memory.svg"})
	if !strings.Contains(b.String(), "![idle-memory](bench/out/idle-memory.svg)") {
		t.Errorf("the report does not link the plot:\n%s", b.String())
	}
}

func TestIdleChart(t *testing.T) {
	c := idleChart(sampleIdle())
	if len(c.Series) != 2 || c.Series[1].Name != targetMCP || !slices.Equal(c.Series[1].X, []float64{0, 500, 1000}) ||
		!slices.Equal(c.Series[1].Y, []float64{60, 60 + 500*20.0/1024, 60 + 1000*20.0/1024}) {
		t.Fatalf("series %+v", c.Series)
	}
	if !slices.Equal(c.XTicks, []float64{0, 500, 1000}) {
		t.Errorf("x ticks %v", c.XTicks)
	}
	svg := string(c.SVG())
	if err := xml.Unmarshal([]byte(svg), new(struct{})); err != nil {
		t.Fatalf("invalid SVG: %v", err)
	}
	for _, s := range []string{">500<", ">1000<", ">plain<", ">mcp_proxy<", "RSS, MiB", "<polyline"} {
		if !strings.Contains(svg, s) {
			t.Errorf("svg lacks %q", s)
		}
	}
	if strings.Contains(svg, "×<") {
		t.Error("stream counts are labelled as multiples")
	}
}
