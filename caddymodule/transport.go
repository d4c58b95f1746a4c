package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/mcpgate/mcpgate/h1stream"
	"github.com/mcpgate/mcpgate/mcp"
)

func init() {
	caddy.RegisterModule(new(RelayTransport))
}

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
// mcp_relay around the one the user configured.
func wrapTransport(cfg map[string]any, rewriteHost bool) {
	inner, _ := cfg["transport"].(map[string]any)
	if inner != nil && inner["protocol"] == "mcp_relay" {
		return
	}
	relay := map[string]any{"protocol": "mcp_relay", "rewrite_host": rewriteHost}
	if inner != nil {
		relay["inner"] = inner
	}
	cfg["transport"] = relay
}

// RoundTrip implements http.RoundTripper.
func (t *RelayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.RewriteHost {
		// The request is reverse_proxy's own copy for this attempt.
		if repl, ok := req.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
			if hp, ok := repl.GetString("http.reverse_proxy.upstream.hostport"); ok && hp != "" {
				req.Host = hp
			}
		}
	}
	st, _ := caddyhttp.GetVar(req.Context(), varRelay).(*relayState)
	if st == nil {
		return t.inner.RoundTrip(req)
	}
	req = st.attempt(req)
	st.noteUpstream(req)
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
	return st.answer(req, resp, dialled), nil
}

// attempt prepares one attempt of the request upstream: a resumable
// request gets a context of its own, which only the relay state cancels;
// a body already read whole goes as one buffer.
func (st *relayState) attempt(req *http.Request) *http.Request {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.resumable {
		// Only a resumable request outlives its client; any other one is
		// cancelled with the client's request, as reverse_proxy does.
		clientCtx := req.Context()
		ctx, cancel := context.WithCancel(context.WithoutCancel(clientCtx))
		req = req.WithContext(ctx)
		if st.cancel != nil {
			st.cancel() // a retry: the previous attempt is over
		}
		st.cancel = cancel
		if st.stopWatch == nil {
			st.stopWatch = context.AfterFunc(clientCtx, st.clientGone)
		}
	}
	if st.deadline != nil && !st.resumable {
		// A request with a deadline gets a context the deadline cancels.
		ctx, cancel := context.WithCancel(req.Context())
		req = req.WithContext(ctx)
		if st.cancel != nil {
			st.cancel()
		}
		st.cancel = cancel
	}
	if st.expired && st.cancel != nil {
		st.cancel() // no new attempt after the deadline
	}
	st.outReq = req
	if len(st.whole) > 0 && req.Body != nil && req.Body != http.NoBody {
		// reverse_proxy wraps the body (trailers, retries), which makes
		// net/http's Transport flush the request's header in a write of
		// its own, in case the body is slow to come. This body is already
		// in memory: as a *bytes.Reader the Transport sends the header
		// and body in one write.
		req.Body = io.NopCloser(bytes.NewReader(st.whole))
		req.ContentLength = int64(len(st.whole))
	}
	return req
}

// answer handles the upstream's answer: session ids sealed, a legacy
// session registered, an SSE body taken over for the relay.
func (st *relayState) answer(req *http.Request, resp *http.Response, dialled bool) *http.Response {
	st.status, st.responded = resp.StatusCode, true
	resp = st.sealResponse(req, resp)
	streamed := isEventStream(resp.Header)
	if g := st.h.gov; g != nil && req.Method == http.MethodPost && resp.StatusCode == http.StatusOK && g.enforces() {
		g.noteAnswer(resp, streamed)
	}
	if len(st.spliced) > 0 && !streamed {
		resp = st.spliceAnswers(resp)
	}
	if !streamed {
		st.stopDeadline()
		if resp.StatusCode == http.StatusOK && resp.Body != nil && st.readsJSON() && mcp.IsJSON(resp.Header.Get("Content-Type")) {
			resp = st.processJSON(resp)
		}
	}
	if resp.StatusCode == http.StatusOK && legacyStream(st.r, st.call, st.res) && isEventStream(resp.Header) && !st.openLegacy(req) {
		resp = st.replaceResponse(resp, http.StatusServiceUnavailable, mcp.CodeServerError,
			"session limit reached, retry after "+levelRetryAfter+"s")
	}
	// An empty SSE answer (Content-Length: 0 gives http.NoBody) goes to
	// the relay too: it ends at once, without the request's answer.
	if resp.StatusCode != http.StatusOK || resp.Body == nil || !isEventStream(resp.Header) {
		st.handoff = false
		return resp
	}
	st.mu.Lock()
	st.body = resp.Body
	st.mu.Unlock()
	resp.Body = http.NoBody
	resp.ContentLength = -1
	resp.Header.Del("Content-Length")
	// A stream that may be handed off is delimited by the close of its
	// connection, not chunked: net/http then sends "Connection: close"
	// and no Transfer-Encoding, and the relay writes the events as they
	// are once it owns the connection.
	st.handoff = st.handoff && dialled
	if st.handoff && st.r.ProtoAtLeast(1, 1) {
		st.w.Header().Set("Transfer-Encoding", "identity")
	}
	return resp
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
