package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/resources"
)

func init() {
	caddy.RegisterModule(new(Health))
}

// defaultUnhealthyAt is the default Health.UnhealthyAt.
const defaultUnhealthyAt = admission.LevelEssential

// Health is `mcp_health`, a health and readiness endpoint for load
// balancers and Kubernetes probes. It answers from the `mcp` app's service
// level: 200 OK while the level is below UnhealthyAt, 503 Service
// Unavailable from it on, so a balancer sends new clients to other
// replicas while this one sheds load, and existing sessions keep being
// served. The body is a small JSON document with the status and the
// level:
//
//	{"status":"ok","level":"full"}
//
// With Details on it also has the pressure of each monitor and the
// proxy's counts, which an endpoint reachable by anyone should not show:
//
//	{"status":"ok","level":"full","pinned":false,"pressure":0.12,
//	 "pressures":{"heap":0.12,...},"sessions":3,"streams":2,
//	 "requests_in_flight":1,"memory_bytes":{"used":4096,"limit":0}}
//
// Answers carry `Cache-Control: no-store`. GET and HEAD are served; any
// other method gets 405. It is a terminal handler: it never calls the next
// handler.
type Health struct {
	// UnhealthyAt is the lowest service level answered with 503: one of
	// "degraded", "essential" or "protective". Below it the answer is 200.
	// Default: "essential" (200 at full and degraded, 503 at essential and
	// protective).
	UnhealthyAt string `json:"unhealthy_at,omitempty"`

	// Details adds the pressures, the pinning and the counts of sessions,
	// streams, requests and memory to the answer. Default: false (status
	// and level only).
	Details bool `json:"details,omitempty"`

	unhealthy admission.Level
	app       *App
}

// CaddyModule returns the Caddy module information.
func (*Health) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_health",
		New: func() caddy.Module { return new(Health) },
	}
}

// Provision loads the mcp app, which holds the service level.
func (h *Health) Provision(ctx caddy.Context) error {
	level, err := parseUnhealthyAt(h.UnhealthyAt)
	if err != nil {
		return err
	}
	h.unhealthy = level
	appIface, err := ctx.App("mcp")
	if err != nil {
		return fmt.Errorf("loading mcp app: %w", err)
	}
	h.app = appIface.(*App)
	return nil
}

// Validate checks UnhealthyAt.
func (h *Health) Validate() error {
	_, err := parseUnhealthyAt(h.UnhealthyAt)
	return err
}

// parseUnhealthyAt parses a level name for UnhealthyAt; "" is the default.
func parseUnhealthyAt(s string) (admission.Level, error) {
	if s == "" {
		return defaultUnhealthyAt, nil
	}
	level, err := admission.ParseLevel(s)
	if err != nil || level == admission.LevelFull {
		return 0, fmt.Errorf("unhealthy_at %q: want degraded, essential or protective", s)
	}
	return level, nil
}

// healthBody is the JSON body of an mcp_health answer.
type healthBody struct {
	// Status is "ok" with 200 and "unavailable" with 503.
	Status string `json:"status"`
	Level  string `json:"level"`
	*healthDetails
}

// healthDetails is what an mcp_health answer adds with details on.
type healthDetails struct {
	Pinned    bool               `json:"pinned"`
	Pressure  float64            `json:"pressure"`
	Pressures map[string]float64 `json:"pressures"`
	// Sessions is the live sessions, Streams the SSE streams with a client
	// attached, RequestsInFlight the requests holding a process-wide slot.
	Sessions         int           `json:"sessions"`
	Streams          int64         `json:"streams"`
	RequestsInFlight int           `json:"requests_in_flight"`
	Memory           governor.Pair `json:"memory_bytes"`
}

// ServeHTTP answers the health check. It reads only counters that cost
// nothing to read, so frequent probes do not load the proxy.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	hdr := w.Header()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		hdr.Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed", r.Method))
	}
	g := h.app.global
	ls := g.LevelStatus()
	body := healthBody{Status: "ok", Level: ls.Level.String()}
	if h.Details {
		d := &healthDetails{
			Pinned:           ls.Pinned,
			Pressure:         resources.Round3(ls.Pressure),
			Pressures:        governor.Pressures(ls),
			Sessions:         g.Sessions().Len(),
			Streams:          metrics.streamsActive.Value(),
			RequestsInFlight: g.InflightLimit().InFlight(),
			Memory:           g.MemoryPair(),
		}
		body.healthDetails = d
	}
	status := http.StatusOK
	if ls.Level >= h.unhealthy {
		status = http.StatusServiceUnavailable
		body.Status = "unavailable"
	}
	out, err := json.Marshal(body)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	out = append(out, '\n')
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(out)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Health)(nil)
	_ caddy.Validator             = (*Health)(nil)
	_ caddyhttp.MiddlewareHandler = (*Health)(nil)
)
