package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/resources"
)

func init() {
	caddy.RegisterModule(new(AdminAPI))
}

// Bounds of the admin API.
const (
	// adminDefaultPage and adminMaxPage are the default and largest
	// `limit` of GET /mcp/sessions.
	adminDefaultPage = 100
	adminMaxPage     = 1000
	// adminMaxPin caps the duration of a pinned service level.
	adminMaxPin = 24 * time.Hour
	// adminMaxBody caps the JSON body of POST requests.
	adminMaxBody = 4 << 10
)

// AdminAPI is the `admin.api.mcp` module: the mcpgate routes of Caddy's
// admin endpoint (localhost:2019 by default). It reads and steers the
// process-wide state of the `mcp` app, so it answers 503 until a config
// with an mcp app (any mcp_proxy or mcp_health loads one) is running.
//
//	GET    /mcp/status                           service level, pressures, thresholds, limits and usage, counters
//	GET    /mcp/sessions?limit=<n>&cursor=<next>  live sessions, a page at a time (default 100, at most 1000)
//	GET    /mcp/sessions/<id>                    the live sessions whose id starts with <id>
//	DELETE /mcp/sessions/<id>                    evict the live sessions whose id starts with <id>
//	POST   /mcp/level    {"level":"essential","duration":"5m"}  pin a service level (at most 24h)
//	DELETE /mcp/level                            release the pinned level
//	POST   /mcp/pressure {"pressure":0.9}        set the injected pressure monitor (drills and tests)
//	DELETE /mcp/pressure                         reset the injected pressure to 0
//
// A session's id is the first 8 hex digits of the SHA-256 of its registry
// key (the upstream's dial address, a space, and the upstream's own session
// id); neither the client's session token nor the upstream's session id is
// ever shown. Several sessions may share an id; a longer prefix of the
// hash (up to 64 hex digits) narrows a DELETE. Errors are JSON objects
// {"error": "..."} with a 4xx or 5xx status; a method a route does not
// serve gets 405 with an Allow header.
type AdminAPI struct {
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (*AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.mcp",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Provision sets up the logger. The admin endpoint is provisioned before
// the config's apps, so the routes look the process-wide state up on every
// request instead.
func (a *AdminAPI) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger().Named("admin.api.mcp")
	return nil
}

// Routes returns the /mcp/ routes.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/mcp/", Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// serve dispatches a request under /mcp/.
func (a *AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	path := strings.TrimSuffix(r.URL.Path, "/")
	switch {
	case path == "/mcp/status":
		if err := allowMethods(w, r, http.MethodGet); err != nil {
			return err
		}
		return withGlobal(func(g *globalState) error { return writeJSON(w, http.StatusOK, statusOf(g)) })
	case path == "/mcp/pins":
		if err := allowMethods(w, r, http.MethodDelete); err != nil {
			return err
		}
		upstream, err := pinsUpstream(r.URL.Query())
		if err != nil {
			return err
		}
		toolPins.Forget(upstream)
		a.logger.Info("tool pins forgotten by operator", zap.String("upstream", upstream))
		return writeJSON(w, http.StatusOK, map[string]int{"pinned": toolPins.Len()})
	case path == "/mcp/sessions":
		if err := allowMethods(w, r, http.MethodGet); err != nil {
			return err
		}
		return withGlobal(func(g *globalState) error { return a.listSessions(w, r, g) })
	case strings.HasPrefix(path, "/mcp/sessions/"):
		if err := allowMethods(w, r, http.MethodGet, http.MethodDelete); err != nil {
			return err
		}
		prefix := strings.ToLower(strings.TrimPrefix(path, "/mcp/sessions/"))
		if !resources.ValidIDPrefix(prefix) {
			return apiError(http.StatusBadRequest, "session id %q: want %d to %d hex digits", prefix, resources.SessionIDLen, resources.SessionHashLen)
		}
		return withGlobal(func(g *globalState) error {
			if r.Method == http.MethodDelete {
				return a.evictSessions(w, g, prefix)
			}
			return a.showSessions(w, g, prefix)
		})
	case path == "/mcp/level":
		if err := allowMethods(w, r, http.MethodPost, http.MethodDelete); err != nil {
			return err
		}
		return withGlobal(func(g *globalState) error {
			if r.Method == http.MethodDelete {
				return a.unpin(w, g)
			}
			return a.pin(w, r, g)
		})
	case path == "/mcp/pressure":
		if err := allowMethods(w, r, http.MethodPost, http.MethodDelete); err != nil {
			return err
		}
		return withGlobal(func(g *globalState) error { return a.inject(w, r, g) })
	}
	return apiError(http.StatusNotFound, "no such mcp admin route: %s", r.URL.Path)
}

// allowMethods answers 405 with an Allow header unless r uses one of
// methods.
func allowMethods(w http.ResponseWriter, r *http.Request, methods ...string) error {
	if slices.Contains(methods, r.Method) {
		return nil
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	return apiError(http.StatusMethodNotAllowed, "method %s not allowed; use %s", r.Method, strings.Join(methods, " or "))
}

// withGlobal runs f with the process-wide state, or answers 503 when no
// mcp app has been loaded.
func withGlobal(f func(g *globalState) error) error {
	g := currentGlobal()
	if g == nil {
		return apiError(http.StatusServiceUnavailable, "no mcp app is loaded")
	}
	return f(g)
}

func apiError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(body, '\n'))
	return nil
}

// readJSON decodes a small JSON body into v, refusing unknown fields.
func readJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, adminMaxBody+1))
	if err != nil {
		return apiError(http.StatusBadRequest, "reading request body: %v", err)
	}
	if len(body) > adminMaxBody {
		return apiError(http.StatusRequestEntityTooLarge, "request body over %d bytes", adminMaxBody)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiError(http.StatusBadRequest, "decoding request body: %v", err)
	}
	// One JSON value: a second one, or anything but space after it, is
	// not a request the operator can have meant.
	if _, err := dec.Token(); err != io.EOF {
		return apiError(http.StatusBadRequest, "decoding request body: data after the JSON object")
	}
	return nil
}

// pinsUpstream reads the query of DELETE /mcp/pins: the upstream whose
// pins are forgotten, "" for all of them when the query is empty. An
// empty upstream (an unset shell variable) or another parameter (a typo)
// is refused rather than read as "all".
func pinsUpstream(q url.Values) (string, error) {
	for k, vs := range q {
		if k != "upstream" {
			return "", apiError(http.StatusBadRequest, "unknown query parameter %q: want upstream=<host:port>, or none to forget every pin", k)
		}
		if len(vs) != 1 || vs[0] == "" {
			return "", apiError(http.StatusBadRequest, "upstream must be one host:port; without it every pin is forgotten")
		}
	}
	return q.Get("upstream"), nil
}

// --- /mcp/level and /mcp/pressure ------------------------------------------

// pinRequest is the body of POST /mcp/level.
type pinRequest struct {
	// Level is full, degraded, essential or protective.
	Level string `json:"level"`
	// Duration is how long the level holds, such as "5m"; at most 24h.
	Duration caddy.Duration `json:"duration"`
}

// pin answers POST /mcp/level.
func (a *AdminAPI) pin(w http.ResponseWriter, r *http.Request, g *globalState) error {
	var req pinRequest
	if err := readJSON(r, &req); err != nil {
		return err
	}
	level, err := admission.ParseLevel(req.Level)
	if err != nil {
		return apiError(http.StatusBadRequest, "%v: want full, degraded, essential or protective", err)
	}
	d := time.Duration(req.Duration)
	if d <= 0 {
		return apiError(http.StatusBadRequest, "duration %v: want a positive duration such as \"5m\"", d)
	}
	d = min(d, adminMaxPin)
	now := time.Now()
	g.Pin(level, now.Add(d), now)
	a.logger.Info("service level pinned by operator", zap.String("level", level.String()),
		zap.Duration("duration", d), zap.Time("until", now.Add(d)))
	return writeJSON(w, http.StatusOK, g.Levels())
}

// unpin answers DELETE /mcp/level.
func (a *AdminAPI) unpin(w http.ResponseWriter, g *globalState) error {
	g.Unpin(time.Now())
	a.logger.Info("service level released by operator", zap.String("level", g.Level().String()))
	return writeJSON(w, http.StatusOK, g.Levels())
}

// pressureRequest is the body of POST /mcp/pressure.
type pressureRequest struct {
	// Pressure is what the injected monitor reads, in [0, 1].
	Pressure *float64 `json:"pressure"`
}

// inject answers POST and DELETE /mcp/pressure. The injected monitor is
// one of the load manager's monitors, so the level follows it at the next
// refreshes like any other pressure.
func (a *AdminAPI) inject(w http.ResponseWriter, r *http.Request, g *globalState) error {
	v := 0.0
	if r.Method == http.MethodPost {
		var req pressureRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if req.Pressure == nil || math.IsNaN(*req.Pressure) || *req.Pressure < 0 || *req.Pressure > 1 {
			return apiError(http.StatusBadRequest, "pressure: want a number in [0, 1]")
		}
		v = *req.Pressure
	}
	g.Injected().Set(v)
	a.logger.Info("injected pressure set by operator", zap.Float64("pressure", v))
	return writeJSON(w, http.StatusOK, map[string]float64{g.Injected().Name(): v})
}

// Interface guards
var (
	_ caddy.Provisioner = (*AdminAPI)(nil)
	_ caddy.AdminRouter = (*AdminAPI)(nil)
)
