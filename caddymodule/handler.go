package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/relay"
	"github.com/mcpgate/mcpgate/sse"
)

func init() {
	caddy.RegisterModule(new(Handler))
}

// Defaults of mcp_proxy; the stream ones are the relay's own.
const (
	defaultMaxPeek         = 64 << 10
	defaultSessionLifetime = 24 * time.Hour
	defaultMaxEvent        = sse.DefaultMaxEvent
	defaultQueueEvents     = sse.DefaultQueueEvents
	defaultQueueBytes      = sse.DefaultQueueBytes
	defaultWriteTimeout    = sse.DefaultWriteTimeout
	defaultKeepalive       = sse.DefaultKeepalive
	defaultReplayEvents    = sse.DefaultReplayEvents
	defaultReplayBytes     = sse.DefaultReplayBytes
	defaultReplayAge       = sse.DefaultReplayAge
	defaultRetry           = sse.DefaultRetry
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
// streams are relayed event by event with a flush after each, the
// `mcp_session` selection policy routes requests of a session, keeping any
// configured policy as the fallback for new sessions, and an idle
// connection to an upstream is closed after 4s unless the http
// transport's `keepalive` says otherwise (the usual MCP servers, on
// Node's http or uvicorn, close theirs after 5s; a request sent as the
// upstream closes the connection would fail with 502).
//
// When a route has a principal, `{http.auth.user.id}` as mcp_auth,
// basic_auth or any other authentication module sets it (or what
// Principal names), the sessions opened on it are bound to it: the sealed id carries a keyed hash of the principal, and an id
// presented by another principal, or by none, is unknown (404).
//
// What mcp_proxy learns of a request is set as placeholders as soon as it
// is known, for header_up, log_append, respond and the matchers of the
// handlers after it (mcp_auth sets the message's placeholders too, so
// matchers between mcp_auth and mcp_proxy see them):
//
//	{http.mcp.method}      the JSON-RPC method (of a batch's first message)
//	{http.mcp.tool}        the tool a tools/call calls
//	{http.mcp.resource}    the URI of resources/read, subscribe, unsubscribe,
//	                       or the URI template a completion/complete completes
//	{http.mcp.prompt}      the prompt a prompts/get gets, or whose argument a
//	                       completion/complete completes
//	{http.mcp.version}     the protocol version, from the header or session
//	{http.mcp.session}     a short stable hash of the session (never its id)
//	{http.mcp.request_id}  the JSON-RPC id (a string without its quotes)
//
// When Caddy's tracing is on, the request's span gets the same facts as
// the OpenTelemetry attributes of MCP: mcp.method.name, gen_ai.tool.name,
// mcp.resource.uri, jsonrpc.request.id, mcp.protocol.version and
// mcp.session.id (the hash).
type Handler struct {
	// ProxyRaw is the embedded reverse_proxy handler with its upstreams and
	// every reverse_proxy option (static or dynamic upstreams). Required: a
	// config without it fails to load.
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

	// MaxPeek is how many bytes of a POST body are read, and checked,
	// before the request is admitted and forwarded; the body is replayed
	// to the upstream unchanged. The JSON-RPC envelope (jsonrpc, id,
	// method, and params.name, params.uri and params._meta where present)
	// must come within it: a body whose envelope is not complete within
	// this many bytes, and a batch longer than it, is refused with 413. A
	// longer single message streams on to the upstream while the rest of
	// its top level is checked; a member of the envelope found after the
	// first MaxPeek bytes aborts the upstream request before its last byte
	// is sent, and the client gets 400. Default: 64KiB.
	MaxPeek int64 `json:"max_peek,omitempty"`

	// MaxBody caps a POST body, in bytes: a larger declared length is
	// refused with 413 and never forwarded (over HTTP/1, a body of at
	// most twice the cap is read and discarded first, so that clients
	// that send the whole request before reading the answer get the 413
	// rather than a reset connection), and a chunked or
	// understated body is aborted at the cap (413; the upstream never
	// receives a complete request). A negative value turns the cap off
	// (Caddyfile: `max_body 0`). Default: 4MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// BodyTimeout bounds the wait for the first MaxPeek bytes of a POST
	// body, and then each read of the rest: a client that does not send
	// them within it gets 408, and its connection is closed (HTTP/1; over
	// HTTP/2 and HTTP/3 the request's stream alone ends). Default: 10s.
	BodyTimeout caddy.Duration `json:"body_timeout,omitempty"`

	// AllowedOrigins lists browser origins that may call the endpoint
	// besides pages on the hosts the site is served under: "*", exact
	// origins such as "https://app.example.com", or wildcard hosts such as
	// "https://*.example.com". Only browser requests are checked: a
	// request with no Origin header and no Sec-Fetch-Site (MCP SDKs,
	// tunnels, sidecars) passes whatever its Host. A browser request
	// passes when the host of its origin is one the site names (site
	// address or host matcher), when its origin is listed here, or, on a
	// site that names no host, when its origin is a loopback host; any
	// other gets 403 before it reaches an upstream (DNS-rebinding
	// protection: an origin equal to the Host header is not enough).
	// Default: none.
	AllowedOrigins []string `json:"allowed_origins,omitempty"`

	// RequireSession refuses with 400 a session-era request other than
	// initialize that carries no Mcp-Session-Id (and a legacy POST without
	// its route), the answer the MCP spec gives for a missing session; a
	// GET without one opens a legacy HTTP+SSE stream whatever its version
	// header (legacy clients reopen their stream with the version they
	// negotiated). Set it to false for upstreams that run Streamable HTTP
	// without sessions under 2025-era clients; while it is true, an
	// initialize answered without a session id is logged at WARN, at most
	// once a minute. Default: true.
	RequireSession *bool `json:"require_session,omitempty"`

	// MaxEventSize caps one Server-Sent Event from an upstream, in bytes.
	// A larger event closes the stream, with a JSON-RPC error for the
	// pending request when one is known. Default: 1MiB.
	MaxEventSize int64 `json:"max_event_size,omitempty"`

	// StreamBufferEvents bounds the events of one stream waiting to be
	// written to its client (they wait only while another write is in
	// progress). At the bound the upstream is not read, so TCP slows it
	// down, until the client makes room; a client that makes none within
	// WriteTimeout is cut as a slow consumer and resumes from the replay
	// ring. Default: 100 events.
	StreamBufferEvents int `json:"stream_buffer_events,omitempty"`

	// StreamBufferBytes bounds, in bytes, the events of one stream waiting
	// to be written to its client, as StreamBufferEvents does their count.
	// Default: 1MiB.
	StreamBufferBytes int64 `json:"stream_buffer_bytes,omitempty"`

	// WriteTimeout is the deadline of each write to a stream's client (the
	// events of one upstream read are written under one deadline); a
	// client that does not take them within it is a slow consumer. While a
	// write blocks, the upstream is not read. Default: 10s.
	WriteTimeout caddy.Duration `json:"write_timeout,omitempty"`

	// Keepalive is how long a stream may stay silent before the proxy
	// sends an SSE comment, so that idle timeouts of load balancers and
	// clients do not cut it; over HTTP/3 it must stay under QUIC's idle
	// timeout, 30s unless the client keeps its connection alive.
	// Default: 15s.
	Keepalive caddy.Duration `json:"keepalive,omitempty"`

	// ReplayEvents bounds the events kept in the replay ring of each
	// request stream: what a client that dropped is sent again when it
	// resumes with Last-Event-ID, also when the upstream keeps no event
	// store. Default: 100 events.
	ReplayEvents int `json:"replay_events,omitempty"`

	// ReplayBytes bounds, in bytes, the events kept in the replay ring of
	// each request stream. Default: 1MiB.
	ReplayBytes int64 `json:"replay_bytes,omitempty"`

	// ReplayAge is how long a request stream whose client dropped keeps
	// being read for a resumption, and how long its events are kept; if
	// nobody resumes it by then, the request is cancelled upstream.
	// Default: 1m.
	ReplayAge caddy.Duration `json:"replay_age,omitempty"`

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

	// QueueSize is how many requests may wait for an in-flight slot when
	// MaxInflight is reached, served by priority (work in existing
	// sessions first; ping, notifications and responses, then listings,
	// then tool calls and reads). Under sustained overload the queue keeps
	// only the waiters it can serve within about 5ms and refuses the rest
	// at once (the package doc of caddymodule describes the algorithm).
	// Needs MaxInflight or Adaptive. Default: 0 (no queue).
	QueueSize int `json:"queue_size,omitempty"`

	// QueueTimeout is how long a request may wait in the queue before it
	// is refused with 503. Default: 0 (until the client goes away; set it
	// with QueueSize).
	QueueTimeout caddy.Duration `json:"queue_timeout,omitempty"`

	// MaxStreams caps the SSE GET streams open through this handler; past
	// it a new stream is refused with 503. 0 means no cap. Default: 0.
	MaxStreams int `json:"max_streams,omitempty"`

	// ClientKey identifies a client for the per-client limits (in flight,
	// session rate, streams, and the mcp app's client_max_sessions); any
	// placeholder, such as `{http.auth.user.id}` or
	// `{http.request.header.X-Api-Key}`. A key that resolves to nothing
	// falls back to the client's address. Default:
	// `{http.vars.client_ip}`, the client's address with the server's
	// trusted_proxies honoured.
	ClientKey string `json:"client_key,omitempty"`

	// Rules decide who may call which tool, get which prompt and read
	// which resource, in order: the first rule whose targets and
	// condition match a message decides; when none does, RulesDefault
	// does. A denied call never reaches the upstream and gets the error an
	// unknown tool, prompt, resource or method gets (see UnknownErrors),
	// and list results (tools/list, prompts/list, resources/list,
	// resources/templates/list) show only what the caller may use. Rules
	// hold at every service level. With rules (or PinTools), SSE events
	// are written anew from what the proxy read of them, and events named
	// other than "message" are dropped (see the README's request
	// handling). Default: none.
	Rules []Rule `json:"rules,omitempty"`

	// RulesDefault is the action for a message no rule matches: "allow"
	// or "deny". "deny" leaves the lifecycle allowed (initialize, ping,
	// notifications, and the list methods, whose results are filtered),
	// unless a rule names it. Default: allow.
	RulesDefault string `json:"rules_default,omitempty"`

	// UnknownErrors replaces, per kind of target ("tool", "prompt",
	// "resource", "method"), the JSON-RPC error a denied call gets, so it
	// matches what the upstream answers for something it does not have.
	// Default: the go-sdk's errors: -32602 `unknown tool "<name>"`,
	// -32602 `unknown prompt "<name>"`, -32602 `Resource not found` with
	// data {"uri": …}, -32601 `method not found: "<method>"`.
	UnknownErrors map[string]UnknownError `json:"unknown_errors,omitempty"`

	// PinTools pins tool definitions: the first tools/list an upstream
	// serves records a hash of each tool's definition (every member but
	// _meta: name, title, description, schemas, annotations…); a later
	// list in which a tool's definition changed drops that tool ("drop")
	// or passes it with a warning ("warn"); both log at WARN and count.
	// One upstream holds at most 2,500 pins (see policy.Pins); a new tool
	// the pins have no room for is dropped or passed the same.
	// Default: off.
	PinTools string `json:"pin_tools,omitempty"`

	// RequestTimeout bounds the whole life of a request after admission
	// (not the queue wait): past it the client gets a JSON-RPC error for
	// the request, its slots are freed, and the upstream is told
	// (notifications/cancelled in a session, the stream closed at
	// 2026-07-28). A progress notification on the request's stream
	// extends it, up to MaxTimeout. A tool's own timeout (Tools) takes
	// precedence. A 2025-03-26 batch has the largest deadline of its
	// requests, which those without one share; past it each request
	// still unanswered gets the error. A request whose id follows
	// MaxPeek has its deadline too; if it passes while the body is still
	// arriving, the error carries id null. Default: none.
	RequestTimeout caddy.Duration `json:"request_timeout,omitempty"`

	// MaxTimeout caps how far progress notifications extend a request's
	// deadline, from its start. Default: 10 times the deadline.
	MaxTimeout caddy.Duration `json:"max_timeout,omitempty"`

	// MaxResponse caps the answer to a POST: a JSON answer, or the sum of
	// an SSE answer's events (a batch's, or a request's whose id follows
	// MaxPeek, included). An answer over it is replaced by (or, on a
	// stream, ended with) a JSON-RPC error for each request still
	// unanswered (id null when its id is not known), and the upstream is
	// sent notifications/cancelled for them. Default: no cap.
	MaxResponse int64 `json:"max_response,omitempty"`

	// Audit writes one structured record per MCP request to the logger
	// http.handlers.mcp_proxy.audit. Default: off.
	Audit *AuditConfig `json:"audit,omitempty"`

	// Principal is the placeholder whose value is the request's
	// authenticated principal, to which sessions are bound: a session
	// opened with one principal is unknown (404) to any other and to
	// none. Set it for an authentication that leaves the user elsewhere,
	// such as forward_auth's copied header:
	// `{http.request.header.Remote-User}`. Default: `{http.auth.user.id}`,
	// which mcp_auth, basic_auth and other authentication modules set.
	Principal string `json:"principal,omitempty"`

	// ClientMaxInflight caps one client's requests in flight; past it the
	// client gets 429. SSE GET streams do not count here (see
	// ClientMaxStreams). 0 means no cap. Default: 0.
	ClientMaxInflight int `json:"client_max_inflight,omitempty"`

	// ClientMaxStreams caps one client's SSE GET streams (Streamable HTTP
	// and legacy) open through this handler; past it the client gets 429.
	// 0 means no cap. Default: 0.
	ClientMaxStreams int `json:"client_max_streams,omitempty"`

	// ClientIPv6Prefix is the size, in bits, of the IPv6 network that
	// counts as one client when the client key is an IPv6 address (as the
	// default client_key is), so a client cannot escape its limits by
	// rotating the addresses of its network. 128 keys every address on
	// its own. Default: 64.
	ClientIPv6Prefix int `json:"client_ipv6_prefix,omitempty"`

	// ClientSessionRate caps how many new sessions (initialize, legacy
	// SSE GET) one client may open per second; past it the client gets
	// 429 with the time until its next session as Retry-After. 0 means no
	// cap. Default: 0.
	ClientSessionRate float64 `json:"client_session_rate,omitempty"`

	// ClientSessionBurst is how many new sessions a client may open at
	// once within ClientSessionRate. Default: the rate rounded up.
	ClientSessionBurst int `json:"client_session_burst,omitempty"`

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

	proxy      caddyhttp.MiddlewareHandler
	sealer     *mcp.Sealer
	tokens     mcp.TokenCache // tokens sealer opened
	resolver   *mcp.Resolver
	origins    mcp.OriginPolicy
	sites      sync.Map            // *caddyhttp.Server → hostSet, see siteHosts
	upstreams  map[string]struct{} // static dial addresses; nil with dynamic upstreams
	logger     *zap.Logger
	body       mcp.BodyLimits
	now        func() time.Time
	transport  *RelayTransport
	relayCfg   relay.Config
	relay      *relay.Proxy
	registered bool // listed for side requests, see registerUpstreams

	drain       time.Duration
	streams     *sse.StreamSet
	app         *App
	ctrl        *admission.Controller
	streamSlots admission.StreamSlots
	clientKey   string
	principal   string
	gov         *governance
	auditor     *auditor
	deadlines   policy.Deadlines // request_timeout and the tools' timeouts
	ipv6Prefix  int
	// downRetryAfter is the Retry-After, in seconds, of a request whose
	// pinned upstream cannot be reached: how long a health check keeps
	// an upstream marked down.
	downRetryAfter int
}

// CaddyModule returns the Caddy module information.
func (*Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_proxy",
		New: func() caddy.Module { return new(Handler) },
	}
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

// refuse writes a refusal: its status and a JSON-RPC error body.
func (h *Handler) refuse(w http.ResponseWriter, ref *mcp.Refusal) error {
	return writeRefusal(w, ref)
}

// writeRefusal writes a refusal: its status and a JSON-RPC error body.
func writeRefusal(w http.ResponseWriter, ref *mcp.Refusal) error {
	body := ref.Body()
	hdr := w.Header()
	for k, v := range ref.Header {
		hdr[k] = v
	}
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
