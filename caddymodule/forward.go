package caddymodule

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// resume answers a GET with Last-Event-ID from the stream the proxy still
// holds for it, and reports whether it did. An id the proxy assigned and
// no longer holds means nothing to the upstream: it is dropped, so the
// upstream opens a fresh stream.
func (h *Handler) resume(x *exchange) bool {
	r, res := x.r, x.res
	if r.Method != http.MethodGet || res.Session == nil || res.Session.Kind != mcp.TokenSession {
		return false
	}
	last := r.Header.Get(mcp.HeaderLastEventID)
	if last == "" {
		return false
	}
	if stream := h.app.global.Resume().Find(res.Key, last); stream != nil {
		replayHits.Inc()
		_ = h.relay.ServeResume(x.w, r, stream, last, h.relay.RetryHint(&x.call, res), x.sess)
		return true
	}
	replayMisses.Inc()
	if sse.IsProxyID(last) {
		r.Header.Del(mcp.HeaderLastEventID)
	}
	return false
}

// forward sends an admitted request through the embedded reverse_proxy and
// relays an SSE answer. A request whose upstream could not be reached or
// failed before answering gets an answer of the proxy's own with a
// JSON-RPC error carrying its id: 503 with Retry-After when its pinned
// upstream cannot be dialled (the session lives on: the client retries
// instead of re-initializing), 404 when the session's upstream left the
// config, 502 (504 on a timeout) when the upstream failed with the request
// sent; 400, 408 or 413 when the streamed body was aborted.
func (h *Handler) forward(x *exchange, next caddyhttp.Handler) error {
	r := x.r
	st := h.relay.NewState(x.w, r, &x.call, x.res)
	x.st = st
	st.Whole, st.Checked = x.body.Whole, x.body.Checked
	st.Session, st.Over, st.ClientKey, st.Principal = x.sess, x.over, x.clientKey, x.principal
	st.Spliced = x.spliced
	if x.subject != nil {
		st.Subject = x.subject
	} else if h.gov.filters() {
		st.Subject = newSubject(r, x.principal, h.gov.matchers)
	}
	if r.Method == http.MethodGet {
		st.RoutePrefix = mcp.StrippedPrefix(clientPath(r), r.URL.Path)
	}
	armed, ref := st.Arm(h.deadlineFor(r, &x.call))
	if ref != nil {
		return x.refuse(h, ref)
	}
	defer armed()
	caddyhttp.SetVar(r.Context(), varRelay, st)
	defer st.HandlerDone()
	var err error
	if w := st.Writer(x.w); r.Method == http.MethodGet {
		err = h.proxyShallow(w, r, next)
	} else {
		err = h.proxy.ServeHTTP(w, r, next)
	}
	status, responded := st.Response()
	if responded {
		x.status = status
		if code := st.ProxyCode(); code != 0 {
			x.code = code
		}
	} else if st.IsExpired() {
		ref := st.TimeoutRefusal()
		x.status, x.code = ref.Status, ref.Code
		if x.body.Checked != nil {
			// The body may still be arriving, read by the cancelled
			// upstream request: the connection cannot carry another
			// request, and the answer must not wait for the body.
			mcp.CloseConnection(x.w, x.r)
		}
		return h.refuse(x.w, ref)
	}
	if err != nil {
		x.status = http.StatusBadGateway
		if !responded {
			ref := h.upstreamFailure(x, err)
			x.status, x.code = ref.Status, ref.Code
			return h.refuse(x.w, ref)
		}
	}
	if body := st.StreamBody(); body != nil {
		h.relay.Relay(x.w, st, body)
		return nil
	}
	if x.res.Session != nil && responded && upstreamEndedSession(r.Method, x.res.Session.Kind, status) {
		h.app.global.Resume().Forget(x.res.Key)
		h.app.global.Sessions().Remove(x.res.Key, resources.CauseDeleted)
	}
	return err
}

// upstreamEndedSession reports an upstream answer that ends the Streamable HTTP
// session of the request: a DELETE it accepted, or a 404 to a POST, which is how
// an upstream says it no longer has the session (the client starts a new
// one; the proxy forgets it rather than count it until it idles out).
func upstreamEndedSession(method string, kind mcp.TokenKind, status int) bool {
	switch {
	case method == http.MethodDelete:
		return status >= 200 && status < 300
	case method == http.MethodPost && kind == mcp.TokenSession:
		// Only a POST's 404: an upstream may answer a GET stream or an
		// unknown Last-Event-ID with 404 and keep the session.
		return status == http.StatusNotFound
	}
	return false
}

// upstreamFailure is the answer to a request reverse_proxy could not get
// an upstream answer for.
func (h *Handler) upstreamFailure(x *exchange, err error) *mcp.Refusal {
	id := x.call.First().ID
	if ref := h.body.CheckedBodyRefusal(x.body); ref != nil {
		if ref.ID = id; id == "" {
			ref.ID = x.body.Checked.LateID() // known when the body ended and its id was refused
		}
		mcp.CloseConnection(x.w, x.r)
		return ref
	}
	if missing, _ := caddyhttp.GetVar(x.r.Context(), varPinMissing).(bool); missing {
		metrics.sessionRefusals.WithLabelValues("not_found").Inc()
		return mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, id, "session not found")
	}
	status := http.StatusBadGateway
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode >= 500 {
		status = he.StatusCode
	}
	var dial reverseproxy.DialError
	if x.res.Pinned != "" && errors.As(err, &dial) {
		metrics.upstreamFailures.WithLabelValues("pinned_unreachable").Inc()
		retry := strconv.Itoa(h.downRetryAfter)
		x.w.Header().Set("Retry-After", retry)
		return mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, id,
			"the session's upstream is unavailable, retry after "+retry+"s")
	}
	metrics.upstreamFailures.WithLabelValues(strconv.Itoa(status)).Inc()
	return mcp.Refuse(status, mcp.CodeInternalError, id, "upstream unavailable: "+http.StatusText(status))
}
