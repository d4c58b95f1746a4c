package caddymodule

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/h1stream"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
	"github.com/mcpgate/mcpgate/resources"
	"github.com/mcpgate/mcpgate/sse"
)

// varRelay holds the request's *relayState for the transport wrapper.
const varRelay = "mcp.relay"

// relayState links one proxied request with the transport wrapper: the
// wrapper detaches the upstream request from the client's cancellation
// (mcp_proxy decides per era what a disconnect means) and hands an SSE
// response body to the relay instead of reverse_proxy's copy loop.
type relayState struct {
	h    *Handler
	r    *http.Request // nil once a handed-off stream left the handler
	call *mcp.Call
	res  resolution
	// w is the client's response writer; the transport only sets headers
	// on it, before reverse_proxy writes them.
	w http.ResponseWriter
	// handoff: a GET whose SSE stream may leave the handler (see
	// Handler.StreamHandoff); cleared when its response cannot.
	handoff bool
	// whole is the request's whole body when the peek read it all.
	whole []byte
	// resumable: a session-era request whose response stream survives a
	// client disconnect, to be resumed with Last-Event-ID.
	resumable bool
	// session is the request's entry in the session registry, or nil.
	session *resources.Session
	// clientKey identifies the request's client for per-client limits.
	clientKey string
	// principal is the request's principal; a session it starts is bound
	// to it.
	principal string
	// over gives back what the request holds (admission slot, session
	// in-flight count); it runs once, when the request is over.
	over func()
	// legacyID and legacyUpstream name the legacy session a legacy SSE
	// stream opened, legacyEnd ends it when the stream is over.
	legacyID, legacyUpstream string
	legacyEnd                func()

	mu        sync.Mutex
	body      io.ReadCloser // SSE body taken over from reverse_proxy
	outReq    *http.Request // the upstream request as sent
	cancel    context.CancelFunc
	stopWatch func() bool
	stream    *sse.Stream
	timer     *time.Timer
	done      bool
	detached  bool // a pump goroutine owns the upstream beyond the handler

	// status and responded describe the last upstream response; they are
	// written by the transport and read by the handler once reverse_proxy
	// has returned.
	status    int
	responded bool

	// upstream is the dial address of the upstream that answered; held
	// the memory-budget bytes a read answer holds until the end.
	upstream string
	held     int64
	// subject is who sent the request, for filtering its list result.
	subject *subject
	// spliced are the errors of a batch's denied requests, for the answer.
	spliced [][]byte
	// The request's deadline (see deadline.go), and whether it passed.
	deadline *policy.Deadline
	expired  bool
}

func newRelayState(h *Handler, w http.ResponseWriter, r *http.Request, call *mcp.Call, res resolution) *relayState {
	legacy := res.session != nil && res.session.Kind == mcp.TokenLegacy
	return &relayState{
		h: h, r: r, w: w, call: call, res: res,
		resumable: mcp.Resumable(r.Method, call, res.session != nil, legacy),
		handoff:   h.handoff && r.Method == http.MethodGet && r.ProtoMajor == 1 && !legacyStream(r, call, res),
	}
}

// legacyStream reports whether a request opens a legacy (2024-11-05)
// HTTP+SSE stream, whose endpoint event is rewritten.
func legacyStream(r *http.Request, call *mcp.Call, res resolution) bool {
	return mcp.OpensLegacyStream(r.Method, call, res.session != nil)
}

// clientGone applies the era's meaning of a client disconnect. A
// resumable request whose SSE response stream has begun keeps its upstream
// running so the client can resume it, for at most the replay age. Any
// other request is over: the upstream request is cancelled, and for a
// session-era request the upstream is told with notifications/cancelled,
// since a client that saw no event id can never resume it.
func (st *relayState) clientGone() {
	defer recoverPanic(st.h.logger, "client gone")
	st.mu.Lock()
	if st.done || st.timer != nil {
		st.mu.Unlock()
		return
	}
	if st.resumable && st.stream != nil {
		st.timer = time.AfterFunc(st.h.replayAge, st.detachedTooLong)
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	st.abort()
	if st.resumable {
		st.sendCancelled("client disconnected before the response")
	}
}

// detachedTooLong ends a resumable request nobody resumed in time, and
// tells the upstream the proxy gave up on it.
func (st *relayState) detachedTooLong() {
	defer recoverPanic(st.h.logger, "replay timer")
	st.mu.Lock()
	if st.done {
		st.mu.Unlock()
		return
	}
	if st.stream != nil && st.stream.Attached() {
		st.timer.Reset(st.h.replayAge)
		st.mu.Unlock()
		return
	}
	st.mu.Unlock()
	st.abort()
	st.sendCancelled("client did not resume the stream")
}

// abort cancels the upstream request and closes its body.
func (st *relayState) abort() {
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

// handlerDone is called when mcp_proxy's ServeHTTP returns: the request
// is over unless a detached pump still reads its upstream, in which case
// the pump finishes it.
func (st *relayState) handlerDone() {
	if !st.isDetached() {
		st.finish()
	}
}

// isDetached reports whether a pump goroutine owns the request beyond its
// handler.
func (st *relayState) isDetached() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.detached
}

// finish releases the request's hooks once it is over.
func (st *relayState) finish() {
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
		st.h.app.global.Memory().Release(held)
	}
	if st.over != nil {
		st.over()
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

// sendCancelled posts notifications/cancelled for the request upstream,
// in its session, as a 2025-era sender that abandons a request must. It
// goes through the embedded reverse_proxy with the client request's own
// headers (see sideRequest). initialize is never cancelled.
func (st *relayState) sendCancelled(reason string) {
	first := st.call.First()
	st.mu.Lock()
	r := st.r
	sent := st.outReq != nil
	st.mu.Unlock()
	if r == nil || !sent || first.ID == "" || first.Method == "initialize" || st.call.Era == mcp.EraStateless || st.res.session == nil {
		return
	}
	hdr := mcp.CancelHeaders(r.Header)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 5*time.Second)
	defer cancel()
	body := mcp.CancelledBody(first.ID, reason)
	if _, err := st.h.sideRequest(ctx, st.res.pinned, http.MethodPost, r.URL.EscapedPath(), r.Host, hdr, body); err != nil {
		st.h.logger.Debug("sending notifications/cancelled upstream failed", zap.Error(err))
		return
	}
	metrics.cancelsSent.Inc()
}

// clientWriter adapts the client's response writer for the relay.
type clientWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
}

func newClientWriter(w http.ResponseWriter) *clientWriter {
	return &clientWriter{w: w, rc: http.NewResponseController(w)}
}

func (c *clientWriter) Write(p []byte) (int, error)        { return c.w.Write(p) }
func (c *clientWriter) Flush() error                       { return c.rc.Flush() }
func (c *clientWriter) SetWriteDeadline(t time.Time) error { return c.rc.SetWriteDeadline(t) }

// streamConfig returns the relay configuration of a request's stream. The
// replay ring gets the handler's full sizes; relay shrinks it to the
// degraded fraction, as the level does for the streams already open.
func (h *Handler) streamConfig(st *relayState, legacy bool) sse.StreamConfig {
	cfg := sse.StreamConfig{
		MaxEvent:     int(h.maxEvent),
		MaxLine:      int(h.maxEvent),
		QueueEvents:  h.queueEvents,
		QueueBytes:   int(h.queueBytes),
		WriteTimeout: h.writeTimeout,
		Keepalive:    h.keepalive,
		Hooks:        h.streamHooksFor(st.session),
	}
	// At the degraded level and above, new streams get smaller buffers.
	if f := h.app.global.DegradedFraction(); f < 1 {
		cfg.QueueEvents = max(1, int(float64(cfg.QueueEvents)*f))
		cfg.QueueBytes = max(1, int(float64(cfg.QueueBytes)*f))
	}
	if st.resumable {
		cfg.ReplayEvents, cfg.ReplayBytes, cfg.ReplayAge = h.replayEvents, h.replayBytes, h.replayAge
		cfg.IDPrefix = sse.NewIDPrefix()
	}
	if legacy {
		cfg.Rewrite = st.rewriteLegacyEndpoint()
	}
	if first := st.call.First(); first.Kind == mcp.KindRequest && first.ID != "" && !st.call.Peek.Batch {
		cfg.Rewrite, cfg.Final = st.answerWatch(first.ID)
	}
	if len(st.spliced) > 0 {
		cfg.Final = st.splicedFinal()
	}
	return cfg
}

// retryHint returns the retry hint for a request's client: only clients at
// 2025-11-25 or later are known to honour it; -1 means none.
func (h *Handler) retryHint(call *mcp.Call, res resolution) time.Duration {
	v := call.Version
	if v == "" && res.session != nil {
		v = res.session.Version
	}
	if mcp.SupportsRetryHint(v) {
		return h.retry
	}
	return -1
}

// rewriteLegacyEndpoint returns the hook that rewrites the first
// `endpoint` event of a legacy stream.
func (st *relayState) rewriteLegacyEndpoint() func(ev *sse.Event) []byte {
	seen := false
	return func(ev *sse.Event) []byte {
		if seen || ev.Name != "endpoint" {
			return nil
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

// relay pumps an SSE response body taken over by the transport to the
// client, and returns when the client has everything, left, or was cut.
func (h *Handler) relay(w http.ResponseWriter, st *relayState, body io.ReadCloser) {
	legacy := legacyStream(st.r, st.call, st.res)
	cfg := h.streamConfig(st, legacy)
	var link *legacyLink
	if legacy && st.legacyID != "" && h.watchesLegacy() {
		link, cfg.Rewrite = h.newLegacyLink(st, cfg.Rewrite)
	}
	stream := sse.NewStream(cfg)
	if link != nil {
		h.linkLegacy(st, link, stream)
	}
	if f := h.app.global.DegradedFraction(); f < 1 {
		stream.ShrinkRingBy(f)
	}
	stream.SetCloser(func() { _ = body.Close() })
	st.mu.Lock()
	st.stream = stream
	st.mu.Unlock()
	if st.resumable {
		h.app.global.Resume().Add(st.res.key, stream)
	}
	// The headers go out now: an idle stream may send nothing for long.
	cw := newClientWriter(w)
	_ = cw.Flush()
	if sb, ok := body.(*h1stream.Body); ok && st.handoff && h.handOff(w, st, stream, sb) {
		return
	}
	att, _ := stream.Attach(cw, "", h.retryHint(st.call, st.res))
	untrack := h.track(att, stream, st.resumable, st.session)
	defer untrack()
	metrics.streamsActive.Inc()
	defer metrics.streamsActive.Dec()

	if st.resumable {
		// The upstream is pumped by its own goroutine, so this request can
		// end (and the client resume elsewhere) while the upstream runs on.
		st.mu.Lock()
		st.detached = true
		st.mu.Unlock()
		group := h.app.global.tasks
		if st.session != nil {
			group = st.session.Group()
		}
		if !group.Go(func(ctx context.Context) {
			// The session's end (eviction) ends the pump too.
			stop := context.AfterFunc(ctx, stream.Close)
			defer stop()
			h.pump(stream, body, st)
		}) {
			stream.Close()
			h.pump(stream, body, st)
			return
		}
		stop := context.AfterFunc(st.r.Context(), att.Gone)
		defer stop()
		_ = att.Wait(st.r.Context())
		return
	}
	stop := context.AfterFunc(st.r.Context(), func() { att.Gone(); stream.Close() })
	defer stop()
	att.OnEnd(stream.Close)
	h.pump(stream, body, st)
	_ = att.Wait(st.r.Context())
}

// pump runs the upstream side of a stream until it ends.
func (h *Handler) pump(stream *sse.Stream, body io.ReadCloser, st *relayState) {
	defer st.finish()
	defer body.Close()
	err := stream.Pump(body)
	if errors.Is(err, sse.ErrEventTooLarge) || errors.Is(err, sse.ErrLineTooLong) {
		h.logger.Warn("upstream SSE event over max_event_size; stream closed", zap.Error(err))
	}
}

// serveResume answers a GET with Last-Event-ID from the stream that holds
// the id: the events after it, then the stream's live events.
func (h *Handler) serveResume(w http.ResponseWriter, r *http.Request, stream *sse.Stream, last string, retry time.Duration, sess *resources.Session) error {
	hdr := w.Header()
	hdr.Set("Content-Type", "text/event-stream")
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	cw := newClientWriter(w)
	_ = cw.Flush()
	att, _ := stream.Attach(cw, last, retry)
	untrack := h.track(att, stream, true, sess)
	defer untrack()
	metrics.streamsActive.Inc()
	defer metrics.streamsActive.Dec()
	stop := context.AfterFunc(r.Context(), att.Gone)
	defer stop()
	_ = att.Wait(r.Context())
	return nil
}
