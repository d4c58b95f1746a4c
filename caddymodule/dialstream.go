package caddymodule

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// A GET that opens an SSE stream may live for hours and spend nearly all
// of it idle. Through net/http's Transport such a stream holds a pooled
// connection with two goroutines (its read and write loops) and 8 KiB of
// buffers. When reverse_proxy's transport is plain HTTP/1.1 to the
// upstream (no TLS, no forward proxy), mcp_proxy opens these streams on a
// connection of their own instead, dialled with the transport's own
// dialer (so dial timeouts, local_address, resolvers, PROXY protocol and
// read/write timeouts apply), with no read buffer of its own and no goroutine:
// the relay reads the response body from the handler's goroutine, and
// closing the body closes the connection.

// streamReadBuf is the buffer a dialled stream's response header is read
// through (pooled), and the read buffer of a body that is not chunked.
// A chunked body, the usual SSE framing, is decoded straight from the
// connection into the relay's own buffers (chunkedBody).
const streamReadBuf = 4 << 10

// headerReaderPool holds the buffers stream response headers are read
// through; a body that is not chunked keeps its buffer.
var headerReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, streamReadBuf) }}

// reqWriterPool holds the buffers stream requests are written through.
var reqWriterPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 1<<10) }}

// maxInformational bounds the 1xx responses skipped before a stream's
// response.
const maxInformational = 5

// defaultMaxStreamHeader caps the response header of a dialled stream when
// the transport sets no max_response_header_size.
const defaultMaxStreamHeader = 1 << 20

// streamDialer opens SSE GET streams for one reverse_proxy transport.
type streamDialer struct {
	dial      func(ctx context.Context, network, addr string) (netConn, error)
	proxy     func(*http.Request) (*url.URL, error) // the transport's, e.g. from the environment
	hdrTimout time.Duration
	maxHeader int64
}

// netConn is the part of net.Conn a dialled stream uses.
type netConn interface {
	io.ReadWriteCloser
	SetReadDeadline(t time.Time) error
}

// newStreamDialer returns a dialer for inner, or nil when streams must go
// through inner itself (TLS, a forward proxy, HTTP/2-only versions, or a
// transport of another kind).
func newStreamDialer(inner http.RoundTripper) *streamDialer {
	ht, ok := inner.(*reverseproxy.HTTPTransport)
	if !ok || ht.Transport == nil || ht.Transport.DialContext == nil {
		return nil
	}
	// (TLSClientConfig is set whenever HTTP/2 is allowed, TLS or not; the
	// request's scheme tells a TLS upstream apart.)
	if ht.TLSEnabled() || ht.ForwardProxyURL != "" || len(ht.NetworkProxyRaw) != 0 {
		return nil
	}
	if len(ht.Versions) > 0 && !slices.Contains(ht.Versions, "1.1") {
		return nil
	}
	dial := ht.Transport.DialContext
	d := &streamDialer{
		dial: func(ctx context.Context, network, addr string) (netConn, error) {
			return dial(ctx, network, addr)
		},
		proxy:     ht.Transport.Proxy,
		hdrTimout: time.Duration(ht.ResponseHeaderTimeout),
		maxHeader: ht.MaxResponseHeaderSize,
	}
	if d.maxHeader <= 0 {
		d.maxHeader = defaultMaxStreamHeader
	}
	return d
}

// handles reports whether req is a plain-HTTP GET that asks for an SSE
// stream and that the transport would not send through an HTTP proxy.
func (d *streamDialer) handles(req *http.Request) bool {
	// The scheme is still empty here: HTTPTransport sets it when it sends.
	if d == nil || req.Method != http.MethodGet || req.URL.Scheme != "" && req.URL.Scheme != "http" {
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
	if d.proxy != nil {
		// The transport fills the scheme in only when it sends; the proxy
		// decision (HTTP_PROXY, NO_PROXY) needs it now.
		probe := *req
		u := *req.URL
		u.Scheme = "http"
		probe.URL = &u
		if pu, err := d.proxy(&probe); pu != nil || err != nil {
			return false
		}
	}
	return true
}

// roundTrip sends req on a connection of its own and returns the response
// with its header read. The request's context bounds the whole exchange,
// the body's life included.
func (d *streamDialer) roundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	conn, err := d.dial(ctx, "tcp", req.URL.Host)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	closeConn := func() { once.Do(func() { _ = conn.Close() }) }
	stop := context.AfterFunc(ctx, closeConn)
	fail := func(err error) (*http.Response, error) {
		stop()
		closeConn()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, err
	}
	if d.hdrTimout > 0 {
		_ = conn.SetReadDeadline(time.Now().Add(d.hdrTimout))
	}
	// Request.Write buffers through a fresh 4 KiB writer unless it is
	// given one; a pooled small one leaves no garbage per stream.
	bw := reqWriterPool.Get().(*bufio.Writer)
	bw.Reset(conn)
	err = req.Write(bw)
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	reqWriterPool.Put(bw)
	if err != nil {
		return fail(err)
	}
	lr := &io.LimitedReader{R: conn, N: d.maxHeader}
	br := headerReaderPool.Get().(*bufio.Reader)
	br.Reset(lr)
	resp, err := http.ReadResponse(br, req)
	// Informational responses (103 Early Hints, a stray 100) precede the
	// real one, as net/http's Transport also skips them; a few at most.
	for i := 0; err == nil && i < maxInformational && resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols; i++ {
		resp, err = http.ReadResponse(br, req)
	}
	if err == nil && resp.StatusCode >= 100 && resp.StatusCode < 200 {
		err = errors.New("upstream sent only informational responses")
	}
	if err != nil {
		br.Reset(nil)
		headerReaderPool.Put(br)
		if lr.N <= 0 {
			err = errors.New("upstream response header too large")
		}
		return fail(err)
	}
	lr.N = math.MaxInt64
	if d.hdrTimout > 0 {
		_ = conn.SetReadDeadline(time.Time{})
	}
	body := resp.Body
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
		body = io.NopCloser(cb)
	}
	resp.Body = &streamBody{ReadCloser: body, unwatch: stop, closeConn: closeConn}
	return resp, nil
}

// streamBody is the body of a dialled stream: closing it closes the
// connection at once (net/http's body Close would read an endless stream
// to its end).
type streamBody struct {
	io.ReadCloser
	// unwatch stops closing the connection when the request's context
	// ends; nil once detach did.
	unwatch   func() bool
	closeConn func()
}

func (b *streamBody) Close() error {
	if b.unwatch != nil {
		b.unwatch()
	}
	b.closeConn()
	_ = b.ReadCloser.Close()
	return nil
}

// detach unbinds the body from its request's context, which the body then
// no longer references: the stream is closed only by Close. It reports
// false when the context had already ended and closed the connection. It
// must not run concurrently with Close.
func (b *streamBody) detach() bool {
	stopped := b.unwatch()
	b.unwatch = nil
	return stopped
}
