package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/dustin/go-humanize"
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
func (st *State) listMethod() string {
	if !st.p.Lists.Filters() || st.call.Peek.Batch {
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

// answerLists returns the list methods of the request's list requests (a
// single one, or those of a batch) by the key of their ids (mcp.IDKey; ""
// for an id that came after the peek), when the handler filters lists; nil
// when there is none.
func (st *State) answerLists() map[string]string {
	if !st.p.Lists.Filters() {
		return nil
	}
	var lists map[string]string
	for i := range st.call.Peek.Messages {
		m := &st.call.Peek.Messages[i]
		if _, ok := policy.ListKind(m.Method); !ok || m.Kind != mcp.KindRequest {
			continue
		}
		if lists == nil {
			lists = make(map[string]string)
		}
		lists[mcp.IDKey(m.ID)] = m.Method
	}
	return lists
}

// filterMessages filters the list results in data, one JSON-RPC message
// or an array of them (as a batch is answered), with filter: a response
// is filtered as the list request of lists its id names or, when it names
// none, as the list result its shape is (policy.ListMethodOf), so that no
// list result passes unfiltered whatever id it carries; requests and
// notifications pass as they are. out is nil when nothing changed; ok is
// false when a message cannot be read (a client may read a list result in
// it that the proxy cannot filter).
func filterMessages(data []byte, lists map[string]string, filter listFilter) (out []byte, ok bool) {
	if !isArray(data) {
		return filterMessage(data, lists, filter)
	}
	var all []json.RawMessage
	if json.Unmarshal(data, &all) != nil {
		return nil, false
	}
	changed := false
	for i, m := range all {
		o, ok := filterMessage(m, lists, filter)
		if !ok {
			return nil, false
		}
		if o != nil {
			all[i], changed = o, true
		}
	}
	if !changed {
		return nil, true
	}
	out, err := json.Marshal(all)
	return out, err == nil
}

// listFilter filters one message answering a list request of method (see
// Lists.Filter).
type listFilter func(method string, msg []byte) (out []byte, ok bool)

// isArray reports whether data is a JSON array, by its first byte.
func isArray(data []byte) bool {
	t := bytes.TrimLeft(data, " \t\r\n")
	return len(t) > 0 && t[0] == '['
}

// filterMessage is filterMessages for one message.
func filterMessage(msg []byte, lists map[string]string, filter listFilter) (out []byte, ok bool) {
	id, isAnswer, err := mcp.ResponseID(msg)
	switch {
	case err != nil:
		return nil, false
	case !isAnswer:
		return nil, true // a request, a notification: no list result
	}
	method := lists[mcp.IDKey(string(id))]
	if method == "" {
		method = policy.ListMethodOf(msg)
	}
	if method == "" {
		return nil, true
	}
	return filter(method, msg)
}

// listWatch returns the relay hook of an SSE answer to list requests
// whose answers answerWatch does not watch (a batch's, or one whose id
// came after the peek): each event is filtered as filterMessages does; one
// that cannot be read is replaced by an error.
func (st *State) listWatch(lists map[string]string) func(*sse.Event) []byte {
	return func(ev *sse.Event) []byte {
		out, ok := filterMessages(ev.Data, lists, st.filterList)
		switch {
		case !ok:
			st.p.Metrics.ListUnreadable()
			st.p.Logger.Warn("upstream message not readable where a list result may be; replaced by an error")
			return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, "", mcp.CodeInternalError, "the list result could not be read by the proxy"))
		case out != nil:
			return sse.AppendEvent(nil, ev.ID, ev.Name, out)
		}
		return nil
	}
}

// UpstreamAddr returns the dial address of the upstream that answered.
func (st *State) UpstreamAddr() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.upstream
}

// SetUpstream records the dial address of the upstream an attempt goes
// to.
func (st *State) SetUpstream(addr string) {
	st.mu.Lock()
	st.upstream = addr
	st.mu.Unlock()
}

// processJSON reads a JSON answer whole, when it must be (a filtered list,
// alone or in a batch, or any answer under max_response), and returns it
// filtered and capped: a list result without what the caller may not
// see, an answer over max_response replaced by a JSON-RPC error for the
// request.
func (st *State) processJSON(resp *http.Response) *http.Response {
	p := st.p
	limit := p.MaxResponse
	lists := st.answerLists()
	if lists == nil && limit <= 0 {
		return resp
	}
	if lists != nil && (limit <= 0 || p.MaxEvent < limit) {
		limit = p.MaxEvent
	}
	if resp.ContentLength > limit {
		st.p.Metrics.ResponseTooLarge()
		return st.replaceResponse(resp, http.StatusOK, codeResponseTooLarge, tooLargeMessage(lists != nil, limit))
	}
	budget := p.Gov.Memory()
	want := limit + 1
	if resp.ContentLength >= 0 {
		want = resp.ContentLength
	}
	if !budget.Reserve(want) {
		st.p.Metrics.Backpressure()
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
		st.p.Metrics.ResponseTooLarge()
		return st.replaceResponse(resp, http.StatusOK, codeResponseTooLarge, tooLargeMessage(lists != nil, limit))
	}
	if lists != nil {
		out, ok := filterMessages(body, lists, st.filterList)
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
func tooLargeMessage(list bool, limit int64) string {
	if list {
		return "the list result exceeds the proxy's max_event_size or max_response (" + humanize.IBytes(uint64(limit)) + ")"
	}
	return "the response exceeds the proxy's max_response (" + humanize.IBytes(uint64(limit)) + ")"
}

// holdBytes notes memory held for the request until it finishes.
func (st *State) holdBytes(n int64) {
	st.mu.Lock()
	st.held += n
	st.mu.Unlock()
}

// filterList filters one JSON-RPC message answering the request's list
// request (see Lists.Filter).
func (st *State) filterList(method string, msg []byte) (out []byte, ok bool) {
	return st.p.Lists.Filter(method, msg, st.Subject, st.UpstreamAddr(), st.call.Era == mcp.EraStateless)
}

// answerWatch returns the relay hooks of a request's SSE answer: rewrite
// notes the response with the request's id as it passes, filters it when
// it is a list result, counts the answer against max_response and lets a
// progress notification move the deadline; final, at the end of the
// upstream stream, gives a JSON-RPC error for the request when no answer
// passed: an event over max_event_size, an upstream that broke, a passed
// deadline, or a stream that ended (or was never SSE at all) without the
// answer.
func (st *State) answerWatch(id string) (rewrite func(*sse.Event) []byte, final func(error) []byte) {
	var answered atomic.Bool
	var total int64
	list := st.listMethod()
	var others func(*sse.Event) []byte
	if st.p.Lists.Filters() {
		// Any other message may be a list result a client reads.
		others = st.listWatch(nil)
	}
	capped := false
	rewrite = func(ev *sse.Event) []byte {
		if capped {
			return dropEvent // read in the same burst as the capping one
		}
		total += int64(len(ev.Data))
		if st.p.MaxResponse > 0 && total > st.p.MaxResponse && !answered.Load() {
			answered.Store(true)
			capped = true
			st.p.Metrics.ResponseTooLarge()
			st.abort()
			// Not from the pump, which must go on to end the answer; the
			// process's task group owns (and bounds) the side request.
			_ = st.p.Gov.Tasks().Go(func(context.Context) {
				defer st.p.recoverPanic("notifications/cancelled after max_response")
				st.sendCancelled("the response exceeded the proxy's max_response")
			})
			return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, id, codeResponseTooLarge, tooLargeMessage(false, st.p.MaxResponse)))
		}
		if answered.Load() {
			if others != nil {
				return others(ev)
			}
			return nil
		}
		got, isAnswer, err := mcp.ResponseID(ev.Data)
		if err != nil && list != "" {
			// A client's decoder may read this as the list result, which
			// the proxy cannot filter as such.
			answered.Store(true)
			st.stopDeadline()
			st.p.Metrics.ListUnreadable()
			st.p.Logger.Warn("upstream answer not readable; answered with an error", zap.String("method", list), zap.Error(err))
			return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, id, mcp.CodeInternalError, "the list result could not be read by the proxy"))
		}
		if !isAnswer || err != nil || !mcp.SameID(got, id) {
			if st.deadline != nil && bytes.Contains(ev.Data, progressMethod) {
				st.extendDeadline()
			}
			if others != nil && (isAnswer || err != nil || isArray(ev.Data)) {
				// A list result under another id, or in an array, is
				// filtered all the same (a request or a notification
				// cannot be one).
				return others(ev)
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
		case st.IsExpired():
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
		st.p.Metrics.Unanswered()
		return sse.AppendEvent(nil, "", "message", mcp.AppendError(nil, id, code, msg))
	}
	return rewrite, final
}
