package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Defaults of mcp_proxy.
const (
	defaultMaxPeek         = 64 << 10
	defaultSessionLifetime = 24 * time.Hour
	defaultMaxEvent        = 1 << 20
	defaultQueueEvents     = 100
	defaultQueueBytes      = 1 << 20
	defaultWriteTimeout    = 10 * time.Second
	defaultKeepalive       = 15 * time.Second
	defaultReplayEvents    = 100
	defaultReplayBytes     = 1 << 20
	defaultReplayAge       = 60 * time.Second
	defaultRetry           = time.Second
	defaultDrain           = 5 * time.Second
)

// Handler is `mcp_proxy`, a reverse proxy for Model Context Protocol
// servers. It serves every MCP HTTP transport on one endpoint (legacy
// HTTP+SSE, Streamable HTTP with sessions, the stateless 2026-07-28
// revision), checks each request against its protocol revision before any
// upstream is dialled, and pins sessions to the upstream that created them
// with sealed session ids, so many upstreams and many Caddy instances serve
// the same sessions without shared state.
//
// It embeds Caddy's reverse_proxy, so load balancing, health checks,
// retries, transports and header manipulation work as they do there. It
// sets the defaults MCP needs: the Host header is rewritten to the
// upstream's (MCP SDK servers refuse a foreign Host on loopback), SSE
// streams are relayed event by event with a flush after each, and the
// `mcp_session` selection policy routes requests of a session, keeping any
// configured policy as the fallback for new sessions.
type Handler struct {
	// ProxyRaw is the embedded reverse_proxy handler with its upstreams and
	// every reverse_proxy option.
	ProxyRaw json.RawMessage `json:"proxy,omitempty" caddy:"namespace=http.handlers inline_key=handler"`

	// SessionKeys are the keys that seal session ids, each the base64 of
	// 32 random bytes or a passphrase of at least 32 characters. The first
	// key seals; every key opens, so a key is rotated by putting the new
	// one first and removing the old one after SessionLifetime. Instances
	// that must serve each other's sessions need the same keys. Default:
	// a random key made once per process, so sessions survive config
	// reloads but not restarts. Placeholders such as `{env.MCP_KEY}` are
	// replaced at provisioning.
	SessionKeys []string `json:"session_keys,omitempty"`

	// SessionLifetime is how long a sealed session id stays valid after
	// the session was created; a client presenting an older one gets 404
	// and starts a new session. Default: 24h.
	SessionLifetime caddy.Duration `json:"session_lifetime,omitempty"`

	// MaxPeek is how many bytes of a POST body are read to classify the
	// JSON-RPC message before the request is admitted and forwarded; the
	// body is replayed to the upstream unchanged. A body whose envelope
	// (method, id) is not found within this many bytes is refused with
	// 413. Bodies up to this size are also checked to be valid JSON.
	// Default: 64KiB.
	MaxPeek int64 `json:"max_peek,omitempty"`

	// AllowedOrigins lists the browser origins that may call the endpoint:
	// "*", exact origins such as "https://app.example.com", or wildcard
	// hosts such as "https://*.example.com". A request whose Origin header
	// is present and not allowed gets 403 before it reaches an upstream
	// (DNS-rebinding protection). Default: only an origin whose host and
	// port equal the request's Host.
	AllowedOrigins []string `json:"allowed_origins,omitempty"`

	// AllowedHosts lists Host names (without port) accepted on a
	// loopback listener besides loopback names. A request that reached a
	// loopback listener with any other Host is refused with 403: that is
	// a DNS-rebinding attempt, which the upstream cannot detect because
	// the proxy rewrites Host. Add the public names here when a local
	// load balancer forwards to Caddy on 127.0.0.1. Default: none.
	AllowedHosts []string `json:"allowed_hosts,omitempty"`

	// RequireSession refuses with 400 a session-era request other than
	// initialize that carries no Mcp-Session-Id (and a legacy POST without
	// its route), the answer the MCP spec gives for a missing session. Set
	// it to false for upstreams that run Streamable HTTP without sessions
	// under 2025-era clients. Default: true.
	RequireSession *bool `json:"require_session,omitempty"`

	// MaxEventSize caps one Server-Sent Event from an upstream, in bytes.
	// A larger event closes the stream, with a JSON-RPC error for the
	// pending request when one is known. Default: 1MiB.
	MaxEventSize int64 `json:"max_event_size,omitempty"`

	// StreamBufferEvents and StreamBufferBytes bound the events of one
	// stream waiting to be written to its client. While nothing waits, the
	// relay writes each upstream read straight through (one flush per
	// read); events queue only while a write is in progress (a replay, a
	// keepalive). When either bound is reached the relay stops reading the
	// upstream, so TCP flow control slows it down, until the client makes
	// room; a client that makes none within write_timeout is a slow
	// consumer: its stream is closed (with a retry hint for clients at
	// 2025-11-25 or later, when the connection still takes it) and it
	// resumes from the replay ring. Defaults: 100 events, 1MiB.
	StreamBufferEvents int   `json:"stream_buffer_events,omitempty"`
	StreamBufferBytes  int64 `json:"stream_buffer_bytes,omitempty"`

	// WriteTimeout is the deadline of each write to a stream's client (the
	// events of one upstream read are written under one deadline); a
	// client that does not take them within it is a slow consumer. While a
	// write blocks, the upstream is not read. Default: 10s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// Keepalive is how long a stream may stay silent before the proxy
	// sends an SSE comment, so that idle timeouts of load balancers and
	// clients do not cut it. Default: 15s.
	Keepalive caddy.Duration `json:"keepalive,omitempty"`

	// ReplayEvents, ReplayBytes and ReplayAge bound the replay ring of each
	// request stream: the events a client that dropped can be sent again
	// when it resumes with Last-Event-ID, also when the upstream keeps no
	// event store. A stream whose client dropped keeps being read for up
	// to ReplayAge; if nobody resumes it by then the request is cancelled
	// upstream. Defaults: 100 events, 1MiB, 1m.
	ReplayEvents int            `json:"replay_events,omitempty"`
	ReplayBytes  int64          `json:"replay_bytes,omitempty"`
	ReplayAge    caddy.Duration `json:"replay_age,omitempty"`

	// StreamHandoff lets an SSE GET stream leave Caddy's HTTP server once
	// its response header is sent: mcp_proxy takes the client's HTTP/1.x
	// connection over (as reverse_proxy does for WebSockets) and relays the
	// stream on two small goroutines of its own, instead of holding the
	// request's handler goroutine, net/http's connection reader and their
	// buffers for the stream's whole life. A handed-off response is
	// delimited by the close of its connection ("Connection: close", no
	// chunked encoding), which every SSE client reads. Caddy's access log
	// and HTTP metrics record such a request when its stream starts
	// (status 200, the time to the response header); its end shows in
	// mcp_proxy's session and stream metrics. It applies only to streams
	// mcp_proxy opens on connections of its own (a plain-HTTP upstream),
	// never to HTTP/2 or HTTP/3 clients, the legacy transport, a stream
	// resumed from the replay ring, or a response another handler encodes.
	// Default: true.
	StreamHandoff *bool `json:"stream_handoff,omitempty"`

	// RetryHint is the `retry:` value sent before the proxy closes a stream
	// it expects the client to resume (slow consumer, drain). Default: 1s.
	RetryHint caddy.Duration `json:"retry_hint,omitempty"`

	// Drain is how long open streams may run after a config reload or
	// shutdown begins. Each is closed, with a retry hint, at a random
	// moment between 80% and 100% of it, so clients do not reconnect all
	// at once. Default: 5s.
	Drain caddy.Duration `json:"drain,omitempty"`

	// MaxInflight caps the requests in flight through this handler; past
	// it a request waits in the queue (see QueueSize) or is refused with
	// 503 and Retry-After. SSE GET streams do not count here (see
	// MaxStreams). 0 means no cap. Default: 0.
	MaxInflight int `json:"max_inflight,omitempty"`

	// QueueSize is how many requests may wait for an in-flight slot, and
	// QueueTimeout how long each may wait. Waiters are served by priority
	// (work in existing sessions before new sessions; ping, notifications
	// and responses first, then listings, then tool calls and reads). A
	// queue that drains, or refuses nobody, absorbs bursts at its full
	// size: within a priority it serves the oldest first, but the newest
	// once the oldest has waited half of QueueTimeout, so stale waiters
	// time out instead of holding up fresh ones. Under sustained overload
	// (the queue has not been empty for an interval, 100ms or half of
	// QueueTimeout if shorter, and has refused a request in it) the queue is
	// standing, as in CoDel: it holds at most clamp(⌊r × 5ms⌋, 1,
	// QueueSize) waiters, r being the rate at which it handed slots to
	// waiters over the last interval, serves them oldest first, and
	// refuses newcomers beyond that at once, so admitted requests wait
	// about 5ms and refused ones do not wait at all. It stands until it
	// has refused nothing for an interval. A QueueTimeout of at most 5ms
	// turns this off. See admission.Limiter. Defaults: 0 (no queue), 0.
	QueueSize    int            `json:"queue_size,omitempty"`
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	// MaxStreams caps the SSE GET streams open through this handler; past
	// it a new stream is refused with 503. 0 means no cap. Default: 0.
	MaxStreams int `json:"max_streams,omitempty"`

	// ClientKey identifies a client for the per-client limits; any
	// placeholder, such as `{http.auth.user.id}` or
	// `{http.request.header.X-Api-Key}`. Default: `{http.vars.client_ip}`,
	// the client's address with the server's trusted_proxies honoured.
	ClientKey string `json:"client_key,omitempty"`

	// ClientMaxInflight caps one client's requests in flight; past it the
	// client gets 429. 0 means no cap. Default: 0.
	ClientMaxInflight int `json:"client_max_inflight,omitempty"`

	// ClientSessionRate caps how many new sessions per second one client
	// may open (with bursts of ClientSessionBurst); past it the client
	// gets 429 with the time until its next session as Retry-After. 0
	// means no cap. Defaults: 0, and a burst of the rate rounded up.
	ClientSessionRate  float64 `json:"client_session_rate,omitempty"`
	ClientSessionBurst int     `json:"client_session_burst,omitempty"`

	// SessionMaxInflight caps one session's requests in flight; past it
	// the client gets 429. 0 means no cap. Default: 0.
	SessionMaxInflight int `json:"session_max_inflight,omitempty"`

	// Tools caps heavy tools: each rule limits the concurrent calls of the
	// tools matching its pattern, without starving the others. A call over
	// its rule's limit is answered with a JSON-RPC error inside a 200.
	// Default: no rules; every tool shares the other limits.
	Tools []ToolLimit `json:"tools,omitempty"`

	// Adaptive, when set, makes the in-flight limit follow the upstream's
	// latency (a gradient controller: limit·min(1, 1.5·longRTT/shortRTT) +
	// 4, smoothed; see the admission package), so the capacity need not
	// be known. Default: off, max_inflight is a fixed limit. EXPERIMENTAL.
	Adaptive *AdaptiveLimit `json:"adaptive,omitempty"`

	proxy       caddyhttp.MiddlewareHandler
	sealer      *mcp.Sealer
	tokens      tokenCache // tokens sealer opened
	origins     mcp.OriginPolicy
	upstreams   map[string]struct{} // static dial addresses; nil with dynamic upstreams
	logger      *zap.Logger
	requireSess bool
	handoff     bool
	lifetime    time.Duration
	maxPeek     int64
	now         func() time.Time
	peekBufPool sync.Pool
	transport   *relayTransport
	// rewriteHost: the user set no Host for upstream requests, so the
	// transport sets it to the upstream's host:port.
	rewriteHost bool

	maxEvent                int64
	queueEvents             int
	queueBytes              int64
	writeTimeout, keepalive time.Duration
	replayEvents            int
	replayBytes             int64
	replayAge, retry, drain time.Duration
	streams                 *streamSet
	app                     *App
	ctrl                    *admission.Controller
	streamLimit             *admission.Limiter
	clientKey               string
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_proxy",
		New: func() caddy.Module { return new(Handler) },
	}
}

// processKey is the session key used when none is configured: one per
// process, so sessions survive config reloads.
var processKey = sync.OnceValue(mcp.GenerateKey)

// Provision sets defaults, loads the embedded reverse_proxy and prepares
// the session sealer.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.now = time.Now
	h.lifetime = time.Duration(h.SessionLifetime)
	if h.lifetime <= 0 {
		h.lifetime = defaultSessionLifetime
	}
	h.maxPeek = h.MaxPeek
	if h.maxPeek <= 0 {
		h.maxPeek = defaultMaxPeek
	}
	h.requireSess = h.RequireSession == nil || *h.RequireSession
	h.handoff = h.StreamHandoff == nil || *h.StreamHandoff
	h.maxEvent = orDefault(h.MaxEventSize, defaultMaxEvent)
	h.queueEvents = orDefault(h.StreamBufferEvents, defaultQueueEvents)
	h.queueBytes = orDefault(h.StreamBufferBytes, defaultQueueBytes)
	h.writeTimeout = orDefault(time.Duration(h.WriteTimeout), defaultWriteTimeout)
	h.keepalive = orDefault(time.Duration(h.Keepalive), defaultKeepalive)
	h.replayEvents = orDefault(h.ReplayEvents, defaultReplayEvents)
	h.replayBytes = orDefault(h.ReplayBytes, defaultReplayBytes)
	h.replayAge = orDefault(time.Duration(h.ReplayAge), defaultReplayAge)
	h.retry = orDefault(time.Duration(h.RetryHint), defaultRetry)
	h.drain = orDefault(time.Duration(h.Drain), defaultDrain)
	h.streams = newStreamSet()
	if err := registerMetrics(ctx); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	h.origins = mcp.OriginPolicy{Allowed: h.AllowedOrigins}
	h.peekBufPool.New = func() any { b := make([]byte, h.maxPeek+1); return &b }

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

	if err := h.provisionAdmission(ctx); err != nil {
		return err
	}
	if h.ProxyRaw == nil {
		return errors.New("mcp_proxy needs at least one upstream")
	}
	raw, statics, userHost, err := applyProxyDefaults(h.ProxyRaw)
	if err != nil {
		return fmt.Errorf("configuring embedded reverse_proxy: %w", err)
	}
	h.ProxyRaw = raw
	h.upstreams = statics
	h.rewriteHost = !userHost
	mod, err := ctx.LoadModule(h, "ProxyRaw")
	if err != nil {
		return fmt.Errorf("loading embedded reverse_proxy: %w", err)
	}
	rp, ok := mod.(*reverseproxy.Handler)
	if !ok {
		return fmt.Errorf("embedded proxy is %T, want reverse_proxy", mod)
	}
	h.transport = &relayTransport{inner: rp.Transport, streams: newStreamDialer(rp.Transport)}
	rp.Transport = h.transport
	h.proxy = rp
	if err := acquireRegistry(); err != nil {
		return err
	}
	h.watchStop(ctx)
	return nil
}

// Cleanup closes the handler's open streams after the drain delay and
// releases the shared stream registry.
func (h *Handler) Cleanup() error {
	h.streams.drain(h.drain)
	return releaseRegistry()
}

// orDefault returns v, or def when v is not positive.
func orDefault[T int | int64 | float64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// applyProxyDefaults sets the MCP defaults on the embedded reverse_proxy's
// JSON unless the user set them: the mcp_session policy wrapping the
// configured one. It reports whether the user set a Host header for
// upstream requests (without one, the transport wrapper sends the
// upstream's host:port, as `header_up Host {upstream_hostport}` would, at
// less cost than a header operation), and returns the static upstream dial
// addresses, or nil when upstreams are dynamic. (SSE bodies are relayed by
// mcp_proxy itself, which flushes every event; other bodies keep
// reverse_proxy's own flushing.)
func applyProxyDefaults(raw json.RawMessage) (out json.RawMessage, statics map[string]struct{}, userHost bool, err error) {
	var cfg map[string]any
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, nil, false, err
	}
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
	out, err = json.Marshal(cfg)
	return out, statics, userHost, err
}

func hasKeyFold(m map[string]any, key string) bool {
	for k := range m {
		if http.CanonicalHeaderKey(k) == key {
			return true
		}
	}
	return false
}

// ServeHTTP classifies, checks and routes an MCP request, then hands it to
// the embedded reverse_proxy, whose transport wrapper seals session ids in
// the upstream's response and hands SSE bodies to the relay (which also
// rewrites the legacy endpoint event).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !h.origins.Allow(r.Header.Get("Origin"), r.Host) {
		return h.refuse(w, mcp.Refuse(http.StatusForbidden, mcp.CodeServerError, "", "origin not allowed"))
	}
	if h.hostRebound(r) {
		return h.refuse(w, mcp.Refuse(http.StatusForbidden, mcp.CodeServerError, "", "host not allowed on a loopback listener"))
	}

	// 1. Classify.
	var call mcp.Call
	if ref := mcp.ClassifyHeaders(r.Header, &call); ref != nil {
		return h.refuse(w, ref)
	}
	var whole []byte // the whole request body, when the peek read it all
	if r.Method == http.MethodPost {
		held, body, ref := h.peekBody(r, &call)
		whole = body
		if held > 0 {
			defer h.app.global.memory.Release(held)
		}
		if ref != nil {
			return h.refuse(w, ref)
		}
	}

	// 2. Resolve the session.
	res, ref := h.resolve(r, &call)
	if ref != nil {
		return h.refuse(w, ref)
	}
	if res.pinned != "" {
		caddyhttp.SetVar(r.Context(), varPinned, res.pinned)
	}
	if c := h.logger.Check(zapcore.DebugLevel, "mcp request"); c != nil {
		c.Write(zap.String("era", call.Era.String()), zap.String("method", call.First().Method),
			zap.Bool("session", res.session != nil))
	}

	// 3. Admit, before any upstream is dialled: the service level first,
	// then the session's state, then the limits.
	level := h.app.global.levels.Level()
	if ref := h.levelGate(level, r, &call, res); ref != nil {
		refusalCounters[admission.ReasonLevel].Inc()
		w.Header().Set("Retry-After", levelRetryAfter)
		return h.refuse(w, ref)
	}
	if call.IsInitialize() && res.session == nil && !h.roomForSession(level) {
		refusalCounters[admission.ReasonCapacity].Inc()
		w.Header().Set("Retry-After", levelRetryAfter)
		return h.refuse(w, mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, call.First().ID, "session limit reached, retry after "+levelRetryAfter+"s"))
	}
	sess, endSession, ref := h.trackSession(res, level)
	if ref != nil {
		ref.ID = call.First().ID
		return h.refuse(w, ref)
	}
	release, ok := h.admit(w, r, &call, res)
	if !ok {
		endSession()
		return nil
	}
	metrics.requestsInFlight.Inc()
	// The request's admission slot, its place among the session's requests
	// in flight and the gauge are given back when the request is over:
	// when this handler returns, or, for a stream whose client dropped and
	// whose upstream is still read for a resumption, when that ends.
	status := http.StatusOK
	var st *relayState
	var once sync.Once
	over := func() {
		once.Do(func() {
			release(status)
			endSession()
			metrics.requestsInFlight.Dec()
		})
	}
	defer func() {
		if st == nil || !st.isDetached() {
			over()
		}
	}()

	// A client resuming a stream the proxy still holds is answered from it.
	if r.Method == http.MethodGet && res.session != nil && res.session.Kind == mcp.TokenSession {
		if last := r.Header.Get(mcp.HeaderLastEventID); last != "" {
			if stream := sharedRegistry().Find(res.key, last); stream != nil {
				metrics.replay.WithLabelValues("hit").Inc()
				return h.serveResume(w, r, stream, last, h.retryHint(&call, res), sess)
			}
			metrics.replay.WithLabelValues("miss").Inc()
			if strings.HasPrefix(last, proxyIDMarker) {
				// An id the proxy assigned and no longer holds means
				// nothing to the upstream: open a fresh stream.
				r.Header.Del(mcp.HeaderLastEventID)
			}
		}
	}

	// 4. Proxy; the transport wrapper seals session ids in the response.
	st = newRelayState(h, w, r, &call, res)
	st.whole = whole
	st.session, st.over = sess, over
	caddyhttp.SetVar(r.Context(), varRelay, st)
	defer st.handlerDone()
	var err error
	if r.Method == http.MethodGet {
		err = h.proxyShallow(w, r, next)
	} else {
		err = h.proxy.ServeHTTP(w, r, next)
	}
	if st.responded {
		status = st.status
	}
	if err != nil {
		status = http.StatusBadGateway
	}
	if err != nil && !st.responded {
		if missing, _ := caddyhttp.GetVar(r.Context(), varPinMissing).(bool); missing {
			metrics.sessionRefusals.WithLabelValues("not_found").Inc()
			return h.refuse(w, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, call.First().ID, "session not found"))
		}
	}
	st.mu.Lock()
	body := st.body
	st.mu.Unlock()
	if body != nil {
		// 5. Relay the SSE stream reverse_proxy handed over.
		h.relay(w, st, body)
		return nil
	}
	if r.Method == http.MethodDelete && res.session != nil && st.responded && st.status >= 200 && st.status < 300 {
		sharedRegistry().Forget(res.key)
		h.app.global.sessions.Remove(res.key, resources.CauseDeleted)
	}
	return err
}

// proxyShallow runs the embedded reverse_proxy on a goroutine of its own
// and waits for it. A GET usually opens an SSE stream, which the relay then
// reads from this handler's goroutine for as long as it lives; the deep
// calls of reverse_proxy and the dial would otherwise leave that parked
// goroutine with a stack two or four times the size it needs. A panic
// (reverse_proxy aborts a broken response with http.ErrAbortHandler) is
// raised again here, where net/http expects it.
func (h *Handler) proxyShallow(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var err error
	var p any
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { p = recover() }()
		err = h.proxy.ServeHTTP(w, r, next)
	}()
	<-done
	if p != nil {
		panic(p)
	}
	return err
}

// hostRebound reports a DNS-rebinding attempt: a request that reached a
// loopback listener with a Host that is neither a loopback name nor in
// AllowedHosts. Because the proxy rewrites Host for the upstream, the
// upstream's own check of this kind cannot see it, so the proxy makes it.
func (h *Handler) hostRebound(r *http.Request) bool {
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok || local == nil {
		return false
	}
	if tcp, ok := local.(*net.TCPAddr); ok {
		if !tcp.IP.IsLoopback() {
			return false
		}
	} else if !mcp.IsLoopbackHost(local.String()) {
		return false
	}
	if mcp.IsLoopbackHost(r.Host) {
		return false
	}
	host, _, err := net.SplitHostPort(r.Host)
	if err != nil {
		host = r.Host
	}
	for _, a := range h.AllowedHosts {
		if strings.EqualFold(a, host) {
			return false
		}
	}
	return true
}

// peekBody reads at most MaxPeek bytes of the body, classifies them and
// puts the body back, unchanged, for the upstream. The peeked bytes are
// reserved from the memory budget; the caller releases the returned count
// when the request is over. When the peek read the whole body it is
// returned too.
func (h *Handler) peekBody(r *http.Request, call *mcp.Call) (held int64, whole []byte, _ *mcp.Refusal) {
	var head []byte
	complete := false
	if cl := r.ContentLength; cl >= 0 && cl <= h.maxPeek {
		// The common case: a declared length within the cap is read into
		// a buffer of exactly that size, which then serves the upstream.
		head = make([]byte, cl)
		if _, err := io.ReadFull(r.Body, head); err != nil {
			return 0, nil, bodyReadRefusal(err)
		}
		complete = true
	} else {
		bp := h.peekBufPool.Get().(*[]byte)
		buf := *bp
		n, err := io.ReadFull(r.Body, buf)
		complete = err == io.EOF || err == io.ErrUnexpectedEOF
		if err != nil && !complete {
			h.peekBufPool.Put(bp)
			return 0, nil, bodyReadRefusal(err)
		}
		if !complete {
			n = len(buf) - 1 // the extra byte only told us there is more
		}
		// Copied out of the pooled buffer: the transport may still read
		// the body after the handler returns.
		head = bytes.Clone(buf[:n])
		h.peekBufPool.Put(bp)
	}
	n := int64(len(head))
	if !h.app.global.memory.Reserve(n) {
		metrics.backpressure.Inc()
		return 0, nil, mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, "", "server out of memory budget, retry later")
	}
	perr := mcp.ParseEnvelope(head, complete, &call.Peek)
	if ref := mcp.ClassifyBody(r.Header, perr, call); ref != nil {
		return n, nil, ref
	}
	if complete {
		// The server closes the original body, read to its end, when the
		// handler returns.
		r.Body = io.NopCloser(bytes.NewReader(head))
		return n, head, nil
	}
	rb := &replayBody{rest: r.Body}
	rb.head.Reset(head)
	r.Body = rb
	return n, nil, nil
}

// bodyReadRefusal is the refusal for a request body that could not be read.
func bodyReadRefusal(err error) *mcp.Refusal {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return mcp.Refuse(http.StatusRequestEntityTooLarge, mcp.CodeInvalidRequest, "", "request body too large")
	}
	return mcp.Refuse(http.StatusBadRequest, mcp.CodeInvalidRequest, "", "reading request body failed")
}

// replayBody is a request body whose first bytes were peeked: it reads
// them again, then the rest of the original body.
type replayBody struct {
	head bytes.Reader
	rest io.ReadCloser // the unread remainder
}

func (b *replayBody) Read(p []byte) (int, error) {
	if b.head.Len() > 0 {
		return b.head.Read(p)
	}
	return b.rest.Read(p)
}

func (b *replayBody) Close() error { return b.rest.Close() }

// resolution is the session a request belongs to.
type resolution struct {
	// session is the opened token, nil for a request without a session.
	session *mcp.Session
	// token is the client's token as presented.
	token string
	// pinned is the dial address of the upstream the request must reach.
	pinned string
	// key names the session in the registries (sessionKey), "" without
	// a session.
	key string
}

// resolve opens the request's session token, from Mcp-Session-Id or the
// legacy route parameter, and replaces it with the upstream's own id.
func (h *Handler) resolve(r *http.Request, call *mcp.Call) (resolution, *mcp.Refusal) {
	var res resolution
	id := call.First().ID
	if call.Era != mcp.EraStateless {
		if rest, tok := mcp.StripRouteParam(r.URL.RawQuery); tok != "" {
			sess, ref := h.open(tok, mcp.TokenLegacy, id)
			if ref != nil {
				return res, ref
			}
			r.URL.RawQuery = rest
			r.RequestURI = ""
			res.session, res.token, res.pinned, res.key = sess, tok, sess.Upstream, sessionKey(sess.Upstream, sess.UpstreamID)
			return res, nil
		}
	}
	tok := r.Header.Get(mcp.HeaderSessionID)
	if tok == "" || call.Era == mcp.EraStateless {
		// The stateless revision has no sessions: servers ignore the
		// header, so it is passed through untouched.
		if tok == "" && h.requireSess && h.needsSession(r, call) {
			metrics.sessionRefusals.WithLabelValues("missing").Inc()
			return res, mcp.Refuse(http.StatusBadRequest, mcp.CodeServerError, id, "Bad Request: Mcp-Session-Id header is required")
		}
		return res, nil
	}
	sess, ref := h.open(tok, mcp.TokenSession, id)
	if ref != nil {
		return res, ref
	}
	r.Header.Set(mcp.HeaderSessionID, sess.UpstreamID)
	res.session, res.token, res.pinned, res.key = sess, tok, sess.Upstream, sessionKey(sess.Upstream, sess.UpstreamID)
	return res, nil
}

// needsSession reports whether a request without a session id breaks the
// rules of its era: in every era but the stateless one, a DELETE, a
// session-era GET, and any POST but an initialize.
func (h *Handler) needsSession(r *http.Request, call *mcp.Call) bool {
	if call.Era == mcp.EraStateless {
		return false
	}
	switch r.Method {
	case http.MethodDelete:
		return true
	case http.MethodGet:
		// A GET without a version header opens a legacy SSE session.
		return call.Era == mcp.EraSession
	case http.MethodPost:
		return !call.IsInitialize()
	}
	return false
}

// open opens a sealed token and checks that its upstream is still
// configured; every failure is a 404 so the client starts a new session.
func (h *Handler) open(tok string, kind mcp.TokenKind, id string) (*mcp.Session, *mcp.Refusal) {
	now := h.now()
	sess := h.tokens.get(tok, now)
	var err error
	if sess == nil {
		if sess, err = h.sealer.Open(tok, now); err == nil {
			h.tokens.put(tok, sess)
		}
	}
	if err == nil && sess.Kind != kind {
		err = mcp.ErrTokenInvalid
	}
	if err == nil && h.upstreams != nil {
		if _, ok := h.upstreams[sess.Upstream]; !ok {
			err = errors.New("session upstream no longer configured")
		}
	}
	if err != nil {
		if c := h.logger.Check(zapcore.DebugLevel, "session refused"); c != nil {
			c.Write(zap.Error(err))
		}
		metrics.sessionRefusals.WithLabelValues("not_found").Inc()
		return nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, id, "session not found")
	}
	return sess, nil
}

// refuse writes a refusal: its status and a JSON-RPC error body.
func (h *Handler) refuse(w http.ResponseWriter, ref *mcp.Refusal) error {
	body := ref.Body()
	hdr := w.Header()
	hdr.Set("Content-Type", "application/json")
	hdr.Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(ref.Status)
	_, _ = w.Write(body)
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
