package caddymodule

import (
	"context"
	"net"
	"net/http"
	"time"

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

// handoffLinger bounds how long a handed-off connection waits for its
// client to close after the stream's end was sent (a TCP half-close, so
// the last events are not lost to a reset).
const handoffLinger = time.Second

// maxClientTrailing bounds the bytes a client may send on a handed-off
// connection after its request (nothing is expected: the response said
// "Connection: close"); past it the client is treated as gone.
const maxClientTrailing = 64 << 10

// handOff takes the client connection of a GET stream over from net/http
// and relays the stream from goroutines of its own. It reports false,
// having changed nothing, when the connection cannot be taken over; the
// caller then relays the stream from the handler as usual. It reports true
// when the stream is handed off or already over.
func (h *Handler) handOff(w http.ResponseWriter, st *relayState, stream *sse.Stream, body *h1stream.Body) bool {
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
	// Nothing of the request is kept: the stream no longer needs it.
	st.r, st.w, st.outReq = nil, nil, nil
	st.mu.Unlock()

	att, _ := stream.Attach(handoffWriter{conn}, "", h.retryHint(st.call, st.res))
	untrack := h.track(att, stream, false, st.session)
	metrics.streamsActive.Inc()
	att.OnEnd(stream.Close)
	run := func(ctx context.Context) {
		// The session's end (eviction) and the process's end the stream too.
		stop := context.AfterFunc(ctx, stream.Close)
		defer stop()
		defer metrics.streamsActive.Dec()
		defer untrack()
		defer endHandoff(conn)
		go watchClient(conn, att, stream)
		h.pump(stream, body, st)
		_ = att.Wait(context.Background())
	}
	group := h.app.global.tasks
	if st.session != nil {
		group = st.session.Group()
	}
	if !group.Go(run) {
		// The group is closing: relay from here, as without a handoff.
		stream.Close()
		run(context.Background())
	}
	return true
}

// endHandoff ends a handed-off response: its end is the close of the
// connection. The write side is shut first so that the client reads
// everything sent, and the client reader (watchClient) closes the
// connection when the client closes its side, or after handoffLinger.
func endHandoff(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		_ = conn.SetReadDeadline(time.Now().Add(handoffLinger))
		return
	}
	_ = conn.Close()
}

// watchClient reads a handed-off client connection until the client
// closes it (or the stream's end closed it), and then ends the stream at
// once and closes the connection. It owns the connection's read side.
func watchClient(conn net.Conn, att *sse.Attachment, stream *sse.Stream) {
	defer recoverPanic(nil, "stream client reader")
	defer conn.Close()
	var buf [64]byte
	for read := 0; read <= maxClientTrailing; {
		n, err := conn.Read(buf[:])
		read += n
		if err != nil {
			break
		}
	}
	att.Gone()
	stream.Close()
}

// handoffWriter writes a handed-off stream straight to the client
// connection; the relay writes each batch of events once, so there is
// nothing to buffer or flush.
type handoffWriter struct{ conn net.Conn }

func (w handoffWriter) Write(p []byte) (int, error)        { return w.conn.Write(p) }
func (handoffWriter) Flush() error                         { return nil }
func (w handoffWriter) SetWriteDeadline(t time.Time) error { return w.conn.SetWriteDeadline(t) }
