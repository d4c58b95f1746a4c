package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/mcpgate/mcpgate/h1stream"
	"github.com/mcpgate/mcpgate/relay"
)

func init() {
	caddy.RegisterModule(new(RelayTransport))
}

// varRelay holds the request's *relay.State for the transport wrapper.
const varRelay = "mcp.relay"

// RelayTransport is the `mcp_relay` transport that mcp_proxy gives its
// embedded reverse_proxy, around the transport the user configured (the
// `transport` subdirective; plain HTTP by default). For the requests
// mcp_proxy relays it detaches the upstream request from the client's
// cancellation where the era says a disconnect is not a cancel, seals the
// upstream's session ids, and takes an SSE response body over so the
// relay, not reverse_proxy's copy loop, pumps it to the client. SSE GET
// streams to a plain-HTTP upstream go on connections of their own (see
// package h1stream). Being a transport module, it is in place before
// reverse_proxy starts its health checks.
//
// mcp_proxy installs it itself; it is not meant for plain reverse_proxy.
type RelayTransport struct {
	// InnerRaw is the transport requests go through. Default: http.
	InnerRaw json.RawMessage `json:"inner,omitempty" caddy:"namespace=http.reverse_proxy.transport inline_key=protocol"`

	// RewriteHost sets the Host of upstream requests to the upstream's
	// host:port, as `header_up Host {upstream_hostport}` would; mcp_proxy
	// sets it unless the user configured a Host. Default: false.
	RewriteHost bool `json:"rewrite_host,omitempty"`

	inner   http.RoundTripper
	streams *h1stream.Dialer // nil when the inner transport cannot be bypassed
}

// CaddyModule returns the Caddy module information.
func (*RelayTransport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.transport.mcp_relay",
		New: func() caddy.Module { return new(RelayTransport) },
	}
}

// Provision loads the inner transport.
func (t *RelayTransport) Provision(ctx caddy.Context) error {
	if t.InnerRaw == nil {
		t.InnerRaw = json.RawMessage(`{"protocol":"http"}`)
	}
	mod, err := ctx.LoadModule(t, "InnerRaw")
	if err != nil {
		return fmt.Errorf("loading transport: %w", err)
	}
	t.inner = mod.(http.RoundTripper)
	t.streams = newStreamDialer(t.inner)
	return nil
}

// wrapTransport makes the embedded reverse_proxy's transport config an
// mcp_relay around the one the user configured (http by default), and
// gives an http transport whose `keepalive` is not set the idle timeout
// defaultUpstreamIdle.
func wrapTransport(cfg map[string]any, rewriteHost bool) {
	t, _ := cfg["transport"].(map[string]any)
	if t == nil || t["protocol"] != "mcp_relay" {
		relay := map[string]any{"protocol": "mcp_relay", "rewrite_host": rewriteHost}
		if t != nil {
			relay["inner"] = t
		}
		t = relay
		cfg["transport"] = t
	}
	inner, _ := t["inner"].(map[string]any)
	if inner == nil {
		inner = map[string]any{"protocol": "http"}
		t["inner"] = inner
	}
	if inner["protocol"] != "http" {
		return
	}
	ka, _ := inner["keep_alive"].(map[string]any)
	if ka == nil {
		ka = map[string]any{}
		inner["keep_alive"] = ka
	}
	if _, set := ka["idle_timeout"]; !set {
		ka["idle_timeout"] = int64(defaultUpstreamIdle)
	}
}

// defaultUpstreamIdle is how long an idle connection to an upstream is
// kept for the next request when the http transport's `keepalive` is not
// set: less than the 5s after which the MCP SDKs' usual servers (Node's
// http, uvicorn) close an idle connection, so the proxy, not the upstream,
// closes it. With reverse_proxy's own 2m, a request sent just as the
// upstream closes the connection fails with 502.
const defaultUpstreamIdle = 4 * time.Second

// RoundTrip implements http.RoundTripper.
func (t *RelayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	hostport, known := "", false
	if repl, ok := req.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		hostport, known = repl.GetString("http.reverse_proxy.upstream.hostport")
	}
	if t.RewriteHost && hostport != "" {
		// The request is reverse_proxy's own copy for this attempt.
		req.Host = hostport
	}
	st, _ := caddyhttp.GetVar(req.Context(), varRelay).(*relay.State)
	if st == nil {
		return t.inner.RoundTrip(req)
	}
	req = st.Attempt(req)
	if known {
		st.SetUpstream(hostport)
	}
	dialled := t.streams.Handles(req)
	var resp *http.Response
	var err error
	if dialled {
		resp, err = t.streams.RoundTrip(req)
	} else {
		resp, err = t.inner.RoundTrip(req)
	}
	if err != nil {
		return nil, err
	}
	selected, _ := caddyhttp.GetVar(req.Context(), varSelected).(string)
	return st.Answer(req, resp, dialled, selected), nil
}

// The transport interfaces reverse_proxy asserts are passed through to
// the inner transport.

// ProxyProtocolEnabled implements reverseproxy.ProxyProtocolTransport.
func (t *RelayTransport) ProxyProtocolEnabled() bool {
	p, ok := t.inner.(reverseproxy.ProxyProtocolTransport)
	return ok && p.ProxyProtocolEnabled()
}

// RequiresContentLength implements
// reverseproxy.ContentLengthRequiredTransport.
func (t *RelayTransport) RequiresContentLength() bool {
	c, ok := t.inner.(reverseproxy.ContentLengthRequiredTransport)
	return ok && c.RequiresContentLength()
}

// OverrideHealthCheckScheme implements
// reverseproxy.HealthCheckSchemeOverriderTransport.
func (t *RelayTransport) OverrideHealthCheckScheme(base *url.URL, port string) {
	if o, ok := t.inner.(reverseproxy.HealthCheckSchemeOverriderTransport); ok {
		o.OverrideHealthCheckScheme(base, port)
	}
}

// DefaultBufferSizes implements reverseproxy.BufferedTransport.
func (t *RelayTransport) DefaultBufferSizes() (int64, int64) {
	if b, ok := t.inner.(reverseproxy.BufferedTransport); ok {
		return b.DefaultBufferSizes()
	}
	return 0, 0
}

// RequestHeaderOps implements reverseproxy.RequestHeaderOpsTransport.
func (t *RelayTransport) RequestHeaderOps() *headers.HeaderOps {
	if o, ok := t.inner.(reverseproxy.RequestHeaderOpsTransport); ok {
		return o.RequestHeaderOps()
	}
	return nil
}

// TLSEnabled implements reverseproxy.TLSTransport.
func (t *RelayTransport) TLSEnabled() bool {
	tt, ok := t.inner.(reverseproxy.TLSTransport)
	return ok && tt.TLSEnabled()
}

// EnableTLS implements reverseproxy.TLSTransport.
func (t *RelayTransport) EnableTLS(base *reverseproxy.TLSConfig) error {
	if tt, ok := t.inner.(reverseproxy.TLSTransport); ok {
		return tt.EnableTLS(base)
	}
	return fmt.Errorf("transport %T cannot use TLS", t.inner)
}

// Interface guards
var (
	_ caddy.Provisioner                                = (*RelayTransport)(nil)
	_ http.RoundTripper                                = (*RelayTransport)(nil)
	_ reverseproxy.ProxyProtocolTransport              = (*RelayTransport)(nil)
	_ reverseproxy.ContentLengthRequiredTransport      = (*RelayTransport)(nil)
	_ reverseproxy.HealthCheckSchemeOverriderTransport = (*RelayTransport)(nil)
	_ reverseproxy.BufferedTransport                   = (*RelayTransport)(nil)
	_ reverseproxy.RequestHeaderOpsTransport           = (*RelayTransport)(nil)
	_ reverseproxy.TLSTransport                        = (*RelayTransport)(nil)
)
