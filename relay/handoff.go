package relay

import (
	"context"
	"net"
	"net/http"

	"github.com/mcpgate/mcpgate/h1stream"
	"github.com/mcpgate/mcpgate/sse"
)

// An SSE GET stream may stay open for hours, nearly always idle. Relayed
// from its request's handler, it keeps that handler's goroutine (its stack
// sized by the whole middleware chain), net/http's background reader of
// the connection and the connection's 4 KiB read and write buffers, and,
// through the request's context, everything the request touched. Handed
// off, the stream takes the HTTP/1.x connection over from net/http once
// its response header is sent, the handler returns, and the stream lives
// on two small goroutines of its own: the relay's pump, and a reader of
// the client connection that ends the stream as soon as the client goes.
//
// The connection-level pieces (writer, client reader, half-close with
// linger) are h1stream's; this file hijacks the connection and ties the
// stream to the session's task group.

// handOff takes the client connection of a GET stream over from net/http
// and relays the stream from goroutines of its own. It reports false,
// having changed nothing, when the connection cannot be taken over; the
// caller then relays the stream from the handler as usual. It reports true
// when the stream is handed off or already over.
func (p *Proxy) handOff(w http.ResponseWriter, st *State, stream *sse.Stream, body *h1stream.Body) bool {
	if w.Header().Get("Content-Encoding") != "" {
		// Another handler encodes the response body: it must see every
		// byte, so the stream stays with the handler.
		return false
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	// From here the response is the relay's. The upstream connection
	// must outlive the request's context, which net/http cancels when
	// the handler returns.
	if !body.Detach() {
		// The request was cancelled first: the client is gone.
		_ = conn.Close()
		_ = body.Close()
		return true
	}
	st.mu.Lock()
	st.detached = true
	// Nothing of the request is kept: the stream no longer needs it; a
	// list result it may carry is filtered for a snapshot of the subject.
	st.r, st.w, st.outReq, st.Subject = nil, nil, nil, p.Lists.Freeze(st.Subject)
	st.mu.Unlock()

	att, _ := stream.Attach(h1stream.ConnWriter{Conn: conn}, "", p.RetryHint(st.call, st.res))
	untrack := p.track(att, stream, false, st.Session)
	p.Metrics.StreamOpened()
	att.OnEnd(stream.Close)
	run := func(ctx context.Context) {
		// The session's end (eviction) and the process's end the stream too.
		stop := context.AfterFunc(ctx, stream.Close)
		defer stop()
		defer p.Metrics.StreamClosed()
		defer untrack()
		defer h1stream.EndResponse(conn)
		go p.watchClient(conn, att, stream)
		p.pump(stream, body, st)
		_ = att.Wait(context.Background())
	}
	group := p.Gov.Tasks()
	if st.Session != nil {
		group = st.Session.Group()
	}
	if !group.Go(run) {
		// The group is closing: relay from here, as without a handoff.
		stream.Close()
		run(context.Background())
	}
	return true
}

// watchClient ends a handed-off stream as soon as its client goes (see
// h1stream.WatchClient); it runs on a goroutine of its own.
func (p *Proxy) watchClient(conn net.Conn, att *sse.Attachment, stream *sse.Stream) {
	defer p.recoverPanic("stream client reader")
	h1stream.WatchClient(conn, func() {
		att.Gone()
		stream.Close()
	})
}
