package governor

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// Hooks are how a Governor reports to its owner: metrics, logs, panics,
// and the request that deletes an evicted session upstream. Every field
// may be nil.
type Hooks struct {
	// LevelChanged is called once for every change of the service level,
	// from the refresh loop or from Pin and Unpin, with the highest
	// monitor pressure at the last sample and whether the level is pinned.
	LevelChanged func(from, to admission.Level, pressure float64, pinned bool)
	// LevelApplied is called with the level in force every time its
	// actions are applied: at every refresh, Apply, Pin and Unpin.
	LevelApplied func(level admission.Level)
	// SessionEnded is called once for every session that leaves the
	// registry, whatever the cause, with the time it left (see
	// resources.RegistryConfig.OnEnd). Sessions still live when the
	// Governor is closed did not end and are not reported.
	SessionEnded func(s *resources.Session, cause resources.Cause, at time.Time)
	// SessionEvicted is called for every session evicted (any cause but
	// resources.CauseDeleted), before its upstream delete is queued.
	SessionEvicted func(s *resources.Session, cause resources.Cause)
	// IdleExpired is called with the number of sessions a refresh expired
	// for idleness, when there were any.
	IdleExpired func(n int)
	// ProtectiveResets is called with the number of streams a refresh at
	// the protective level reset, when there were any.
	ProtectiveResets func(n int)
	// DeleteSkipped is called for every evicted session not deleted
	// upstream: the delete queue was full, or DeleteSession had no way to
	// reach the session's upstream.
	DeleteSkipped func()
	// DeleteSession deletes an evicted session upstream (an MCP DELETE
	// with the upstream's session id) within ctx, and reports false when
	// it has no way to reach the upstream. It runs on a delete worker;
	// ctx ends after 5 seconds or when the Governor closes. Nil: evicted
	// sessions are not deleted upstream.
	DeleteSession func(ctx context.Context, info resources.SessionInfo) (sent bool)
	// Panic receives a panic recovered in the refresh loop (where "refresh
	// loop"), a delete worker ("session delete worker") or a goroutine of
	// the task group ("task"), on the goroutine that panicked, so a stack
	// taken in it shows where. The loop and the workers go on; a task
	// ends. Nil: panics are not recovered and crash the process as usual.
	Panic func(where string, v any)
}

// Bounds and timings of a Governor.
const (
	// deleteWorkers delete evicted sessions upstream from a queue of at
	// most deleteQueue sessions, each within deleteTimeout.
	deleteWorkers = 8
	deleteQueue   = 8192
	deleteTimeout = 5 * time.Second
	// resumeMaxSessions and resumeMaxStreams bound the registry of
	// resumable streams, which is swept every resumeSweep. Streams a
	// proxy registers carry their own replay age (sse.StreamConfig's
	// ReplayAge); resumeMaxAge applies to a stream without one.
	resumeMaxSessions = 100_000
	resumeMaxStreams  = 16
	resumeSweep       = 5 * time.Second
	resumeMaxAge      = sse.DefaultReplayAge
	// protectiveResetsPerTick is how many of the largest streams each
	// refresh at the protective level resets.
	protectiveResetsPerTick = 50
	// MaxSideRequests is how many requests of the proxies' own
	// (notifications/cancelled, the DELETE of an upstream session the
	// proxy will not use) may be in flight at once in the process; one
	// more is not sent (see SideRequests).
	MaxSideRequests = 256
)

// Governor is the process-wide state of every MCP proxy of a process and
// the loop that governs it; see the package documentation. Make one with
// New, give it its settings with Apply, and Close it when no config uses
// it any more. All methods are safe for concurrent use.
type Governor struct {
	hooks Hooks

	inflight *admission.Limiter
	streams  *admission.Limiter
	conns    *admission.Limiter
	side     *admission.Limiter
	memory   *resources.Budget
	sessions *resources.Registry
	levels   *admission.LoadManager
	injected *resources.Injected
	open     *sse.StreamSet
	resume   *sse.Registry
	tasks    *resources.Group

	refusals     admission.RefusalCounts
	connRefusals atomic.Uint64
	maxDrain     atomic.Int64 // ns

	deletes   chan resources.SessionInfo
	cancel    context.CancelFunc
	loops     sync.WaitGroup // the refresh loop and the delete workers
	closeOnce sync.Once
	rearm     chan struct{} // a new refresh interval for the loop; capacity 1

	resumeSwept time.Time // the last sweep of resume; the refresh loop's only

	applyMu sync.Mutex // held by applyLevel

	mu       sync.Mutex
	applied  bool
	monitors monitorSettings // of the monitors installed
	fraction float64
	idle     time.Duration
	refresh  time.Duration
}

// New returns a Governor with no limits, reporting to hooks, and starts
// its refresh loop (at DefaultRefresh until Apply sets another interval)
// and its delete workers, which run until Close.
func New(hooks Hooks) *Governor {
	ctx, cancel := context.WithCancel(context.Background())
	g := &Governor{
		hooks:    hooks,
		inflight: admission.NewLimiter(0, 0, 0),
		streams:  admission.NewLimiter(0, 0, 0),
		conns:    admission.NewLimiter(0, 0, 0),
		side:     admission.NewLimiter(MaxSideRequests, 0, 0),
		memory:   resources.NewBudget(0),
		injected: resources.NewInjected("injected"),
		open:     sse.NewStreamSet(nil),
		resume:   sse.NewRegistry(resumeMaxSessions, resumeMaxStreams, resumeMaxAge),
		tasks:    resources.NewGroup(nil),
		deletes:  make(chan resources.SessionInfo, deleteQueue),
		cancel:   cancel,
		rearm:    make(chan struct{}, 1),
		fraction: DefaultDegradedFraction,
		idle:     resources.DefaultIdleTimeout,
		refresh:  DefaultRefresh,
	}
	if hooks.Panic != nil {
		// A panic in a goroutine of a request or a session ends that
		// goroutine, not the process.
		g.tasks.SetPanicHandler(func(v any) { hooks.Panic("task", v) })
	}
	g.sessions = resources.NewRegistry(resources.RegistryConfig{
		Memory:  g.memory,
		OnEvict: g.onEvict,
		OnEnd:   hooks.SessionEnded,
		Tasks:   g.tasks,
	})
	// The default thresholds are valid, so this cannot fail.
	g.levels, _ = admission.NewLoadManager(admission.DefaultThresholds, hooks.LevelChanged)
	g.loops.Add(1 + deleteWorkers)
	go g.run(ctx)
	for range deleteWorkers {
		go g.deleteWorker(ctx)
	}
	return g
}

// Close stops the refresh loop and the delete workers and waits for them,
// and closes the task group, which cancels the context of every goroutine
// started on it or on a session's group (Tasks().Wait waits for them).
// Closing a closed Governor does nothing.
func (g *Governor) Close() {
	g.closeOnce.Do(func() {
		g.cancel()
		g.loops.Wait()
		g.tasks.Close()
	})
}

// InflightLimit returns the process-wide limit of requests in flight,
// which every admission.Controller of the process shares.
func (g *Governor) InflightLimit() *admission.Limiter { return g.inflight }

// StreamLimit returns the process-wide limit of SSE GET streams.
func (g *Governor) StreamLimit() *admission.Limiter { return g.streams }

// ConnLimit returns the process-wide limit of client connections.
func (g *Governor) ConnLimit() *admission.Limiter { return g.conns }

// SideRequests returns the slots of the requests the proxies send of
// their own accord, MaxSideRequests of them. Each ends within seconds,
// but a client can make the proxy abandon requests as fast as it sends
// them; what finds no slot is not sent (the upstream finishes the
// abandoned request and its answer is dropped).
func (g *Governor) SideRequests() *admission.Limiter { return g.side }

// Memory returns the process-wide memory budget.
func (g *Governor) Memory() *resources.Budget { return g.memory }

// Sessions returns the registry of live sessions.
func (g *Governor) Sessions() *resources.Registry { return g.sessions }

// Injected returns the monitor whose pressure an operator sets by hand,
// one of the monitors the level follows.
func (g *Governor) Injected() *resources.Injected { return g.injected }

// OpenStreams returns the set of every open client stream of the process,
// from which the protective level resets the largest.
func (g *Governor) OpenStreams() *sse.StreamSet { return g.open }

// Resume returns the registry of resumable streams, by session.
func (g *Governor) Resume() *sse.Registry { return g.resume }

// Tasks returns the task group that owns every goroutine outliving a
// request; sessions' groups are its children.
func (g *Governor) Tasks() *resources.Group { return g.tasks }

// Refusals returns the process-wide refusal counts, which every
// admission.Controller of the process counts into (admission.Config's
// Counts).
func (g *Governor) Refusals() *admission.RefusalCounts { return &g.refusals }

// ReasonConnections is the name RefusalsByReason gives the connections
// AdmitConnection refused.
const ReasonConnections = "connections"

// RefusalsByReason returns every refusal counted so far by the name of
// its reason: each admission.Reason's String for requests, and
// ReasonConnections for connections.
func (g *Governor) RefusalsByReason() map[string]uint64 {
	out := make(map[string]uint64, admission.NumReasons+1)
	for r, n := range g.refusals.Load() {
		out[admission.Reason(r).String()] = n
	}
	out[ReasonConnections] = g.connRefusals.Load()
	return out
}

// AdmitConnection takes a client connection slot and reports true, or
// counts a refused connection and reports false. ReleaseConnection gives
// a slot back.
func (g *Governor) AdmitConnection() bool {
	if g.conns.TryAcquire() {
		return true
	}
	g.connRefusals.Add(1)
	return false
}

// ReleaseConnection gives back a slot AdmitConnection took.
func (g *Governor) ReleaseConnection() { g.conns.Release() }

// ConnectionRefusals returns the connections AdmitConnection refused.
func (g *Governor) ConnectionRefusals() uint64 { return g.connRefusals.Load() }

// Level returns the service level in force; it is a lock-free read.
func (g *Governor) Level() admission.Level { return g.levels.Level() }

// LevelStatus returns a snapshot of the levels, pressures and pin.
func (g *Governor) LevelStatus() admission.Status { return g.levels.Status() }

// Pin holds level l until the given time, whatever the pressure, and
// applies its actions at once.
func (g *Governor) Pin(l admission.Level, until, now time.Time) {
	g.levels.Pin(l, until, now)
	g.applyLevel()
}

// Unpin releases a pinned level; the level the pressure asks for and its
// actions apply at once.
func (g *Governor) Unpin(now time.Time) {
	g.levels.Unpin(now)
	g.applyLevel()
}

// DegradedFraction returns the share of their configured size that stream
// queues and replay rings get at the level in force: 1 below the degraded
// level, Settings.DegradedFraction from it up.
func (g *Governor) DegradedFraction() float64 {
	if g.levels.Level() < admission.LevelDegraded {
		return 1
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.fraction
}

// Refresh returns the refresh interval in force.
func (g *Governor) Refresh() time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.refresh
}

// FinishStreams waits, for at most the longest drain of the running
// config (Settings.MaxDrain) and grace, until every open stream has
// ended, then closes those still open with their retry hint. It reports
// whether none had to be closed.
func (g *Governor) FinishStreams(grace time.Duration) bool {
	if g.open.Wait(time.Duration(g.maxDrain.Load()) + grace) {
		return true
	}
	g.open.CloseAll()
	// The retry hints are written by the streams' own goroutines: give
	// them a moment before the process exits.
	g.open.Wait(grace)
	return false
}
