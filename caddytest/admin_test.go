package caddytest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mcpgate/mcpgate/internal/demo"
)

// loadWithAdmin is loadCaddyfileWith with Caddy's admin endpoint on
// 127.0.0.1:adminPort instead of off, so the test can reach /mcp/* and
// /metrics. Loading again in the same test is a config reload.
func loadWithAdmin(t *testing.T, adminPort int, globalOptions, body string) {
	t.Helper()
	loadConfig(t, testCaddyfile(fmt.Sprintf("127.0.0.1:%d", adminPort), globalOptions, body))
}

// opsSite is a site on port with mcp_health at /healthz and mcp_proxy to
// up for everything else; block goes inside mcp_proxy.
func opsSite(port int, up, block string) string {
	return fmt.Sprintf(":%d {\n\thandle /healthz {\n\t\tmcp_health {\n\t\t\tdetails on\n\t\t}\n\t}\n\thandle {\n\t\tmcp_proxy %s {\n%s\t\t}\n\t}\n}\n", port, up, block)
}

// startOps loads a config with the admin endpoint on a new port, the
// global options, and opsSite on another port in front of up (block goes
// inside its mcp_proxy), and returns both ports.
func startOps(t *testing.T, up, globalOptions, block string) (port, adminPort int) {
	t.Helper()
	port, adminPort = freePort(t), freePort(t)
	loadWithAdmin(t, adminPort, globalOptions, opsSite(port, up, block))
	return port, adminPort
}

// opsGlobal is the mcp global option with a fast refresh.
const opsGlobal = "\tmcp {\n\t\trefresh 50ms\n\t}\n"

// adminCall sends a request to the admin endpoint and returns the status,
// headers and body.
func adminCall(t *testing.T, adminPort int, method, path, body string) (int, http.Header, string) {
	t.Helper()
	var req *http.Request
	var err error
	url := fmt.Sprintf("http://127.0.0.1:%d%s", adminPort, path)
	if body != "" {
		req, err = http.NewRequest(method, url, strings.NewReader(body))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
	} else {
		req, err = http.NewRequest(method, url, nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	return do(t, req)
}

// adminJSON sends a request that must succeed with want and decodes the
// JSON answer into v.
func adminJSON(t *testing.T, adminPort int, method, path, body string, want int, v any) {
	t.Helper()
	st, hdr, b := adminCall(t, adminPort, method, path, body)
	if st != want {
		t.Fatalf("%s %s: status %d, want %d: %s", method, path, st, want, b)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("%s %s: Content-Type %q", method, path, ct)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(b), v); err != nil {
			t.Fatalf("%s %s: decoding %q: %v", method, path, b, err)
		}
	}
}

// opsStatus is the part of GET /mcp/status the tests read.
type opsStatus struct {
	Level       string             `json:"level"`
	Computed    string             `json:"computed_level"`
	Pinned      bool               `json:"pinned"`
	PinnedUntil time.Time          `json:"pinned_until"`
	Pressures   map[string]float64 `json:"pressures"`
	Thresholds  map[string]float64 `json:"thresholds"`
	Refresh     string             `json:"refresh"`
	Resources   struct {
		Memory   struct{ Used, Limit int64 } `json:"memory_bytes"`
		Sessions struct{ Used, Limit int64 } `json:"sessions"`
		Streams  struct{ Used, Limit int64 } `json:"streams"`
		InFlight struct{ Used, Limit int64 } `json:"requests_in_flight"`
		Conns    struct{ Used, Limit int64 } `json:"connections"`
		Active   int64                       `json:"streams_active"`
	} `json:"resources"`
	Refusals  map[string]uint64  `json:"refusals"`
	Evictions map[string]uint64  `json:"evictions"`
	Changes   map[string]uint64  `json:"level_changes"`
	Counters  map[string]float64 `json:"counters"`
}

func status(t *testing.T, adminPort int) opsStatus {
	t.Helper()
	var s opsStatus
	adminJSON(t, adminPort, http.MethodGet, "/mcp/status", "", http.StatusOK, &s)
	return s
}

// scrape reads the admin endpoint's /metrics.
func scrape(t *testing.T, adminPort int) promText {
	t.Helper()
	st, _, body := adminCall(t, adminPort, http.MethodGet, "/metrics", "")
	if st != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", st, body)
	}
	mfs, err := parseMetrics(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

// promText is a scrape of /metrics: the metric families by name.
type promText = map[string]*dto.MetricFamily

// parseMetrics parses a Prometheus text exposition.
func parseMetrics(r io.Reader) (promText, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// liveMetric returns metricValue of a family of the running in-process
// config's metrics, 0 when it is missing.
func liveMetric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	v, _ := liveFamily(t, name, labels...)
	return v
}

// liveFamily is liveMetric that also reports whether the family exists.
func liveFamily(t *testing.T, name string, labels ...string) (float64, bool) {
	t.Helper()
	actx := caddy.ActiveContext()
	families, err := actx.GetMetricsRegistry().Gather()
	if err != nil {
		t.Fatalf("gathering metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return metricValue(promText{name: f}, name, labels...), true
		}
	}
	return 0, false
}

// metricValue returns the value of the series of family name whose labels
// include labels (name=value pairs), summed over the matching series: a
// counter's or gauge's value, a histogram's sample count. A family that
// is missing reads 0.
func metricValue(mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	mf, ok := mfs[name]
	if !ok {
		return 0
	}
	sum := 0.0
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum
}

// adminID is the id the admin API shows for a session of this upstream
// whose upstream session id is sid.
func (u *upstream) adminID(sid string) string {
	sum := sha256.Sum256([]byte(u.Listener.Addr().String() + " " + sid))
	return hex.EncodeToString(sum[:])[:8]
}

// TestAdminStatus: GET /mcp/status reports the level, every monitor's
// pressure, the thresholds, limits beside usage and the counters; every
// route refuses the methods it does not serve with 405 and an Allow
// header.
func TestAdminStatus(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port, adminPort := startOps(t, up.addr(), "\tmcp {\n\t\trefresh 50ms\n\t\tmax_sessions 500\n\t\tmax_inflight 40\n\t\tmemory_limit 64MiB\n\t\tlevels 0.6 0.8 0.9\n\t}\n", "")
	rawSession(t, proxyURL(port)+"/mcp", nil)

	var s opsStatus
	pollUntil(t, "the monitors to be sampled", func() bool {
		s = status(t, adminPort)
		return len(s.Pressures) > 0
	})
	if s.Level != "full" || s.Computed != "full" || s.Pinned || !s.PinnedUntil.IsZero() {
		t.Errorf("level %q computed %q pinned %v until %v, want full, not pinned", s.Level, s.Computed, s.Pinned, s.PinnedUntil)
	}
	for _, m := range []string{"heap", "cgroup_memory", "budget", "connections", "goroutines", "sched_latency", "injected"} {
		if _, ok := s.Pressures[m]; !ok {
			t.Errorf("no pressure for monitor %s in %v", m, s.Pressures)
		}
	}
	if s.Thresholds["degraded"] != 0.6 || s.Thresholds["essential"] != 0.8 || s.Thresholds["protective"] != 0.9 || s.Thresholds["hysteresis"] != 0.05 {
		t.Errorf("thresholds %v", s.Thresholds)
	}
	if s.Refresh != "50ms" {
		t.Errorf("refresh %q", s.Refresh)
	}
	r := s.Resources
	if r.Memory.Limit != 64<<20 || r.Sessions.Limit != 500 || r.InFlight.Limit != 40 || r.Sessions.Used < 1 {
		t.Errorf("resources %+v", r)
	}
	for _, reason := range []string{"capacity", "queue_full", "queue_timeout", "client_quota", "session_quota", "level", "connections"} {
		if _, ok := s.Refusals[reason]; !ok {
			t.Errorf("no refusal count for %s in %v", reason, s.Refusals)
		}
	}
	for _, cause := range []string{"idle", "capacity", "level", "operator"} {
		if _, ok := s.Evictions[cause]; !ok {
			t.Errorf("no eviction count for %s in %v", cause, s.Evictions)
		}
	}
	if len(s.Changes) != 4 || s.Counters["sessions_created"] < 1 {
		t.Errorf("level changes %v, counters %v", s.Changes, s.Counters)
	}

	for _, tt := range []struct{ method, path, allow string }{
		{http.MethodPost, "/mcp/status", "GET"},
		{http.MethodDelete, "/mcp/sessions", "GET"},
		{http.MethodPost, "/mcp/sessions/0123abcd", "GET, DELETE"},
		{http.MethodGet, "/mcp/level", "POST, DELETE"},
		{http.MethodPut, "/mcp/pressure", "POST, DELETE"},
	} {
		st, hdr, body := adminCall(t, adminPort, tt.method, tt.path, "")
		if st != http.StatusMethodNotAllowed || hdr.Get("Allow") != tt.allow {
			t.Errorf("%s %s: %d Allow %q, want 405 Allow %q (%s)", tt.method, tt.path, st, hdr.Get("Allow"), tt.allow, body)
		}
		var e struct{ Error string }
		if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("%s %s: body %q is not a JSON error", tt.method, tt.path, body)
		}
	}
	if st, _, body := adminCall(t, adminPort, http.MethodGet, "/mcp/nothing", ""); st != http.StatusNotFound {
		t.Errorf("GET /mcp/nothing: %d %s", st, body)
	}
}

// TestAdminLevelPin: a pinned level shows in /mcp/status, makes
// mcp_health answer 503 at essential, sets caddy_mcp_service_level and
// refuses new sessions; releasing it restores everything. Bad pins get 400.
func TestAdminLevelPin(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port, adminPort := startOps(t, up.addr(), opsGlobal, "")
	url := proxyURL(port) + "/mcp"
	health := proxyURL(port) + "/healthz"
	sid := rawSession(t, url, nil)
	t.Cleanup(func() { adminCall(t, adminPort, http.MethodDelete, "/mcp/level", "") })

	healthOf := func() (int, http.Header, map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, health, nil)
		st, hdr, body := do(t, req)
		var m map[string]any
		if err := json.Unmarshal([]byte(body), &m); err != nil {
			t.Fatalf("health body %q: %v", body, err)
		}
		return st, hdr, m
	}
	if st, hdr, m := healthOf(); st != http.StatusOK || m["level"] != "full" || m["status"] != "ok" || hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("health before the pin: %d %v %v", st, hdr, m)
	}

	var pinned struct {
		Level       string    `json:"level"`
		Pinned      bool      `json:"pinned"`
		PinnedUntil time.Time `json:"pinned_until"`
	}
	before := time.Now()
	adminJSON(t, adminPort, http.MethodPost, "/mcp/level", `{"level":"essential","duration":"5m"}`, http.StatusOK, &pinned)
	if pinned.Level != "essential" || !pinned.Pinned || pinned.PinnedUntil.Before(before.Add(5*time.Minute-time.Second)) || pinned.PinnedUntil.After(time.Now().Add(5*time.Minute)) {
		t.Errorf("pin answer %+v", pinned)
	}
	s := status(t, adminPort)
	if s.Level != "essential" || s.Computed != "full" || !s.Pinned || !s.PinnedUntil.Equal(pinned.PinnedUntil) {
		t.Errorf("status while pinned: level %q computed %q pinned %v until %v", s.Level, s.Computed, s.Pinned, s.PinnedUntil)
	}
	if s.Changes["essential"] < 1 {
		t.Errorf("level changes %v", s.Changes)
	}
	st, hdr, m := healthOf()
	if st != http.StatusServiceUnavailable || m["level"] != "essential" || m["status"] != "unavailable" || m["pinned"] != true || hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("health while pinned at essential: %d %v", st, m)
	}
	if v := metricValue(scrape(t, adminPort), "caddy_mcp_service_level"); v != 2 {
		t.Errorf("caddy_mcp_service_level = %v, want 2", v)
	}
	// Essential refuses new sessions and keeps serving existing ones.
	if st, _, b := rawPost(t, url, initializeBody, nil); st != http.StatusServiceUnavailable {
		t.Errorf("initialize at essential: %d %s", st, b)
	}
	if st, b := sessionEcho(t, url, sid, 2); st != http.StatusOK {
		t.Errorf("tools/call in a session at essential: %d %s", st, b)
	}

	// A longer pin is capped at 24 hours; a new pin replaces the old one.
	adminJSON(t, adminPort, http.MethodPost, "/mcp/level", `{"level":"protective","duration":"72h"}`, http.StatusOK, &pinned)
	if pinned.Level != "protective" || pinned.PinnedUntil.After(time.Now().Add(24*time.Hour)) || pinned.PinnedUntil.Before(time.Now().Add(24*time.Hour-time.Minute)) {
		t.Errorf("72h pin answer %+v, want protective until 24h from now", pinned)
	}

	for _, body := range []string{
		`{"level":"bogus","duration":"5m"}`,
		`{"level":"essential","duration":"soon"}`,
		`{"level":"essential","duration":"-1m"}`,
		`{"level":"essential"}`,
		`{"level":"essential","duration":"5m","extra":1}`,
		`not json`,
	} {
		if st, _, b := adminCall(t, adminPort, http.MethodPost, "/mcp/level", body); st != http.StatusBadRequest {
			t.Errorf("POST /mcp/level %s: %d %s, want 400", body, st, b)
		}
	}
	if s := status(t, adminPort); s.Level != "protective" {
		t.Errorf("a refused pin changed the level to %q", s.Level)
	}

	var released struct {
		Level  string `json:"level"`
		Pinned bool   `json:"pinned"`
	}
	adminJSON(t, adminPort, http.MethodDelete, "/mcp/level", "", http.StatusOK, &released)
	if released.Level != "full" || released.Pinned {
		t.Errorf("unpin answer %+v", released)
	}
	if st, _, m := healthOf(); st != http.StatusOK || m["level"] != "full" {
		t.Errorf("health after the pin: %d %v", st, m)
	}
	if v := metricValue(scrape(t, adminPort), "caddy_mcp_service_level"); v != 0 {
		t.Errorf("caddy_mcp_service_level = %v after unpin, want 0", v)
	}
	if st, _, b := rawPost(t, url, initializeBody, nil); st != http.StatusOK {
		t.Errorf("initialize after unpin: %d %s", st, b)
	}
}

// TestAdminInjectedPressure: an injected pressure of 0.9 takes the level
// to essential within a few refreshes, and back to full once it is reset.
func TestAdminInjectedPressure(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port, adminPort := startOps(t, up.addr(), opsGlobal, "")
	health := proxyURL(port) + "/healthz"
	t.Cleanup(func() { adminCall(t, adminPort, http.MethodDelete, "/mcp/pressure", "") })

	for _, body := range []string{`{"pressure":1.5}`, `{"pressure":-0.1}`, `{}`, `{"pressure":"high"}`} {
		if st, _, b := adminCall(t, adminPort, http.MethodPost, "/mcp/pressure", body); st != http.StatusBadRequest {
			t.Errorf("POST /mcp/pressure %s: %d %s, want 400", body, st, b)
		}
	}

	adminJSON(t, adminPort, http.MethodPost, "/mcp/pressure", `{"pressure":0.9}`, http.StatusOK, nil)
	var s opsStatus
	pollUntil(t, "the essential level", func() bool {
		s = status(t, adminPort)
		return s.Level == "essential"
	})
	if s.Computed != "essential" || s.Pinned || s.Pressures["injected"] != 0.9 {
		t.Errorf("status under injected pressure: computed %q pinned %v pressures %v", s.Computed, s.Pinned, s.Pressures)
	}
	req, _ := http.NewRequest(http.MethodGet, health, nil)
	if st, _, b := do(t, req); st != http.StatusServiceUnavailable || !strings.Contains(b, `"injected":0.9`) {
		t.Errorf("health under injected pressure: %d %s", st, b)
	}
	pollUntil(t, "caddy_mcp_service_level 2", func() bool {
		return metricValue(scrape(t, adminPort), "caddy_mcp_service_level") == 2
	})

	adminJSON(t, adminPort, http.MethodDelete, "/mcp/pressure", "", http.StatusOK, nil)
	pollUntil(t, "the full level", func() bool { return status(t, adminPort).Level == "full" })
	if st, _, b := do(t, req); st != http.StatusOK {
		t.Errorf("health after reset: %d %s", st, b)
	}
}

// adminSession is one entry of GET /mcp/sessions.
type adminSession struct {
	ID       string  `json:"id"`
	Upstream string  `json:"upstream"`
	Version  string  `json:"protocol_version"`
	Age      float64 `json:"age_seconds"`
	Idle     float64 `json:"idle_seconds"`
	Bytes    int64   `json:"bytes"`
	Streams  int     `json:"streams"`
	InFlight int     `json:"in_flight"`
}

// adminPage is one page of GET /mcp/sessions.
type adminPage struct {
	Sessions []adminSession `json:"sessions"`
	Total    int            `json:"total"`
	Next     string         `json:"next"`
}

// listSessions lists every live session, limit per page, and returns
// them all and those of upstream addr in listing order, and the number of
// pages.
func listSessions(t *testing.T, adminPort, limit int, addr string) (all, mine []adminSession, pages int) {
	t.Helper()
	cursor := ""
	for pages = 1; ; pages++ {
		if pages > 10000 {
			t.Fatalf("more than 10000 pages of sessions")
		}
		var p adminPage
		adminJSON(t, adminPort, http.MethodGet, fmt.Sprintf("/mcp/sessions?limit=%d&cursor=%s", limit, cursor), "", http.StatusOK, &p)
		if len(p.Sessions) > limit {
			t.Fatalf("a page of %d sessions with limit %d", len(p.Sessions), limit)
		}
		all = append(all, p.Sessions...)
		if p.Next == "" {
			break
		}
		cursor = p.Next
	}
	for _, s := range all {
		if s.Upstream == addr {
			mine = append(mine, s)
		}
	}
	return all, mine, pages
}

// TestAdminSessions: sessions opened through mcp_proxy are listed with a
// hashed id and their upstream, age, idle time, bytes, streams and
// requests in flight, page by page in a stable order; DELETE evicts one,
// whose client then gets 404; the list never shows a token or an upstream
// session id.
func TestAdminSessions(t *testing.T) {
	up := startRecorded(t, "up", demo.Handler(demo.NewServer("up"), "/sse", nil))
	port, adminPort := startOps(t, up.addr(), opsGlobal, "")
	url := proxyURL(port) + "/mcp"

	tokens := []string{rawSession(t, url, nil), rawSession(t, url, nil)}
	ctx, cancel := context.WithTimeout(context.Background(), boundedWait)
	defer cancel()
	cs := connect(t, ctx, url, nil, nil) // opens a standalone GET stream
	defer cs.Close()
	if got, err := echo(ctx, cs, "sdk"); err != nil || got != "sdk" {
		t.Fatalf("echo through the go-sdk client: %q %v", got, err)
	}
	sids := up.mintedIDs()
	if len(sids) != 3 {
		t.Fatalf("upstream minted %d sessions, want 3", len(sids))
	}
	wantIDs := map[string]bool{}
	for _, sid := range sids {
		wantIDs[up.adminID(sid)] = true
	}

	var mine []adminSession
	pollUntil(t, "the go-sdk client's GET stream to be listed", func() bool {
		_, mine, _ = listSessions(t, adminPort, 1000, up.addr())
		for _, s := range mine {
			if s.ID == up.adminID(sids[2]) && s.Streams == 1 {
				return true
			}
		}
		return false
	})
	if len(mine) != 3 {
		t.Fatalf("listed %d sessions of the upstream, want 3: %+v", len(mine), mine)
	}
	for _, s := range mine {
		if !wantIDs[s.ID] || len(s.ID) != 8 {
			t.Errorf("session id %q is not the hash prefix of an upstream session", s.ID)
		}
		if s.Age < 0 || s.Idle < 0 || s.Idle > s.Age+0.01 || s.InFlight < 0 || s.Bytes < 0 {
			t.Errorf("session %+v", s)
		}
	}

	// Paging with a small limit gives the same sessions in the same order.
	all, _, _ := listSessions(t, adminPort, 1000, "")
	paged, pagedMine, _ := listSessions(t, adminPort, 2, up.addr())
	if len(paged) != len(all) || len(pagedMine) != 3 {
		t.Errorf("paging with limit 2 listed %d sessions (%d of the upstream), one page %d", len(paged), len(pagedMine), len(all))
	}
	for i := 1; i < len(paged); i++ {
		if paged[i-1].ID > paged[i].ID {
			t.Errorf("listing not sorted at %d: %s > %s", i, paged[i-1].ID, paged[i].ID)
		}
	}

	// Nothing secret is shown.
	_, _, raw := adminCall(t, adminPort, http.MethodGet, "/mcp/sessions?limit=1000", "")
	for _, secret := range append(append([]string{}, sids...), tokens...) {
		if strings.Contains(raw, secret) {
			t.Errorf("the listing shows %q", secret)
		}
	}

	for _, q := range []string{"limit=0", "limit=x", "cursor=zz", "cursor=abc"} {
		if st, _, b := adminCall(t, adminPort, http.MethodGet, "/mcp/sessions?"+q, ""); st != http.StatusBadRequest {
			t.Errorf("GET /mcp/sessions?%s: %d %s, want 400", q, st, b)
		}
	}
	var big adminPage
	adminJSON(t, adminPort, http.MethodGet, "/mcp/sessions?limit=5000", "", http.StatusOK, &big)

	// GET of one id shows it; DELETE evicts it.
	victim := up.adminID(sids[0])
	var one adminPage
	adminJSON(t, adminPort, http.MethodGet, "/mcp/sessions/"+victim, "", http.StatusOK, &one)
	if len(one.Sessions) != 1 || one.Sessions[0].ID != victim {
		t.Errorf("GET /mcp/sessions/%s: %+v", victim, one)
	}
	before := metricValue(scrape(t, adminPort), "caddy_mcp_session_evictions_total", "cause", "operator")
	var evicted struct {
		Evicted int `json:"evicted"`
	}
	adminJSON(t, adminPort, http.MethodDelete, "/mcp/sessions/"+victim, "", http.StatusOK, &evicted)
	if evicted.Evicted != 1 {
		t.Errorf("evicted %d sessions, want 1", evicted.Evicted)
	}
	if st, b := sessionEcho(t, url, tokens[0], 3); st != http.StatusNotFound {
		t.Errorf("request in the evicted session: %d %s, want 404", st, b)
	}
	if st, b := sessionEcho(t, url, tokens[1], 4); st != http.StatusOK {
		t.Errorf("request in another session: %d %s", st, b)
	}
	if st, _, b := adminCall(t, adminPort, http.MethodDelete, "/mcp/sessions/"+victim, ""); st != http.StatusNotFound {
		t.Errorf("second DELETE: %d %s, want 404", st, b)
	}
	if st, _, b := adminCall(t, adminPort, http.MethodGet, "/mcp/sessions/"+victim, ""); st != http.StatusNotFound {
		t.Errorf("GET of an evicted session: %d %s, want 404", st, b)
	}
	for _, bad := range []string{"abc", "not-hex!", strings.Repeat("a", 65)} {
		if st, _, b := adminCall(t, adminPort, http.MethodDelete, "/mcp/sessions/"+bad, ""); st != http.StatusBadRequest {
			t.Errorf("DELETE /mcp/sessions/%s: %d %s, want 400", bad, st, b)
		}
	}
	if s := status(t, adminPort); s.Evictions["operator"] < 1 {
		t.Errorf("status evictions %v", s.Evictions)
	}
	if after := metricValue(scrape(t, adminPort), "caddy_mcp_session_evictions_total", "cause", "operator"); after != before+1 {
		t.Errorf("caddy_mcp_session_evictions_total{cause=operator} went from %v to %v", before, after)
	}
	_, mine, _ = listSessions(t, adminPort, 1000, up.addr())
	if len(mine) != 2 {
		t.Errorf("%d sessions of the upstream after the eviction, want 2", len(mine))
	}
}

// TestAdminEvictDeletesAtAgreedVersion: a session whose server agreed on
// an older version than its client offered is deleted upstream, when
// evicted, at the version the two agreed, which the server accepts; not
// at the one offered, which it refuses.
func TestAdminEvictDeletesAtAgreedVersion(t *testing.T) {
	up := startFake(t, &fakeUpstream{versions: []string{"2025-06-18", "2025-03-26"}})
	port, adminPort := startOps(t, up.addr(), opsGlobal, "")
	url := proxyURL(port) + "/mcp"

	st, h, b := rawPost(t, url, initAt(1, "2025-11-25"), nil)
	tok := h.Get("Mcp-Session-Id")
	if st != http.StatusOK || tok == "" || !strings.Contains(b, `"2025-06-18"`) {
		t.Fatalf("initialize offering 2025-11-25: %d %q %s", st, tok, b)
	}
	if st, _, b := rawPost(t, url, notifyInitialized, sessionHeaders(tok, "2025-06-18")); st != http.StatusAccepted {
		t.Fatalf("notifications/initialized at the agreed version: %d %s", st, b)
	}
	sids := up.mintedIDs()
	if len(sids) != 1 {
		t.Fatalf("upstream minted %d sessions, want 1", len(sids))
	}
	var listed adminPage
	adminJSON(t, adminPort, http.MethodGet, "/mcp/sessions/"+up.adminID(sids[0]), "", http.StatusOK, &listed)
	if len(listed.Sessions) != 1 || listed.Sessions[0].Version != "2025-06-18" {
		t.Errorf("the session is listed as %+v, want protocol_version 2025-06-18", listed.Sessions)
	}
	adminJSON(t, adminPort, http.MethodDelete, "/mcp/sessions/"+up.adminID(sids[0]), "", http.StatusOK, nil)
	del := up.await(t, "the upstream DELETE of the evicted session", boundedWait, func(s fakeSeen) bool {
		return s.method == http.MethodDelete
	})
	if del.sid != sids[0] || del.version != "2025-06-18" {
		t.Errorf("evicted session deleted with Mcp-Session-Id %q, MCP-Protocol-Version %q; want %q, 2025-06-18", del.sid, del.version, sids[0])
	}
	pollUntil(t, "the upstream to end the session", func() bool { return up.deletedKnown.Load() == 1 })
}
