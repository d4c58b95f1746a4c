package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/relay"
	"github.com/mcpgate/mcpgate/sse"
)

// processKey is the session key used when none is configured: one per
// process, so sessions survive config reloads.
var processKey = sync.OnceValue(mcp.GenerateKey)

// legacyParams are the query parameters of the legacy endpoints every
// handler of the process mapped, kept across reloads: a request naming
// one without a route token is refused.
var legacyParams = &mcp.LegacyParams{}

// Provision sets defaults, loads the embedded reverse_proxy and prepares
// the session sealer.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.now = time.Now
	h.setDefaults()
	h.streams = sse.NewStreamSet(drainHooks)
	if err := registerMetrics(ctx); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	h.origins = mcp.OriginPolicy{Allowed: h.AllowedOrigins}
	if err := h.provisionSealer(); err != nil {
		return err
	}
	if err := h.provisionAdmission(ctx); err != nil {
		return err
	}
	maxBody := h.MaxBody
	if maxBody == 0 {
		maxBody = defaultMaxBody
	}
	h.body = bodyLimits(orDefault(h.MaxPeek, defaultMaxPeek), maxBody,
		orDefault(time.Duration(h.BodyTimeout), defaultBodyTimeout), h.app.global.Memory())
	if err := h.provisionGovernance(ctx); err != nil {
		return err
	}
	if err := h.provisionDeadlines(); err != nil {
		return err
	}
	if h.MaxResponse < 0 {
		return fmt.Errorf("max_response %d: want a size", h.MaxResponse)
	}
	if err := h.loadProxy(ctx); err != nil {
		return err
	}
	h.resolver = &mcp.Resolver{
		Sealer: h.sealer, Tokens: &h.tokens, Upstreams: h.upstreams,
		RequireSession: h.relayCfg.RequireSession, Now: h.now,
		Legacy: legacyParams, Refused: h.sessionRefused,
	}
	h.provisionRelay()
	h.watchStop(ctx)
	h.registerUpstreams()
	h.registered = true
	return h.provisionAudit(ctx)
}

// loadProxy loads the embedded reverse_proxy with the MCP defaults applied
// (see applyProxyDefaults).
func (h *Handler) loadProxy(ctx caddy.Context) error {
	if h.ProxyRaw == nil {
		return errors.New("mcp_proxy needs at least one upstream")
	}
	raw, statics, err := applyProxyDefaults(h.ProxyRaw)
	if err != nil {
		return fmt.Errorf("configuring embedded reverse_proxy: %w", err)
	}
	h.ProxyRaw = raw
	h.upstreams = statics
	mod, err := ctx.LoadModule(h, "ProxyRaw")
	if err != nil {
		return fmt.Errorf("loading embedded reverse_proxy: %w", err)
	}
	rp, ok := mod.(*reverseproxy.Handler)
	if !ok {
		return fmt.Errorf("embedded proxy is %T, want reverse_proxy", mod)
	}
	if h.transport, ok = rp.Transport.(*RelayTransport); !ok {
		return fmt.Errorf("embedded proxy's transport is %T, want mcp_relay", rp.Transport)
	}
	h.proxy = rp
	h.downRetryAfter = downRetryAfter(rp.HealthChecks)
	return nil
}

// setDefaults sets the session, body and stream settings from the config,
// each to its default where the config leaves it unset.
func (h *Handler) setDefaults() {
	h.drain = orDefault(time.Duration(h.Drain), defaultDrain)
	h.relayCfg = relay.Config{
		MaxEvent:        orDefault(h.MaxEventSize, defaultMaxEvent),
		QueueEvents:     orDefault(h.StreamBufferEvents, defaultQueueEvents),
		QueueBytes:      orDefault(h.StreamBufferBytes, defaultQueueBytes),
		WriteTimeout:    orDefault(time.Duration(h.WriteTimeout), defaultWriteTimeout),
		Keepalive:       orDefault(time.Duration(h.Keepalive), defaultKeepalive),
		ReplayEvents:    orDefault(h.ReplayEvents, defaultReplayEvents),
		ReplayBytes:     orDefault(h.ReplayBytes, defaultReplayBytes),
		ReplayAge:       orDefault(time.Duration(h.ReplayAge), defaultReplayAge),
		Retry:           orDefault(time.Duration(h.RetryHint), defaultRetry),
		Handoff:         h.StreamHandoff == nil || *h.StreamHandoff,
		MaxResponse:     h.MaxResponse,
		MaxTimeout:      time.Duration(h.MaxTimeout),
		SessionLifetime: orDefault(time.Duration(h.SessionLifetime), defaultSessionLifetime),
		RequireSession:  h.RequireSession == nil || *h.RequireSession,
	}
}

// provisionSealer prepares the session sealer from the configured keys
// (placeholders replaced), or the process's key when none is configured.
func (h *Handler) provisionSealer() error {
	repl := caddy.NewReplacer()
	var keys [][]byte
	for i, k := range h.SessionKeys {
		key, err := mcp.ParseKey(repl.ReplaceKnown(k, ""))
		if err != nil {
			return fmt.Errorf("session key %d: %w", i, err)
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		keys = [][]byte{processKey()}
	}
	sealer, err := mcp.NewSealer(keys)
	if err != nil {
		return fmt.Errorf("loading session keys: %w", err)
	}
	h.sealer = sealer
	return nil
}

// Cleanup closes the handler's open streams after the drain delay and
// takes the handler off the side-request routes. It releases only what a
// Provision that may have failed halfway acquired.
func (h *Handler) Cleanup() error {
	if h.streams != nil {
		h.streams.Drain(h.drain)
	}
	h.auditor.close()
	if h.registered {
		h.unregisterUpstreams()
		h.registered = false
	}
	return nil
}

// downRetryAfter returns how long, in whole seconds, a health check keeps
// an upstream marked unavailable: the passive checks' fail duration, else
// the active checks' interval, else one second.
func downRetryAfter(hc *reverseproxy.HealthChecks) int {
	var d time.Duration
	if hc != nil && hc.Passive != nil {
		d = time.Duration(hc.Passive.FailDuration)
	}
	if d <= 0 && hc != nil && hc.Active != nil && hc.Active.IsEnabled() {
		d = time.Duration(hc.Active.Interval)
	}
	return max(1, int((d+time.Second-1)/time.Second))
}

// orDefault returns v, or def when v is not positive.
func orDefault[T int | int64 | float64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// applyProxyDefaults sets the MCP defaults on the embedded reverse_proxy's
// JSON: the mcp_session policy wrapping the configured one, and the
// mcp_relay transport wrapping the configured one, which also sends the
// upstream's host:port as Host unless the user set a Host header (as
// `header_up Host {upstream_hostport}` would, at less cost than a header
// operation). It returns the static upstream dial addresses, or nil when
// upstreams are dynamic. (SSE bodies are relayed by mcp_proxy itself,
// which flushes every event; other bodies keep reverse_proxy's own
// flushing.)
func applyProxyDefaults(raw json.RawMessage) (out json.RawMessage, statics map[string]struct{}, err error) {
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, nil, err
	}
	userHost := false
	if hdrs, _ := cfg["headers"].(map[string]any); hdrs != nil {
		if req, _ := hdrs["request"].(map[string]any); req != nil {
			for _, op := range []string{"set", "add"} {
				if m, _ := req[op].(map[string]any); m != nil && hasKeyFold(m, "Host") {
					userHost = true
				}
			}
		}
	}
	lb, _ := cfg["load_balancing"].(map[string]any)
	if lb == nil {
		lb = map[string]any{}
		cfg["load_balancing"] = lb
	}
	sel, _ := lb["selection_policy"].(map[string]any)
	if sel == nil || sel["policy"] != "mcp_session" {
		policy := map[string]any{"policy": "mcp_session"}
		if sel != nil {
			policy["fallback"] = sel
		}
		lb["selection_policy"] = policy
	}
	if _, dynamic := cfg["dynamic_upstreams"]; !dynamic {
		statics = map[string]struct{}{}
		ups, _ := cfg["upstreams"].([]any)
		for _, u := range ups {
			if m, ok := u.(map[string]any); ok {
				if d, ok := m["dial"].(string); ok {
					statics[d] = struct{}{}
				}
			}
		}
	}
	wrapTransport(cfg, !userHost)
	out, err = json.Marshal(cfg)
	return out, statics, err
}

func hasKeyFold(m map[string]any, key string) bool {
	for k := range m {
		if http.CanonicalHeaderKey(k) == key {
			return true
		}
	}
	return false
}

// provisionRelay prepares what relays the handler's admitted requests.
func (h *Handler) provisionRelay() {
	cfg := h.relayCfg
	cfg.Deadlines = h.deadlines.Any()
	h.relay = &relay.Proxy{
		Config: cfg, Logger: h.logger, Gov: h.app.global.Governor, Lists: lists{h}, Sealer: h.sealer, LegacyParams: legacyParams,
		Streams: h.streams, Inner: h.transport.inner, Now: h.now, Metrics: relayMetrics,
		Side: h.sideRequest, StreamHooks: h.streamHooksFor,
		Panicked: func(where string, v any) { panicked(h.logger, where, v) },
	}
}
