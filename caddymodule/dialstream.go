package caddymodule

import (
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/mcpgate/mcpgate/h1stream"
)

// A GET that opens an SSE stream may live for hours and spend nearly all
// of it idle. When reverse_proxy's transport is plain HTTP/1.1 to the
// upstream (no TLS, no forward proxy), mcp_proxy opens these streams with
// an h1stream.Dialer instead of the transport, on a connection of their
// own dialled with the transport's own dialer (so dial timeouts,
// local_address, resolvers, PROXY protocol and read/write timeouts apply),
// with no read buffer of its own and no goroutine: the relay reads the
// response body from the handler's goroutine, and closing the body closes
// the connection.

// newStreamDialer returns a dialer for inner, or nil when streams must go
// through inner itself (TLS, a forward proxy, HTTP/2-only versions, or a
// transport of another kind).
func newStreamDialer(inner http.RoundTripper) *h1stream.Dialer {
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
	return &h1stream.Dialer{
		DialContext:           ht.Transport.DialContext,
		Proxy:                 ht.Transport.Proxy,
		ResponseHeaderTimeout: time.Duration(ht.ResponseHeaderTimeout),
		MaxResponseHeaderSize: ht.MaxResponseHeaderSize,
	}
}
