package h1stream

import (
	"net"
	"time"
)

// A stream handed off is one whose client connection was taken over from
// net/http (hijacked) after the response header, sent with "Connection:
// close" and no Transfer-Encoding: the response body is the events as
// they are, and the close of the connection is its end. The relay writes
// to the connection through a ConnWriter, a goroutine of the caller's
// reads the client side with WatchClient, and EndResponse ends it.

// Linger bounds how long a handed-off connection waits for its client to
// close after EndResponse sent the response's end (a TCP half-close, so
// the last bytes are not lost to a reset).
const Linger = time.Second

// MaxClientTrailing bounds the bytes WatchClient accepts from a client
// after its request (nothing is expected: the response said "Connection:
// close"); past it the client is treated as gone.
const MaxClientTrailing = 64 << 10

// EndResponse ends a handed-off response, whose end is the close of the
// connection. The write side is shut first so that the client reads
// everything sent; WatchClient then closes the connection when the
// client closes its side, or after Linger. A connection that cannot be
// half-closed is closed at once.
func EndResponse(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
		_ = conn.SetReadDeadline(time.Now().Add(Linger))
		return
	}
	_ = conn.Close()
}

// WatchClient reads a handed-off client connection, discarding what it
// reads, until the client closes it, sends more than MaxClientTrailing
// bytes, or the read fails (EndResponse's linger ran out, or the
// connection was closed); it then calls gone and closes the connection.
// It owns the connection's read side. The connection is closed even when
// gone panics.
func WatchClient(conn net.Conn, gone func()) {
	defer conn.Close()
	var buf [64]byte
	for read := 0; read <= MaxClientTrailing; {
		n, err := conn.Read(buf[:])
		read += n
		if err != nil {
			break
		}
	}
	gone()
}

// ConnWriter writes a handed-off response straight to the client
// connection. It has no buffer, so Flush has nothing to do: the relay
// writes each batch of events once. It implements the client writer an
// sse.Stream is attached to.
type ConnWriter struct {
	// Conn is the client connection taken over from net/http.
	Conn net.Conn
}

// Write writes p to the connection.
func (w ConnWriter) Write(p []byte) (int, error) { return w.Conn.Write(p) }

// Flush returns nil: every Write has already reached the connection.
func (ConnWriter) Flush() error { return nil }

// SetWriteDeadline sets the connection's write deadline. The zero time,
// which a stream gives once its writes are done, is ignored: only the
// next write reads a connection's deadline, and each write is given its
// own.
func (w ConnWriter) SetWriteDeadline(t time.Time) error {
	if t.IsZero() {
		return nil
	}
	return w.Conn.SetWriteDeadline(t)
}
