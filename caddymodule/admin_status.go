package caddymodule

import (
	"math"
	"time"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/resources"
)

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
		StreamsActive:      metrics.streamsActive.Value(),
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
		"sessions_created":          metrics.sessionsCreated.Value(),
		"events_relayed":            metrics.eventsRelayed.Value(),
		"relayed_bytes":             metrics.bytesRelayed.Value(),
		"keepalives":                metrics.keepalives.Value(),
		"slow_consumer_disconnects": metrics.slowConsumers.Value(),
		"oversized_events":          metrics.oversized.Value(),
		"backpressure":              metrics.backpressure.Value(),
		"protective_resets":         metrics.protectiveResets.Value(),
		"streams_drained":           metrics.streamsDrained.Value(),
		"upstream_cancellations":    metrics.cancelsSent.Value(),
		"replay_hits":               replayHits.Value(),
		"replay_misses":             replayMisses.Value(),
		"sessions_deleted":          float64(st.Evictions[resources.CauseDeleted]),
	}
	out.Governance = governanceStatus(ls.Level)
	return out
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
