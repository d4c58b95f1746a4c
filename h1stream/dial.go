package h1stream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// DefaultMaxResponseHeaderSize caps a stream's response header, in bytes,
// when the Dialer sets no MaxResponseHeaderSize.
const DefaultMaxResponseHeaderSize = 1 << 20

// readBufSize is the size of the buffer a stream's response header is
// read through (pooled), and the read buffer of a body that is not
// chunked. A chunked body is decoded straight from the connection into
// the caller's buffers (chunkedBody).
const readBufSize = 4 << 10

// headerReaderPool holds the buffers response headers are read through; a
// body that is not chunked keeps its buffer.
var headerReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}

// reqWriterPool holds the buffers requests are written through.
var reqWriterPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 1<<10) }}

// maxInformational bounds the 1xx responses skipped before a stream's
// response.
const maxInformational = 5

// Dialer opens SSE GET streams on connections of their own, each dialled
// for its stream and closed with it. Its fields are the plain settings of
// the HTTP transport it stands in for, so that transport's dial timeouts,
// local address, resolver and socket options still apply. A Dialer is
// safe for concurrent use once its fields are set; a nil *Dialer handles
// no request.
type Dialer struct {
	// DialContext opens a TCP connection to an upstream address
	// (host:port). A Dialer without it handles no request.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Proxy is the transport's forward-proxy choice, such as
	// http.ProxyFromEnvironment. A request it would send through a proxy
	// (or cannot decide on) is not handled. nil means no proxy.
	Proxy func(*http.Request) (*url.URL, error)
	// ResponseHeaderTimeout bounds the time from writing the request to
	// the end of the response header. Zero means no bound other than the
	// request's context.
	ResponseHeaderTimeout time.Duration
	// MaxResponseHeaderSize caps the bytes read from the connection
	// before the response header ends, informational responses included.
	// Zero or less means DefaultMaxResponseHeaderSize.
	MaxResponseHeaderSize int64
}

// Handles reports whether RoundTrip may carry req: a GET that asks for an
// SSE stream (Accept: text/event-stream), over plain HTTP, that Proxy
// would not send through a forward proxy. A URL without a scheme counts
// as plain HTTP, as a reverse proxy's outgoing request has none until its
// transport sends it.
func (d *Dialer) Handles(req *http.Request) bool {
	if d == nil || d.DialContext == nil || req.Method != http.MethodGet || req.URL.Scheme != "" && req.URL.Scheme != "http" {
		return false
	}
	sse := false
	for _, v := range req.Header.Values("Accept") {
		if strings.Contains(strings.ToLower(v), "text/event-stream") {
			sse = true
		}
	}
	if !sse {
		return false
	}
	if d.Proxy != nil {
		// The proxy decision (HTTP_PROXY, NO_PROXY) needs the scheme the
		// request will be sent with.
		probe := *req
		u := *req.URL
		u.Scheme = "http"
		probe.URL = &u
		if pu, err := d.Proxy(&probe); pu != nil || err != nil {
			return false
		}
	}
	return true
}

// RoundTrip dials req.URL.Host, writes req on the new connection and
// returns the response with its header read, informational (1xx)
// responses skipped. It is meant for the requests Handles accepts. The
// request's context bounds the whole exchange, the body's life included,
// until the body is detached from it (Body.Detach). The response's Body
// is a *Body, and the caller must close it.
func (d *Dialer) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	conn, err := d.DialContext(ctx, "tcp", req.URL.Host)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	closeConn := func() { once.Do(func() { _ = conn.Close() }) }
	stop := context.AfterFunc(ctx, closeConn)
	if d.ResponseHeaderTimeout > 0 {
		_ = conn.SetReadDeadline(time.Now().Add(d.ResponseHeaderTimeout))
	}
	resp, err := d.exchange(conn, req)
	if err != nil {
		stop()
		closeConn()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, err
	}
	if d.ResponseHeaderTimeout > 0 {
		_ = conn.SetReadDeadline(time.Time{})
	}
	resp.Body = &Body{rc: resp.Body, unwatch: stop, closeConn: closeConn}
	return resp, nil
}

// exchange writes req to conn and reads the response header. The
// response's body reads from conn.
func (d *Dialer) exchange(conn net.Conn, req *http.Request) (*http.Response, error) {
	// Request.Write buffers through a fresh 4 KiB writer unless it is
	// given one; a pooled small one leaves no garbage per stream.
	bw := reqWriterPool.Get().(*bufio.Writer)
	bw.Reset(conn)
	err := req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	reqWriterPool.Put(bw)
	if err != nil {
		return nil, err
	}
	limit := d.MaxResponseHeaderSize
	if limit <= 0 {
		limit = DefaultMaxResponseHeaderSize
	}
	lr := &io.LimitedReader{R: conn, N: limit}
	br := headerReaderPool.Get().(*bufio.Reader)
	br.Reset(lr)
	resp, err := readFinal(br, req)
	if err != nil {
		br.Reset(nil)
		headerReaderPool.Put(br)
		if lr.N <= 0 {
			err = errors.New("upstream response header too large")
		}
		return nil, err
	}
	lr.N = math.MaxInt64
	if len(resp.TransferEncoding) == 1 && resp.TransferEncoding[0] == "chunked" {
		// The usual SSE framing: decoded straight from the connection,
		// and the header's read buffer goes back to the pool.
		cb := &chunkedBody{src: conn}
		if k := br.Buffered(); k > 0 {
			b, _ := br.Peek(k)
			cb.pending = bytes.Clone(b)
		}
		br.Reset(nil)
		headerReaderPool.Put(br)
		resp.Body = io.NopCloser(cb)
	}
	return resp, nil
}

// readFinal reads the response to req from br, skipping informational
// responses (103 Early Hints, a stray 100) as net/http's Transport also
// does; a few at most.
func readFinal(br *bufio.Reader, req *http.Request) (*http.Response, error) {
	resp, err := http.ReadResponse(br, req)
	for i := 0; err == nil && i < maxInformational && informational(resp.StatusCode); i++ {
		resp, err = http.ReadResponse(br, req)
	}
	if err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 {
		err = errors.New("upstream sent only informational responses")
	}
	return resp, err
}

// informational reports whether status is a 1xx response that precedes
// the real one (101 Switching Protocols ends the exchange instead).
func informational(status int) bool {
	return status >= 100 && status < 200 && status != http.StatusSwitchingProtocols
}

// Body is the body of a stream opened by a Dialer. Closing it closes the
// connection at once, where net/http's body Close would read an endless
// stream to its end.
type Body struct {
	rc io.ReadCloser
	// unwatch stops closing the connection when the request's context
	// ends; nil once Detach did.
	unwatch   func() bool
	closeConn func()
}

// Read reads body data; a chunked body is decoded into p in place.
func (b *Body) Read(p []byte) (int, error) { return b.rc.Read(p) }

// Close closes the stream's connection; it always returns nil.
func (b *Body) Close() error {
	if b.unwatch != nil {
		b.unwatch()
	}
	b.closeConn()
	_ = b.rc.Close()
	return nil
}

// Detach unbinds the body from its request's context, which the body then
// no longer references: the stream is closed only by Close. It reports
// false when the context had already ended and closed the connection. It
// must be called at most once, and not concurrently with Close.
func (b *Body) Detach() bool {
	stopped := b.unwatch()
	b.unwatch = nil
	return stopped
}
