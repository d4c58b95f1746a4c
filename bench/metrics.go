//go:build linux

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// promSample is one scrape of a Prometheus text exposition: series name
// with its labels as written ("caddy_mcp_refusals_total{reason=\"capacity\"}")
// to value.
type promSample map[string]float64

// parseProm reads the Prometheus text format. Comment and blank lines are
// skipped, and so is a line whose value does not parse; timestamps after
// the value are ignored.
func parseProm(r io.Reader) (promSample, error) {
	out := promSample{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		// The value follows the series; label values may hold spaces, so
		// split after the closing brace when there is one.
		var series, rest string
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			series, rest = line[:i+1], strings.TrimSpace(line[i+1:])
		} else {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			series, rest = f[0], strings.Join(f[1:], " ")
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		out[series] = v
	}
	return out, sc.Err()
}

// get returns a series' value, 0 when absent.
func (p promSample) get(series string) float64 { return p[series] }

// sum adds every series of the metric name (any labels) whose labels
// contain every one of the given `key="value"` matchers.
func (p promSample) sum(name string, matchers ...string) float64 {
	var t float64
	for k, v := range p {
		if k != name && !strings.HasPrefix(k, name+"{") {
			continue
		}
		ok := true
		for _, m := range matchers {
			if !strings.Contains(k, m) {
				ok = false
				break
			}
		}
		if ok {
			t += v
		}
	}
	return t
}

// delta returns b − a for the metric (summed as in sum).
func promDelta(a, b promSample, name string, matchers ...string) float64 {
	return b.sum(name, matchers...) - a.sum(name, matchers...)
}

// labelsOf lists the distinct label sets of a metric, sorted.
func (p promSample) labelsOf(name string) []string {
	var out []string
	for k := range p {
		if strings.HasPrefix(k, name+"{") {
			out = append(out, k[len(name):])
		}
	}
	sort.Strings(out)
	return out
}

// scrape reads Caddy's /metrics from its admin endpoint; nil when admin is
// off or the scrape fails.
func scrape(ctx context.Context, admin string) promSample {
	if admin == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return nil
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil
	}
	p, err := parseProm(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil
	}
	return p
}

// countFDs counts a process's open file descriptors; -1 when unknown.
func countFDs(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return -1
	}
	return len(ents)
}

// mcpCounters are the mcp_proxy metrics a scenario reports, as deltas
// over a measurement.
type mcpCounters struct {
	Scraped        bool
	Refusals       map[string]float64 // by reason
	Admitted       float64            // requests admitted (request_duration count), every class
	AdmittedHeavy  float64            // of which tools/call and other heavy requests
	CancelsSent    float64            // notifications/cancelled sent upstream
	SlowConsumers  float64
	Backpressure   float64
	Keepalives     float64
	EventsRelayed  float64
	LevelChanges   map[string]float64 // by level entered
	LevelAtEnd     float64
	SessionErrors  map[string]float64
	ProtectiveRsts float64
}

// mcpDelta computes the mcp_proxy counters between two scrapes.
func mcpDelta(a, b promSample) mcpCounters {
	if a == nil || b == nil {
		return mcpCounters{}
	}
	c := mcpCounters{
		Scraped:        true,
		Refusals:       map[string]float64{},
		LevelChanges:   map[string]float64{},
		SessionErrors:  map[string]float64{},
		Admitted:       promDelta(a, b, "caddy_mcp_request_duration_seconds_count"),
		AdmittedHeavy:  promDelta(a, b, "caddy_mcp_request_duration_seconds_count", `class="heavy"`),
		CancelsSent:    promDelta(a, b, "caddy_mcp_upstream_cancellations_total"),
		SlowConsumers:  promDelta(a, b, "caddy_mcp_slow_consumer_disconnects_total"),
		Backpressure:   promDelta(a, b, "caddy_mcp_backpressure_total"),
		Keepalives:     promDelta(a, b, "caddy_mcp_keepalives_total"),
		EventsRelayed:  promDelta(a, b, "caddy_mcp_events_relayed_total"),
		LevelAtEnd:     b.get("caddy_mcp_service_level"),
		ProtectiveRsts: promDelta(a, b, "caddy_mcp_protective_resets_total"),
	}
	for _, l := range b.labelsOf("caddy_mcp_refusals_total") {
		if d := b.get("caddy_mcp_refusals_total"+l) - a.get("caddy_mcp_refusals_total"+l); d != 0 {
			c.Refusals[labelValue(l)] = d
		}
	}
	for _, l := range b.labelsOf("caddy_mcp_service_level_changes_total") {
		if d := b.get("caddy_mcp_service_level_changes_total"+l) - a.get("caddy_mcp_service_level_changes_total"+l); d != 0 {
			c.LevelChanges[labelValue(l)] = d
		}
	}
	for _, l := range b.labelsOf("caddy_mcp_session_errors_total") {
		if d := b.get("caddy_mcp_session_errors_total"+l) - a.get("caddy_mcp_session_errors_total"+l); d != 0 {
			c.SessionErrors[labelValue(l)] = d
		}
	}
	return c
}

// labelValue returns the first label's value of a `{k="v",...}` set.
func labelValue(labels string) string {
	i := strings.IndexByte(labels, '"')
	if i < 0 {
		return labels
	}
	j := strings.IndexByte(labels[i+1:], '"')
	if j < 0 {
		return labels[i+1:]
	}
	return labels[i+1 : i+1+j]
}

// floatMap formats a map of counts as "a×1, b×2" (sorted), "0" when empty.
func floatMap(m map[string]float64) string {
	if len(m) == 0 {
		return "0"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s×%.0f", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// levelName names a service level value.
func levelName(v float64) string {
	switch int(v) {
	case 0:
		return "full"
	case 1:
		return "degraded"
	case 2:
		return "essential"
	case 3:
		return "protective"
	}
	return strconv.FormatFloat(v, 'f', -1, 64)
}

// mcpStatus is the part of GET /mcp/status (admin) the harness reads.
type mcpStatus struct {
	Level    string             `json:"level"`
	Pressure float64            `json:"pressure"`
	Monitors map[string]float64 `json:"pressures"`
}

// levelWatch polls /mcp/status while a measurement runs and keeps the
// highest service level and the highest pressure of each monitor.
type levelWatch struct {
	stopCh chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	peak   levelPeak
}

// levelPeak is what a levelWatch saw.
type levelPeak struct {
	Polled   int
	Level    int                // highest level seen (0 full … 3 protective)
	Pressure float64            // highest overall pressure
	Monitors map[string]float64 // highest pressure per monitor
}

// String names the highest level and the monitors that drove pressure
// above 0.5, e.g. "protective (sched_latency 1.00, heap 0.61)".
func (p levelPeak) String() string {
	if p.Polled == 0 {
		return "–"
	}
	s := levelName(float64(p.Level))
	var parts []string
	keys := make([]string, 0, len(p.Monitors))
	for k := range p.Monitors {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if v := p.Monitors[k]; v >= 0.5 {
			parts = append(parts, fmt.Sprintf("%s %.2f", k, v))
		}
	}
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	return s
}

func levelIndex(name string) int {
	switch name {
	case "degraded":
		return 1
	case "essential":
		return 2
	case "protective":
		return 3
	}
	return 0
}

// waitLevelFull polls admin's /mcp/status until the service level is
// full, for at most max; true at once when there is no admin endpoint or
// no mcp app.
func waitLevelFull(ctx context.Context, admin string, max time.Duration) bool {
	if admin == "" {
		return true
	}
	c := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(max)
	for {
		resp, err := c.Get("http://" + admin + "/mcp/status")
		if err != nil {
			return true
		}
		var st mcpStatus
		ok := resp.StatusCode == http.StatusOK && json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st) == nil
		resp.Body.Close()
		if !ok || levelIndex(st.Level) == 0 {
			return true
		}
		if time.Now().After(deadline) || !pause(ctx, 100*time.Millisecond) {
			return false
		}
	}
}

// watchLevels starts polling admin's /mcp/status every 200 ms; nil when
// there is no admin endpoint.
func watchLevels(admin string) *levelWatch {
	if admin == "" {
		return nil
	}
	w := &levelWatch{stopCh: make(chan struct{}), done: make(chan struct{}), peak: levelPeak{Monitors: map[string]float64{}}}
	go func() {
		defer close(w.done)
		c := &http.Client{Timeout: 2 * time.Second}
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for range 100_000 {
			if resp, err := c.Get("http://" + admin + "/mcp/status"); err == nil {
				var st mcpStatus
				if resp.StatusCode == http.StatusOK && json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st) == nil {
					w.mu.Lock()
					w.peak.Polled++
					w.peak.Level = max(w.peak.Level, levelIndex(st.Level))
					w.peak.Pressure = max(w.peak.Pressure, st.Pressure)
					for k, v := range st.Monitors {
						w.peak.Monitors[k] = max(w.peak.Monitors[k], v)
					}
					w.mu.Unlock()
				}
				resp.Body.Close()
			}
			select {
			case <-w.stopCh:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// watchFor watches the levels while tgt runs, when it is an mcp_proxy
// site (mcp_proxy, mcp_proxy behind mcp_auth, the baseline's), on the
// Caddy process that serves it.
func (e *benchEnv) watchFor(tgt target) *levelWatch {
	if !isMCPTarget(tgt.Name) {
		return nil
	}
	return watchLevels(e.adminFor(tgt))
}

// isMCPTarget reports whether a target is served by mcp_proxy: its
// /metrics and /mcp/status figures are mcp_proxy's.
func isMCPTarget(name string) bool {
	return name == targetMCP || name == targetAuth || name == targetBase
}

func (w *levelWatch) stop() levelPeak {
	if w == nil {
		return levelPeak{}
	}
	close(w.stopCh)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak
}
