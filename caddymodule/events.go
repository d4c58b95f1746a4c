package caddymodule

import (
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/resources"
)

// Caddy events mcpgate emits, so `events` handlers (exec, webhooks,
// other plugins) can react to them:
//
//   - mcp_level_changed: the service level changed. Data: from and to
//     (level names), pressure (the highest monitor's, 0–1), pinned
//     (whether an operator pinned the level).
//   - mcp_session_evicted: a session was evicted. Data: session (the id
//     /mcp/sessions shows), upstream, cause (idle, capacity, level,
//     operator).
//
// Events are emitted synchronously, as Caddy's are, and only when some
// handler subscribes to them.
const (
	eventLevelChanged   = "mcp_level_changed"
	eventSessionEvicted = "mcp_session_evicted"
)

// eventSink is where mcpgate's events go: the events app of the running
// config.
type eventSink struct {
	app *caddyevents.App
	ctx caddy.Context
}

// events holds the running config's sink; nil before any config runs.
var events atomic.Pointer[eventSink]

// setEventSink makes ctx's events app the running one.
func setEventSink(ctx caddy.Context) {
	appIface, err := ctx.App("events")
	if err != nil {
		return
	}
	if app, ok := appIface.(*caddyevents.App); ok {
		events.Store(&eventSink{app: app, ctx: ctx})
	}
}

// emit emits an event when some handler subscribes to it.
func emit(name string, data func() map[string]any) {
	s := events.Load()
	if s == nil || !s.app.ShouldEmit(name) {
		return
	}
	s.app.Emit(s.ctx, name, data())
}

// emitLevelChanged emits mcp_level_changed.
func emitLevelChanged(from, to admission.Level, pressure float64, pinned bool) {
	emit(eventLevelChanged, func() map[string]any {
		return map[string]any{"from": from.String(), "to": to.String(), "pressure": resources.Round3(pressure), "pinned": pinned}
	})
}

// emitSessionEvicted emits mcp_session_evicted.
func emitSessionEvicted(s *resources.Session, cause resources.Cause) {
	emit(eventSessionEvicted, func() map[string]any {
		info := s.Info()
		return map[string]any{"session": resources.SessionID(info.Key), "upstream": info.Upstream, "cause": cause.String()}
	})
}
