package governor

import (
	"time"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/resources"
)

// Status is a snapshot of the process-wide state, in the shape of the
// admin API's GET /mcp/status. Status fills what the Governor holds; the
// caller adds what it counts itself (Counters, Governance and
// Resources.StreamsActive).
type Status struct {
	LevelView
	// Pressure is the highest monitor pressure at the last refresh,
	// Monitors each monitor's.
	Pressure   float64            `json:"pressure"`
	Monitors   map[string]float64 `json:"pressures"`
	Thresholds ThresholdView      `json:"thresholds"`
	Refresh    string             `json:"refresh"`
	Resources  Usage              `json:"resources"`
	Refusals   map[string]uint64  `json:"refusals"`
	Evictions  map[string]uint64  `json:"evictions"`
	Changes    map[string]uint64  `json:"level_changes"`
	Counters   map[string]float64 `json:"counters"`
	Tombstones int                `json:"evicted_keys_remembered"`
	// Governance says what the level leaves of the governance features.
	Governance GovernanceView `json:"governance"`
}

// GovernanceView says what a level leaves of the governance features:
// rules always hold; the audit trail is full, sampled or keeps only
// denials and errors; tool pin checks are full or skip unchanged
// definitions. Counters are the governance features' counts.
type GovernanceView struct {
	Rules     string             `json:"rules"`
	Audit     string             `json:"audit"`
	PinChecks string             `json:"pin_checks"`
	Counters  map[string]float64 `json:"counters"`
}

// LevelView is the service level in force and the one the pressure alone
// asks for (Computed); they differ while a level is pinned.
type LevelView struct {
	Level       string    `json:"level"`
	Computed    string    `json:"computed_level"`
	Pinned      bool      `json:"pinned"`
	PinnedUntil time.Time `json:"pinned_until,omitzero"`
}

// ThresholdView is the pressures at which the levels begin, and the
// hysteresis below them at which a level is left.
type ThresholdView struct {
	Degraded   float64 `json:"degraded"`
	Essential  float64 `json:"essential"`
	Protective float64 `json:"protective"`
	Hysteresis float64 `json:"hysteresis"`
}

// Pair is a usage beside its limit; a limit of 0 means none.
type Pair struct {
	Used  int64 `json:"used"`
	Limit int64 `json:"limit"`
}

// Usage is what the proxy holds, each beside its limit.
type Usage struct {
	// Memory is the bytes reserved from the memory budget.
	Memory Pair `json:"memory_bytes"`
	// Sessions is the live sessions against max_sessions (the value in
	// force, its default included).
	Sessions Pair `json:"sessions"`
	// ClientMaxSessions is the cap on one client's live sessions in force
	// (0: none).
	ClientMaxSessions int `json:"client_max_sessions"`
	// SessionIdleTimeout is the idle timeout in force (it shrinks at the
	// degraded level and above).
	SessionIdleTimeout string `json:"session_idle_timeout"`
	// Streams is the SSE GET streams holding a slot against max_streams.
	Streams Pair `json:"streams"`
	// StreamsActive is every SSE stream with a client attached (GET
	// streams and streamed POST answers); StreamsInSessions those
	// registered with a live session.
	StreamsActive     int64 `json:"streams_active"`
	StreamsInSessions int   `json:"streams_in_sessions"`
	// RequestsInFlight is the requests holding a process-wide slot
	// against max_inflight, RequestsQueued those waiting for one.
	RequestsInFlight Pair `json:"requests_in_flight"`
	RequestsQueued   int  `json:"requests_queued"`
	// Connections is the connections counted by mcp_connections against
	// max_connections.
	Connections Pair `json:"connections"`
	// GoroutinesOwned is the goroutines of the proxy's task groups.
	GoroutinesOwned int `json:"goroutines_owned"`
	// ReplayHeldBytes is the bytes held in replay rings.
	ReplayHeldBytes int64 `json:"replay_held_bytes"`
}

// limitPair is the usage of a limiter beside its limit.
func limitPair(l *admission.Limiter) Pair {
	return Pair{Used: int64(l.InFlight()), Limit: int64(max(l.Limit(), 0))}
}

// MemoryPair is the memory budget's usage beside its limit.
func (g *Governor) MemoryPair() Pair {
	return Pair{Used: g.memory.Used(), Limit: max(g.memory.Limit(), 0)}
}

// Levels returns the service level in force and the computed one.
func (g *Governor) Levels() LevelView {
	return levelView(g.LevelStatus())
}

func levelView(ls admission.Status) LevelView {
	v := LevelView{Level: ls.Level.String(), Computed: ls.Computed.String(), Pinned: ls.Pinned}
	if ls.Pinned {
		v.PinnedUntil = ls.PinUntil
	}
	return v
}

// Pressures returns each monitor's pressure at the last refresh.
func Pressures(ls admission.Status) map[string]float64 {
	out := make(map[string]float64, len(ls.Monitors))
	for _, m := range ls.Monitors {
		out[m.Name] = resources.Round3(m.Pressure)
	}
	return out
}

// Status returns a snapshot of the levels, pressures, limits and usage,
// refusals, evictions and level changes. It scans the session registry
// (resources.Registry.Stats): call it at scrape rate, not per request.
func (g *Governor) Status() Status {
	ls := g.LevelStatus()
	st := g.sessions.Stats()
	out := Status{
		LevelView: levelView(ls),
		Pressure:  resources.Round3(ls.Pressure),
		Monitors:  Pressures(ls),
		Thresholds: ThresholdView{
			Degraded: ls.Threshold.Degraded, Essential: ls.Threshold.Essential,
			Protective: ls.Threshold.Protective, Hysteresis: ls.Threshold.Hysteresis,
		},
		Refresh: g.Refresh().String(),
		Resources: Usage{
			Memory:             g.MemoryPair(),
			Sessions:           Pair{Used: int64(st.Sessions), Limit: int64(g.sessions.MaxSessions())},
			ClientMaxSessions:  g.sessions.ClientMaxSessions(),
			SessionIdleTimeout: g.sessions.IdleTimeout().String(),
			Streams:            limitPair(g.streams),
			StreamsInSessions:  st.Streams,
			RequestsInFlight:   limitPair(g.inflight),
			RequestsQueued:     g.inflight.Queued(),
			Connections:        limitPair(g.conns),
			GoroutinesOwned:    g.tasks.Count(),
			ReplayHeldBytes:    g.resume.Bytes(),
		},
		Refusals:   g.RefusalsByReason(),
		Evictions:  map[string]uint64{},
		Changes:    map[string]uint64{},
		Tombstones: g.sessions.Tombstones(),
		Counters: map[string]float64{
			"sessions_deleted": float64(st.Evictions[resources.CauseDeleted]),
		},
	}
	for c := range resources.NumCauses {
		if resources.Cause(c) != resources.CauseDeleted {
			out.Evictions[resources.Cause(c).String()] = st.Evictions[c]
		}
	}
	for l := range admission.Level(admission.NumLevels) {
		out.Changes[l.String()] = ls.Changes[l]
	}
	return out
}
