package caddytest

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// mcpFamilies returns the caddy_mcp_* families of a scrape.
func mcpFamilies(mfs map[string]*dto.MetricFamily) []*dto.MetricFamily {
	var out []*dto.MetricFamily
	for name, mf := range mfs {
		if strings.HasPrefix(name, "caddy_mcp_") {
			out = append(out, mf)
		}
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// seriesKey names one series of a family by its labels.
func seriesKey(m *dto.Metric) string {
	var parts []string
	for _, lp := range m.GetLabel() {
		parts = append(parts, lp.GetName()+"="+lp.GetValue())
	}
	return strings.Join(parts, ",")
}

// monotonic returns every counter and histogram series of the caddy_mcp_*
// families with its value (a histogram's sample count).
func monotonic(mfs map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, mf := range mcpFamilies(mfs) {
		for _, m := range mf.GetMetric() {
			key := mf.GetName() + "{" + seriesKey(m) + "}"
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[key] = m.GetCounter().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[key] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// openRawStream opens the standalone GET stream of a raw session and
// returns its response, whose body the caller reads and closes.
func openRawStream(t *testing.T, ctx context.Context, url, sid string) *http.Response {
	t.Helper()
	resp, err := openStream(ctx, rawClient, url, sid, sessionVersion, "")
	if err != nil {
		t.Fatalf("opening the GET stream: %v", err)
	}
	return resp
}

// TestMetricsEndToEnd drives traffic through mcp_proxy (initialize, tool
// calls, a streamed tool call, GET streams) and checks that the caddy_mcp_*
// series on the admin endpoint's /metrics move as expected; that a config
// reload resets no counter and keeps counting a stream of the old config
// until it is drained; and that the families pass promlint.
func TestMetricsEndToEnd(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port, adminPort := freePort(t), freePort(t)
	cfg := opsSite(port, up.addr(), "\t\t\tdrain 1s\n")
	loadWithAdmin(t, adminPort, opsGlobal, cfg)
	url := proxyURL(port) + "/mcp"

	m0 := scrape(t, adminPort)
	baseStreams := metricValue(m0, "caddy_mcp_streams_active")
	baseInflight := metricValue(m0, "caddy_mcp_requests_in_flight")

	ctx, cancel := context.WithTimeout(context.Background(), 2*boundedWait)
	defer cancel()
	cs := connect(t, ctx, url, nil, nil) // initialize, then a standalone GET stream
	if got, err := echo(ctx, cs, "metrics"); err != nil || got != "metrics" {
		t.Fatalf("echo: %q %v", got, err)
	}
	sid := rawSession(t, url, nil)
	countdown := `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"countdown","arguments":{"from":3},"_meta":{"progressToken":"p5"}}}`
	st, hdr, body := rawPost(t, url, countdown, inSession(sid, nil))
	if st != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/event-stream") || !strings.Contains(body, "liftoff") || strings.Count(body, "notifications/progress") != 3 {
		t.Fatalf("streamed countdown: %d %q %s", st, hdr.Get("Content-Type"), body)
	}
	stream := openRawStream(t, ctx, url, sid)
	defer stream.Body.Close()

	var m1 map[string]*dto.MetricFamily
	// Every gauge the two GET streams move is waited for, not the active
	// one alone: that one is process-wide and also counts the streams of
	// earlier tests' configs, and once reached its mark while
	// streams_open still counted one stream.
	pollUntil(t, "both GET streams to be counted", func() bool {
		m1 = scrape(t, adminPort)
		return metricValue(m1, "caddy_mcp_streams_active") >= baseStreams+2 &&
			metricValue(m1, "caddy_mcp_streams_open") >= 2 &&
			metricValue(m1, "caddy_mcp_requests_in_flight") >= baseInflight+2
	})
	delta := func(name string, labels ...string) float64 {
		return metricValue(m1, name, labels...) - metricValue(m0, name, labels...)
	}
	for _, c := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"caddy_mcp_sessions_created_total", nil, 2},
		{"caddy_mcp_request_duration_seconds", []string{"class", "cheap"}, 2}, // initializes, notifications
		{"caddy_mcp_request_duration_seconds", []string{"class", "heavy"}, 2}, // echo, countdown
		{"caddy_mcp_events_relayed_total", nil, 4},                            // 3 progress events and the result
		{"caddy_mcp_relayed_bytes_total", nil, 100},
	} {
		if d := delta(c.name, c.labels...); d < c.min {
			t.Errorf("%s%v moved by %v, want at least %v", c.name, c.labels, d, c.min)
		}
	}
	if v := metricValue(m1, "caddy_mcp_sessions_active"); v < 2 {
		t.Errorf("caddy_mcp_sessions_active = %v, want at least 2", v)
	}
	if v := metricValue(m1, "caddy_mcp_streams_open"); v < 2 {
		t.Errorf("caddy_mcp_streams_open = %v, want at least 2", v)
	}
	if v := metricValue(m1, "caddy_mcp_requests_in_flight"); v < baseInflight+2 {
		t.Errorf("caddy_mcp_requests_in_flight = %v with two GET streams open, want at least %v", v, baseInflight+2)
	}
	if v := metricValue(m1, "caddy_mcp_service_level"); v != 0 {
		t.Errorf("caddy_mcp_service_level = %v, want 0", v)
	}
	for _, name := range []string{"caddy_mcp_held_bytes", "caddy_mcp_memory_budget_bytes", "caddy_mcp_goroutines_owned", "caddy_mcp_connections_active", "caddy_mcp_replay_held_bytes", "caddy_mcp_queue_wait_seconds", "caddy_mcp_refusals_total"} {
		if _, ok := m1[name]; !ok {
			t.Errorf("no %s in /metrics", name)
		}
	}

	// The go-sdk client leaves; its GET stream ends.
	if err := cs.Close(); err != nil {
		t.Logf("closing the go-sdk client: %v", err)
	}
	pollUntil(t, "the go-sdk GET stream to be uncounted", func() bool {
		return metricValue(scrape(t, adminPort), "caddy_mcp_streams_active") <= baseStreams+1
	})

	// Reload: counters keep their values, and the raw GET stream of the
	// old config is still counted until the drain closes it.
	before := monotonic(scrape(t, adminPort))
	loadWithAdmin(t, adminPort, opsGlobal, cfg)
	m2 := scrape(t, adminPort)
	after := monotonic(m2)
	for key, v := range before {
		if got, ok := after[key]; !ok || got < v {
			t.Errorf("after the reload %s = %v (present %v), was %v", key, got, ok, v)
		}
	}
	if v := metricValue(m2, "caddy_mcp_streams_active"); v < 1 {
		t.Errorf("caddy_mcp_streams_active = %v right after the reload, want the old config's stream counted", v)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, bufio.NewReader(stream.Body))
		ended <- err
	}()
	select {
	case <-ended:
	case <-time.After(boundedWait):
		t.Fatal("the old config's GET stream was not drained")
	}
	pollUntil(t, "the drained stream to be uncounted", func() bool {
		m := scrape(t, adminPort)
		return metricValue(m, "caddy_mcp_streams_active") <= baseStreams &&
			metricValue(m, "caddy_mcp_requests_in_flight") <= baseInflight
	})

	// The new config counts on from the old values.
	heavy := metricValue(m2, "caddy_mcp_request_duration_seconds", "class", "heavy")
	if st, b := sessionEcho(t, url, sid, 6); st != http.StatusOK {
		_, _, s := adminCall(t, adminPort, http.MethodGet, "/mcp/status", "")
		t.Fatalf("echo after the reload: %d %s\nstatus: %s", st, b, s)
	}
	m3 := scrape(t, adminPort)
	if v := metricValue(m3, "caddy_mcp_request_duration_seconds", "class", "heavy"); v != heavy+1 {
		t.Errorf("heavy requests after the reload: %v, want %v", v, heavy+1)
	}

	problems, err := promlint.NewWithMetricFamilies(mcpFamilies(m3)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if len(mcpFamilies(m3)) < 20 {
		t.Errorf("only %d caddy_mcp_* families", len(mcpFamilies(m3)))
	}
}

// dashboardPath is the Grafana dashboard shipped with mcpgate.
const dashboardPath = "../dashboards/mcpgate.json"

// dashboardExprs returns every "expr" string of a dashboard.
func dashboardExprs(v any) []string {
	var out []string
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && k == "expr" {
				out = append(out, s)
				continue
			}
			out = append(out, dashboardExprs(x)...)
		}
	case []any:
		for _, x := range v {
			out = append(out, dashboardExprs(x)...)
		}
	}
	return out
}

// TestMetricsDashboard: the Grafana dashboard is valid JSON, queries
// through the ${DS_PROMETHEUS} datasource variable, and every metric its
// queries name is one the proxy exports, as a real /metrics scrape shows
// after traffic that creates every labelled series.
func TestMetricsDashboard(t *testing.T) {
	data, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var dash map[string]any
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s is not valid JSON: %v", dashboardPath, err)
	}
	if !strings.Contains(string(data), `"uid": "${DS_PROMETHEUS}"`) {
		t.Errorf("the dashboard does not use the ${DS_PROMETHEUS} datasource variable")
	}
	tmpl, _ := dash["templating"].(map[string]any)
	vars, _ := tmpl["list"].([]any)
	if !slices.ContainsFunc(vars, func(v any) bool {
		m, _ := v.(map[string]any)
		return m["name"] == "DS_PROMETHEUS" && m["type"] == "datasource"
	}) {
		t.Errorf("no DS_PROMETHEUS datasource variable in the templating list")
	}
	panels, _ := dash["panels"].([]any)
	for _, p := range panels {
		m, _ := p.(map[string]any)
		if m["type"] == "row" {
			continue
		}
		if ds, _ := m["datasource"].(map[string]any); ds["uid"] != "${DS_PROMETHEUS}" {
			t.Errorf("panel %q has datasource %v", m["title"], m["datasource"])
		}
	}
	exprs := dashboardExprs(dash)
	if len(exprs) < 20 {
		t.Fatalf("only %d queries in the dashboard", len(exprs))
	}

	// Traffic that creates every labelled series: sessions, requests, a
	// replay miss, a session error, a level change, an eviction.
	up := startRecorded(t, "up", demo.Handler(demo.NewServer("up"), "/sse", nil))
	port, adminPort := startOps(t, up.addr(), opsGlobal, "")
	url := proxyURL(port) + "/mcp"
	sid := rawSession(t, url, nil)
	if st, b := sessionEcho(t, url, sid, 2); st != http.StatusOK {
		t.Fatalf("echo: %d %s", st, b)
	}
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	if resp, err := getStream(ctx, rawClient, url, sid, sessionVersion, "", map[string]string{"Last-Event-ID": "no-such-event"}); err == nil {
		resp.Body.Close()
	}
	if st, b := sessionEcho(t, url, "not-a-session", 3); st != http.StatusNotFound {
		t.Errorf("echo in an unknown session: %d %s", st, b)
	}
	adminJSON(t, adminPort, http.MethodPost, "/mcp/level", `{"level":"degraded","duration":"1m"}`, http.StatusOK, nil)
	adminJSON(t, adminPort, http.MethodDelete, "/mcp/level", "", http.StatusOK, nil)
	adminJSON(t, adminPort, http.MethodDelete, "/mcp/sessions/"+up.adminID(up.mintedIDs()[0]), "", http.StatusOK, nil)

	exported := map[string]bool{}
	for _, mf := range mcpFamilies(scrape(t, adminPort)) {
		exported[mf.GetName()] = true
	}
	name := regexp.MustCompile(`caddy_mcp_[a-z_]+`)
	used := map[string]bool{}
	for _, e := range exprs {
		for _, n := range name.FindAllString(e, -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base := strings.TrimSuffix(n, suffix); base != n && exported[base] {
					n = base
					break
				}
			}
			used[n] = true
			if !exported[n] {
				t.Errorf("the dashboard queries %s, which the proxy does not export: %s", n, e)
			}
		}
	}
	var unused []string
	for n := range exported {
		if !used[n] {
			unused = append(unused, n)
		}
	}
	slices.Sort(unused)
	if len(unused) > 0 {
		t.Logf("exported but not on the dashboard: %s", strings.Join(unused, ", "))
	}
}

// histogramSum returns the sample sum of the histogram family name,
// summed over its series; a missing family reads 0.
func histogramSum(mfs map[string]*dto.MetricFamily, name string) float64 {
	sum := 0.0
	if mf, ok := mfs[name]; ok {
		for _, m := range mf.GetMetric() {
			sum += m.GetHistogram().GetSampleSum()
		}
	}
	return sum
}

// The per-session histograms.
const (
	sessionDurationMetric = "caddy_mcp_session_duration_seconds"
	sessionEventsMetric   = "caddy_mcp_session_events"
	sessionBytesMetric    = "caddy_mcp_session_bytes"
)

// sessionEnds returns how many session ends the three per-session
// histograms observed, failing the test when they disagree.
func sessionEnds(t *testing.T, mfs map[string]*dto.MetricFamily) float64 {
	t.Helper()
	d := metricValue(mfs, sessionDurationMetric)
	if e, b := metricValue(mfs, sessionEventsMetric), metricValue(mfs, sessionBytesMetric); e != d || b != d {
		t.Fatalf("per-session histogram counts disagree: duration %v, events %v, bytes %v", d, e, b)
	}
	return d
}

// TestMetricsSessionHistograms: a session observes its duration and the
// events and bytes relayed on it exactly once, when it ends — deleted by
// its client, evicted through the admin API, or expired idle, also after
// a config reload — and never while it lives.
func TestMetricsSessionHistograms(t *testing.T) {
	up := startRecorded(t, "up", demo.Handler(demo.NewServer("up"), "/sse", nil))
	port, adminPort := freePort(t), freePort(t)
	global := "\tmcp {\n\t\trefresh 50ms\n\t\tsession_idle_timeout 2s\n\t}\n"
	cfg := opsSite(port, up.addr(), "")
	loadWithAdmin(t, adminPort, global, cfg)
	url := proxyURL(port) + "/mcp"
	m0 := scrape(t, adminPort)
	ends0 := sessionEnds(t, m0)
	waitEnds := func(what string, want float64) map[string]*dto.MetricFamily {
		t.Helper()
		var m map[string]*dto.MetricFamily
		pollUntil(t, what, func() bool {
			m = scrape(t, adminPort)
			return sessionEnds(t, m) >= ends0+want
		})
		if got := sessionEnds(t, m) - ends0; got != want {
			t.Fatalf("%v session ends observed, want %v", got, want)
		}
		return m
	}

	// 1. A session with a streamed tool call, deleted by its client.
	sid := rawSession(t, url, nil)
	countdown := `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"countdown","arguments":{"from":3},"_meta":{"progressToken":"p2"}}}`
	if st, _, body := rawPost(t, url, countdown, inSession(sid, nil)); st != http.StatusOK || strings.Count(body, "notifications/progress") != 3 {
		t.Fatalf("streamed countdown: %d %s", st, body)
	}
	if got := sessionEnds(t, scrape(t, adminPort)) - ends0; got != 0 {
		t.Fatalf("%v session ends observed while the session lives", got)
	}
	req, err := http.NewRequest(http.MethodDelete, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range inSession(sid, nil) {
		req.Header.Set(k, v)
	}
	if st, _, b := do(t, req); st < 200 || st > 299 {
		t.Fatalf("DELETE of the session: %d %s", st, b)
	}
	m1 := waitEnds("the deleted session to be observed", 1)
	events := histogramSum(m1, sessionEventsMetric) - histogramSum(m0, sessionEventsMetric)
	bytes := histogramSum(m1, sessionBytesMetric) - histogramSum(m0, sessionBytesMetric)
	relayedEvents := metricValue(m1, "caddy_mcp_events_relayed_total") - metricValue(m0, "caddy_mcp_events_relayed_total")
	relayedBytes := metricValue(m1, "caddy_mcp_relayed_bytes_total") - metricValue(m0, "caddy_mcp_relayed_bytes_total")
	// The countdown's three progress events and its result were relayed
	// in the session; the initialize response, before the session
	// existed, counts only globally.
	if events < 4 || events > relayedEvents {
		t.Errorf("the deleted session relayed %v events, want at least 4 and at most the %v relayed in all", events, relayedEvents)
	}
	if bytes < 100 || bytes > relayedBytes {
		t.Errorf("the deleted session relayed %v bytes, want at least 100 and at most the %v relayed in all", bytes, relayedBytes)
	}
	if d := histogramSum(m1, sessionDurationMetric) - histogramSum(m0, sessionDurationMetric); d <= 0 || d > boundedWait.Seconds() {
		t.Errorf("the deleted session lasted %v s", d)
	}

	// 2. A session evicted through the admin API; a request in it after
	// the eviction observes nothing more.
	sid = rawSession(t, url, nil)
	if st, b := sessionEcho(t, url, sid, 3); st != http.StatusOK {
		t.Fatalf("echo: %d %s", st, b)
	}
	adminJSON(t, adminPort, http.MethodDelete, "/mcp/sessions/"+up.adminID(up.mintedIDs()[1]), "", http.StatusOK, nil)
	waitEnds("the evicted session to be observed", 2)
	if st, b := sessionEcho(t, url, sid, 4); st != http.StatusNotFound {
		t.Errorf("echo in the evicted session: %d %s, want 404", st, b)
	}

	// 3. A session opened before a config reload expires idle after it:
	// observed once, with a duration of at least the idle timeout. The
	// level is held at full (before the reload and after it): a busy
	// machine would raise it, and a degraded level shortens the idle
	// timeout below the 2s checked.
	pinFull := func() {
		adminJSON(t, adminPort, http.MethodPost, "/mcp/level", `{"level":"full","duration":"5m"}`, http.StatusOK, nil)
	}
	pinFull()
	t.Cleanup(func() { adminCall(t, adminPort, http.MethodDelete, "/mcp/level", "") })
	sid = rawSession(t, url, nil)
	if st, b := sessionEcho(t, url, sid, 5); st != http.StatusOK {
		t.Fatalf("echo: %d %s", st, b)
	}
	m2 := scrape(t, adminPort)
	loadWithAdmin(t, adminPort, global, cfg)
	pinFull()
	m3 := waitEnds("the idle session to expire", 3)
	if d := histogramSum(m3, sessionDurationMetric) - histogramSum(m2, sessionDurationMetric); d < 2 {
		t.Errorf("the idle session lasted %v s, want at least the 2 s idle timeout", d)
	}
	time.Sleep(300 * time.Millisecond) // several refreshes: nothing is observed twice
	m4 := scrape(t, adminPort)
	if got := sessionEnds(t, m4) - ends0; got != 3 {
		t.Errorf("%v session ends observed in the end, want 3", got)
	}
	if e := metricValue(m4, "caddy_mcp_session_evictions_total", "cause", "idle") - metricValue(m2, "caddy_mcp_session_evictions_total", "cause", "idle"); e != 1 {
		t.Errorf("idle evictions moved by %v, want 1", e)
	}

	problems, err := promlint.NewWithMetricFamilies(mcpFamilies(m3)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}
