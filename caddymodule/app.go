package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

func init() {
	caddy.RegisterModule(new(App))
	httpcaddyfile.RegisterGlobalOption("mcp", parseGlobalOption)
}

// Defaults of the mcp app.
const (
	defaultRefresh          = 250 * time.Millisecond
	defaultDegradedFraction = 0.5
	defaultGoroutineCeiling = 200_000
	defaultSchedTarget      = 100 * time.Millisecond
	protectiveResetsPerTick = 50
)

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
	settings appSettings
	// drains holds the drain delay of every mcp_proxy of this config.
	drainsMu sync.Mutex
	drains   []time.Duration
}

// appSettings are the process-wide settings of one config, with every
// default applied.
type appSettings struct {
	th                                admission.Thresholds
	maxInflight, maxStreams, maxConns int
	maxSessions, clientMaxSessions    int
	memoryLimit, sessionMemory        int64
	monitorsFor                       [2]int64 // goroutine ceiling, sched target
	fraction                          float64
	idle, refresh                     time.Duration
}

// Defaults of the session caps.
const (
	// defaultMaxSessionsUnknown is max_sessions when no memory limit is
	// known.
	defaultMaxSessionsUnknown = 10_000
	// defaultClientShare is the share of max_sessions one client may
	// hold by default, and minClientMaxSessions its floor.
	defaultClientShare   = 10
	minClientMaxSessions = 16
)

// globalState is shared by every App instance (one per config load) and
// by every mcp_proxy; it is made once per process.
type globalState struct {
	inflight *admission.Limiter
	streams  *admission.Limiter
	conns    *admission.Limiter
	memory   *resources.Budget
	sessions *resources.Registry
	levels   *admission.LoadManager
	injected *resources.Injected
	active   *sse.StreamSet             // every open stream, for the protective level
	resume   *sse.Registry              // resumable streams by session, across reloads
	deletes  chan resources.SessionInfo // evicted sessions to delete upstream; bounded queue
	tasks    *resources.Group           // owns every goroutine that outlives a request
	maxDrain atomic.Int64               // longest drain of any mcp_proxy, in ns
	logger   *zap.Logger
	cancel   context.CancelFunc

	resumeSwept time.Time // last sweep of resume; the refresh loop's only

	mu          sync.Mutex
	monitorsFor [2]int64 // goroutine ceiling and sched target of the monitors
	fraction    float64
	idle        time.Duration
	refresh     time.Duration
}

// noteDrain records the drain delay of an mcp_proxy of this config; the
// longest of the running config bounds how long a stopping process waits
// for its streams.
func (a *App) noteDrain(d time.Duration) {
	a.drainsMu.Lock()
	a.drains = append(a.drains, d)
	a.drainsMu.Unlock()
}

// Destruct stops the refresh loop and every goroutine the proxy owns.
func (g *globalState) Destruct() error {
	g.cancel()
	g.tasks.Close()
	globalMu.Lock()
	if globalCur == g {
		globalCur = nil
	}
	globalMu.Unlock()
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
	th := admission.Thresholds{
		Degraded:   orDefault(a.Degraded, admission.DefaultThresholds.Degraded),
		Essential:  orDefault(a.Essential, admission.DefaultThresholds.Essential),
		Protective: orDefault(a.Protective, admission.DefaultThresholds.Protective),
		Hysteresis: orDefault(a.Hysteresis, admission.DefaultThresholds.Hysteresis),
	}
	if err := th.Validate(); err != nil {
		return err
	}
	if a.DegradedFraction < 0 || a.DegradedFraction > 1 {
		return fmt.Errorf("degraded_fraction %v is not in (0, 1]", a.DegradedFraction)
	}
	a.settings = a.resolveSettings(th)
	logger := ctx.Logger()
	v, _, err := globals.LoadOrNew(globalKey, func() (caddy.Destructor, error) {
		return newGlobalState(logger, th)
	})
	if err != nil {
		return err
	}
	a.acquired = true
	a.global = v.(*globalState)
	return registerMetrics(ctx)
}

// resolveSettings applies the defaults to the app's fields.
func (a *App) resolveSettings(th admission.Thresholds) appSettings {
	st := appSettings{
		th:            th,
		maxInflight:   a.MaxInflight,
		maxStreams:    a.MaxStreams,
		maxConns:      a.MaxConnections,
		memoryLimit:   a.MemoryLimit,
		sessionMemory: orDefault(a.SessionMemory, resources.DefaultSessionMemory),
		fraction:      orDefault(a.DegradedFraction, defaultDegradedFraction),
		idle:          orDefault(time.Duration(a.SessionIdleTimeout), resources.DefaultIdleTimeout),
		refresh:       orDefault(time.Duration(a.Refresh), defaultRefresh),
		monitorsFor: [2]int64{
			int64(orDefault(a.GoroutineCeiling, defaultGoroutineCeiling)),
			int64(orDefault(time.Duration(a.SchedLatencyTarget), defaultSchedTarget)),
		},
	}
	if st.memoryLimit <= 0 {
		st.memoryLimit = resources.DefaultMemoryLimit()
	}
	st.maxSessions, st.clientMaxSessions = defaultSessionCaps(a.MaxSessions, a.ClientMaxSessions, st.memoryLimit, st.sessionMemory)
	return st
}

// defaultSessionCaps resolves max_sessions and client_max_sessions: a
// configured value as it is (negative: no cap, returned as 0), else the
// default (see App.MaxSessions and App.ClientMaxSessions).
func defaultSessionCaps(maxSessions, clientMax int, memoryLimit, sessionMemory int64) (int, int) {
	switch {
	case maxSessions < 0:
		maxSessions = 0
	case maxSessions == 0 && memoryLimit > 0:
		maxSessions = int(max(1, memoryLimit/sessionMemory))
	case maxSessions == 0:
		maxSessions = defaultMaxSessionsUnknown
	}
	switch {
	case clientMax < 0, clientMax == 0 && maxSessions == 0:
		clientMax = 0
	case clientMax == 0:
		clientMax = max(minClientMaxSessions, maxSessions/defaultClientShare)
	}
	return maxSessions, clientMax
}

// Start applies this config's settings to the process-wide state: the
// config is now the running one.
func (a *App) Start() error {
	g, st := a.global, a.settings
	g.inflight.SetLimit(st.maxInflight)
	g.streams.SetLimit(st.maxStreams)
	g.conns.SetLimit(st.maxConns)
	g.memory.SetLimit(st.memoryLimit)
	g.sessions.SetMaxSessions(st.maxSessions)
	g.sessions.SetClientMaxSessions(st.clientMaxSessions)
	g.sessions.SetSessionMemory(st.sessionMemory)
	g.levels.SetThresholds(st.th)
	var drain time.Duration
	a.drainsMu.Lock()
	for _, d := range a.drains {
		drain = max(drain, d)
	}
	a.drainsMu.Unlock()
	g.maxDrain.Store(int64(drain))
	g.mu.Lock()
	if g.monitorsFor != st.monitorsFor {
		// Monitors keep state between samples (the scheduler histogram):
		// they are replaced only when their settings change.
		g.monitorsFor = st.monitorsFor
		g.setMonitors(int(st.monitorsFor[0]), time.Duration(st.monitorsFor[1]))
	}
	g.fraction, g.idle, g.refresh = st.fraction, st.idle, st.refresh
	g.mu.Unlock()
	g.applyLevel(g.levels.Level())
	globalMu.Lock()
	globalCur = g
	globalMu.Unlock()
	return nil
}

// newGlobalState makes the process-wide state and starts its refresh
// loop, which ends when the state is destructed.
func newGlobalState(logger *zap.Logger, th admission.Thresholds) (*globalState, error) {
	ctx, cancel := context.WithCancel(context.Background())
	g := &globalState{
		inflight: admission.NewLimiter(0, 0, 0),
		streams:  admission.NewLimiter(0, 0, 0),
		conns:    admission.NewLimiter(0, 0, 0),
		memory:   resources.NewBudget(0),
		injected: resources.NewInjected("injected"),
		active:   sse.NewStreamSet(nil),
		resume:   sse.NewRegistry(resumeMaxSessions, resumeMaxStreams, defaultReplayAge),
		deletes:  make(chan resources.SessionInfo, deleteQueue),
		tasks:    resources.NewGroup(nil),
		logger:   logger,
		cancel:   cancel,
		fraction: defaultDegradedFraction,
		idle:     resources.DefaultIdleTimeout,
		refresh:  defaultRefresh,
	}
	// A panic in a goroutine of a request or a session ends that
	// goroutine, not the process.
	g.tasks.SetPanicHandler(func(v any) { panicked(logger, "task", v) })
	g.sessions = resources.NewRegistry(resources.RegistryConfig{
		Memory:  g.memory,
		OnEvict: g.onEvict,
		OnEnd:   g.onEnd,
		Tasks:   g.tasks,
	})
	lm, err := admission.NewLoadManager(th, g.levelChanged)
	if err != nil {
		cancel()
		return nil, err
	}
	g.levels = lm
	go g.run(ctx)
	// The refresh loop and the delete workers belong to the state and end
	// with it (Destruct cancels ctx); the tasks group counts only what
	// requests and sessions start.
	for range deleteWorkers {
		go g.deleteWorker(ctx)
	}
	return g, nil
}

// setMonitors installs the pressure monitors for the given settings.
func (g *globalState) setMonitors(goroutines int, sched time.Duration) {
	g.levels.SetMonitors(
		resources.HeapMonitor(func() int64 { return g.memory.Limit() }),
		resources.CgroupMonitor(resources.DefaultCgroupRoot),
		resources.BudgetMonitor(g.memory),
		resources.RatioMonitor("connections", func() int64 { return int64(g.conns.InFlight()) }, func() int64 { return int64(g.conns.Limit()) }),
		resources.GoroutineMonitor(goroutines),
		// Scheduler latency is noisy and says little about memory: it is
		// averaged over four refreshes and may raise the level to
		// essential at most.
		resources.Capped(resources.Smoothed(resources.SchedLatencyMonitor(sched), 4), 0.9),
		g.injected,
	)
}

// run samples the monitors, sweeps idle sessions and applies the level's
// actions every refresh interval until ctx ends.
func (g *globalState) run(ctx context.Context) {
	for {
		g.mu.Lock()
		every := g.refresh
		g.mu.Unlock()
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case now := <-t.C:
			g.tick(now)
		}
	}
}

// tick is one round of the refresh loop. A panic in it is recovered,
// logged and counted, and the loop goes on at the next refresh.
func (g *globalState) tick(now time.Time) {
	defer recoverPanic(g.logger, "refresh loop")
	level := g.levels.Sample(now)
	g.applyLevel(level)
	if n := g.sessions.Sweep(now); n > 0 {
		g.logger.Info("idle sessions expired", zap.Int("count", n))
	}
	if now.Sub(g.resumeSwept) >= resumeSweep {
		g.resumeSwept = now
		g.resume.Sweep(now)
	}
	if level == admission.LevelProtective {
		if n := g.active.ResetLargest(protectiveResetsPerTick); n > 0 {
			metrics.protectiveResets.Add(float64(n))
			g.logger.Info("protective level reset streams", zap.Int("count", n))
		}
	}
}

// applyLevel sets what depends on the level: the session idle timeout,
// and, at degraded and above, the replay ring of each open stream shrinks
// to the degraded fraction of its own handler's settings (new streams get
// the fraction too, see streamConfig).
func (g *globalState) applyLevel(level admission.Level) {
	g.mu.Lock()
	idle, fraction := g.idle, g.fraction
	g.mu.Unlock()
	if level >= admission.LevelDegraded {
		idle = time.Duration(float64(idle) * fraction)
		g.resume.ShrinkBy(fraction)
	}
	g.sessions.SetIdleTimeout(idle)
	metrics.level.Set(float64(level))
}

// degradedFraction returns the share of stream buffers and replay rings
// new streams get at the current level (1 at full).
func (g *globalState) degradedFraction() float64 {
	if g.levels.Level() < admission.LevelDegraded {
		return 1
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fraction
}

// levelChanged logs a level change once and counts it.
func (g *globalState) levelChanged(from, to admission.Level, pressure float64, pinned bool) {
	metrics.levelChanges.WithLabelValues(to.String()).Inc()
	msg := "service level raised"
	if to < from {
		msg = "service level lowered"
	}
	g.logger.Info(msg, zap.String("from", from.String()), zap.String("to", to.String()),
		zap.Float64("pressure", pressure), zap.Bool("pinned", pinned))
}

// onEnd observes the lifetime figures of a session that left the
// registry, once per session and whatever the cause: deleted by its
// client, expired idle, or evicted. Sessions still live when the
// process-wide state is destroyed (at shutdown, or when no config uses
// the mcp app any more) are not observed: they did not end, and no
// loaded config would export the observation.
func (g *globalState) onEnd(s *resources.Session, _ resources.Cause, at time.Time) {
	events, bytes := s.Relayed()
	sessionEnds.observe(max(at.Sub(s.Created()), 0).Seconds(), float64(events), float64(bytes))
}

// onEvict tells the upstream a session it no longer needs is gone: most
// clients never send DELETE, so evicted 2025-era sessions would otherwise
// pile up upstream.
func (g *globalState) onEvict(s *resources.Session, cause resources.Cause) {
	metrics.evictions.WithLabelValues(cause.String()).Inc()
	info := s.Info()
	g.resume.Forget(info.Key)
	if info.UpstreamID == "" || !mcp.HasSessionDelete(info.Version) {
		// A legacy session ends upstream with its stream, which eviction
		// closed; the stateless revision has no sessions.
		return
	}
	select {
	case g.deletes <- info:
	default:
		// The queue is full: the upstream expires the rest itself.
		metrics.evictDeletesSkipped.Inc()
	}
}

// deleteWorker sends the DELETE of evicted sessions queued on g.deletes
// until ctx ends.
func (g *globalState) deleteWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case info := <-g.deletes:
			g.deleteUpstream(ctx, info)
		}
	}
}

// deleteUpstream ends an evicted session upstream, with a DELETE sent
// through the embedded reverse_proxy of an mcp_proxy that serves the
// session's upstream, so that upstream's transport and header rules
// apply. A panic in it is recovered, logged and counted, and the worker
// goes on with the next session.
func (g *globalState) deleteUpstream(ctx context.Context, info resources.SessionInfo) {
	defer recoverPanic(g.logger, "session delete worker")
	h := handlerFor(info.Upstream)
	if h == nil {
		metrics.evictDeletesSkipped.Inc()
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	hdr := mcp.SideHeaders(info.UpstreamID, info.Version)
	if status, err := h.sideRequest(ctx, info.Upstream, http.MethodDelete, info.Endpoint, info.Host, hdr, nil); err != nil {
		g.logger.Debug("deleting evicted session upstream failed", zap.Error(err), zap.Int("status", status))
	}
}

// Evicted sessions are deleted upstream by deleteWorkers workers from a
// queue of at most deleteQueue sessions.
const (
	deleteWorkers = 8
	deleteQueue   = 8192
)

// Bounds of the process-wide registry of resumable streams.
const (
	resumeMaxSessions = 100_000
	resumeMaxStreams  = 16
	resumeSweep       = 5 * time.Second
)

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
	if !a.global.active.Wait(time.Duration(a.global.maxDrain.Load()) + time.Second) {
		a.global.logger.Warn("streams still open after the drain; closing them")
		a.global.active.CloseAll()
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
		one := func() (string, error) {
			if len(args) != 1 {
				return "", d.ArgErr()
			}
			return args[0], nil
		}
		switch name {
		case "max_connections", "max_inflight", "max_streams", "max_sessions", "client_max_sessions", "goroutine_ceiling":
			s, err := one()
			if err != nil {
				return nil, err
			}
			n, err := strconv.Atoi(s)
			if err != nil || n < 0 {
				return nil, d.Errf("bad %s %q: want a count", name, s)
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
		case "memory_limit", "session_memory":
			s, err := one()
			if err != nil {
				return nil, err
			}
			n, err := humanize.ParseBytes(s)
			if err != nil || n == 0 || n > 1<<50 {
				return nil, d.Errf("bad %s %q: want a size such as 512MiB", name, s)
			}
			if name == "memory_limit" {
				app.MemoryLimit = int64(n)
			} else {
				app.SessionMemory = int64(n)
			}
		case "session_idle_timeout", "refresh", "sched_latency_target":
			s, err := one()
			if err != nil {
				return nil, err
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil || dur <= 0 {
				return nil, d.Errf("bad %s %q: want a positive duration", name, s)
			}
			switch name {
			case "session_idle_timeout":
				app.SessionIdleTimeout = caddy.Duration(dur)
			case "refresh":
				app.Refresh = caddy.Duration(dur)
			case "sched_latency_target":
				app.SchedLatencyTarget = caddy.Duration(dur)
			}
		case "levels":
			if len(args) != 3 && len(args) != 4 {
				return nil, d.ArgErr()
			}
			var v [4]float64
			for i, s := range args {
				f, err := strconv.ParseFloat(s, 64)
				if err != nil {
					return nil, d.Errf("bad levels value %q", s)
				}
				v[i] = f
			}
			app.Degraded, app.Essential, app.Protective, app.Hysteresis = v[0], v[1], v[2], v[3]
			th := admission.Thresholds{Degraded: v[0], Essential: v[1], Protective: v[2], Hysteresis: orDefault(v[3], admission.DefaultThresholds.Hysteresis)}
			if err := th.Validate(); err != nil {
				return nil, d.Errf("levels: %v", err)
			}
		case "degraded_fraction":
			s, err := one()
			if err != nil {
				return nil, err
			}
			f, err := strconv.ParseFloat(s, 64)
			if err != nil || f <= 0 || f > 1 {
				return nil, d.Errf("bad degraded_fraction %q: want a number in (0, 1]", s)
			}
			app.DegradedFraction = f
		default:
			return nil, d.Errf("unrecognized mcp option %q", name)
		}
	}
	return httpcaddyfile.App{Name: "mcp", Value: caddyconfig.JSON(app, nil)}, nil
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
