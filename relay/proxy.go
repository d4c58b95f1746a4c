// Package relay is what mcpgate does with a proxied MCP request once it is
// admitted, independent of Caddy: the relay state that links the request
// with its upstream attempts (detached from the client where the era says
// a disconnect is no cancel), the answer (session ids sealed, a legacy
// session registered, a JSON answer read whole when it is filtered or
// capped, an SSE body taken over), the SSE relay of the answer or GET
// stream (answer watch, max_response, replay and resumption, the
// upstream's own resumption of an answer stream it ended before the
// answer, handoff of a GET stream's connection), request deadlines, the
// legacy HTTP+SSE links that act on answers sent on a session's stream,
// and the answers of requests the access rules denied (Denials).
//
// A Proxy holds what one mcp_proxy handler configures and the process-wide
// state it shares (the governor); its function fields are how it reaches
// what the caller owns: metrics, panics, stream accounting, side requests
// through the caller's proxy.
// Every goroutine it starts belongs to the governor's task group or a
// session's; every buffer is bounded by the stream and answer limits of
// its Config and reserved from the governor's memory budget.
package relay

import (
	"context"
	"net/http"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/governor"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// RetryAfter is the Retry-After, in seconds, of the proxy's refusals for
// a full session table or a service level that admits no new work.
const RetryAfter = "1"

// Config is the part of an mcp_proxy's configuration the relay applies,
// with defaults already set.
type Config struct {
	// MaxEvent caps one upstream SSE event, in bytes, and a JSON list
	// result read whole.
	MaxEvent int64
	// QueueEvents and QueueBytes bound the events of one stream waiting
	// for its client (sse.StreamConfig).
	QueueEvents int
	QueueBytes  int64
	// WriteTimeout is the deadline of each write to a stream's client;
	// Keepalive the silence after which a comment is sent.
	WriteTimeout, Keepalive time.Duration
	// ReplayEvents, ReplayBytes and ReplayAge bound the replay ring of a
	// resumable stream, and ReplayAge how long a stream nobody resumes is
	// kept.
	ReplayEvents int
	ReplayBytes  int64
	ReplayAge    time.Duration
	// Retry is the retry hint sent before the proxy closes a stream.
	Retry time.Duration
	// Handoff lets a GET stream leave the handler (see handOff).
	Handoff bool
	// MaxResponse caps an answer, in bytes; 0: no cap.
	MaxResponse int64
	// MaxTimeout caps how far progress moves a deadline; 0:
	// policy.DefaultMaxTimeoutFactor steps.
	MaxTimeout time.Duration
	// SessionLifetime is how long a sealed session id stays valid.
	SessionLifetime time.Duration
	// Deadlines: some request may have a deadline (request_timeout or a
	// tool's timeout).
	Deadlines bool
	// RequireSession: requests without a session are refused
	// (mcp.Resolver), so an initialize answered without a session id is
	// logged as a misconfiguration.
	RequireSession bool
}

// Lists is the access policy's part in answers: whether list results are
// filtered (rules or pins), whether rules are enforced, and the filter.
type Lists interface {
	// Filters reports whether list results are filtered at all.
	Filters() bool
	// Enforces reports whether access rules are enforced.
	Enforces() bool
	// Filter filters one JSON-RPC message answering a list request of
	// method sent by subj to upstream, private when the result may not
	// be cached beyond the caller; out is nil when nothing changed, ok
	// false when the message could not be read.
	Filter(method string, msg []byte, subj policy.Subject, upstream string, private bool) (out []byte, ok bool)
	// Freeze returns what Filter needs of subj, kept apart from the
	// request subj reads (see policy.Policy.Snapshot): for a list result
	// that comes after that request has ended.
	Freeze(subj policy.Subject) policy.Subject
}

// Metrics are the counts the relay reports. Every field is needed.
type Metrics struct {
	CancelSent, ResponseTooLarge, Backpressure, ListUnreadable, Unanswered, SessionCreated func()
	// StrayAnswer counts a response dropped from a POST's SSE answer: a
	// second one for a request, or one under an id the POST did not send.
	StrayAnswer                             func()
	StreamOpened, StreamClosed, SideSkipped func()
	Deadline                                func(state string)  // "waiting", "streaming"
	SessionRefused                          func(kind string)   // "full", "legacy_pending", "id_in_use"
	UpstreamID                              func(result string) // "dropped", "unusable"
}

// Proxy relays the requests of one mcp_proxy handler.
type Proxy struct {
	Config
	Logger *zap.Logger
	Gov    *governor.Governor
	Lists  Lists
	Sealer *mcp.Sealer
	// LegacyParams is told the query of every legacy endpoint mapped.
	LegacyParams *mcp.LegacyParams
	Streams      *sse.StreamSet // the handler's open streams, drained on reload
	// Inner is the transport an upstream session the proxy will not use
	// is deleted through.
	Inner   http.RoundTripper
	Now     func() time.Time
	Metrics *Metrics
	// Side sends a request of the proxy's own (notifications/cancelled)
	// to the upstream with dial address upstream through the caller's
	// proxy; path is the escaped path a client would send it to, host
	// its Host header.
	Side func(ctx context.Context, upstream, method, path, host string, hdr http.Header, body []byte) (int, error)
	// StreamHooks returns the accounting hooks of a stream of sess (nil
	// for a stream without a session).
	StreamHooks func(sess *resources.Session) *sse.Hooks
	// Panicked reports a panic recovered on one of the relay's
	// goroutines or timers.
	Panicked func(where string, v any)
	// Denials answers the handler's denied requests as its upstreams
	// answer (see Denials); Answer notes their answers while access rules
	// are enforced.
	Denials Denials

	sessionlessWarned atomic.Int64 // when an upstream without sessions was last logged (Unix ns)
}

// sessionlessEvery is how often, at most, a handler logs an upstream that
// answers initialize without a session id.
const sessionlessEvery = time.Minute

// warnSessionless logs, at most once per sessionlessEvery, that upstream
// answered an initialize without a session id while requests without one
// are refused: the client's next requests will get 400.
func (p *Proxy) warnSessionless(upstream string) {
	now, last := p.Now().UnixNano(), p.sessionlessWarned.Load()
	if last != 0 && now-last < int64(sessionlessEvery) || !p.sessionlessWarned.CompareAndSwap(last, now) {
		return
	}
	p.Logger.Warn("upstream answered initialize without a session id, and requests without one are refused: "+
		"its client's next requests get 400; set require_session off for an upstream that runs without sessions",
		zap.String("upstream", upstream))
}

// recoverPanic reports a panic of the goroutine or timer it is deferred
// in.
func (p *Proxy) recoverPanic(where string) {
	if v := recover(); v != nil {
		p.Panicked(where, v)
	}
}

// track records an open attachment with the handler, the process and the
// session (whose eviction closes it); the returned func forgets it.
func (p *Proxy) track(a *sse.Attachment, s *sse.Stream, resumable bool, sess *resources.Session) func() {
	forgetHandler := p.Streams.Add(a, s, resumable)
	forgetProcess := p.Gov.OpenStreams().Add(a, s, resumable)
	forgetSession := func() {}
	if sess != nil {
		forgetSession = sess.AddStream(func(error) {
			a.Close()
			if !resumable {
				// A resumable stream's upstream call outlives its
				// client's attachment (a resumption the session has no
				// room for); it ends with its session's tasks or its
				// replay age.
				s.Close()
			}
		})
	}
	return func() {
		forgetSession()
		forgetProcess()
		forgetHandler()
	}
}
