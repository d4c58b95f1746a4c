package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/dustin/go-humanize"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/resources"
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

// dropStrays takes, from data, the JSON-RPC message or array of them of
// an event of a POST's SSE answer, the responses take does not accept:
// take accepts (and notes) a response the POST is owed, the first for
// each of its requests' ids (see isStray). Requests and notifications,
// and messages the proxy cannot read but no decoder reads as a response,
// stay. It returns data without the dropped responses, nil when none was,
// dropEvent when nothing is left.
func (st *State) dropStrays(data []byte, take func(id []byte) bool) []byte {
	if !isArray(data) {
		if st.isStray(data, take) {
			return dropEvent
		}
		return nil
	}
	var all []json.RawMessage
	if json.Unmarshal(data, &all) != nil {
		return nil
	}
	kept := make([]json.RawMessage, 0, len(all))
	for _, m := range all {
		if !st.isStray(m, take) {
			kept = append(kept, m)
		}
	}
	switch {
	case len(kept) == len(all):
		return nil
	case len(kept) == 0:
		return dropEvent
	}
	out, err := json.Marshal(kept)
	if err != nil {
		return dropEvent
	}
	return out
}

// isStray reports, counting it, a message of a POST's SSE answer to drop:
// a response take does not accept, or one a decoder that ignores case
// may read as a response under any id (mcp.ErrAmbiguous).
func (st *State) isStray(msg []byte, take func(id []byte) bool) bool {
	id, ok, err := mcp.ResponseID(msg)
	if errors.Is(err, mcp.ErrAmbiguous) || err == nil && ok && !take(id) {
		st.stray(id)
		return true
	}
	return false
}

// stray counts and logs a response dropped from a POST's SSE answer.
func (st *State) stray(id []byte) {
	st.p.Metrics.StrayAnswer()
	if c := st.p.Logger.Check(zap.DebugLevel, "upstream response the request is not owed dropped from its answer stream"); c != nil {
		c.Write(zap.String("method", st.call.First().Method), zap.ByteString("id", id))
	}
}

// withData relays ev with data in place of its own (nil: as it is;
// dropEvent: not at all) through next, when set.
func withData(ev *sse.Event, data []byte, next func(*sse.Event) []byte) []byte {
	switch {
	case data == nil:
		if next != nil {
			return next(ev)
		}
		return nil
	case len(data) == 0:
		return dropEvent
	}
	changed := *ev
	changed.Data = data
	if next != nil {
		if out := next(&changed); out != nil {
			return out
		}
	}
	return sse.AppendEvent(nil, ev.ID, ev.Name, data)
}

// owedAnswers holds the requests of a POST whose answers its SSE answer
// owes the client: each is owed once, until a response with its id
// passes, or an error of the proxy's goes in its place. Safe for
// concurrent use (the deadline reads what is still owed).
type owedAnswers struct {
	mu   sync.Mutex
	ids  []string        // raw ids, in the order of the POST
	left map[string]bool // by mcp.IDKey, those still owed
}

// newOwedAnswers owes an answer to each of ids.
func newOwedAnswers(ids []string) *owedAnswers {
	o := &owedAnswers{ids: ids, left: make(map[string]bool, len(ids))}
	for _, id := range ids {
		o.left[mcp.IDKey(id)] = true
	}
	return o
}

// take reports whether a response with raw id is owed, and notes it as
// given.
func (o *owedAnswers) take(id []byte) bool {
	key := mcp.IDKey(string(id))
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.left[key] {
		return false
	}
	delete(o.left, key)
	return true
}

// pending returns the raw ids still owed, in the order of the POST.
func (o *owedAnswers) pending() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.pendingLocked()
}

func (o *owedAnswers) pendingLocked() []string {
	var out []string
	for _, id := range o.ids {
		if o.left[mcp.IDKey(id)] {
			out = append(out, id)
		}
	}
	return out
}

// takeAll returns the raw ids still owed and owes nothing more: errors go
// in their place.
func (o *owedAnswers) takeAll() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := o.pendingLocked()
	clear(o.left)
	return out
}

// none reports whether nothing more is owed.
func (o *owedAnswers) none() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.left) == 0
}

// batchWatch returns the relay hooks of an SSE answer to a POST that is
// not one request (a batch, notifications or responses). rewrite relays a
// response once for each request the upstream was sent, and drops it
// under another id or for a second time (when the POST's ids are not all
// known, its body longer than the peek, responses pass as they are); the
// rest of the event goes through next, when set. It counts the answer
// against max_response: past it, the upstream request is cancelled, the
// upstream is sent notifications/cancelled for the requests still owed,
// and the stream ends with a -32603 error for each. The deadline stops
// once every request is answered, and a progress notification moves it
// while some are owed. final, at the end of the upstream stream, gives a
// JSON-RPC error for each request still owed (-32001 once the deadline
// passed), then the errors of the batch's denied requests.
func (st *State) batchWatch(next func(*sse.Event) []byte) (rewrite func(*sse.Event) []byte, final func(error) []byte) {
	owed := newOwedAnswers(st.upstreamIDs())
	st.mu.Lock()
	st.owed = owed
	st.mu.Unlock()
	guard := st.call.Peek.Complete
	var total int64
	capped := false
	rewrite = func(ev *sse.Event) []byte {
		if capped {
			return dropEvent // read in the same burst as the capping one
		}
		total += int64(len(ev.Data))
		if st.p.MaxResponse > 0 && total > st.p.MaxResponse {
			capped = true
			st.p.Metrics.ResponseTooLarge()
			ids := owed.takeAll()
			st.abort()
			st.stopDeadline()
			st.cancelTooLarge(ids)
			msg := tooLargeMessage(false, st.p.MaxResponse)
			if len(ids) == 0 {
				return sse.AppendComment(nil, "response exceeds the proxy's max_response")
			}
			var out []byte
			for _, id := range ids {
				out = sse.AppendEvent(out, "", "message", mcp.AppendError(nil, id, codeResponseTooLarge, msg))
			}
			return out
		}
		if st.deadline != nil && !owed.none() && mcp.HoldsProgress(ev.Data) {
			st.extendDeadline()
		}
		if !guard {
			if next != nil {
				return next(ev)
			}
			return nil
		}
		out := withData(ev, st.dropStrays(ev.Data, owed.take), next)
		if owed.none() {
			st.stopDeadline()
		}
		return out
	}
	final = func(err error) []byte {
		var out []byte
		if ids := owed.takeAll(); len(ids) > 0 {
			msg, code := "", mcp.CodeInternalError
			switch {
			case st.IsExpired():
				msg, code = policy.TimeoutMessage(st.deadline.Step()), policy.CodeRequestTimeout
			case errors.Is(err, sse.ErrEventTooLarge), errors.Is(err, sse.ErrLineTooLong):
				msg = "response event exceeds the proxy's max_event_size"
			case errors.Is(err, sse.ErrClosed):
			case err != nil:
				msg = "the upstream connection failed before the answer"
			default:
				msg = "the upstream ended the stream without an answer"
			}
			for _, id := range ids {
				if msg == "" {
					break
				}
				st.p.Metrics.Unanswered()
				out = sse.AppendEvent(out, "", "message", mcp.AppendError(nil, id, code, msg))
			}
		}
		for _, a := range st.Spliced {
			out = sse.AppendEvent(out, "", "message", a)
		}
		return out
	}
	return rewrite, final
}

// cancelTooLarge tells the upstream, for the requests with these raw ids,
// that the proxy gave up on an answer over max_response. It is not sent
// from the pump, which must go on to end the answer: the process's task
// group owns (and bounds) the side request.
func (st *State) cancelTooLarge(ids []string) {
	_ = st.p.Gov.Tasks().Go(func(context.Context) {
		defer st.p.recoverPanic("notifications/cancelled after max_response")
		st.sendCancelledFor(ids, "the response exceeded the proxy's max_response")
	})
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

// processJSON reads a 200 answer that is not SSE whole, within a bound,
// while the request's deadline runs: an answer that must be read (a
// filtered list, alone or in a batch, or any answer under max_response)
// within max_event_size (a list) or max_response, any other answer to a
// POST carrying a request within max_event_size. It returns the answer
// filtered and capped: a list result without what the caller may not
// see, an answer over max_response replaced by a JSON-RPC error for the
// request. A body that breaks off is answered 502 with a JSON-RPC error,
// one whose deadline passes before it is read with the deadline's error
// (-32001). An answer that need not be read and is larger than
// max_event_size, or finds no room in the memory budget, is relayed as it
// comes: streaming reports it, and its deadline runs until its last byte,
// past which its connection is cut.
func (st *State) processJSON(resp *http.Response) (_ *http.Response, streaming bool) {
	p := st.p
	limit := p.MaxResponse
	lists := st.answerLists()
	must := lists != nil || limit > 0
	switch {
	case !must && !st.carriesRequest():
		return resp, false
	case !must:
		limit = p.MaxEvent
		if resp.ContentLength > limit {
			return st.streamJSON(resp, nil), true
		}
	case lists != nil && (limit <= 0 || p.MaxEvent < limit):
		limit = p.MaxEvent
	}
	if must && resp.ContentLength > limit {
		st.p.Metrics.ResponseTooLarge()
		return st.replaceResponse(resp, http.StatusOK, codeResponseTooLarge, tooLargeMessage(lists != nil, limit)), false
	}
	want := limit + 1
	if resp.ContentLength >= 0 {
		want = resp.ContentLength
	}
	body, err, refused := readReserved(p.Gov.Memory(), resp.Body, want, resp.ContentLength >= 0)
	st.holdBytes(int64(len(body)))
	switch {
	case err != nil && st.IsExpired():
		_ = resp.Body.Close()
		return st.replaceResponse(resp, http.StatusOK, policy.CodeRequestTimeout, policy.TimeoutMessage(st.deadline.Step())), false
	case err != nil:
		_ = resp.Body.Close()
		return st.replaceResponse(resp, http.StatusBadGateway, mcp.CodeInternalError, "upstream answer broke off"), false
	case refused && must:
		_ = resp.Body.Close()
		st.p.Metrics.Backpressure()
		return st.replaceResponse(resp, http.StatusServiceUnavailable, mcp.CodeServerError, "server out of memory budget, retry later"), false
	case refused || !must && int64(len(body)) > limit:
		return st.streamJSON(resp, body), true
	case int64(len(body)) > limit:
		_ = resp.Body.Close()
		st.p.Metrics.ResponseTooLarge()
		return st.replaceResponse(resp, http.StatusOK, codeResponseTooLarge, tooLargeMessage(lists != nil, limit)), false
	}
	_ = resp.Body.Close()
	if lists != nil {
		out, ok := filterMessages(body, lists, st.filterList)
		if !ok {
			return st.replaceResponse(resp, http.StatusOK, mcp.CodeInternalError, "the list result could not be read by the proxy"), false
		}
		if out != nil {
			body = out
			dropBodyBound(resp.Header)
		}
	}
	setBody(resp, body)
	return resp, false
}

// setBody makes body, read whole or written by the proxy, resp's body:
// sized, so without trailers (net/http fills the upstream's in as its
// body ends, and reverse_proxy would announce them).
func setBody(resp *http.Response, body []byte) {
	b := new(wholeBody)
	b.Reset(body)
	resp.Body = b
	resp.ContentLength = int64(len(body))
	resp.Header.Set("Content-Length", strconv.Itoa(len(body)))
	resp.Trailer = nil
}

// wholeBody is an answer's body the proxy holds whole (setBody): it has
// no trailers to guard (see guardTrailers).
type wholeBody struct{ bytes.Reader }

func (*wholeBody) Close() error { return nil }

// carriesRequest reports whether the request is a POST that carries a
// JSON-RPC request, whose answer the upstream owes.
func (st *State) carriesRequest() bool {
	if st.r == nil || st.r.Method != http.MethodPost {
		return false
	}
	for i := range st.call.Peek.Messages {
		if st.call.Peek.Messages[i].Kind == mcp.KindRequest {
			return true
		}
	}
	return false
}

// readReserved reads body until it ends or holds want bytes, reserving
// from budget the room it reads into as it grows (all of want at once when
// sized, from the declared length), and returns what it read, which stays
// reserved for the caller. refused reports that the budget had no room
// for more: body is then read no further. An error other than io.EOF is
// returned with the bytes read before it.
func readReserved(budget *resources.Budget, body io.Reader, want int64, sized bool) (head []byte, err error, refused bool) {
	var held int64
	defer func() { budget.Release(held - int64(len(head))) }()
	for int64(len(head)) < want {
		if int64(len(head)) == held {
			grow := min(max(held, 4<<10), want-held)
			if sized {
				grow = want - held
			}
			if !budget.Reserve(grow) {
				return head, nil, true
			}
			held += grow
			head = slices.Grow(head, int(held)-len(head))
		}
		n, rerr := body.Read(head[len(head):held])
		head = head[:len(head)+n]
		if rerr == io.EOF {
			return head, nil, false
		}
		if rerr != nil {
			return head, rerr, false
		}
	}
	return head, nil, false
}

// streamJSON relays an answer as it comes, after head (what was read of
// it already): the request's deadline runs until its last byte.
func (st *State) streamJSON(resp *http.Response, head []byte) *http.Response {
	resp.Body = &deadlineBody{Reader: io.MultiReader(bytes.NewReader(head), resp.Body), body: resp.Body, st: st}
	return resp
}

// deadlineBody is the body of an answer relayed as it comes: its end, or
// its close, stops the request's deadline.
type deadlineBody struct {
	io.Reader
	body io.Closer
	st   *State
}

func (d *deadlineBody) Read(b []byte) (int, error) {
	n, err := d.Reader.Read(b)
	if err == io.EOF {
		d.st.stopDeadline()
	}
	return n, err
}

func (d *deadlineBody) Close() error {
	d.st.stopDeadline()
	return d.body.Close()
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
func (st *State) answerWatch() (rewrite func(*sse.Event) []byte, final func(error) []byte) {
	w := &answerWatcher{st: st, id: st.requestID()}
	w.list = st.listMethod()
	if st.p.Lists.Filters() {
		// Any other message may be a list result a client reads.
		w.others = st.listWatch(nil)
	}
	return w.rewrite, w.final
}

// answerWatcher is what answerWatch's hooks know of a request's SSE
// answer. The hooks run on the stream's pump, one at a time.
type answerWatcher struct {
	st *State
	// id is the request's raw id. The id of a request whose id followed
	// the peek is known once its body has been read, before the upstream
	// can answer; a response that comes while it is not known ("") is
	// taken for the answer.
	id string
	// answered: the answer passed, or an error of the proxy's went in its
	// place.
	answered atomic.Bool
	// total is the size of the events read, against max_response; capped,
	// that it passed max_response: the rest of the stream is dropped.
	total  int64
	capped bool
	// list is the list method whose result is filtered, or "".
	list string
	// others relays the messages other than the answer, when set.
	others func(*sse.Event) []byte
}

// sameID reports whether a response with raw id got answers the request.
func (w *answerWatcher) sameID(got []byte) bool {
	return w.id == "" || mcp.SameID(got, w.id)
}

// settle notes that the request's answer passed, or that an error of the
// proxy's went in its place: nothing is owed any more, so giving the POST
// up (the client gone, the stream not resumed) cancels nothing upstream.
func (w *answerWatcher) settle() {
	w.answered.Store(true)
	w.st.mu.Lock()
	w.st.owed = nothingOwed
	w.st.mu.Unlock()
}

// nothingOwed is the owedAnswers of a POST whose answers all passed; it
// is only read.
var nothingOwed = newOwedAnswers(nil)

// rewrite is answerWatch's rewrite hook.
func (w *answerWatcher) rewrite(ev *sse.Event) []byte {
	if w.capped {
		return dropEvent // read in the same burst as the capping one
	}
	if w.id == "" {
		w.id = w.st.requestID()
	}
	w.total += int64(len(ev.Data))
	if w.st.p.MaxResponse > 0 && w.total > w.st.p.MaxResponse && !w.answered.Load() {
		return w.capAnswer(ev)
	}
	if isArray(ev.Data) {
		return w.rewriteArray(ev)
	}
	return w.rewriteMessage(ev)
}

// capAnswer ends an answer that passed max_response: the upstream request
// is cancelled, the upstream is sent notifications/cancelled for it, and
// the client gets a -32603 error in place of the answer.
func (w *answerWatcher) capAnswer(ev *sse.Event) []byte {
	st := w.st
	ids := st.cancelIDs()
	w.settle()
	w.capped = true
	st.p.Metrics.ResponseTooLarge()
	st.abort()
	st.stopDeadline()
	st.cancelTooLarge(ids)
	return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, w.id, codeResponseTooLarge, tooLargeMessage(false, st.p.MaxResponse)))
}

// rewriteArray relays an event of answers in an array: the request's
// own, once, and no other; then the list results in it are filtered.
func (w *answerWatcher) rewriteArray(ev *sse.Event) []byte {
	st := w.st
	if st.deadline != nil && !w.answered.Load() && mcp.HoldsProgress(ev.Data) {
		st.extendDeadline()
	}
	return withData(ev, st.dropStrays(ev.Data, w.take), w.others)
}

// take accepts a response with raw id got as the answer, when it is the
// first with the request's id, and stops the deadline.
func (w *answerWatcher) take(got []byte) bool {
	if w.answered.Load() || !w.sameID(got) {
		return false
	}
	w.settle()
	w.st.stopDeadline()
	return true
}

// rewriteMessage relays an event of one message: the answer passes once,
// filtered when it is a list result; a response with another id is
// dropped; any other message may move the deadline.
func (w *answerWatcher) rewriteMessage(ev *sse.Event) []byte {
	st := w.st
	got, isAnswer, err := mcp.ResponseID(ev.Data)
	if isAnswer && (w.answered.Load() || !w.sameID(got)) || errors.Is(err, mcp.ErrAmbiguous) && w.list == "" {
		// A second answer, or one to a request this POST did not
		// send, or a message a decoder may read as either: the client
		// must get one answer for its id, and none for an id of its
		// other requests. (A list method's is answered with an error
		// below: the client may read it as its list result.)
		st.stray(got)
		return dropEvent
	}
	if w.answered.Load() {
		if w.others != nil {
			return w.others(ev)
		}
		return nil
	}
	if err != nil && w.list != "" {
		// A client's decoder may read this as the list result, which
		// the proxy cannot filter as such.
		w.settle()
		st.stopDeadline()
		st.p.Metrics.ListUnreadable()
		st.p.Logger.Warn("upstream answer not readable; answered with an error", zap.String("method", w.list), zap.Error(err))
		return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, w.id, mcp.CodeInternalError, "the list result could not be read by the proxy"))
	}
	if !isAnswer || err != nil {
		if st.deadline != nil && mcp.HoldsProgress(ev.Data) {
			st.extendDeadline()
		}
		if w.others != nil && err != nil {
			// A message the proxy cannot read may be a list result
			// all the same (a request or a notification cannot be
			// one).
			return w.others(ev)
		}
		return nil
	}
	return w.passAnswer(ev)
}

// passAnswer notes the answer, stops the deadline and relays the answer,
// filtered when it is a list result.
func (w *answerWatcher) passAnswer(ev *sse.Event) []byte {
	w.settle()
	w.st.stopDeadline()
	if w.list == "" {
		return nil
	}
	out, ok := w.st.filterList(w.list, ev.Data)
	switch {
	case !ok:
		return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, w.id, mcp.CodeInternalError, "the list result could not be read by the proxy"))
	case out != nil:
		return sse.AppendEvent(nil, ev.ID, ev.Name, out)
	}
	return nil
}

// final is answerWatch's final hook.
func (w *answerWatcher) final(err error) []byte {
	if w.answered.Load() {
		return nil
	}
	st := w.st
	if w.id == "" {
		w.id = st.requestID() // "": the error has id null
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
	return sse.AppendEvent(nil, "", "message", mcp.AppendError(nil, w.id, code, msg))
}
