package caddytest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// healthAnswer is the body of an mcp_health answer.
type healthAnswer struct {
	Status           string                      `json:"status"`
	Level            string                      `json:"level"`
	Pinned           bool                        `json:"pinned"`
	Pressure         float64                     `json:"pressure"`
	Pressures        map[string]float64          `json:"pressures"`
	Sessions         int                         `json:"sessions"`
	Streams          int                         `json:"streams"`
	RequestsInFlight int                         `json:"requests_in_flight"`
	Memory           struct{ Used, Limit int64 } `json:"memory_bytes"`
}

func getHealth(t *testing.T, url string) (int, http.Header, healthAnswer) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	st, hdr, body := do(t, req)
	var h healthAnswer
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatalf("health body %q: %v", body, err)
	}
	return st, hdr, h
}

// pinLevel pins a service level through the admin API until the test
// ends.
func pinLevel(t *testing.T, adminPort int, level string) {
	t.Helper()
	adminJSON(t, adminPort, http.MethodPost, "/mcp/level", fmt.Sprintf(`{"level":%q,"duration":"10m"}`, level), http.StatusOK, nil)
	t.Cleanup(func() { adminCall(t, adminPort, http.MethodDelete, "/mcp/level", "") })
}

// TestHealthOrderAndBody: `mcp_health /healthz` next to `respond` needs no
// order line and runs first; it answers GET with a JSON body of the status
// and level (with `details on`, also the pressures and the counts), HEAD
// with the status alone, other methods with 405; the answer is never
// cached. It works with no mcp_proxy at all.
func TestHealthOrderAndBody(t *testing.T) {
	port, adminPort := freePort(t), freePort(t)
	loadWithAdmin(t, adminPort, opsGlobal, fmt.Sprintf(":%d {\n\trespond \"fallback\" 404\n\tmcp_health /healthz {\n\t\tdetails on\n\t}\n\tmcp_health /public\n}\n", port))
	base := proxyURL(port)

	// Without details: status and level only, nothing about the load.
	req, _ := http.NewRequest(http.MethodGet, base+"/public", nil)
	if st, _, body := do(t, req); st != http.StatusOK || body != `{"status":"ok","level":"full"}`+"\n" {
		t.Errorf("health without details: %d %q", st, body)
	}

	var h healthAnswer
	var hdr http.Header
	var st int
	pollUntil(t, "the monitors to be sampled", func() bool {
		st, hdr, h = getHealth(t, base+"/healthz")
		return len(h.Pressures) > 0
	})
	if st != http.StatusOK || h.Status != "ok" || h.Level != "full" || h.Pinned {
		t.Errorf("health: %d %+v", st, h)
	}
	if hdr.Get("Cache-Control") != "no-store" || hdr.Get("Content-Type") != "application/json" {
		t.Errorf("health headers %v", hdr)
	}
	for _, m := range []string{"heap", "budget", "injected"} {
		if _, ok := h.Pressures[m]; !ok {
			t.Errorf("no pressure %s in %v", m, h.Pressures)
		}
	}
	// The number of sessions is the session table's business, not a
	// pressure on the service level.
	for _, m := range []string{"sessions"} {
		if _, ok := h.Pressures[m]; ok {
			t.Errorf("pressure %s in %v", m, h.Pressures)
		}
	}
	if h.Sessions < 0 || h.Streams < 0 || h.RequestsInFlight < 0 || h.Memory.Used < 0 {
		t.Errorf("health counts %+v", h)
	}

	req, _ = http.NewRequest(http.MethodHead, base+"/healthz", nil)
	if st, _, body := do(t, req); st != http.StatusOK || body != "" {
		t.Errorf("HEAD: %d %q", st, body)
	}
	req, _ = http.NewRequest(http.MethodPost, base+"/healthz", strings.NewReader("{}"))
	if st, hdr, _ := do(t, req); st != http.StatusMethodNotAllowed || hdr.Get("Allow") != "GET, HEAD" {
		t.Errorf("POST: %d Allow %q", st, hdr.Get("Allow"))
	}
	req, _ = http.NewRequest(http.MethodGet, base+"/other", nil)
	if st, _, body := do(t, req); st != http.StatusNotFound || body != "fallback" {
		t.Errorf("GET /other: %d %q", st, body)
	}

	pinLevel(t, adminPort, "degraded")
	if st, _, h := getHealth(t, base+"/healthz"); st != http.StatusOK || h.Level != "degraded" {
		t.Errorf("health at degraded: %d %+v", st, h)
	}
	pinLevel(t, adminPort, "protective")
	if st, _, h := getHealth(t, base+"/healthz"); st != http.StatusServiceUnavailable || h.Status != "unavailable" || h.Level != "protective" {
		t.Errorf("health at protective: %d %+v", st, h)
	}
	req, _ = http.NewRequest(http.MethodHead, base+"/healthz", nil)
	if st, _, _ := do(t, req); st != http.StatusServiceUnavailable {
		t.Errorf("HEAD at protective: %d", st)
	}
}

// TestHealthUnhealthyAt: unhealthy_at moves the level from which the
// endpoint answers 503, inside a handle block next to mcp_proxy.
func TestHealthUnhealthyAt(t *testing.T) {
	up := startUpstream(t, "up", nil)
	port, adminPort := freePort(t), freePort(t)
	loadWithAdmin(t, adminPort, opsGlobal, fmt.Sprintf(
		":%d {\n\thandle /ready {\n\t\tmcp_health {\n\t\t\tunhealthy_at degraded\n\t\t\tdetails on\n\t\t}\n\t}\n\thandle /live {\n\t\tmcp_health {\n\t\t\tunhealthy_at protective\n\t\t}\n\t}\n\thandle {\n\t\tmcp_proxy %s\n\t}\n}\n",
		port, up.addr()))
	base := proxyURL(port)
	rawSession(t, base+"/mcp", nil)

	for _, tt := range []struct {
		level       string
		ready, live int
	}{
		{"full", 200, 200},
		{"degraded", 503, 200},
		{"essential", 503, 200},
		{"protective", 503, 503},
	} {
		pinLevel(t, adminPort, tt.level)
		st, _, h := getHealth(t, base+"/ready")
		if st != tt.ready || h.Level != tt.level || h.Sessions < 1 {
			t.Errorf("/ready at %s: %d %+v, want %d", tt.level, st, h, tt.ready)
		}
		if st, _, _ := getHealth(t, base+"/live"); st != tt.live {
			t.Errorf("/live at %s: %d, want %d", tt.level, st, tt.live)
		}
	}
}

// TestHealthCaddyfileErrors: bad mcp_health blocks fail to adapt with a
// message naming the problem.
func TestHealthCaddyfileErrors(t *testing.T) {
	for name, tt := range map[string]struct{ directive, want string }{
		"argument":       {"mcp_health /healthz extra", "wrong argument count"},
		"full":           {"mcp_health {\n\t\tunhealthy_at full\n\t}", "unhealthy_at"},
		"unknown level":  {"mcp_health {\n\t\tunhealthy_at sometimes\n\t}", "unhealthy_at"},
		"missing level":  {"mcp_health {\n\t\tunhealthy_at\n\t}", "wrong argument count"},
		"two levels":     {"mcp_health {\n\t\tunhealthy_at degraded essential\n\t}", "wrong argument count"},
		"unknown subdir": {"mcp_health {\n\t\tcache 5s\n\t}", "cache"},
		"bad details":    {"mcp_health {\n\t\tdetails maybe\n\t}", "details"},
	} {
		adaptFails(t, name, ":8080 {\n\t"+tt.directive+"\n}\n", tt.want)
	}
}
