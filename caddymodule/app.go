package caddymodule

import (
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/resources"
)

func init() {
	caddy.RegisterModule(new(App))
	httpcaddyfile.RegisterGlobalOption("mcp", parseGlobalOption)
}

// App is the `mcp` app: the process-wide state every mcp_proxy shares —
// limits, the memory budget, the registry of live sessions and the load
// manager that sets the service level. The state lives as long as the
// process, so a config reload neither forgets live sessions nor resets
// budgets and counters; each load pushes its settings into it.
type App struct {
	// MaxConnections caps the client connections accepted by servers that
	// use the mcp_connections listener wrapper; a connection over it is
	// closed at once. 0 means no cap. Default: 0.
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
	// deleted too. Default: 5m.
	SessionIdleTimeout caddy.Duration `json:"session_idle_timeout,omitempty"`

	// Refresh is how often the pressure monitors are sampled and the
	// service level recomputed. Default: 250ms.
	Refresh caddy.Duration `json:"refresh,omitempty"`

	// Degraded, Essential and Protective are the pressures (0–1) at which
	// each service level is entered; a level is left Hysteresis below its
	// threshold. Defaults: 0.70, 0.85, 0.95 and 0.05.
	Degraded   float64 `json:"degraded,omitempty"`
	Essential  float64 `json:"essential,omitempty"`
	Protective float64 `json:"protective,omitempty"`
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
	// acquired: Provision took a reference to global, which Cleanup gives
	// back; a Provision that failed took none.
	acquired bool
	// settings are this config's process-wide settings, applied when the
	// config starts, so a config that fails to load changes nothing.
	settings governor.Settings
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
// applied by Start, once the whole config has loaded.
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
	return registerMetrics(ctx)
}

// Start applies this config's settings to the process-wide state: the
// config is now the running one.
func (a *App) Start() error {
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

// parseGlobalOption parses the `mcp` global option:
//
//	mcp {
//		max_connections      <n>
//		max_inflight         <n>
//		max_streams          <n>
//		max_sessions         <n>|0
//		client_max_sessions  <n>|0
//		memory_limit         <size>
//		session_memory       <size>
//		session_idle_timeout <duration>
//		refresh              <duration>
//		levels               <degraded> <essential> <protective> [<hysteresis>]
//		degraded_fraction    <0..1>
//		goroutine_ceiling    <n>
//		sched_latency_target <duration>
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		args := d.RemainingArgs()
		var err error
		switch name {
		case "max_connections", "max_inflight", "max_streams", "max_sessions", "client_max_sessions", "goroutine_ceiling":
			err = app.parseCount(d, name, args)
		case "memory_limit", "session_memory":
			err = app.parseSize(d, name, args)
		case "session_idle_timeout", "refresh", "sched_latency_target":
			err = app.parseDuration(d, name, args)
		case "levels":
			err = app.parseLevels(d, args)
		case "degraded_fraction":
			err = app.parseFraction(d, args)
		default:
			err = d.Errf("unrecognized mcp option %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return httpcaddyfile.App{Name: "mcp", Value: caddyconfig.JSON(app, nil)}, nil
}

// oneArg returns the single argument of an option, or an argument error.
func oneArg(d *caddyfile.Dispenser, args []string) (string, error) {
	if len(args) != 1 {
		return "", d.ArgErr()
	}
	return args[0], nil
}

// parseCount parses an option holding a count.
func (app *App) parseCount(d *caddyfile.Dispenser, name string, args []string) error {
	s, err := oneArg(d, args)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return d.Errf("bad %s %q: want a count", name, s)
	}
	switch name {
	case "max_connections":
		app.MaxConnections = n
	case "max_inflight":
		app.MaxInflight = n
	case "max_streams":
		app.MaxStreams = n
	case "max_sessions":
		app.MaxSessions = offIfZero(n)
	case "client_max_sessions":
		app.ClientMaxSessions = offIfZero(n)
	case "goroutine_ceiling":
		app.GoroutineCeiling = n
	}
	return nil
}

// parseSize parses an option holding a size.
func (app *App) parseSize(d *caddyfile.Dispenser, name string, args []string) error {
	s, err := oneArg(d, args)
	if err != nil {
		return err
	}
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > 1<<50 {
		return d.Errf("bad %s %q: want a size such as 512MiB", name, s)
	}
	if name == "memory_limit" {
		app.MemoryLimit = int64(n)
	} else {
		app.SessionMemory = int64(n)
	}
	return nil
}

// parseDuration parses an option holding a duration.
func (app *App) parseDuration(d *caddyfile.Dispenser, name string, args []string) error {
	s, err := oneArg(d, args)
	if err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil || dur <= 0 {
		return d.Errf("bad %s %q: want a positive duration", name, s)
	}
	switch name {
	case "session_idle_timeout":
		app.SessionIdleTimeout = caddy.Duration(dur)
	case "refresh":
		app.Refresh = caddy.Duration(dur)
	case "sched_latency_target":
		app.SchedLatencyTarget = caddy.Duration(dur)
	}
	return nil
}

// parseLevels parses `levels <degraded> <essential> <protective>
// [<hysteresis>]`.
func (app *App) parseLevels(d *caddyfile.Dispenser, args []string) error {
	if len(args) != 3 && len(args) != 4 {
		return d.ArgErr()
	}
	var v [4]float64
	for i, s := range args {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return d.Errf("bad levels value %q", s)
		}
		v[i] = f
	}
	app.Degraded, app.Essential, app.Protective, app.Hysteresis = v[0], v[1], v[2], v[3]
	th := admission.Thresholds{Degraded: v[0], Essential: v[1], Protective: v[2], Hysteresis: orDefault(v[3], admission.DefaultThresholds.Hysteresis)}
	if err := th.Validate(); err != nil {
		return d.Errf("levels: %v", err)
	}
	return nil
}

// parseFraction parses `degraded_fraction <0..1>`.
func (app *App) parseFraction(d *caddyfile.Dispenser, args []string) error {
	s, err := oneArg(d, args)
	if err != nil {
		return err
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 || f > 1 {
		return d.Errf("bad degraded_fraction %q: want a number in (0, 1]", s)
	}
	app.DegradedFraction = f
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

// offIfZero maps a Caddyfile count of 0, which turns a cap with a default
// off, to its JSON form, -1.
func offIfZero(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
