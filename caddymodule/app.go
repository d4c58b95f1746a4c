package caddymodule

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/resources"
)

func init() {
	caddy.RegisterModule(new(App))
}

// App is the `mcp` app: the process-wide state every mcp_proxy shares —
// limits, the memory budget, the registry of live sessions and the load
// manager that sets the service level. The state lives as long as the
// process, so a config reload neither forgets live sessions nor resets
// budgets and counters; a config's settings are applied once it has
// loaded completely, so a config that fails to load changes nothing.
//
// In a Caddyfile it is the `mcp` global option:
//
//	{
//		mcp {
//			max_connections      <n>
//			max_inflight         <n>
//			max_streams          <n>
//			max_sessions         <n>|0
//			client_max_sessions  <n>|0
//			memory_limit         <size>
//			session_memory       <size>
//			session_idle_timeout <duration>
//			evicted_sessions     delete|forget
//			refresh              <duration>
//			levels               <degraded> <essential> <protective> [<hysteresis>]
//			degraded_fraction    <0..1>
//			goroutine_ceiling    <n>
//			sched_latency_target <duration>
//		}
//	}
//
// Each option may be given once; `0` turns off a cap that has a default.
type App struct {
	// MaxConnections caps the client TCP connections accepted by servers
	// that use the mcp_connections listener wrapper; a connection over it
	// is closed at once. HTTP/3 (QUIC) connections take no listener
	// wrapper and are not counted. 0 means no cap. Default: 0.
	MaxConnections int `json:"max_connections,omitempty"`

	// MaxInflight caps the requests in flight through every mcp_proxy of
	// the process; past it a request is refused with 503. 0 means no cap.
	// Default: 0.
	MaxInflight int `json:"max_inflight,omitempty"`

	// MaxStreams caps the SSE streams (GET streams) open through every
	// mcp_proxy of the process; past it a new stream is refused with 503.
	// 0 means no cap. Default: 0.
	MaxStreams int `json:"max_streams,omitempty"`

	// MaxSessions caps the live sessions of the process (Streamable HTTP
	// and legacy HTTP+SSE alike). At the cap a new session evicts the
	// session that has been idle longest and holds the most memory (never
	// one with a request or stream in flight, unless the level is
	// protective); when none can be, the new session is refused with 503
	// and Retry-After. The number of sessions never raises the service
	// level: a full table is handled by the table. A negative value turns
	// the cap off (Caddyfile: `max_sessions 0`). Default: MemoryLimit ÷
	// SessionMemory, or 10000 when the memory limit is unknown; the value
	// in force is shown in /mcp/status.
	MaxSessions int `json:"max_sessions,omitempty"`

	// ClientMaxSessions caps the live sessions of one client (see
	// mcp_proxy's client_key); a client at its cap that opens another
	// session evicts its own idlest one, and is refused with 429 when all
	// of its sessions have work in flight. A flood from one client thus
	// never takes another client's place while the flooder's sessions can
	// be evicted. A negative value turns the cap off (Caddyfile:
	// `client_max_sessions 0`). Default: a tenth of MaxSessions, at least
	// 16 (none when MaxSessions is off).
	ClientMaxSessions int `json:"client_max_sessions,omitempty"`

	// MemoryLimit is the budget, in bytes, for everything the proxy holds
	// on behalf of clients (queued events, replay rings, peeked bodies); a
	// reservation that does not fit is refused (backpressure) instead of
	// allocated. It is also the limit the heap monitor measures against.
	// Default: GOMEMLIMIT when set, else the cgroup's memory.max, else no
	// limit.
	MemoryLimit int64 `json:"memory_limit,omitempty"`

	// SessionMemory is each session's share of MemoryLimit, in bytes.
	// Default: 1MiB.
	SessionMemory int64 `json:"session_memory,omitempty"`

	// SessionIdleTimeout expires a session with no request in flight, no
	// open stream and no activity for this long; its upstream session is
	// deleted too (see EvictedSessions). Each replica judges by the
	// requests it has seen, so replicas that share sessions want them
	// routed sticky, a timeout above how long a live session may go unseen
	// by one, or EvictedSessions "forget". Default: 5m.
	SessionIdleTimeout caddy.Duration `json:"session_idle_timeout,omitempty"`

	// EvictedSessions is what an eviction for idleness, capacity or the
	// service level does besides freeing the session here: "delete"
	// deletes it upstream and answers its id with 404 for 24h; "forget"
	// leaves the upstream session alone (the upstream expires it) and a
	// later request of it adopts it again, for replicas that share
	// sessions without sticky routing, where another replica may still be
	// serving it. An eviction through the admin API deletes either way.
	// Default: "delete".
	EvictedSessions string `json:"evicted_sessions,omitempty"`

	// Refresh is how often the pressure monitors are sampled and the
	// service level recomputed. Default: 250ms.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// Degraded is the pressure (0–1) at which the degraded level is
	// entered. Default: 0.70.
	Degraded float64 `json:"degraded,omitempty"`

	// Essential is the pressure (0–1) at which the essential level is
	// entered. Default: 0.85.
	Essential float64 `json:"essential,omitempty"`

	// Protective is the pressure (0–1) at which the protective level is
	// entered. Default: 0.95.
	Protective float64 `json:"protective,omitempty"`

	// Hysteresis is how far below a level's threshold the pressure must
	// fall for the level to be left, so the level does not flap.
	// Default: 0.05.
	Hysteresis float64 `json:"hysteresis,omitempty"`

	// DegradedFraction is what replay rings, stream queues and the session
	// idle timeout shrink to at the degraded level and above. Default: 0.5.
	DegradedFraction float64 `json:"degraded_fraction,omitempty"`

	// GoroutineCeiling is the goroutine count that reads as full pressure.
	// Default: 200000.
	GoroutineCeiling int `json:"goroutine_ceiling,omitempty"`

	// SchedLatencyTarget is the scheduling latency (p99 over one refresh,
	// averaged over four) that reads as half pressure; twice it reads as
	// 0.9. Scheduler latency alone raises the level to essential at most.
	// Default: 100ms.
	SchedLatencyTarget caddy.Duration `json:"sched_latency_target,omitempty"`

	global *globalState
	ctx    caddy.Context
	// acquired: Provision took a reference to global, which Cleanup gives
	// back; a Provision that failed took none.
	acquired bool
	// settings are this config's process-wide settings, applied when the
	// config has started, so a config that fails to load changes nothing.
	settings governor.Settings
	// onStarted: the settings are applied on Caddy's "started" event,
	// emitted once every app of the config has started; without an
	// events app, Start applies them.
	onStarted bool
	// drains holds the drain delay of every mcp_proxy of this config.
	drainsMu sync.Mutex
	drains   []time.Duration
}

// globalState is the value of the UsagePool entry that every config load
// shares: the process-wide governor, made once per process, with the
// logger of the config that made it.
type globalState struct {
	*governor.Governor
	// tasks is the governor's task group (Governor.Tasks), which owns the
	// goroutines of detached and handed-off streams.
	tasks  *resources.Group
	logger *zap.Logger
}

// newGlobalState makes the process-wide governor, reporting to the
// metrics and to logger.
func newGlobalState(logger *zap.Logger) *globalState {
	gov := governor.New(governorHooks(logger))
	return &globalState{Governor: gov, tasks: gov.Tasks(), logger: logger}
}

// Destruct implements caddy.Destructor: it stops the governor's loops and
// every goroutine the proxy owns, once no config uses the mcp app.
func (g *globalState) Destruct() error {
	globalMu.Lock()
	if globalCur == g {
		globalCur = nil
	}
	globalMu.Unlock()
	g.Close()
	return nil
}

var (
	globals   = caddy.NewUsagePool()
	globalMu  sync.Mutex
	globalCur *globalState
)

const globalKey = "mcpgate.global"

// currentGlobal returns the process-wide state, nil before any mcp app.
func currentGlobal() *globalState {
	globalMu.Lock()
	defer globalMu.Unlock()
	return globalCur
}

// noteDrain records the drain delay of an mcp_proxy of this config; the
// longest of the running config bounds how long a stopping process waits
// for its streams.
func (a *App) noteDrain(d time.Duration) {
	a.drainsMu.Lock()
	a.drains = append(a.drains, d)
	a.drainsMu.Unlock()
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "mcp",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision checks this config's settings and takes a reference to the
// process-wide state. It changes nothing in that state: the settings are
// applied once the whole config has started (see Start).
func (a *App) Provision(ctx caddy.Context) error {
	a.settings = governor.Settings{
		Thresholds: admission.Thresholds{
			Degraded: a.Degraded, Essential: a.Essential,
			Protective: a.Protective, Hysteresis: a.Hysteresis,
		},
		MaxInflight:        a.MaxInflight,
		MaxStreams:         a.MaxStreams,
		MaxConnections:     a.MaxConnections,
		MaxSessions:        a.MaxSessions,
		ClientMaxSessions:  a.ClientMaxSessions,
		MemoryLimit:        a.MemoryLimit,
		SessionMemory:      a.SessionMemory,
		IdleTimeout:        time.Duration(a.SessionIdleTimeout),
		Refresh:            time.Duration(a.Refresh),
		DegradedFraction:   a.DegradedFraction,
		GoroutineCeiling:   a.GoroutineCeiling,
		SchedLatencyTarget: time.Duration(a.SchedLatencyTarget),
	}
	switch a.EvictedSessions {
	case "", "delete":
	case "forget":
		a.settings.ForgetEvicted = true
	default:
		return fmt.Errorf("evicted_sessions %q: want delete or forget", a.EvictedSessions)
	}
	if err := a.settings.Validate(); err != nil {
		return err
	}
	logger := ctx.Logger()
	v, _, err := globals.LoadOrNew(globalKey, func() (caddy.Destructor, error) {
		return newGlobalState(logger), nil
	})
	if err != nil {
		return err
	}
	a.acquired = true
	a.global = v.(*globalState)
	a.ctx = ctx
	if ev, err := ctx.App("events"); err == nil {
		if events, ok := ev.(*caddyevents.App); ok {
			events.On("started", caddyevents.Handler(startedHandler{a}))
			a.onStarted = true
		}
	}
	return registerMetrics(ctx)
}

// Start implements caddy.App. Caddy starts a config's apps one by one and
// stops those started when a later one fails (a listener's port taken):
// the settings wait for the "started" event, which comes once they all
// have, so a config that fails to start changes nothing of the running
// one.
func (a *App) Start() error {
	if a.onStarted {
		return nil
	}
	return a.apply()
}

// startedHandler applies the settings of its config when that config has
// started.
type startedHandler struct{ a *App }

// Handle implements caddyevents.Handler.
func (h startedHandler) Handle(context.Context, caddy.Event) error {
	if err := h.a.apply(); err != nil {
		h.a.global.logger.Error("applying the mcp settings of the config that started", zap.Error(err))
	}
	return nil
}

// apply makes this config's settings those of the process-wide state:
// the config is now the running one.
func (a *App) apply() error {
	st := a.settings
	a.drainsMu.Lock()
	for _, d := range a.drains {
		st.MaxDrain = max(st.MaxDrain, d)
	}
	a.drainsMu.Unlock()
	if err := a.global.Apply(st); err != nil {
		return err
	}
	globalMu.Lock()
	globalCur = a.global
	globalMu.Unlock()
	setEventSink(a.ctx)
	return nil
}

// Stop implements caddy.App. When the process exits it waits until the
// drain, begun by Caddy's "stopping" event, has closed every open stream
// with its retry hint: Caddy's servers wait for the requests they serve,
// but not for streams handed off from them (Handler.StreamHandoff). The
// wait is bounded by the longest drain of any mcp_proxy and a second;
// streams still open then are closed.
func (a *App) Stop() error {
	if a.global == nil || !caddy.Exiting() {
		return nil
	}
	if !a.global.FinishStreams(time.Second) {
		a.global.logger.Warn("streams still open after the drain; closing them")
	}
	return nil
}

// Cleanup releases this config's reference to the shared state, if its
// Provision took one.
func (a *App) Cleanup() error {
	if !a.acquired {
		return nil
	}
	a.acquired = false
	_, err := globals.Delete(globalKey)
	return err
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
