package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/relay"
	"github.com/mcpgate/mcpgate/resources"
)

// exchange is one request on its way through mcp_proxy: what each step of
// the pipeline learnt, and what the request holds until it is over.
type exchange struct {
	w    http.ResponseWriter
	r    *http.Request
	call mcp.Call
	body mcp.Body
	res  mcp.Resolution
	// clientKey identifies the client for the per-client limits.
	clientKey string
	// principal is who the request's credentials say it is; "" for
	// none. Sessions are bound to it.
	principal string
	level     admission.Level
	// sess is the request's entry in the session registry, or nil.
	sess *resources.Session
	// endSession and release give back the request's place in its
	// session and its admission slots; over runs them once.
	endSession func()
	release    func(status int)
	status     int
	once       sync.Once
	st         *relay.State

	// For the access rules and the audit record: who sends the request,
	// its denied messages, the decision and the rule that made it, the
	// JSON-RPC code of an error the proxy answered, when it began.
	subject *subject
	denied  []policy.Denial
	// spliced are the errors of a batch's denied requests, added to the
	// upstream's answer to the rest of the batch.
	spliced [][]byte
	// batch holds a batch's messages as the client sent them, when the
	// denied ones were taken out of call (the audit records them all).
	batch    []mcp.Envelope
	decision string
	rule     string
	code     int
	start    time.Time
}

// ServeHTTP runs an MCP request through mcp_proxy's pipeline: classify
// (shape, origin, headers, body), resolve the session, apply the access
// rules, admit (service level, session table, limits), then proxy through
// the embedded reverse_proxy, whose transport wrapper seals session ids,
// filters list results and hands SSE bodies to the relay. Every refusal
// is answered here with its status and a JSON-RPC error; nothing refused
// or denied reaches an upstream. With an audit trail, the request's
// record is queued when the handler returns. A GET or HEAD of an OAuth
// discovery document (mcp.IsOAuthMetadata) is no MCP request: it goes to
// the upstream as it is.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	x := &exchange{w: w, r: r, status: http.StatusOK, decision: "allow"}
	defer x.leave()
	if h.auditor != nil {
		x.start = time.Now()
		cw := &countingWriter{ResponseWriter: w}
		x.w = cw
		defer h.audit(x, cw)
	}
	defer x.releaseBody(h)
	if mcp.IsOAuthMetadata(r) {
		return h.passDiscovery(x, next)
	}
	if ref := h.classify(x); ref != nil {
		return x.refuse(h, ref)
	}
	if r.Method == http.MethodOptions {
		// A CORS preflight from an allowed origin: the upstream answers it.
		return h.proxy.ServeHTTP(relay.PassWriter(x.w), r, next)
	}
	if ref := h.resolve(x); ref != nil {
		return x.refuse(h, ref)
	}
	if h.enforce(x) {
		return nil
	}
	if ref := h.admitExchange(x); ref != nil {
		return x.refuse(h, ref)
	}
	defer x.maybeOver()
	if h.resume(x) {
		return nil
	}
	return h.forward(x, next)
}

// passDiscovery passes the fetch of an OAuth discovery document on: an
// upstream that does its own OAuth serves its documents on the MCP origin,
// and they pass as reverse_proxy would pass them (mcp_auth, when in front,
// serves its own instead), but for a protocol upgrade, which is refused or
// declined as for an MCP request (see classify).
func (h *Handler) passDiscovery(x *exchange, next caddyhttp.Handler) error {
	if ref := mcp.CheckUpgrade(x.r.Header); ref != nil {
		return x.refuse(h, ref)
	}
	x.r.Header.Del("Upgrade")
	return h.proxy.ServeHTTP(relay.PassWriter(x.w), x.r, next)
}

// refuse answers the request with a refusal and notes it for the audit
// record.
func (x *exchange) refuse(h *Handler, ref *mcp.Refusal) error {
	x.decision, x.status, x.code = "refuse", ref.Status, ref.Code
	return h.refuse(x.w, ref)
}

// classify checks that the request is MCP over HTTP, from an allowed
// origin, with valid MCP headers, and reads and classifies a POST body.
func (h *Handler) classify(x *exchange) *mcp.Refusal {
	r := x.r
	if ref := mcp.CheckShape(r); ref != nil {
		if ref.Status == http.StatusMethodNotAllowed {
			x.w.Header().Set("Allow", mcp.AllowedMethods)
		}
		return ref
	}
	// An upgrade to h2c over plain HTTP/1.1 (curl --http2) is declined:
	// without its Upgrade header, reverse_proxy sends the request on as
	// the HTTP/1.1 request it is, as a server may (RFC 7540, section 3.2).
	r.Header.Del("Upgrade")
	if ref := h.checkOrigin(r); ref != nil {
		return ref
	}
	if ref := mcp.ClassifyHeaders(r.Header, &x.call); ref != nil {
		return ref
	}
	if r.Method == http.MethodPost {
		if sp, ok := caddyhttp.GetVar(r.Context(), varPeeked).(*sharedPeek); ok && sp.body == r.Body &&
			(h.body.MaxBody <= 0 || int64(len(sp.whole)) <= h.body.MaxBody) {
			// mcp_auth in front read and classified the whole body, as
			// mcp.ReadBody would; its reservation lasts the request.
			// It set the placeholders too.
			x.call, x.body = sp.call, mcp.Body{Whole: sp.whole}
			return nil
		}
		var ref *mcp.Refusal
		if x.body, ref = mcp.ReadBody(x.w, r, &x.call, h.body); ref != nil {
			return ref
		}
	}
	setCallFacts(r, &x.call)
	return nil
}

// releaseBody gives the peeked body's bytes back to the memory budget.
func (x *exchange) releaseBody(h *Handler) {
	if x.body.Held > 0 {
		h.app.global.Memory().Release(x.body.Held)
	}
}

// leave drops the exchange's hold on the request and its response writer
// when the handler returns (after the audit record is queued). A stream
// handed off or detached keeps the exchange (its relay ends the request
// with over), and must not keep with it the request, its context and
// Replacer, or the client connection's buffers net/http gave up.
func (x *exchange) leave() {
	x.r, x.w = nil, nil
	x.spliced, x.denied, x.subject, x.batch = nil, nil, nil, nil
}

// maxClientKey is the longest client key kept as it is.
const maxClientKey = 128

// clientKeyOf resolves the request's client key: client_key's value, or
// the client's address when it is empty; an IPv6 address stands for its
// network (client_ipv6_prefix).
func (h *Handler) clientKeyOf(r *http.Request) string {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	key := ""
	if repl != nil {
		key = repl.ReplaceAll(h.clientKey, "")
	}
	if key == "" {
		key, _ = caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	}
	if len(key) > maxClientKey {
		// A long key (from a header, say) is kept as its hash: sessions
		// and keyed tables store it.
		sum := sha256.Sum256([]byte(key))
		return "sha256:" + hex.EncodeToString(sum[:16])
	}
	return admission.ClientKeyForIP(key, h.ipv6Prefix)
}

// over gives back what the request holds: its admission slots, its place
// among its session's requests in flight, the gauge. It runs once, when
// the handler returns or, for a stream whose client dropped and whose
// upstream is still read for a resumption, when that ends.
func (x *exchange) over() {
	x.once.Do(func() {
		if x.release != nil {
			x.release(x.status)
		}
		if x.endSession != nil {
			x.endSession()
		}
		metrics.requestsInFlight.Dec()
	})
}

// maybeOver ends the request when the handler returns, unless a detached
// pump still reads its upstream and ends it later.
func (x *exchange) maybeOver() {
	if x.st == nil || !x.st.IsDetached() {
		x.over()
	}
}
