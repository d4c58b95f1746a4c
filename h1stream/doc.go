// Package h1stream carries long-lived HTTP/1.1 Server-Sent Events streams
// at the cost of a connection and little else, on both sides of a proxy.
//
// Upstream, a Dialer opens an SSE GET stream on a connection of its own
// rather than through net/http's Transport, which would hold a pooled
// connection with two goroutines (its read and write loops) and 8 KiB of
// buffers for as long as the stream lives, nearly always idle. The request
// is written through a pooled 1 KiB buffer and the response header read
// through a pooled 4 KiB one, with a size cap; a chunked body, the usual
// SSE framing, is then decoded straight from the connection into the
// caller's buffer, so an idle stream holds no buffer of this package (a
// body that is not chunked keeps its 4 KiB read buffer). The Dialer starts
// no goroutine: the caller reads the body from its own, and closing the
// body closes the connection.
//
// Downstream, a client connection taken over from net/http once a
// response header is sent (a hijacked HTTP/1.x connection) is written
// through a ConnWriter, read by WatchClient until the client goes, and
// ended by EndResponse with a half-close and a bounded linger. The only
// goroutine is the one the caller runs WatchClient on; it reads into a
// 64-byte array and gives up after 64 KiB from a client that should send
// nothing.
//
// The package imports only the standard library. Deciding whether a
// stream may bypass a particular transport (no TLS, no forward proxy,
// HTTP/1.1 allowed) is left to the caller, which fills a Dialer with that
// transport's dial function, proxy function and header limits.
package h1stream
