package caddymodule

import (
	"context"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/mcpgate/mcpgate/sse"
)

// drainHooks count the streams a handler's drain closes and recover a
// panic in a drain timer.
var drainHooks = &sse.StreamSetHooks{
	Drained: func() { metrics.streamsDrained.Inc() },
	Panic:   func(v any) { panicked(nil, "stream drain", v) },
}

// watchStop starts draining when Caddy announces that this config stops
// (a reload or shutdown), before the HTTP servers wait for open requests.
func (h *Handler) watchStop(ctx caddy.Context) {
	appIface, err := ctx.App("events")
	if err != nil {
		return
	}
	app, ok := appIface.(*caddyevents.App)
	if !ok {
		return
	}
	_ = app.On("stopping", caddyevents.Handler(stopHandler{h: h}))
}

type stopHandler struct{ h *Handler }

// Handle implements caddyevents.Handler.
func (s stopHandler) Handle(context.Context, caddy.Event) error {
	s.h.streams.Drain(s.h.drain)
	return nil
}
