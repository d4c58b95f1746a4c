package caddymodule

import (
	"context"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"

	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// drainHooks count the streams a handler's drain closes and recover a
// panic in a drain timer.
var drainHooks = &sse.StreamSetHooks{
	Drained: func() { metrics.streamsDrained.Inc() },
	Panic:   func(v any) { panicked(nil, "stream drain", v) },
}

// track records an open attachment with the handler, the process and the
// session (whose eviction closes it); the returned func forgets it.
func (h *Handler) track(a *sse.Attachment, s *sse.Stream, resumable bool, sess *resources.Session) func() {
	forgetHandler := h.streams.Add(a, s, resumable)
	forgetProcess := h.app.global.OpenStreams().Add(a, s, resumable)
	forgetSession := func() {}
	if sess != nil {
		forgetSession = sess.AddStream(func(error) {
			a.Close()
			s.Close()
		})
	}
	return func() {
		forgetSession()
		forgetProcess()
		forgetHandler()
	}
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
