package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/sse"
)

// A legacy (2024-11-05) HTTP+SSE session gets every answer on its one GET
// stream: the upstream accepts each POST with 202 and sends the answer as
// a `message` event of the stream. So what mcp_proxy does with answers is
// done on that stream: each legacy stream the process relays is linked,
// by its session key, to the POSTs of its session that the process
// receives. A denied request is accepted (202) and its error sent on the
// stream; a list result on the stream is filtered for whoever sent its
// request; a request's deadline runs until its answer comes on the
// stream, and when it passes the error goes on the stream, the late
// answer is dropped and the upstream gets notifications/cancelled; an
// answer over max_response is replaced by an error; when the upstream's
// stream ends, each request still owed its answer (up to
// policy.MaxAwaited a session) gets an error on the stream, the last
// place it can come.
//
// A POST that finds no link (its stream is relayed by another replica) is
// denied in its own answer, which a legacy client does not read, and runs
// without a deadline; the replica that relays the stream still filters a
// list result it sees there, told apart by its shape, for the stream's
// opener (the session's principal: a legacy token is bound to it).

// legacyLinks holds the links of the legacy streams relayed in the
// process, by session key: a POST finds its session's stream also when a
// config reload put it in another handler than the stream's.
var legacyLinks legacyTable

// legacyTable maps session keys to links.
type legacyTable struct {
	mu sync.Mutex
	m  map[string]*legacyLink
}

func (t *legacyTable) add(key string, l *legacyLink) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*legacyLink{}
	}
	t.m[key] = l
}

func (t *legacyTable) remove(key string, l *legacyLink) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[key] == l {
		delete(t.m, key)
	}
}

func (t *legacyTable) get(key string) *legacyLink {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[key]
}

// legacyLink is what the proxy knows of a legacy session whose stream it
// relays: the stream, who opened it, the upstream, the requests of the
// session whose answers it acts on (awaiting), and the ids of all the
// requests whose answers the stream owes the client (owed).
type legacyLink struct {
	p        *Proxy
	stream   *sse.Stream
	subject  policy.Subject // the stream's opener
	upstream string
	awaiting *policy.Awaiting

	mu   sync.Mutex
	owed map[string]string // raw ids by mcp.IDKey; at most policy.MaxAwaited
	// cancelled holds, by mcp.IDKey, the requests the client cancelled
	// whose answers have not come, each with the number of its
	// cancellation (from cancels): their ids stay in use (see claim) and
	// their late answers are dropped. At most policy.MaxAwaited: an
	// upstream need not answer a cancelled request, so the oldest makes
	// room for a new one.
	cancelled map[string]uint64
	cancels   uint64
	ended     bool // the upstream stream ended: nothing more is owed
}

// newLegacyLink returns the link of the legacy stream st relays, and the
// stream hook that runs rewrite (the endpoint event's) and then the
// link's own work on each event.
func (p *Proxy) newLegacyLink(st *State, rewrite func(*sse.Event) []byte) (*legacyLink, func(*sse.Event) []byte) {
	l := &legacyLink{p: p, subject: p.Lists.Freeze(st.Subject), upstream: st.UpstreamAddr(), owed: map[string]string{}, cancelled: map[string]uint64{}}
	l.awaiting = policy.NewAwaiting(l.expire)
	return l, func(ev *sse.Event) []byte {
		if isEndpointEvent(ev.Name) {
			return rewrite(ev)
		}
		return l.answer(ev)
	}
}

// linkLegacy makes l, the link of stream, findable by the POSTs of its
// session until the stream ends.
func (p *Proxy) linkLegacy(st *State, l *legacyLink, stream *sse.Stream) {
	l.stream = stream
	st.mu.Lock()
	key := mcp.SessionKey(st.legacyUpstream, st.legacyID)
	end := st.legacyEnd
	st.legacyEnd = func() {
		legacyLinks.remove(key, l)
		l.awaiting.Close()
		if end != nil {
			end()
		}
	}
	st.mu.Unlock()
	legacyLinks.add(key, l)
}

// legacyLinkOf returns the link of the legacy session res, or nil.
func legacyLinkOf(res mcp.Resolution) *legacyLink {
	if res.Session == nil || res.Session.Kind != mcp.TokenLegacy {
		return nil
	}
	return legacyLinks.get(res.Key)
}

// SendOnLegacyStream sends answers of the proxy's own on the stream of
// the legacy session res, when this process relays it, and reports
// whether the client was sent them.
func SendOnLegacyStream(res mcp.Resolution, answers [][]byte) bool {
	l := legacyLinkOf(res)
	return l != nil && l.send(answers)
}

// Arm sets up what acts on the request's answers before it goes
// upstream: in a legacy session whose stream this process relays, the
// stream awaits the answers it must act on (see expect) and a batch's
// spliced errors are sent on it; otherwise a deadline of step (0: none)
// starts. It returns a refusal when the request cannot be awaited, and
// otherwise what to call once the proxy has returned, which stops
// awaiting the answers of a POST the upstream did not accept (a POST
// accepted with a 2xx, the Java SDK's empty 200 as a 202, is answered on
// the stream), and gives up the requests a
// notifications/cancelled of one it accepted names (see cancel).
func (st *State) Arm(step time.Duration) (done func(), ref *mcp.Refusal) {
	l := legacyLinkOf(st.res)
	if l == nil {
		if step > 0 {
			st.startDeadline(step, st.p.MaxTimeout)
		}
		return func() {}, nil
	}
	awaited, owed, cancels, ref := l.expect(st, step)
	if ref != nil {
		return nil, ref
	}
	if len(st.Spliced) > 0 && l.send(st.Spliced) {
		st.Spliced = nil
	}
	late := l.expectLate(st, step)
	return func() {
		if st.responded && st.status >= 200 && st.status < 300 {
			// The upstream took the requests, whose answers come on the
			// stream, and the cancellations.
			l.cancel(cancels)
			return
		}
		if late != nil {
			if id := late(); id != "" {
				awaited, owed = append(awaited, id), append(owed, id)
			}
		}
		if len(awaited) > 0 {
			l.awaiting.Forget(awaited)
		}
		if len(owed) > 0 {
			l.settle(owed...)
		}
	}, nil
}

// expectLate is expect for a single request whose id follows the peek:
// its answer is noted as owed, and awaited with its deadline of step or
// its list to filter, once the end of its body gives the id, before the
// upstream has the whole request (see mcp.CheckedBody.OnEnd). It returns
// what closes the expectation and tells the id it noted owed or awaited
// ("" when none): the body may end after the upstream answered, and an
// id read then is not noted. It returns nil when st has no such request.
// When the session awaits too many answers already, the request goes on
// without its deadline (it is on its way upstream); when its stream owes
// too many, it is awaited without being owed.
func (l *legacyLink) expectLate(st *State, step time.Duration) func() string {
	first := st.call.First()
	if st.call.Peek.Batch || first.Kind != mcp.KindRequest || first.ID != "" || st.Checked == nil {
		return nil
	}
	p := l.p
	var mu sync.Mutex // held while an id is noted, so done sees it whole
	var noted string
	closed := false
	st.Checked.OnEnd(func(id string) error {
		mu.Lock()
		defer mu.Unlock()
		if id == "" || closed {
			return nil
		}
		owed, inUse := l.claim([]string{id})
		if inUse != "" {
			l.p.Metrics.SessionRefused("id_in_use")
			return fmt.Errorf("%w: %s", mcp.ErrIDInUse, inUse)
		}
		c := &policy.Awaited{ID: id, Step: step}
		if _, ok := policy.ListKind(first.Method); ok && p.Lists.Filters() {
			c.List, c.Subject = first.Method, p.Lists.Freeze(st.Subject)
		}
		if c.Step > 0 {
			c.Cancel = p.legacyCanceller(st, id)
		}
		awaited := false
		if c.List != "" || c.Step > 0 {
			if awaited = l.awaiting.Add([]*policy.Awaited{c}, p.MaxTimeout); !awaited {
				p.Logger.Debug("legacy session awaits too many answers; a request whose id followed the peek goes on without its deadline")
			}
		}
		if len(owed) > 0 || awaited {
			// Owed or awaited (the stream may owe as many answers as it
			// notes already): done undoes both when the POST is refused.
			noted = id
		}
		return nil
	})
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		closed = true
		return noted
	}
}

// claim notes ids as requests whose answers the stream owes the client,
// and returns those it noted: none once the stream ended, and only as many
// as there is room for (policy.MaxAwaited). A request past that is not
// noted: its answer passes as any other, but an end of the stream before
// it gets it no error. When one of ids is owed already, awaited (its
// answer has not come, its deadline passed or not), or cancelled by the
// client without its answer having come, claim notes none and
// returns it as inUse: its answer and the new request's could not be
// told apart, and the first's answer would end the second's deadline.
func (l *legacyLink) claim(ids []string) (noted []string, inUse string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		return nil, ""
	}
	for _, id := range ids {
		key := mcp.IDKey(id)
		_, owed := l.owed[key]
		_, cancelled := l.cancelled[key]
		if owed || cancelled || l.awaiting.Has(id) {
			return nil, id
		}
	}
	n := min(len(ids), policy.MaxAwaited-len(l.owed))
	noted = ids[:n:n]
	for _, id := range noted {
		l.owed[mcp.IDKey(id)] = id
	}
	if len(noted) < len(ids) {
		if c := l.p.Logger.Check(zap.DebugLevel, "legacy session owes too many answers; request not noted"); c != nil {
			c.Write(zap.Int("owed", len(l.owed)), zap.Int("not_noted", len(ids)-len(noted)))
		}
	}
	return noted, ""
}

// settle notes that the answers with these raw ids are no longer owed:
// they came, an error went in their place, or they will not come.
func (l *legacyLink) settle(ids ...string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		delete(l.owed, mcp.IDKey(id))
	}
}

// answered notes that an answer with raw id came: it is owed no more,
// and its id is free again; cancelled reports that the client cancelled
// its request, so the answer is dropped.
func (l *legacyLink) answered(id []byte) (cancelled bool) {
	key := mcp.IDKey(string(id))
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.owed, key)
	_, cancelled = l.cancelled[key]
	delete(l.cancelled, key)
	return cancelled
}

// cancel gives up the requests with these raw ids, which the client
// cancelled (a notifications/cancelled the upstream accepted), when they
// are owed or awaited with their deadline running: their deadlines stop,
// no error goes in their place, and their late answers are dropped. Their
// ids stay in use until those answers come: an upstream may ignore the
// cancellation, or have sent the answer already, which must not be taken
// for the answer of a later request with the same id. An upstream need
// not answer a cancelled request at all (the TypeScript SDK does not):
// when the table of cancelled requests is full (policy.MaxAwaited), the
// oldest cancellation in it is let go, its id free again.
func (l *legacyLink) cancel(ids []string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, id := range ids {
		key := mcp.IDKey(id)
		if _, owed := l.owed[key]; !owed && !l.awaiting.Running(id) {
			continue // unknown, answered, or its deadline passed
		}
		if len(l.cancelled) >= policy.MaxAwaited {
			l.dropOldestCancelledLocked()
		}
		l.cancels++
		l.cancelled[key] = l.cancels
		delete(l.owed, key)
		l.awaiting.Forget([]string{id})
	}
}

// dropOldestCancelledLocked lets go of the oldest cancelled request held:
// its answer, if it comes, passes as any other.
func (l *legacyLink) dropOldestCancelledLocked() {
	oldest, first := "", uint64(0)
	for key, n := range l.cancelled {
		if oldest == "" || n < first {
			oldest, first = key, n
		}
	}
	delete(l.cancelled, oldest)
	if c := l.p.Logger.Check(zap.DebugLevel, "legacy session holds too many cancelled requests; the oldest is let go"); c != nil {
		c.Write(zap.Int("cancelled", len(l.cancelled)))
	}
}

// final is the stream's last word when its upstream side ends: a
// JSON-RPC error event for each request whose answer the stream still
// owes, which can now come nowhere else.
func (l *legacyLink) final(err error) []byte {
	l.mu.Lock()
	l.ended = true
	owed := make([]string, 0, len(l.owed))
	for _, id := range l.owed {
		owed = append(owed, id)
	}
	clear(l.owed)
	clear(l.cancelled)
	l.mu.Unlock()
	slices.Sort(owed)
	msg := "the upstream's stream ended before the answer"
	switch {
	case errors.Is(err, sse.ErrEventTooLarge), errors.Is(err, sse.ErrLineTooLong):
		// The stream is the session's: it ends for all its calls.
		msg = "an event on the session's stream exceeds the proxy's max_event_size; the stream ends"
	case err != nil && !errors.Is(err, sse.ErrClosed):
		msg = "the upstream's stream broke before the answer"
	}
	var out []byte
	for _, id := range owed {
		l.p.Metrics.Unanswered()
		out = sse.AppendEvent(out, "", "message", mcp.AppendError(nil, id, mcp.CodeInternalError, msg))
	}
	return out
}

// send delivers answers of the proxy's own on the stream, as `message`
// events, and reports whether the client was sent them.
func (l *legacyLink) send(answers [][]byte) bool {
	var buf []byte
	for _, a := range answers {
		buf = sse.AppendEvent(buf, "", "message", a)
	}
	return l.stream.Inject(buf)
}

// expect notes the requests of st whose answers the stream owes (see
// claim), and those it must act on: a list result to filter, a deadline
// of step (0: none). It returns the ids it awaits (to act on), those it
// noted as owed, and those the notifications/cancelled of st name (given
// up once the upstream accepted them: see cancel), or a refusal when a
// request's id is in use or a request with a deadline finds the session
// awaiting too many answers already (lists that find no room are
// filtered by their shape instead).
func (l *legacyLink) expect(st *State, step time.Duration) (awaited, owed, cancels []string, _ *mcp.Refusal) {
	p := l.p
	var calls []*policy.Awaited
	var ids, all []string
	for i := range st.call.Peek.Messages {
		m := &st.call.Peek.Messages[i]
		if m.Kind == mcp.KindNotification && m.Method == "notifications/cancelled" && m.RequestID != "" {
			cancels = append(cancels, m.RequestID)
			continue
		}
		if m.Kind != mcp.KindRequest || m.ID == "" {
			continue
		}
		all = append(all, m.ID)
		c := &policy.Awaited{ID: m.ID, Step: step}
		if _, ok := policy.ListKind(m.Method); ok && p.Lists.Filters() {
			// The answer comes after the POST ended: nothing of its
			// request is kept.
			c.List, c.Subject = m.Method, p.Lists.Freeze(st.Subject)
		}
		if c.List == "" && c.Step == 0 {
			continue
		}
		if c.Step > 0 {
			c.Cancel = p.legacyCanceller(st, m.ID)
		}
		calls = append(calls, c)
		ids = append(ids, m.ID)
	}
	owed, inUse := l.claim(all)
	if inUse != "" {
		l.p.Metrics.SessionRefused("id_in_use")
		id := ""
		if !st.call.Peek.Batch {
			id = inUse
		}
		return nil, nil, nil, mcp.Refuse(http.StatusBadRequest, mcp.CodeInvalidRequest, id, "invalid request: "+mcp.ErrIDInUse.Error()+": "+inUse)
	}
	if l.awaiting.Add(calls, p.MaxTimeout) {
		return ids, owed, cancels, nil
	}
	if step == 0 {
		// Lists only: their results are filtered by their shape.
		return nil, owed, cancels, nil
	}
	l.settle(owed...)
	l.p.Metrics.SessionRefused("legacy_pending")
	st.w.Header().Set("Retry-After", RetryAfter)
	return nil, nil, nil, mcp.Refuse(http.StatusServiceUnavailable, mcp.CodeServerError, st.call.First().ID,
		"too many requests of this session await their answers, retry after "+RetryAfter+"s")
}

// expire answers a request whose deadline passed: the client gets the
// error on the stream, the upstream is told; the late answer will be
// dropped.
func (l *legacyLink) expire(c *policy.Awaited) {
	defer l.p.recoverPanic("legacy request deadline")
	l.p.Metrics.Deadline("waiting")
	msg := mcp.AppendError(nil, c.ID, policy.CodeRequestTimeout, policy.TimeoutMessage(c.Step))
	l.settle(c.ID)
	if !l.send([][]byte{msg}) {
		l.p.Logger.Debug("timeout error of a legacy request not delivered: its stream is gone or full")
	}
	c.Cancel("request timed out")
}

// answer is the stream hook for every event after the endpoint: an
// answer the session awaits is dropped when its deadline passed, capped
// by max_response, and filtered when it is a list result. With rules or
// pins, a message whose top-level keys a decoder could read as another
// id or answer (mcp.ErrAmbiguous) is dropped.
func (l *legacyLink) answer(ev *sse.Event) []byte {
	p := l.p
	id, ok, err := mcp.ResponseID(ev.Data)
	if err != nil && p.Lists.Filters() {
		// A client's decoder may read this as an answer, maybe a list
		// result, which the proxy cannot filter as such.
		l.p.Metrics.ListUnreadable()
		p.Logger.Warn("upstream message not readable; dropped from a legacy stream", zap.Error(err))
		return dropEvent
	}
	if !ok {
		if mcp.HoldsProgress(ev.Data) {
			l.awaiting.Extend()
		}
		if isArray(ev.Data) {
			return l.answerArray(ev)
		}
		return nil
	}
	c, expired := l.awaiting.Take(id)
	if l.answered(id) || expired {
		return dropEvent
	}
	if p.MaxResponse > 0 && int64(len(ev.Data)) > p.MaxResponse {
		l.p.Metrics.ResponseTooLarge()
		return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, string(id), codeResponseTooLarge, tooLargeMessage(false, p.MaxResponse)))
	}
	list, subj := "", policy.Subject(l.subject)
	switch {
	case c != nil:
		list, subj = c.List, c.Subject
	case p.Lists.Filters():
		list = policy.ListMethodOf(ev.Data)
	}
	if list == "" {
		return nil
	}
	out, ok := p.Lists.Filter(list, ev.Data, subj, l.upstream, false)
	switch {
	case !ok:
		return sse.AppendEvent(nil, ev.ID, "message", mcp.AppendError(nil, string(id), mcp.CodeInternalError, "the list result could not be read by the proxy"))
	case out != nil:
		return sse.AppendEvent(nil, ev.ID, ev.Name, out)
	}
	return nil
}

// answerArray handles an event holding an array of messages (a batch's
// answers) as answer does each message: the awaited requests it answers
// are taken (an answer whose deadline passed is dropped), and, when lists
// are filtered, each list result is filtered for its request's subject,
// or for the stream's opener by its shape; an array that cannot be read
// is then dropped.
func (l *legacyLink) answerArray(ev *sse.Event) []byte {
	filters := l.p.Lists.Filters()
	var all []json.RawMessage
	if json.Unmarshal(ev.Data, &all) != nil {
		if filters {
			return l.unreadable()
		}
		return nil
	}
	kept, changed := all[:0], false
	for _, msg := range all {
		id, ok, err := mcp.ResponseID(msg)
		if err != nil && filters {
			return l.unreadable()
		}
		list, subj := "", policy.Subject(l.subject)
		if filters && ok {
			list = policy.ListMethodOf(msg)
		}
		if ok {
			c, expired := l.awaiting.Take(id)
			if l.answered(id) || expired {
				changed = true // its timeout error went instead, or the client gave it up
				continue
			}
			if c != nil && c.List != "" && filters {
				list, subj = c.List, c.Subject
			}
		}
		if list != "" {
			out, ok := l.p.Lists.Filter(list, msg, subj, l.upstream, false)
			if !ok {
				return l.unreadable()
			}
			if out != nil {
				msg, changed = out, true
			}
		}
		kept = append(kept, msg)
	}
	switch {
	case !changed:
		return nil
	case len(kept) == 0:
		return dropEvent
	}
	out, err := json.Marshal(kept)
	if err != nil {
		return l.unreadable()
	}
	return sse.AppendEvent(nil, ev.ID, ev.Name, out)
}

// unreadable drops an event that may hold a list result the proxy cannot
// read.
func (l *legacyLink) unreadable() []byte {
	l.p.Metrics.ListUnreadable()
	l.p.Logger.Warn("upstream array of messages not readable; dropped from a legacy stream")
	return dropEvent
}

// maxKeptHeaderBytes bounds the client headers a legacy request with a
// deadline keeps, while its answer is awaited, for the
// notifications/cancelled it may need: a request with more keeps none,
// and its cancellation goes with the proxy's own headers only.
const maxKeptHeaderBytes = 8 << 10

// headerBytes is the size of h as written on the wire, near enough.
func headerBytes(h http.Header) int {
	n := 0
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// legacyCanceller returns what tells the upstream that the proxy gave up
// on request id of st's legacy session: notifications/cancelled, posted to
// the session's upstream endpoint as st's request was (with its headers,
// up to maxKeptHeaderBytes), in the process's task group.
func (p *Proxy) legacyCanceller(st *State, id string) func(reason string) {
	hdr := st.r.Header
	if headerBytes(hdr) > maxKeptHeaderBytes {
		hdr = http.Header{}
	}
	hdr = mcp.CancelHeaders(hdr)
	path := st.r.URL.EscapedPath()
	if q := st.r.URL.RawQuery; q != "" {
		path += "?" + q
	}
	host, upstream := st.r.Host, st.res.Pinned
	return func(reason string) {
		p.goSide("legacy notifications/cancelled", func(ctx context.Context) {
			p.postCancelled(ctx, upstream, path, host, hdr, reason, id)
		})
	}
}
