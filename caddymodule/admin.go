package caddymodule

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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
	// sessionIDLen is the length of the session id the API shows: hex
	// digits of the SHA-256 of the session's registry key.
	sessionIDLen = 8
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
		upstream := r.URL.Query().Get("upstream")
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
		if !validIDPrefix(prefix) {
			return apiError(http.StatusBadRequest, "session id %q: want %d to 64 hex digits", prefix, sessionIDLen)
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
	dec := json.NewDecoder(io.LimitReader(r.Body, adminMaxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return apiError(http.StatusBadRequest, "decoding request body: %v", err)
	}
	return nil
}

// --- GET /mcp/status -------------------------------------------------------

// adminStatus is the answer of GET /mcp/status.
type adminStatus struct {
	// Level is the service level in force, Computed the one the pressure
	// alone asks for; they differ while a level is pinned.
	Level       string    `json:"level"`
	Computed    string    `json:"computed_level"`
	Pinned      bool      `json:"pinned"`
	PinnedUntil time.Time `json:"pinned_until,omitzero"`
	// Pressure is the highest monitor pressure at the last refresh.
	Pressure   float64            `json:"pressure"`
	Monitors   map[string]float64 `json:"pressures"`
	Thresholds adminThresholds    `json:"thresholds"`
	Refresh    string             `json:"refresh"`
	Resources  adminResources     `json:"resources"`
	Refusals   map[string]uint64  `json:"refusals"`
	Evictions  map[string]uint64  `json:"evictions"`
	Changes    map[string]uint64  `json:"level_changes"`
	Counters   map[string]float64 `json:"counters"`
	Tombstones int                `json:"evicted_keys_remembered"`
	// Governance says what the level leaves of the governance features:
	// rules always hold; the audit trail is full, sampled or keeps only
	// denials and errors; tool pin checks are full or skip unchanged
	// definitions.
	Governance adminGovernance `json:"governance"`
}

type adminGovernance struct {
	Rules     string             `json:"rules"`
	Audit     string             `json:"audit"`
	PinChecks string             `json:"pin_checks"`
	Counters  map[string]float64 `json:"counters"`
}

type adminThresholds struct {
	Degraded   float64 `json:"degraded"`
	Essential  float64 `json:"essential"`
	Protective float64 `json:"protective"`
	Hysteresis float64 `json:"hysteresis"`
}

// adminPair is a usage beside its limit; a limit of 0 means none.
type adminPair struct {
	Used  int64 `json:"used"`
	Limit int64 `json:"limit"`
}

// adminResources is what the proxy holds, each beside its limit.
type adminResources struct {
	// Memory is the bytes reserved from the memory budget.
	Memory adminPair `json:"memory_bytes"`
	// Sessions is the live sessions against max_sessions (the value in
	// force, its default included).
	Sessions adminPair `json:"sessions"`
	// ClientMaxSessions is the cap on one client's live sessions in force
	// (0: none).
	ClientMaxSessions int `json:"client_max_sessions"`
	// SessionIdleTimeout is the idle timeout in force (it shrinks at the
	// degraded level and above).
	SessionIdleTimeout string `json:"session_idle_timeout"`
	// Streams is the SSE GET streams holding a slot against max_streams.
	Streams adminPair `json:"streams"`
	// StreamsActive is every SSE stream with a client attached (GET
	// streams and streamed POST answers); StreamsInSessions those
	// registered with a live session.
	StreamsActive     int64 `json:"streams_active"`
	StreamsInSessions int   `json:"streams_in_sessions"`
	// RequestsInFlight is the requests holding a process-wide slot
	// against max_inflight, RequestsQueued those waiting for one.
	RequestsInFlight adminPair `json:"requests_in_flight"`
	RequestsQueued   int       `json:"requests_queued"`
	// Connections is the connections counted by mcp_connections against
	// max_connections.
	Connections adminPair `json:"connections"`
	// GoroutinesOwned is the goroutines of the proxy's task groups.
	GoroutinesOwned int `json:"goroutines_owned"`
	// ReplayHeldBytes is the bytes held in replay rings.
	ReplayHeldBytes int64 `json:"replay_held_bytes"`
}

// usageOf reads the resources the proxy holds and their limits.
func usageOf(g *globalState, st resources.RegistryStats) adminResources {
	replay := g.Resume().Bytes()
	return adminResources{
		Memory:             adminPair{Used: g.Memory().Used(), Limit: max(g.Memory().Limit(), 0)},
		Sessions:           adminPair{Used: int64(st.Sessions), Limit: int64(g.Sessions().MaxSessions())},
		ClientMaxSessions:  g.Sessions().ClientMaxSessions(),
		SessionIdleTimeout: g.Sessions().IdleTimeout().String(),
		Streams:            adminPair{Used: int64(g.StreamLimit().InFlight()), Limit: int64(max(g.StreamLimit().Limit(), 0))},
		StreamsActive:      int64(gaugeValue(metrics.streamsActive)),
		StreamsInSessions:  st.Streams,
		RequestsInFlight:   adminPair{Used: int64(g.InflightLimit().InFlight()), Limit: int64(max(g.InflightLimit().Limit(), 0))},
		RequestsQueued:     g.InflightLimit().Queued(),
		Connections:        adminPair{Used: int64(g.ConnLimit().InFlight()), Limit: int64(max(g.ConnLimit().Limit(), 0))},
		GoroutinesOwned:    g.Tasks().Count(),
		ReplayHeldBytes:    replay,
	}
}

// statusOf builds the answer of GET /mcp/status.
func statusOf(g *globalState) adminStatus {
	ls := g.LevelStatus()
	st := g.Sessions().Stats()
	out := adminStatus{
		Level:       ls.Level.String(),
		Computed:    ls.Computed.String(),
		Pinned:      ls.Pinned,
		PinnedUntil: ls.PinUntil,
		Pressure:    round3(ls.Pressure),
		Monitors:    make(map[string]float64, len(ls.Monitors)),
		Thresholds: adminThresholds{
			Degraded: ls.Threshold.Degraded, Essential: ls.Threshold.Essential,
			Protective: ls.Threshold.Protective, Hysteresis: ls.Threshold.Hysteresis,
		},
		Refresh:    g.Refresh().String(),
		Resources:  usageOf(g, st),
		Refusals:   g.RefusalsByReason(),
		Evictions:  map[string]uint64{},
		Changes:    map[string]uint64{},
		Tombstones: g.Sessions().Tombstones(),
	}
	if !ls.Pinned {
		out.PinnedUntil = time.Time{}
	}
	for _, m := range ls.Monitors {
		out.Monitors[m.Name] = round3(m.Pressure)
	}
	for c := range resources.NumCauses {
		if resources.Cause(c) != resources.CauseDeleted {
			out.Evictions[resources.Cause(c).String()] = st.Evictions[c]
		}
	}
	for l := range admission.Level(admission.NumLevels) {
		out.Changes[l.String()] = ls.Changes[l]
	}
	out.Counters = map[string]float64{
		"sessions_created":          counterValue(metrics.sessionsCreated),
		"events_relayed":            counterValue(metrics.eventsRelayed),
		"relayed_bytes":             counterValue(metrics.bytesRelayed),
		"keepalives":                counterValue(metrics.keepalives),
		"slow_consumer_disconnects": counterValue(metrics.slowConsumers),
		"oversized_events":          counterValue(metrics.oversized),
		"backpressure":              counterValue(metrics.backpressure),
		"protective_resets":         counterValue(metrics.protectiveResets),
		"streams_drained":           counterValue(metrics.streamsDrained),
		"upstream_cancellations":    counterValue(metrics.cancelsSent),
		"replay_hits":               counterValue(replayHits),
		"replay_misses":             counterValue(replayMisses),
		"sessions_deleted":          float64(st.Evictions[resources.CauseDeleted]),
	}
	out.Governance = governanceStatus(ls.Level)
	return out
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// gaugeValue reads a gauge.
func gaugeValue(g prometheus.Gauge) float64 {
	var m dto.Metric
	if g.Write(&m) != nil {
		return 0
	}
	return m.GetGauge().GetValue()
}

// counterValue reads a counter.
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if c.Write(&m) != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

// --- /mcp/sessions -----------------------------------------------------------

// adminSession is one session as GET /mcp/sessions shows it.
type adminSession struct {
	// ID is the first 8 hex digits of the SHA-256 of the session's key.
	ID       string `json:"id"`
	Upstream string `json:"upstream"`
	Version  string `json:"protocol_version,omitempty"`
	// AgeSeconds is the time since the session was opened, IdleSeconds
	// the time since it was last active.
	AgeSeconds  float64 `json:"age_seconds"`
	IdleSeconds float64 `json:"idle_seconds"`
	// Bytes is the memory the session holds against its quota.
	Bytes      int64 `json:"bytes"`
	Quota      int64 `json:"bytes_quota"`
	Streams    int   `json:"streams"`
	InFlight   int   `json:"in_flight"`
	Goroutines int   `json:"goroutines"`

	hash string // full hex digest: the sort key and cursor
	key  string
}

// adminSessionPage is the answer of GET /mcp/sessions.
type adminSessionPage struct {
	Sessions []adminSession `json:"sessions"`
	// Total is the number of live sessions when the page was made.
	Total int `json:"total"`
	// Next is the cursor of the next page; absent on the last page.
	Next string `json:"next,omitempty"`
}

// hashKey returns the hex SHA-256 of a session key.
func hashKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

func validIDPrefix(p string) bool {
	if len(p) < sessionIDLen || len(p) > sha256.Size*2 {
		return false
	}
	_, err := hex.DecodeString(p + strings.Repeat("0", len(p)%2))
	return err == nil
}

// describe makes the admin view of a session at now.
func describe(s *resources.Session, hash string, now time.Time) adminSession {
	info := s.Info()
	acct := s.Account()
	return adminSession{
		ID:          hash[:sessionIDLen],
		Upstream:    info.Upstream,
		Version:     info.Version,
		AgeSeconds:  round3(max(now.Sub(s.Created()).Seconds(), 0)),
		IdleSeconds: round3(max(now.Sub(s.LastActive()).Seconds(), 0)),
		Bytes:       acct.Used(),
		Quota:       acct.Quota(),
		Streams:     s.StreamCount(),
		InFlight:    s.InFlight(),
		Goroutines:  s.Goroutines(),
		hash:        hash,
		key:         info.Key,
	}
}

// listSessions answers GET /mcp/sessions: the live sessions ordered by
// their hash, which stays put while sessions come and go, a page at a
// time. The cursor is the full hash of the last session of the previous
// page, so a session that appears or leaves between pages moves nothing.
func (a *AdminAPI) listSessions(w http.ResponseWriter, r *http.Request, g *globalState) error {
	q := r.URL.Query()
	limit := adminDefaultPage
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return apiError(http.StatusBadRequest, "limit %q: want a positive count", s)
		}
		limit = min(n, adminMaxPage)
	}
	cursor := strings.ToLower(q.Get("cursor"))
	if cursor != "" && (len(cursor) != sha256.Size*2 || !validIDPrefix(cursor)) {
		return apiError(http.StatusBadRequest, "cursor %q: want the next value of a previous page", cursor)
	}
	now := time.Now()
	total := 0
	var page []adminSession
	g.Sessions().Range(func(s *resources.Session) bool {
		total++
		h := hashKey(s.Key())
		if h > cursor {
			page = append(page, describe(s, h, now))
		}
		return true
	})
	slices.SortFunc(page, func(x, y adminSession) int {
		return cmp.Or(cmp.Compare(x.hash, y.hash), cmp.Compare(x.key, y.key))
	})
	out := adminSessionPage{Sessions: []adminSession{}, Total: total}
	if len(page) > limit {
		page = page[:limit]
		out.Next = page[limit-1].hash
	}
	if page != nil {
		out.Sessions = page
	}
	return writeJSON(w, http.StatusOK, out)
}

// matching returns the live sessions whose hash starts with prefix.
func matching(g *globalState, prefix string) []*resources.Session {
	var out []*resources.Session
	g.Sessions().Range(func(s *resources.Session) bool {
		if strings.HasPrefix(hashKey(s.Key()), prefix) {
			out = append(out, s)
		}
		return true
	})
	return out
}

// showSessions answers GET /mcp/sessions/<id>.
func (a *AdminAPI) showSessions(w http.ResponseWriter, g *globalState, prefix string) error {
	now := time.Now()
	found := matching(g, prefix)
	if len(found) == 0 {
		return apiError(http.StatusNotFound, "no live session with id %s", prefix)
	}
	out := adminSessionPage{Total: len(found)}
	for _, s := range found {
		out.Sessions = append(out.Sessions, describe(s, hashKey(s.Key()), now))
	}
	slices.SortFunc(out.Sessions, func(x, y adminSession) int { return cmp.Compare(x.hash, y.hash) })
	return writeJSON(w, http.StatusOK, out)
}

// evictSessions answers DELETE /mcp/sessions/<id>: every live session
// whose id starts with the prefix is evicted (its streams are closed, its
// memory released, its upstream session deleted, and its clients get 404
// and start anew).
func (a *AdminAPI) evictSessions(w http.ResponseWriter, g *globalState, prefix string) error {
	evicted := 0
	for _, s := range matching(g, prefix) {
		if g.Sessions().Remove(s.Key(), resources.CauseOperator) {
			evicted++
		}
	}
	if evicted == 0 {
		return apiError(http.StatusNotFound, "no live session with id %s", prefix)
	}
	a.logger.Info("sessions evicted by operator", zap.String("id", prefix), zap.Int("count", evicted))
	return writeJSON(w, http.StatusOK, map[string]any{"evicted": evicted, "id": prefix})
}

// --- /mcp/level and /mcp/pressure ------------------------------------------

// pinRequest is the body of POST /mcp/level.
type pinRequest struct {
	// Level is full, degraded, essential or protective.
	Level string `json:"level"`
	// Duration is how long the level holds, such as "5m"; at most 24h.
	Duration caddy.Duration `json:"duration"`
}

// levelAnswer is the answer of POST and DELETE /mcp/level.
type levelAnswer struct {
	Level       string    `json:"level"`
	Computed    string    `json:"computed_level"`
	Pinned      bool      `json:"pinned"`
	PinnedUntil time.Time `json:"pinned_until,omitzero"`
}

func levelOf(g *globalState) levelAnswer {
	ls := g.LevelStatus()
	out := levelAnswer{Level: ls.Level.String(), Computed: ls.Computed.String(), Pinned: ls.Pinned}
	if ls.Pinned {
		out.PinnedUntil = ls.PinUntil
	}
	return out
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
	return writeJSON(w, http.StatusOK, levelOf(g))
}

// unpin answers DELETE /mcp/level.
func (a *AdminAPI) unpin(w http.ResponseWriter, g *globalState) error {
	g.Unpin(time.Now())
	a.logger.Info("service level released by operator", zap.String("level", g.Level().String()))
	return writeJSON(w, http.StatusOK, levelOf(g))
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
