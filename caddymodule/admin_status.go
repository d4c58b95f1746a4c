package caddymodule

import (
	"maps"

	"github.com/mcpgate/mcpgate/governor"
)

// statusOf builds the answer of GET /mcp/status: the governor's snapshot
// with the counts the proxy keeps beside its metrics (counters.go).
func statusOf(g *globalState) governor.Status {
	out := g.Status()
	out.Resources.StreamsActive = metrics.streamsActive.Value()
	maps.Copy(out.Counters, map[string]float64{
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
	})
	out.Governance = governanceStatus(g.Level())
	return out
}
