package relay

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/h1stream"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// State links one proxied request with the transport wrapper: the
// wrapper detaches the upstream request from the client's cancellation
// (the relay decides per era what a disconnect means) and hands an SSE
// response body to the relay instead of the proxy's copy loop. The
// caller sets its exported fields before the request goes upstream.
type State struct {
	// Whole is the request's whole body when the peek read it all.
	Whole []byte
	// Session is the request's entry in the session registry, or nil.
	Session *resources.Session
	// ClientKey identifies the request's client for per-client limits.
	ClientKey string
	// Principal is the request's principal; a session it starts is bound
	// to it.
	Principal string
	// Over gives back what the request holds (admission slot, session
	// in-flight count); it runs once, when the request is over.
	Over func()
	// code is the JSON-RPC code of an answer the proxy gave in place of
	// the upstream's (see ProxyCode).
	code atomic.Int32
	// Subject is who sent the request, for filtering its list result.
	Subject policy.Subject
	// Spliced are the errors of a batch's denied requests, for the
	// answer.
	Spliced [][]byte
	// RoutePrefix is the path prefix a route stripped from the request,
	// which a legacy endpoint the client is sent keeps.
	RoutePrefix string
	// Checked is the request's body streamed past the peek, nil when the
	// peek read it whole; the id of a request that follows the peek is
	// read from it (see requestID).
	Checked *mcp.CheckedBody

	p    *Proxy
	r    *http.Request // nil once a handed-off stream left the handler
	call *mcp.Call
	res  mcp.Resolution
	// w is the client's response writer; the transport only sets headers
	// on it, before the proxy writes them.
	w http.ResponseWriter
	// handoff: a GET whose SSE stream may leave the handler (see
	// Config.Handoff); cleared when its response cannot.
	handoff bool
	// resumable: a session-era request whose response stream survives a
	// client disconnect, to be resumed with Last-Event-ID.
	resumable bool
	// legacyID and legacyUpstream name the legacy session a legacy SSE
	// stream opened, legacyEnd ends it when the stream is over.
	legacyID, legacyUpstream string
	legacyEnd                func()

	mu        sync.Mutex
	body      io.ReadCloser // SSE body taken over from the proxy
	outReq    *http.Request // the upstream request as sent
	cancel    context.CancelFunc
	stopWatch func() bool
	stream    *sse.Stream
	timer     *time.Timer
	done      bool
	detached  bool // a pump goroutine owns the upstream beyond the handler

	// status and responded describe the last upstream response; they are
	// written by the transport and read by the handler once the proxy
	// has returned.
	status    int
	responded bool

	// upstream is the dial address of the upstream that answered; held
	// the memory-budget bytes a read answer holds until the end.
	upstream string
	held     int64
	// The request's deadline (see deadline.go), and whether it passed.
	deadline *policy.Deadline
	expired  bool
	// owed is what the SSE answer to a POST that is not one request
	// still owes (see batchWatch), nil before it began.
	owed *owedAnswers
}

// NewState returns the relay state of request r, answered on w.
func (p *Proxy) NewState(w http.ResponseWriter, r *http.Request, call *mcp.Call, res mcp.Resolution) *State {
	legacy := res.Session != nil && res.Session.Kind == mcp.TokenLegacy
	return &State{
		p: p, r: r, w: w, call: call, res: res,
		resumable: mcp.Resumable(r.Method, call, res.Session != nil, legacy),
		handoff:   p.Handoff && r.Method == http.MethodGet && r.ProtoMajor == 1 && !legacyStream(r, call, res),
	}
}

// legacyStream reports whether a request opens a legacy (2024-11-05)
// HTTP+SSE stream, whose endpoint event is rewritten.
func legacyStream(r *http.Request, call *mcp.Call, res mcp.Resolution) bool {
	return mcp.OpensLegacyStream(r.Method, call, res.Session != nil)
}

// clientGone applies the era's meaning of a client disconnect. A
// resumable request whose SSE response stream has begun keeps its upstream
// running so the client can resume it, for at most the replay age. Any
// other request is over: the upstream request is cancelled, and for a
// session-era request the upstream is told with notifications/cancelled,
// since a client that saw no event id can never resume it.
func (st *State) clientGone() {
	defer st.p.recoverPanic("client gone")
	st.mu.Lock()
	if st.done || st.timer != nil {
		st.mu.Unlock()
		return
	}
	if st.resumable && st.stream != nil {
		st.timer = time.AfterFunc(st.p.ReplayAge, st.detachedTooLong)
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	if st.resumable {
		st.giveUp("client disconnected before the response")
		return
	}
	st.abort()
}

// detachedTooLong ends a resumable request nobody resumed in time, and
// tells the upstream the proxy gave up on it.
func (st *State) detachedTooLong() {
	defer st.p.recoverPanic("replay timer")
	st.mu.Lock()
	if st.done {
		st.mu.Unlock()
		return
	}
	if st.stream != nil && st.stream.Attached() {
		st.timer.Reset(st.p.ReplayAge)
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	st.giveUp("client did not resume the stream")
}

// abort cancels the upstream request and closes its body.
func (st *State) abort() {
	st.mu.Lock()
	cancel, body := st.cancel, st.body
	st.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if body != nil {
		_ = body.Close()
	}
}

// HandlerDone is called when mcp_proxy's ServeHTTP returns: the request
// is over unless a detached pump still reads its upstream, in which case
// the pump finishes it.
func (st *State) HandlerDone() {
	if !st.IsDetached() {
		st.finish()
	}
}

// IsDetached reports whether a pump goroutine owns the request beyond its
// handler.
func (st *State) IsDetached() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.detached
}

// finish releases the request's hooks once it is over.
func (st *State) finish() {
	st.mu.Lock()
	st.done = true
	stop, cancel, timer, legacyEnd := st.stopWatch, st.cancel, st.timer, st.legacyEnd
	st.legacyEnd = nil
	held := st.held
	st.held = 0
	if st.deadline != nil {
		st.deadline.Stop()
	}
	st.mu.Unlock()
	if held > 0 {
		st.p.Gov.Memory().Release(held)
	}
	if st.Over != nil {
		st.Over()
	}
	if legacyEnd != nil {
		legacyEnd()
	}
	if stop != nil {
		stop()
	}
	if timer != nil {
		timer.Stop()
	}
	if cancel != nil {
		cancel()
	}
}

// sendCancelledFor posts notifications/cancelled upstream, in the
// request's session, for the requests with these raw ids the proxy gives
// up on (see cancelIDs), as a 2025-era sender that abandons a request
// must: one notification, or a batch of them (a batch is sent only where
// the client sent one, so the upstream reads them). It goes through the
// embedded reverse_proxy with the client request's own headers (see
// sideRequest). initialize is never cancelled.
func (st *State) sendCancelledFor(ids []string, reason string) {
	st.mu.Lock()
	r := st.r
	sent := st.outReq != nil
	st.mu.Unlock()
	if r == nil || !sent || len(ids) == 0 || st.call.IsInitialize() || st.call.Era == mcp.EraStateless || st.res.Session == nil {
		return
	}
	release, ok := st.p.sideSlot()
	if !ok {
		return
	}
	defer release()
	st.p.postCancelled(context.WithoutCancel(r.Context()), st.res.Pinned, r.URL.EscapedPath(), r.Host, mcp.CancelHeaders(r.Header), reason, ids...)
}

// requestID returns the raw JSON id of a single request: the peek's, or,
// for one whose id followed the peek, the id its checked body read (see
// mcp.CheckedBody.LateID), once the body has been read whole; "" while it
// is not known, and for a batch.
func (st *State) requestID() string {
	first := st.call.First()
	switch {
	case st.call.Peek.Batch || first.Kind != mcp.KindRequest:
		return ""
	case first.ID != "":
		return first.ID
	case st.Checked != nil:
		return st.Checked.LateID()
	}
	return ""
}

// upstreamIDs returns the raw ids of the requests the POST sent upstream:
// those of a batch but its denied ones (see Spliced), or the single
// request's when known.
func (st *State) upstreamIDs() []string {
	if !st.call.Peek.Batch {
		if id := st.requestID(); id != "" {
			return []string{id}
		}
		return nil
	}
	denied := map[string]bool{}
	for _, a := range st.Spliced {
		if id, ok, _ := mcp.ResponseID(a); ok {
			denied[mcp.IDKey(string(id))] = true
		}
	}
	var ids []string
	for i := range st.call.Peek.Messages {
		m := &st.call.Peek.Messages[i]
		if m.Kind == mcp.KindRequest && m.ID != "" && !denied[mcp.IDKey(m.ID)] {
			ids = append(ids, m.ID)
		}
	}
	return ids
}

// cancelIDs returns the ids of the requests the proxy gives up on when
// it abandons the POST: those its SSE answer still owes (see owedAnswers),
// or, before one began, every request it sent upstream.
func (st *State) cancelIDs() []string {
	st.mu.Lock()
	owed := st.owed
	st.mu.Unlock()
	if owed != nil {
		return owed.pending()
	}
	return st.upstreamIDs()
}

// sideSlot takes one of the process's slots for a request of the proxy's
// own; when none is free it counts the request skipped and reports false.
func (p *Proxy) sideSlot() (release func(), ok bool) {
	slots := p.Gov.SideRequests()
	if !slots.TryAcquire() {
		p.Metrics.SideSkipped()
		return nil, false
	}
	return slots.Release, true
}

// goSide runs f, a request of the proxy's own, on the process's task
// group if a side-request slot is free (see sideSlot); where names it in
// a panic report.
func (p *Proxy) goSide(where string, f func(ctx context.Context)) {
	release, ok := p.sideSlot()
	if !ok {
		return
	}
	if !p.Gov.Tasks().Go(func(ctx context.Context) {
		defer release()
		defer p.recoverPanic(where)
		f(ctx)
	}) {
		release()
	}
}

// sideTimeout bounds a request the proxy sends upstream of its own accord
// (notifications/cancelled, the DELETE of an unusable session).
const sideTimeout = 5 * time.Second

// postCancelled posts notifications/cancelled for the requests with raw
// JSON ids (one message, or a batch of them) to upstream, at path with
// host and hdr, through the caller's proxy, within sideTimeout. The
// caller holds a side-request slot.
func (p *Proxy) postCancelled(ctx context.Context, upstream, path, host string, hdr http.Header, reason string, ids ...string) {
	ctx, cancel := context.WithTimeout(ctx, sideTimeout)
	defer cancel()
	var body []byte
	if len(ids) == 1 {
		body = mcp.AppendCancelled(nil, ids[0], reason)
	} else {
		msgs := make([][]byte, len(ids))
		for i, id := range ids {
			msgs[i] = mcp.AppendCancelled(nil, id, reason)
		}
		body = mcp.AppendBatch(nil, msgs)
	}
	if _, err := p.Side(ctx, upstream, http.MethodPost, path, host, hdr, body); err != nil {
		p.Logger.Debug("sending notifications/cancelled upstream failed", zap.Error(err))
		return
	}
	for range ids {
		p.Metrics.CancelSent()
	}
}

// streamConfig returns the relay configuration of a request's stream. The
// replay ring gets the handler's full sizes; relay shrinks it to the
// degraded fraction, as the level does for the streams already open.
func (p *Proxy) streamConfig(st *State, legacy bool) sse.StreamConfig {
	cfg := sse.StreamConfig{
		MaxEvent:     int(p.MaxEvent),
		MaxLine:      int(p.MaxEvent),
		QueueEvents:  p.QueueEvents,
		QueueBytes:   int(p.QueueBytes),
		WriteTimeout: p.WriteTimeout,
		Keepalive:    p.Keepalive,
		Hooks:        p.StreamHooks(st.Session),
	}
	// At the degraded level and above, new streams get smaller buffers.
	if f := p.Gov.DegradedFraction(); f < 1 {
		cfg.QueueEvents = max(1, int(float64(cfg.QueueEvents)*f))
		cfg.QueueBytes = max(1, int(float64(cfg.QueueBytes)*f))
	}
	if st.resumable {
		cfg.ReplayEvents, cfg.ReplayBytes, cfg.ReplayAge = p.ReplayEvents, p.ReplayBytes, p.ReplayAge
		cfg.IDPrefix = sse.NewIDPrefix()
	}
	// Where the relay decides on what events hold (a legacy stream's
	// endpoint, list results to filter), the client gets the events as
	// the relay read them, not the upstream's bytes.
	filters := p.Lists.Filters()
	cfg.Canonical = legacy || filters
	first, lists := st.call.First(), st.answerLists()
	switch {
	case legacy:
		cfg.Rewrite = st.rewriteLegacyEndpoint()
	case first.Kind == mcp.KindRequest && !st.call.Peek.Batch:
		// Its id may follow the peek: the watch reads it once the body
		// has been read (see requestID).
		cfg.Rewrite, cfg.Final = st.answerWatch()
	case lists != nil:
		cfg.Rewrite = st.listWatch(lists)
	case filters:
		// Any stream may carry a list result (a resumed one, a
		// server's): it is filtered by its shape.
		cfg.Rewrite = st.listWatch(nil)
	}
	batchLike := !legacy && st.r.Method == http.MethodPost && (st.call.Peek.Batch || first.Kind != mcp.KindRequest)
	if batchLike {
		// A POST's stream carries requests, notifications and the
		// answers to its own requests only, within max_response; it ends
		// with an error for each request it did not answer.
		cfg.Rewrite, cfg.Final = st.batchWatch(cfg.Rewrite)
	}
	if filters && !legacy {
		cfg.Rewrite = messagesOnly(cfg.Rewrite)
	}
	if len(st.Spliced) > 0 && !batchLike {
		cfg.Final = st.splicedFinal()
	}
	if !legacy && st.continues() {
		cfg.Continue = (&continuer{st: st}).next
	}
	return cfg
}

// RetryHint returns the retry hint for a request's client: only clients at
// 2025-11-25 or later are known to honour it; -1 means none.
func (p *Proxy) RetryHint(call *mcp.Call, res mcp.Resolution) time.Duration {
	v := call.Version
	if v == "" && res.Session != nil {
		v = res.Session.Version
	}
	if mcp.SupportsRetryHint(v) {
		return p.Retry
	}
	return -1
}

// messagesOnly returns rewrite behind a hook that drops the events of a
// name other than "message": clients read only unnamed and "message"
// events as MCP messages, but some trim the name first ("message " is one
// for the go-sdk client), so an event the relay does not read as a
// message must not reach them.
func messagesOnly(rewrite func(*sse.Event) []byte) func(*sse.Event) []byte {
	return func(ev *sse.Event) []byte {
		switch {
		case ev.Name != "" && ev.Name != "message":
			return dropEvent
		case rewrite == nil:
			return nil
		}
		return rewrite(ev)
	}
}

// isEndpointEvent reports whether a legacy client may read an event of
// this name as the endpoint: the go-sdk client trims the name first.
func isEndpointEvent(name string) bool {
	return strings.TrimSpace(name) == "endpoint"
}

// rewriteLegacyEndpoint returns the hook that rewrites the first
// `endpoint` event of a legacy stream, and drops any later one: a server
// sends one, and a client may read another as a message, or as an
// endpoint to post to.
func (st *State) rewriteLegacyEndpoint() func(ev *sse.Event) []byte {
	seen := false
	return func(ev *sse.Event) []byte {
		switch {
		case !isEndpointEvent(ev.Name):
			return nil
		case seen:
			return dropEvent
		}
		seen = true
		data, ok := st.rewriteEndpoint(st.r, string(ev.Data))
		if !ok {
			// The upstream's endpoint must not reach the client: the
			// stream ends instead.
			st.abort()
			return sse.AppendComment(nil, "endpoint not available")
		}
		return sse.AppendEvent(nil, ev.ID, "endpoint", []byte(data))
	}
}

// Relay pumps an SSE response body taken over by the transport to the
// client, and returns when the client has everything, left, or was cut.
func (p *Proxy) Relay(w http.ResponseWriter, st *State, body io.ReadCloser) {
	legacy := legacyStream(st.r, st.call, st.res)
	cfg := p.streamConfig(st, legacy)
	var link *legacyLink
	if legacy && st.legacyID != "" {
		link, cfg.Rewrite = p.newLegacyLink(st, cfg.Rewrite)
		cfg.Final = link.final
	}
	stream := sse.NewStream(cfg)
	if link != nil {
		p.linkLegacy(st, link, stream)
	}
	if f := p.Gov.DegradedFraction(); f < 1 {
		stream.ShrinkRingBy(f)
	}
	stream.SetCloser(func() { _ = body.Close() })
	st.mu.Lock()
	st.stream = stream
	st.mu.Unlock()
	if st.resumable {
		p.Gov.Resume().Add(st.res.Key, stream)
	}
	// The headers go out now: an idle stream may send nothing for long.
	cw := newClientWriter(w, st.r)
	_ = cw.Flush()
	if sb, ok := body.(*h1stream.Body); ok && st.handoff && p.handOff(w, st, stream, sb) {
		return
	}
	att, _ := stream.Attach(cw, "", p.RetryHint(st.call, st.res))
	untrack := p.track(att, stream, st.resumable, st.Session)
	defer untrack()
	p.Metrics.StreamOpened()
	defer p.Metrics.StreamClosed()

	if st.resumable {
		// The upstream is pumped by its own goroutine, so this request can
		// end (and the client resume elsewhere) while the upstream runs on.
		st.mu.Lock()
		st.detached = true
		st.mu.Unlock()
		group := p.Gov.Tasks()
		if st.Session != nil {
			group = st.Session.Group()
		}
		if !group.Go(func(ctx context.Context) {
			// The session's end (eviction) ends the pump too.
			stop := context.AfterFunc(ctx, stream.Close)
			defer stop()
			p.pump(stream, body, st)
		}) {
			stream.Close()
			p.pump(stream, body, st)
			return
		}
		stop := context.AfterFunc(st.r.Context(), att.Gone)
		defer stop()
		waitAttached(st.r.Context(), att)
		return
	}
	stop := context.AfterFunc(st.r.Context(), func() { att.Gone(); stream.Close() })
	defer stop()
	att.OnEnd(stream.Close)
	p.pump(stream, body, st)
	waitAttached(st.r.Context(), att)
}

// waitAttached waits until the client of att has been sent all it will
// be sent. A response whose write to the client failed is then aborted
// (http.ErrAbortHandler): the client may hold part of an event, and must
// see a broken stream (its HTTP/1 connection closed before the last
// chunk, its HTTP/2 or HTTP/3 stream reset), not a clean end; an HTTP/3
// stream would otherwise end cleanly after the cut.
func waitAttached(ctx context.Context, att *sse.Attachment) {
	_ = att.Wait(ctx)
	if att.Broken() {
		panic(http.ErrAbortHandler)
	}
}

// pump runs the upstream side of a stream until it ends.
func (p *Proxy) pump(stream *sse.Stream, body io.ReadCloser, st *State) {
	defer st.finish()
	defer body.Close()
	err := stream.Pump(body)
	if errors.Is(err, sse.ErrEventTooLarge) || errors.Is(err, sse.ErrLineTooLong) {
		p.Logger.Warn("upstream SSE event over max_event_size; stream closed", zap.Error(err))
	}
}

// ServeResume answers a GET with Last-Event-ID from the stream that holds
// the id: the events after it, then the stream's live events.
func (p *Proxy) ServeResume(w http.ResponseWriter, r *http.Request, stream *sse.Stream, last string, retry time.Duration, sess *resources.Session) error {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	cw := newClientWriter(w, r)
	_ = cw.Flush()
	att, _ := stream.Attach(cw, last, retry)
	untrack := p.track(att, stream, true, sess)
	defer untrack()
	p.Metrics.StreamOpened()
	defer p.Metrics.StreamClosed()
	stop := context.AfterFunc(r.Context(), att.Gone)
	defer stop()
	waitAttached(r.Context(), att)
	return nil
}

// Response reports the status of the last upstream response, and whether
// there was one; the caller reads it once the proxy has returned.
func (st *State) Response() (status int, ok bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.status, st.responded
}

// ProxyCode returns the JSON-RPC error code of the answer the proxy
// wrote in place of the upstream's (a deadline, a cap, a broken or
// unreadable answer), 0 when the upstream's answer went to the client.
func (st *State) ProxyCode() int { return int(st.code.Load()) }

// StreamBody returns the SSE body the transport took over for Relay, nil
// when the answer was not a stream.
func (st *State) StreamBody() io.ReadCloser {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.body
}
