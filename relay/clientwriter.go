package relay

import (
	"net/http"
	"sync"
	"time"
)

// clientWriter is the client's response writer as a stream writes to it
// (an sse.ClientWriter). The stream's writes and flushes come from one
// goroutine at a time, but a deadline that has passed may come from
// another one while a write is in progress, to cut it short (the client
// went away, another client took the stream over). The writers Caddy puts
// between a handler and the connection are not all safe for that: its
// write idle timeout keeps the deadline a handler sets as a ceiling that
// each of its writes reads. So every deadline reaches the chain of
// writers from the goroutine that writes, before its next write or
// flush, and one that has passed also goes at once to the innermost
// writer (the connection's own), which cuts a write in progress short.
// One that comes just before a write begins may be replaced by the idle
// deadline Caddy sets for that write; the write then still ends by the
// deadline the chain holds as its ceiling (the stream's write timeout).
type clientWriter struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	conn interface{ SetWriteDeadline(time.Time) error } // nil: the innermost writer has no deadline
	// resets: a deadline left armed ends the response when it passes,
	// with no write in flight (HTTP/2).
	resets bool

	mu       sync.Mutex
	deadline time.Time // the last deadline asked for
	pending  bool      // deadline is not yet given to the chain
}

// maxUnwrap bounds the writers newClientWriter looks through for the
// innermost one.
const maxUnwrap = 32

// newClientWriter returns the writer of the response w to r.
func newClientWriter(w http.ResponseWriter, r *http.Request) *clientWriter {
	c := &clientWriter{w: w, rc: http.NewResponseController(w), resets: r.ProtoMajor == 2}
	inner := w
	for range maxUnwrap {
		u, ok := inner.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		inner = u.Unwrap()
	}
	c.conn, _ = inner.(interface{ SetWriteDeadline(time.Time) error })
	return c
}

func (c *clientWriter) Write(p []byte) (int, error) {
	c.applyDeadline()
	return c.w.Write(p)
}

func (c *clientWriter) Flush() error {
	c.applyDeadline()
	return c.rc.Flush()
}

// SetWriteDeadline gives the writes that follow deadline t; when t has
// passed, it also cuts short a write in progress on another goroutine
// (see clientWriter).
func (c *clientWriter) SetWriteDeadline(t time.Time) error {
	if t.IsZero() {
		// From the goroutine that writes, once its writes are done (see
		// sse.ClientWriter). Over HTTP/1 the next write reads the
		// deadline left; over HTTP/2 it would reset the silent stream
		// when it passes: the chain forgets it now.
		if !c.resets {
			return nil
		}
		c.mu.Lock()
		c.deadline, c.pending = t, false
		c.mu.Unlock()
		return c.rc.SetWriteDeadline(t)
	}
	c.mu.Lock()
	c.deadline, c.pending = t, true
	c.mu.Unlock()
	if c.conn == nil || t.After(time.Now()) {
		return nil // the chain gets it before the next write
	}
	return c.conn.SetWriteDeadline(t)
}

// applyDeadline gives the chain of writers the deadline asked for since
// the last write, on the goroutine that writes.
func (c *clientWriter) applyDeadline() {
	c.mu.Lock()
	t, pending := c.deadline, c.pending
	c.pending = false
	c.mu.Unlock()
	if pending {
		_ = c.rc.SetWriteDeadline(t)
	}
}
