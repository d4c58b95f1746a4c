package caddymodule

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
)

// governorHooks returns what the process-wide governor reports to: the
// metrics, the log of the config that made it, and the embedded
// reverse_proxy that deletes evicted sessions upstream.
func governorHooks(logger *zap.Logger) governor.Hooks {
	return governor.Hooks{
		LevelChanged: func(from, to admission.Level, pressure float64, pinned bool) {
			metrics.levelChanges.WithLabelValues(to.String()).Inc()
			msg := "service level raised"
			if to < from {
				msg = "service level lowered"
			}
			logger.Info(msg, zap.String("from", from.String()), zap.String("to", to.String()),
				zap.Float64("pressure", pressure), zap.Bool("pinned", pinned))
			emitLevelChanged(from, to, pressure, pinned)
		},
		LevelApplied: func(level admission.Level) {
			metrics.level.Set(float64(level))
			noteGovernanceLevel(level)
		},
		SessionEnded: sessionEnded,
		SessionEvicted: func(s *resources.Session, cause resources.Cause) {
			metrics.evictions.WithLabelValues(cause.String()).Inc()
			emitSessionEvicted(s, cause)
		},
		IdleExpired: func(n int) {
			logger.Info("idle sessions expired", zap.Int("count", n))
		},
		ProtectiveResets: func(n int) {
			metrics.protectiveResets.Add(uint64(n))
			logger.Info("protective level reset streams", zap.Int("count", n))
		},
		DeleteSkipped: metrics.evictDeletesSkipped.Inc,
		DeleteSession: func(ctx context.Context, info resources.SessionInfo) bool {
			return deleteEvicted(ctx, logger, info)
		},
		Panic: func(where string, v any) { panicked(logger, where, v) },
	}
}

// sessionEnded observes the lifetime figures of a session that left the
// registry, once per session and whatever the cause: deleted by its
// client, expired idle, or evicted. Sessions still live when the
// process-wide state is destroyed (at shutdown, or when no config uses
// the mcp app any more) are not observed: they did not end, and no
// loaded config would export the observation.
func sessionEnded(s *resources.Session, _ resources.Cause, at time.Time) {
	events, bytes := s.Relayed()
	sessionEnds.observe(max(at.Sub(s.Created()), 0).Seconds(), float64(events), float64(bytes))
}

// deleteEvicted ends an evicted session upstream, with a DELETE sent
// through the embedded reverse_proxy of an mcp_proxy that serves the
// session's upstream, so that upstream's transport and header rules
// apply. It reports false when no mcp_proxy serves that upstream.
func deleteEvicted(ctx context.Context, logger *zap.Logger, info resources.SessionInfo) bool {
	h := handlerFor(info.Upstream)
	if h == nil {
		return false
	}
	hdr := mcp.SideHeaders(info.UpstreamID, info.Version)
	if status, err := h.sideRequest(ctx, info.Upstream, http.MethodDelete, info.Endpoint, info.Host, hdr, nil); err != nil {
		logger.Debug("deleting evicted session upstream failed", zap.Error(err), zap.Int("status", status))
	}
	return true
}
