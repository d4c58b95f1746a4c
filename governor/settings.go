package governor

import (
	"fmt"
	"time"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/resources"
)

// Defaults of the settings.
const (
	// DefaultRefresh is how often the monitors are sampled.
	DefaultRefresh = 250 * time.Millisecond
	// DefaultDegradedFraction is what stream queues, replay rings and the
	// session idle timeout shrink to at the degraded level and above.
	DefaultDegradedFraction = 0.5
	// DefaultGoroutineCeiling is the goroutine count that reads as full
	// pressure.
	DefaultGoroutineCeiling = 200_000
	// DefaultSchedLatencyTarget is the scheduling latency that reads as
	// half pressure.
	DefaultSchedLatencyTarget = 100 * time.Millisecond
	// DefaultMaxSessions is the session cap when no memory limit is known
	// (with one, the cap is the limit ÷ the session memory).
	DefaultMaxSessions = 10_000
	// MinClientMaxSessions is the least default cap of one client's
	// sessions, whose default is a tenth of the session cap.
	MinClientMaxSessions = 16
	// clientShare is the share of the session cap one client may hold by
	// default: 1/clientShare.
	clientShare = 10
)

// Settings are the process-wide settings of one config. A zero (or
// negative, unless said otherwise) field takes its default.
type Settings struct {
	// Thresholds are the pressures at which each service level is
	// entered, and the hysteresis below them at which it is left. Each
	// zero field takes admission.DefaultThresholds' value.
	Thresholds admission.Thresholds
	// MaxInflight, MaxStreams and MaxConnections cap the requests in
	// flight, the SSE GET streams and the client connections of the
	// process; 0 means no cap.
	MaxInflight, MaxStreams, MaxConnections int
	// MaxSessions caps the live sessions. Default: MemoryLimit ÷
	// SessionMemory, or DefaultMaxSessions when no memory limit is known.
	// A negative value means no cap.
	MaxSessions int
	// ClientMaxSessions caps one client's live sessions. Default: a tenth
	// of MaxSessions, at least MinClientMaxSessions, and none when
	// MaxSessions is off. A negative value means no cap.
	ClientMaxSessions int
	// MemoryLimit is the memory budget, in bytes. Default:
	// resources.DefaultMemoryLimit() (GOMEMLIMIT, else the cgroup's
	// memory.max, else none).
	MemoryLimit int64
	// SessionMemory is each session's share of MemoryLimit, in bytes.
	// Default: resources.DefaultSessionMemory.
	SessionMemory int64
	// IdleTimeout expires sessions idle this long (shortened at the
	// degraded level and above). Default: resources.DefaultIdleTimeout.
	IdleTimeout time.Duration
	// ForgetEvicted makes an eviction for idleness, capacity or the
	// service level forget the session in this process only: its
	// upstream session is not deleted and its key is not tombstoned
	// (resources.Registry.SetForgetEvicted), so a later request of it
	// adopts it again. It suits replicas that share sessions without
	// sticky routing, where another replica may still be serving a
	// session this one evicts. An operator's eviction (the admin API)
	// ends the session as ever. Default: false, every eviction deletes the
	// session upstream and tombstones its key.
	ForgetEvicted bool
	// Refresh is how often the monitors are sampled and the level's
	// actions applied. Default: DefaultRefresh.
	Refresh time.Duration
	// DegradedFraction, in (0, 1], is what stream queues, replay rings
	// and the idle timeout shrink to at the degraded level and above.
	// Default: DefaultDegradedFraction.
	DegradedFraction float64
	// GoroutineCeiling is the goroutine count that reads as full
	// pressure. Default: DefaultGoroutineCeiling.
	GoroutineCeiling int
	// SchedLatencyTarget is the scheduling latency (p99 over a refresh,
	// averaged over four) that reads as half pressure. Default:
	// DefaultSchedLatencyTarget.
	SchedLatencyTarget time.Duration
	// MaxDrain is the longest drain delay of any proxy of the config:
	// FinishStreams waits that long (and its grace) for open streams.
	MaxDrain time.Duration
}

// monitorSettings are the settings the pressure monitors are built from.
type monitorSettings struct {
	goroutines int
	sched      time.Duration
}

// Validate reports settings Apply would refuse: thresholds that do not
// rise within (0, 1] once defaulted, or a degraded fraction above 1.
func (s Settings) Validate() error {
	if err := s.thresholds().Validate(); err != nil {
		return err
	}
	if s.DegradedFraction < 0 || s.DegradedFraction > 1 {
		return fmt.Errorf("degraded fraction %v is not in (0, 1]", s.DegradedFraction)
	}
	return nil
}

// thresholds returns the thresholds with every default applied.
func (s Settings) thresholds() admission.Thresholds {
	d := admission.DefaultThresholds
	return admission.Thresholds{
		Degraded:   orDefault(s.Thresholds.Degraded, d.Degraded),
		Essential:  orDefault(s.Thresholds.Essential, d.Essential),
		Protective: orDefault(s.Thresholds.Protective, d.Protective),
		Hysteresis: orDefault(s.Thresholds.Hysteresis, d.Hysteresis),
	}
}

// resolved returns the settings with every default applied; a session
// cap that is off is 0.
func (s Settings) resolved() Settings {
	s.Thresholds = s.thresholds()
	s.SessionMemory = orDefault(s.SessionMemory, resources.DefaultSessionMemory)
	s.DegradedFraction = orDefault(s.DegradedFraction, DefaultDegradedFraction)
	s.IdleTimeout = orDefault(s.IdleTimeout, resources.DefaultIdleTimeout)
	s.Refresh = orDefault(s.Refresh, DefaultRefresh)
	s.GoroutineCeiling = orDefault(s.GoroutineCeiling, DefaultGoroutineCeiling)
	s.SchedLatencyTarget = orDefault(s.SchedLatencyTarget, DefaultSchedLatencyTarget)
	if s.MemoryLimit <= 0 {
		s.MemoryLimit = resources.DefaultMemoryLimit()
	}
	s.MaxSessions, s.ClientMaxSessions = SessionCaps(s.MaxSessions, s.ClientMaxSessions, s.MemoryLimit, s.SessionMemory)
	return s
}

// SessionCaps resolves the session caps as Settings documents them: a
// configured cap as it is, a negative one as 0 (no cap), a zero one as
// its default for the memory limit and session memory given (a memory
// limit of 0 is unknown). sessionMemory must be positive.
func SessionCaps(maxSessions, clientMax int, memoryLimit, sessionMemory int64) (int, int) {
	switch {
	case maxSessions < 0:
		maxSessions = 0
	case maxSessions == 0 && memoryLimit > 0:
		maxSessions = int(max(1, memoryLimit/sessionMemory))
	case maxSessions == 0:
		maxSessions = DefaultMaxSessions
	}
	switch {
	case clientMax < 0, clientMax == 0 && maxSessions == 0:
		clientMax = 0
	case clientMax == 0:
		clientMax = max(MinClientMaxSessions, maxSessions/clientShare)
	}
	return maxSessions, clientMax
}

// Apply makes s, with its defaults, the settings in force: limits, session
// caps, memory, thresholds, monitors, idle timeout, refresh interval and
// drain; the level's actions are applied again at once. Monitors keep
// state between samples (the scheduler's histogram), so they are replaced
// only when their own settings change. It returns Validate's error, and
// changes nothing then.
func (g *Governor) Apply(s Settings) error {
	if err := s.Validate(); err != nil {
		return err
	}
	s = s.resolved()
	g.inflight.SetLimit(s.MaxInflight)
	g.streams.SetLimit(s.MaxStreams)
	g.conns.SetLimit(s.MaxConnections)
	g.memory.SetLimit(s.MemoryLimit)
	g.sessions.SetMaxSessions(s.MaxSessions)
	g.sessions.SetClientMaxSessions(s.ClientMaxSessions)
	g.sessions.SetSessionMemory(s.SessionMemory)
	if err := g.levels.SetThresholds(s.Thresholds); err != nil {
		return err
	}
	g.maxDrain.Store(int64(s.MaxDrain))
	g.sessions.SetForgetEvicted(s.ForgetEvicted)
	mon := monitorSettings{goroutines: s.GoroutineCeiling, sched: s.SchedLatencyTarget}
	g.mu.Lock()
	if !g.applied || g.monitors != mon {
		g.monitors = mon
		g.setMonitors(mon)
	}
	g.applied = true
	rearm := g.refresh != s.Refresh
	g.fraction, g.idle, g.refresh = s.DegradedFraction, s.IdleTimeout, s.Refresh
	g.mu.Unlock()
	if rearm {
		select {
		case g.rearm <- struct{}{}:
		default: // the loop has a rearm pending already
		}
	}
	g.applyLevel()
	return nil
}

// setMonitors installs the pressure monitors for mon.
func (g *Governor) setMonitors(mon monitorSettings) {
	g.levels.SetMonitors(
		resources.HeapMonitor(g.memory.Limit),
		resources.CgroupMonitor(resources.DefaultCgroupRoot),
		resources.BudgetMonitor(g.memory),
		resources.RatioMonitor("connections",
			func() int64 { return int64(g.conns.InFlight()) },
			func() int64 { return int64(g.conns.Limit()) }),
		resources.GoroutineMonitor(mon.goroutines),
		// Scheduler latency is noisy and says little about memory: it is
		// averaged over four refreshes and may raise the level to
		// essential at most.
		resources.Capped(resources.Smoothed(resources.SchedLatencyMonitor(mon.sched), 4), 0.9),
		g.injected,
	)
}

// orDefault returns v, or def when v is not positive.
func orDefault[T int | int64 | float64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}
