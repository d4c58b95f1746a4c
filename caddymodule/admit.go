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
	// MaxInflight is how many calls of the matching tools may run at once.
	// 0 in a rule without Timeout exempts the matching calls from the
	// caps of later rules. Default: 0.
	MaxInflight int `json:"max_inflight"`
	// Wait is how long a call may wait for a slot under MaxInflight;
	// without it a call over the limit is refused at once. Default: 0.
	Wait caddy.Duration `json:"wait,omitempty"`
	// Timeout bounds the whole life of a call of the matching tools, as
	// RequestTimeout does for every request, in its place. Default: the
	// handler's RequestTimeout.
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
	h.app.noteDrain(h.drain)
	if h.QueueSize > 0 && h.MaxInflight == 0 && h.Adaptive == nil {
		return fmt.Errorf("queue %d: without max_inflight (or limit adaptive) no request ever waits; set max_inflight or remove queue", h.QueueSize)
	}
	for _, t := range h.Tools {
		if t.MaxInflight == 0 && t.Wait > 0 {
			return fmt.Errorf("tool %s: a wait without max_inflight does nothing; set max_inflight or remove wait", t.Pattern)
		}
	}
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
		if t.MaxInflight == 0 && t.Timeout > 0 {
			continue // a deadline only, see provisionDeadlines
		}
		cfg.Tools = append(cfg.Tools, admission.ToolRule{Pattern: t.Pattern, MaxInflight: t.MaxInflight, Timeout: time.Duration(t.Wait)})
	}
	if a := h.Adaptive; a != nil {
		maxLimit := a.Max
		if maxLimit <= 0 {
			maxLimit = h.MaxInflight
		}
		cfg.Adaptive = &admission.AdaptiveConfig{InitialLimit: a.Initial, MinLimit: a.Min, MaxLimit: maxLimit}
	}
	cfg.Counts = h.app.global.Refusals()
	ctrl, err := admission.New(cfg, h.app.global.InflightLimit())
	if err != nil {
		return fmt.Errorf("admission: %w", err)
	}
	h.ctrl = ctrl
	h.streamSlots = admission.StreamSlots{Process: h.app.global.StreamLimit(), Handler: admission.NewLimiter(h.MaxStreams, 0, 0)}
	if h.ClientMaxStreams > 0 {
		h.streamSlots.Client = admission.NewKeyedLimiter(h.ClientMaxStreams, admission.DefaultMaxKeys)
	}
	h.principal = h.Principal
	if h.principal == "" {
		h.principal = defaultPrincipal
	}
	h.clientKey = h.ClientKey
	if h.clientKey == "" {
		h.clientKey = defaultClientKey
	}
	h.ipv6Prefix = h.ClientIPv6Prefix
	if h.ipv6Prefix < 0 || h.ipv6Prefix > 128 {
		return fmt.Errorf("client_ipv6_prefix %d: want 1 to 128 bits", h.ipv6Prefix)
	}
	return nil
}

// admitExchange admits a request before any upstream is dialled: the
// service level first, then room in the session table for a request that
// opens a session, then the request's session, then the limits. On
// success the request holds its slots until it is over (exchange.over).
func (h *Handler) admitExchange(x *exchange) *mcp.Refusal {
	r, call := x.r, &x.call
	g := h.app.global
	x.clientKey = h.clientKeyOf(r)
	x.level = g.Level()
	id := call.First().ID
	opens := mcp.OpensSession(r.Method, call, x.res.Session != nil)
	if ok, why := x.level.Admits(mcp.Finishing(r.Method, call), opens); !ok {
		g.Refusals().Add(admission.ReasonLevel)
		x.w.Header().Set("Retry-After", levelRetryAfter)
		return mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, id, why+", retry after "+levelRetryAfter+"s")
	}
	if opens {
		if err := admission.RoomForSession(g.Sessions(), x.clientKey, x.level == admission.LevelProtective); err != nil {
			x.w.Header().Set("Retry-After", levelRetryAfter)
			return h.relay.SessionTableRefusal(err, id)
		}
	}
	sess, end, ref := h.trackSession(r, call, x.res, x.clientKey, x.level)
	if ref != nil {
		if ref.Status != http.StatusNotFound {
			x.w.Header().Set("Retry-After", levelRetryAfter)
		}
		return ref
	}
	release, ref := h.admit(x)
	if ref != nil {
		end()
		return ref
	}
	x.sess, x.endSession, x.release = sess, end, release
	metrics.requestsInFlight.Inc()
	return nil
}

// admit applies the limits, from the request's headers and peek alone. A
// GET opens a stream and takes stream slots (process, handler, client)
// instead of request slots; a legacy GET also opens a session and is
// subject to the client's session rate. A POST takes request slots by all
// its messages: a batch is classed by its most expensive member and
// counts as its number of requests, each tools/call member against its
// tool's cap. The returned release must be called when the request is
// over.
func (h *Handler) admit(x *exchange) (release func(status int), _ *mcp.Refusal) {
	r, call := x.r, &x.call
	if r.Method == http.MethodGet {
		if mcp.OpensLegacyStream(r.Method, call, x.res.Session != nil) {
			if refusal := h.ctrl.AllowNewSession(x.clientKey); refusal != nil {
				return nil, h.refuseAdmission(x.w, call, refusal)
			}
		}
		return h.admitStream(x)
	}
	req := admission.Request{
		InSession:  x.res.Session != nil,
		NewSession: x.res.Session == nil && call.IsInitialize(),
		ClientKey:  x.clientKey,
	}
	requestOf(call, &req)
	if x.res.Session != nil && h.SessionMaxInflight > 0 {
		req.SessionKey = x.res.Key
	}
	t, refusal, waited := h.ctrl.Admit(r.Context(), &req)
	if refusal != nil {
		return nil, h.refuseAdmission(x.w, call, refusal)
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
	}, nil
}

// requestOf fills the class, weight and tools of an admission request
// from every message of a POST.
func requestOf(call *mcp.Call, req *admission.Request) {
	msgs := call.Peek.Messages
	for i := range msgs {
		m := &msgs[i]
		c := admission.ClassOf(m.Method, m.Kind == mcp.KindResponse, m.Kind == mcp.KindNotification)
		if i == 0 || c > req.Class {
			req.Class = c
		}
		if m.Kind == mcp.KindRequest {
			req.Weight++
			if m.Method == "tools/call" {
				if call.Peek.Batch {
					req.Tools = append(req.Tools, m.Name)
				} else {
					req.Tool = m.Name
				}
			}
		}
	}
}

// admitStream takes the stream slots of a GET.
func (h *Handler) admitStream(x *exchange) (func(int), *mcp.Refusal) {
	release, reason, ok := h.streamSlots.Acquire(x.clientKey)
	if !ok {
		return nil, h.refuseAdmission(x.w, &x.call, h.ctrl.Refuse(reason))
	}
	return func(int) { release() }, nil
}

// refuseAdmission returns the answer to a refused request: 503 or 429
// with Retry-After and a JSON-RPC error carrying the request id. A
// refusal by a tool limit is a JSON-RPC error inside a 200, so one busy
// tool does not look like a broken server to the client.
func (h *Handler) refuseAdmission(w http.ResponseWriter, call *mcp.Call, ref *admission.Refusal) *mcp.Refusal {
	first := call.First()
	if c := h.logger.Check(zapcore.DebugLevel, "request refused"); c != nil {
		c.Write(zap.String("reason", ref.Reason.String()), zap.String("method", first.Method), zap.Int("status", ref.Status))
	}
	msg := "server overloaded: " + ref.Reason.String() + ", retry after " + ref.RetryAfterHeader + "s"
	w.Header().Set("Retry-After", ref.RetryAfterHeader)
	if ref.Reason == admission.ReasonToolLimit && first.ID != "" && !call.Peek.Batch {
		return mcp.Refuse(http.StatusOK, mcp.CodeServerError, first.ID, "tool "+first.Name+" is busy, retry after "+ref.RetryAfterHeader+"s")
	}
	return mcp.Refuse(ref.Status, mcp.CodeServerError, first.ID, msg)
}

// Admission returns the handler's admission controller, once provisioned:
// its queue, requests in flight and tool limits can be watched through it.
func (h *Handler) Admission() *admission.Controller { return h.ctrl }

// Idle reports whether the handler holds no admission slot and queues no
// request: no request or stream in flight under its own limits, nor under
// a session's, client's or tool's (the process-wide limits, shared with
// other handlers, are not looked at). A handler not provisioned is idle.
func (h *Handler) Idle() bool {
	return h.ctrl == nil || h.ctrl.Idle() && h.streamSlots.Idle()
}
