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
	if r.Method != http.MethodGet || res.session == nil || res.session.Kind != mcp.TokenSession {
		return false
	}
	last := r.Header.Get(mcp.HeaderLastEventID)
	if last == "" {
		return false
	}
	if stream := h.app.global.Resume().Find(res.key, last); stream != nil {
		replayHits.Inc()
		_ = h.serveResume(x.w, r, stream, last, h.retryHint(&x.call, res), x.sess)
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
	st := newRelayState(h, x.w, r, &x.call, x.res)
	x.st = st
	st.whole = x.body.Whole
	st.session, st.over, st.clientKey, st.principal = x.sess, x.over, x.clientKey, x.principal
	st.subject, st.spliced = x.subject, x.spliced
	if st.subject == nil && h.gov.filters() {
		st.subject = newSubject(r, x.principal, h.gov.matchers)
	}
	link := h.legacyLinkOf(x)
	if link != nil {
		// The answers come on the session's stream (see legacy.go).
		awaited, ref := link.expect(x, st, h.deadlineFor(r, &x.call))
		if ref != nil {
			return x.refuse(h, ref)
		}
		if len(st.spliced) > 0 && link.send(st.spliced) {
			st.spliced = nil
		}
		defer func() {
			// Only a POST the upstream accepted (202) is answered on the
			// stream.
			if len(awaited) > 0 && !(st.responded && (st.status == http.StatusAccepted || st.status == http.StatusNoContent)) {
				link.awaiting.Forget(awaited)
			}
		}()
	} else if d := h.deadlineFor(r, &x.call); d > 0 {
		st.startDeadline(d, h.maxTimeout)
	}
	caddyhttp.SetVar(r.Context(), varRelay, st)
	defer st.handlerDone()
	var err error
	if r.Method == http.MethodGet {
		err = h.proxyShallow(x.w, r, next)
	} else {
		var w http.ResponseWriter = x.w
		if st.deadline != nil {
			w = &deadlineWriter{ResponseWriter: x.w, st: st}
		}
		err = h.proxy.ServeHTTP(w, r, next)
	}
	if st.responded {
		x.status = st.status
	} else if st.isExpired() {
		ref := st.timeoutRefusal()
		x.status, x.code = ref.Status, ref.Code
		return h.refuse(x.w, ref)
	}
	if err != nil {
		x.status = http.StatusBadGateway
		if !st.responded {
			ref := h.upstreamFailure(x, err)
			x.status, x.code = ref.Status, ref.Code
			return h.refuse(x.w, ref)
		}
	}
	st.mu.Lock()
	sseBody := st.body
	st.mu.Unlock()
	if sseBody != nil {
		h.relay(x.w, st, sseBody)
		return nil
	}
	if r.Method == http.MethodDelete && x.res.session != nil && st.responded && st.status >= 200 && st.status < 300 {
		h.app.global.Resume().Forget(x.res.key)
		h.app.global.Sessions().Remove(x.res.key, resources.CauseDeleted)
	}
	return err
}

// upstreamFailure is the answer to a request reverse_proxy could not get
// an upstream answer for.
func (h *Handler) upstreamFailure(x *exchange, err error) *mcp.Refusal {
	id := x.call.First().ID
	if ref := h.body.CheckedBodyRefusal(x.body); ref != nil {
		ref.ID = id
		x.w.Header().Set("Connection", "close")
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
	if x.res.pinned != "" && errors.As(err, &dial) {
		metrics.upstreamFailures.WithLabelValues("pinned_unreachable").Inc()
		retry := strconv.Itoa(h.downRetryAfter)
		x.w.Header().Set("Retry-After", retry)
		return mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, id,
			"the session's upstream is unavailable, retry after "+retry+"s")
	}
	metrics.upstreamFailures.WithLabelValues(strconv.Itoa(status)).Inc()
	return mcp.Refuse(status, mcp.CodeInternalError, id, "upstream unavailable: "+http.StatusText(status))
}
