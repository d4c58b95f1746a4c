package caddymodule

import (
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
)

// ToolLimit caps the concurrent calls of the tools whose names match a
// pattern.
type ToolLimit struct {
	// Pattern is a glob (path.Match syntax) over tool names. The first
	// matching rule applies. Required.
	Pattern string `json:"pattern"`
	// MaxInflight is how many calls of the matching tools may run at once;
	// 0 exempts them from later rules. Required.
	MaxInflight int `json:"max_inflight"`
	// Timeout is how long a call may wait for a slot; without one a call
	// over the limit is refused at once. Default: 0.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// AdaptiveLimit makes the in-flight limit follow the upstream's latency.
type AdaptiveLimit struct {
	// Min is the lowest the limit goes. Default: 4.
	Min int `json:"min,omitempty"`
	// Max is the highest the limit goes; it never exceeds max_inflight.
	// Default: max_inflight, or 1000 without one.
	Max int `json:"max,omitempty"`
	// Initial is the starting limit. Default: 20.
	Initial int `json:"initial,omitempty"`
}

// durationByClass holds the request duration histogram of each method
// class.
var durationByClass = func() (o [admission.NumClasses]prometheus.Observer) {
	for i := range o {
		o[i] = metrics.requestDuration.WithLabelValues(admission.Class(i).String())
	}
	return o
}()

// defaultClientKey identifies a client by its IP address as Caddy
// resolves it (honouring the server's trusted_proxies).
const defaultClientKey = "{http.vars.client_ip}"

// provisionAdmission builds the handler's admission controller.
func (h *Handler) provisionAdmission(ctx caddy.Context) error {
	appIface, err := ctx.App("mcp")
	if err != nil {
		return fmt.Errorf("loading mcp app: %w", err)
	}
	h.app = appIface.(*App)
	h.app.global.noteDrain(h.drain)
	cfg := admission.Config{
		MaxInflight:        h.MaxInflight,
		QueueSize:          h.QueueSize,
		QueueTimeout:       time.Duration(h.QueueTimeout),
		ClientMaxInflight:  h.ClientMaxInflight,
		ClientSessionRate:  h.ClientSessionRate,
		ClientSessionBurst: h.ClientSessionBurst,
		SessionMaxInflight: h.SessionMaxInflight,
	}
	for _, t := range h.Tools {
		cfg.Tools = append(cfg.Tools, admission.ToolRule{Pattern: t.Pattern, MaxInflight: t.MaxInflight, Timeout: time.Duration(t.Timeout)})
	}
	if a := h.Adaptive; a != nil {
		maxLimit := a.Max
		if maxLimit <= 0 {
			maxLimit = h.MaxInflight
		}
		cfg.Adaptive = &admission.AdaptiveConfig{InitialLimit: a.Initial, MinLimit: a.Min, MaxLimit: maxLimit}
	}
	ctrl, err := admission.New(cfg, h.app.global.inflight)
	if err != nil {
		return fmt.Errorf("admission: %w", err)
	}
	h.ctrl = ctrl
	h.streamLimit = admission.NewLimiter(h.MaxStreams, 0, 0)
	h.clientKey = h.ClientKey
	if h.clientKey == "" {
		h.clientKey = defaultClientKey
	}
	return nil
}

// admit decides whether a request may proceed, from its headers and peek
// alone, before any upstream is dialled. A GET opens a stream and takes a
// stream slot instead of a request slot. On refusal it writes the answer
// and returns ok false; otherwise release must be called when the request
// is over.
func (h *Handler) admit(w http.ResponseWriter, r *http.Request, call *mcp.Call, res resolution) (release func(status int), ok bool) {
	if r.Method == http.MethodGet {
		global := h.app.global.streams
		if !global.TryAcquire() {
			h.refuseAdmission(w, call, h.ctrl.Refuse(admission.ReasonCapacity))
			return nil, false
		}
		if !h.streamLimit.TryAcquire() {
			global.Release()
			h.refuseAdmission(w, call, h.ctrl.Refuse(admission.ReasonCapacity))
			return nil, false
		}
		return func(int) { h.streamLimit.Release(); global.Release() }, true
	}
	first := call.First()
	req := admission.Request{
		Class:      admission.ClassOf(first.Method, first.Kind == mcp.KindResponse, first.Kind == mcp.KindNotification),
		InSession:  res.session != nil,
		NewSession: res.session == nil && call.IsInitialize(),
	}
	if h.ClientMaxInflight > 0 || h.ClientSessionRate > 0 {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl != nil {
			req.ClientKey = repl.ReplaceAll(h.clientKey, "")
		}
	}
	if res.session != nil && h.SessionMaxInflight > 0 {
		req.SessionKey = res.key
	}
	if first.Method == "tools/call" {
		req.Tool = first.Name
	}
	t, refusal, waited := h.ctrl.Admit(r.Context(), &req)
	if refusal != nil {
		h.refuseAdmission(w, call, refusal)
		return nil, false
	}
	if waited > 0 {
		metrics.queueWait.Observe(waited.Seconds())
	}
	start := time.Now()
	duration := durationByClass[req.Class]
	return func(status int) {
		d := time.Since(start)
		t.Release(d, status >= 500)
		duration.Observe(d.Seconds())
	}, true
}

// refuseAdmission answers a refused request: 503 or 429 with Retry-After
// and a JSON-RPC error carrying the request id. A refusal by a tool limit
// is a JSON-RPC error inside a 200, so one busy tool does not look like a
// broken server to the client.
func (h *Handler) refuseAdmission(w http.ResponseWriter, call *mcp.Call, ref *admission.Refusal) {
	refusalCounters[ref.Reason].Inc()
	first := call.First()
	if c := h.logger.Check(zapcore.DebugLevel, "request refused"); c != nil {
		c.Write(zap.String("reason", ref.Reason.String()), zap.String("method", first.Method), zap.Int("status", ref.Status))
	}
	msg := "server overloaded: " + ref.Reason.String() + ", retry after " + ref.RetryAfterHeader + "s"
	w.Header().Set("Retry-After", ref.RetryAfterHeader)
	if ref.Reason == admission.ReasonToolLimit && first.ID != "" {
		_ = h.refuse(w, mcp.Refuse(http.StatusOK, mcp.CodeServerError, first.ID, "tool "+first.Name+" is busy, retry after "+ref.RetryAfterHeader+"s"))
		return
	}
	_ = h.refuse(w, mcp.Refuse(ref.Status, mcp.CodeServerError, first.ID, msg))
}
