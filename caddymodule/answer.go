package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/sse"
)

// What mcp_proxy does with an answer beyond relaying it: a list result is
// filtered (the rules, the tool pins), an answer is capped (max_response),
// a deadline is moved by progress. A JSON answer that needs reading is
// read whole, within max_event_size (a list) or max_response, from the
// memory budget; an SSE answer is read event by event as it is relayed.

// dropEvent, returned by a stream's Rewrite hook, drops the event.
var dropEvent = []byte{}

// codeResponseTooLarge is the JSON-RPC code of the proxy's answer for a
// capped response (policy.CodeRequestTimeout that for a passed deadline).
const codeResponseTooLarge = mcp.CodeInternalError

// listMethod returns the list method of a single-request call whose
// result is filtered, or "".
func (st *relayState) listMethod() string {
	if !st.h.gov.filters() || st.call.Peek.Batch {
		return ""
	}
	first := st.call.First()
	if first.Kind != mcp.KindRequest {
		return ""
	}
	if _, ok := policy.ListKind(first.Method); !ok {
		return ""
	}
	return first.Method
}

// readsJSON reports whether the request's JSON answer must be read whole:
// a filtered list, or any answer under max_response.
func (st *relayState) readsJSON() bool {
	return st.listMethod() != "" || st.h.MaxResponse > 0
}

// upstreamAddr returns the dial address of the upstream that answered.
func (st *relayState) upstreamAddr() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.upstream
}

// noteUpstream records the upstream of an attempt, from reverse_proxy's
// placeholder.
func (st *relayState) noteUpstream(req *http.Request) {
	repl, _ := req.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return
	}
	if up, ok := repl.GetString("http.reverse_proxy.upstream.hostport"); ok {
		st.mu.Lock()
		st.upstream = up
		st.mu.Unlock()
	}
}

// processJSON reads a JSON answer whole and returns it filtered and
// capped: a list result without what the caller may not see, an answer
// over max_response replaced by a JSON-RPC error for the request.
func (st *relayState) processJSON(resp *http.Response) *http.Response {
	h := st.h
	limit := h.MaxResponse
	list := st.listMethod()
	if list != "" && (limit <= 0 || h.maxEvent < limit) {
		limit = h.maxEvent
	}
	if resp.ContentLength > limit {
		metrics.responseTooLarge.Inc()
		return st.replaceResponse(resp, http.StatusOK, codeResponseTooLarge, tooLargeMessage(list, limit))
	}
	budget := h.app.global.Memory()
	want := limit + 1
	if resp.ContentLength >= 0 {
		want = resp.ContentLength
	}
	if !budget.Reserve(want) {
		metrics.backpressure.Inc()
		return st.replaceResponse(resp, http.StatusServiceUnavailable, mcp.CodeServerError, "server out of memory budget, retry later")
	}
	body, _, err := mcp.ReadHead(resp.Body, limit+1)
	_ = resp.Body.Close()
	budget.Release(want - int64(len(body)))
	st.holdBytes(int64(len(body)))
	switch {
	case err != nil:
		return st.replaceResponse(resp, http.StatusBadGateway, mcp.CodeInternalError, "upstream answer broke off")
	case int64(len(body)) > limit:
		metrics.responseTooLarge.Inc()
		return st.replaceResponse(resp, http.StatusOK, codeResponseTooLarge, tooLargeMessage(list, limit))
	}
	if list != "" {
		out, ok := st.filterList(list, body)
		if !ok {
			return st.replaceResponse(resp, http.StatusOK, mcp.CodeInternalError, "the list result could not be read by the proxy")
		}
		if out != nil {
			body = out
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	return resp
}

// tooLargeMessage says why an answer was capped.
func tooLargeMessage(list string, limit int64) string {
	if list != "" {
		return "the list result exceeds the proxy's max_event_size or max_response (" + humanSize(limit) + ")"
	}
	return "the response exceeds the proxy's max_response (" + humanSize(limit) + ")"
}

// holdBytes notes memory held for the request until it finishes.
func (st *relayState) holdBytes(n int64) {
	st.mu.Lock()
	st.held += n
	st.mu.Unlock()
}

// filterList filters one JSON-RPC message answering the request's list
// request (see Handler.filterList).
func (st *relayState) filterList(method string, msg []byte) (out []byte, ok bool) {
	return st.h.filterList(method, msg, st.subject, st.upstreamAddr(), st.call.Era == mcp.EraStateless)
}

// filterList filters one JSON-RPC message answering a list request of
// method sent by subj to upstream, private when the result may not be
// cached beyond the caller; out is nil when nothing changed, ok false when
// the message could not be read (the caller answers an error rather than
// pass it unfiltered).
func (h *Handler) filterList(method string, msg []byte, subj policy.Subject, upstream string, private bool) (out []byte, ok bool) {
	g := h.gov
	kind, _ := policy.ListKind(method)
	rules := g.enforces()
	pins := g.pins != nil && kind == policy.KindTool
	skipPins := effortAt(h.app.global.Level()).SkipUnchangedPins()
	keep := func(key string, item json.RawMessage) bool {
		if rules && !g.policy.Allows(subj, kind, key) {
			metrics.listFiltered.WithLabelValues("rule").Inc()
			return false
		}
		if pins && !h.checkPin(upstream, key, item, skipPins) {
			metrics.listFiltered.WithLabelValues("pin").Inc()
			return false
		}
		return true
	}
	out, _, err := policy.FilterList(method, msg, keep, private)
	if err != nil {
		metrics.listFiltered.WithLabelValues("error").Inc()
		h.logger.Warn("list result not readable; answered with an error", zap.String("method", method), zap.Error(err))
		return nil, false
	}
	return out, true
}

// checkPin checks a tool definition against its pin and reports whether
// it may be listed. At reduced service levels, a definition whose bytes
// are those last found as pinned is not checked again.
func (h *Handler) checkPin(upstream, name string, item json.RawMessage, skip bool) bool {
	g := h.gov
	switch g.pins.CheckRaw(&g.skips, upstream, name, item, skip) {
	case policy.PinSkipped:
		metrics.pinned.WithLabelValues("skipped").Inc()
	case policy.PinNew:
		metrics.pinned.WithLabelValues("new").Inc()
	case policy.PinChanged:
		metrics.pinned.WithLabelValues("changed").Inc()
		h.logger.Warn("tool definition changed since it was pinned", zap.String("upstream", upstream),
			zap.String("tool", name), zap.Bool("listed", g.pinWarn))
		return g.pinWarn
	}
	return true
}

// answerWatch returns the relay hooks of a request's SSE answer: rewrite
// notes the response with the request's id as it passes, filters it when
// it is a list result, counts the answer against max_response and lets a
// progress notification move the deadline; final, at the end of the
// upstream stream, gives a JSON-RPC error for the request when no answer
// passed: an event over max_event_size, an upstream that broke, a passed
// deadline, or a stream that ended (or was never SSE at all) without the
// answer.
func (st *relayState) answerWatch(id string) (rewrite func(*sse.Event) []byte, final func(error) []byte) {
	var answered atomic.Bool
	var total int64
	list := st.listMethod()
	capped := false
	rewrite = func(ev *sse.Event) []byte {
		if capped {
			return dropEvent // read in the same burst as the capping one
		}
		total += int64(len(ev.Data))
		if st.h.MaxResponse > 0 && total > st.h.MaxResponse && !answered.Load() {
			answered.Store(true)
			capped = true
			metrics.responseTooLarge.Inc()
			st.abort()
			// Not from the pump, which must go on to end the answer; the
			// process's task group owns (and bounds) the side request.
			_ = st.h.app.global.tasks.Go(func(context.Context) {
				defer recoverPanic(st.h.logger, "notifications/cancelled after max_response")
				st.sendCancelled("the response exceeded the proxy's max_response")
			})
			return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, id, codeResponseTooLarge, tooLargeMessage("", st.h.MaxResponse)))
		}
		if answered.Load() {
			return nil
		}
		got, isAnswer, err := mcp.ResponseID(ev.Data)
		if err != nil && list != "" {
			// A client's decoder may read this as the list result, which
			// the proxy cannot filter as such.
			answered.Store(true)
			st.stopDeadline()
			metrics.listFiltered.WithLabelValues("error").Inc()
			st.h.logger.Warn("upstream answer not readable; answered with an error", zap.String("method", list), zap.Error(err))
			return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, id, mcp.CodeInternalError, "the list result could not be read by the proxy"))
		}
		if !isAnswer || err != nil || !mcp.SameID(got, id) {
			if st.deadline != nil && bytes.Contains(ev.Data, progressMethod) {
				st.extendDeadline()
			}
			return nil
		}
		answered.Store(true)
		st.stopDeadline()
		if list == "" {
			return nil
		}
		out, ok := st.filterList(list, ev.Data)
		switch {
		case !ok:
			return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, id, mcp.CodeInternalError, "the list result could not be read by the proxy"))
		case out != nil:
			return sse.AppendEvent(nil, ev.ID, ev.Name, out)
		}
		return nil
	}
	final = func(err error) []byte {
		if answered.Load() {
			return nil
		}
		var msg string
		code := mcp.CodeInternalError
		switch {
		case st.isExpired():
			msg, code = "request timed out: the deadline passed ("+st.deadline.Step().String()+")", policy.CodeRequestTimeout
		case errors.Is(err, sse.ErrEventTooLarge), errors.Is(err, sse.ErrLineTooLong):
			msg = "response event exceeds the proxy's max_event_size"
		case errors.Is(err, sse.ErrClosed):
			return nil
		case err != nil:
			msg = "the upstream connection failed before the answer"
		default:
			msg = "the upstream ended the stream without an answer"
		}
		metrics.unanswered.Inc()
		return sse.AppendEvent(nil, "", "message", mcp.AppendError(nil, id, code, msg))
	}
	return rewrite, final
}
