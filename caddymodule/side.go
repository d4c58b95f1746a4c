package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Requests the proxy sends of its own accord — the DELETE of an evicted
// session, a notifications/cancelled for a request it abandoned — go
// through the embedded reverse_proxy, pinned to the session's upstream,
// exactly as a client's request would: the upstream's transport (TLS
// trust, client certificates, dialer, PROXY protocol) and header rules
// (header_up) apply to them too.

// sideServer is the server side requests are prepared with: they come
// from no listener.
var sideServer = new(caddyhttp.Server)

// sideRequest sends a request through the handler's reverse_proxy to the
// upstream with dial address upstream, and returns the upstream's status.
// path is the request's escaped path as a client would send it to this
// handler, host its Host header; the request carries hdr and body.
func (h *Handler) sideRequest(ctx context.Context, upstream, method, path, host string, hdr http.Header, body []byte) (int, error) {
	if path == "" {
		path = "/"
	}
	u, err := url.Parse(path)
	if err != nil {
		return 0, err
	}
	req := (&http.Request{
		Method: method, URL: u, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: hdr, Host: host, RequestURI: path, RemoteAddr: "127.0.0.1:0",
		Body: http.NoBody,
	}).WithContext(ctx)
	if len(body) > 0 {
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
		req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	w := &sideWriter{header: http.Header{}}
	req = caddyhttp.PrepareRequest(req, caddy.NewReplacer(), w, sideServer)
	caddyhttp.SetVar(req.Context(), varPinned, upstream)
	err = h.proxy.ServeHTTP(w, req, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil }))
	if err == nil && w.status >= 400 {
		err = errors.New(http.StatusText(w.status))
	}
	return w.status, err
}

// sideWriter is the response writer of a side request: it keeps the
// status and drops the body.
type sideWriter struct {
	header http.Header
	status int
}

func (w *sideWriter) Header() http.Header { return w.header }

func (w *sideWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *sideWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}

// Flush implements http.Flusher; nothing is buffered.
func (*sideWriter) Flush() {}

// handlers maps each static upstream dial address to the mcp_proxy
// handlers of the loaded configs that proxy to it, newest last, so a
// side request of the process-wide state (an evicted session's DELETE)
// goes through the current config. Handlers with dynamic upstreams are
// listed under "".
var handlers = struct {
	sync.Mutex
	by map[string][]*Handler
}{by: map[string][]*Handler{}}

// registerUpstreams lists h under each of its upstreams.
func (h *Handler) registerUpstreams() {
	handlers.Lock()
	defer handlers.Unlock()
	if h.upstreams == nil {
		handlers.by[""] = append(handlers.by[""], h)
		return
	}
	for u := range h.upstreams {
		handlers.by[u] = append(handlers.by[u], h)
	}
}

// unregisterUpstreams takes h off the lists.
func (h *Handler) unregisterUpstreams() {
	handlers.Lock()
	defer handlers.Unlock()
	for u, hs := range handlers.by {
		out := hs[:0]
		for _, x := range hs {
			if x != h {
				out = append(out, x)
			}
		}
		if len(out) == 0 {
			delete(handlers.by, u)
		} else {
			handlers.by[u] = out
		}
	}
}

// handlerFor returns the newest handler that proxies to upstream, or one
// with dynamic upstreams, or nil.
func handlerFor(upstream string) *Handler {
	handlers.Lock()
	defer handlers.Unlock()
	if hs := handlers.by[upstream]; len(hs) > 0 {
		return hs[len(hs)-1]
	}
	if hs := handlers.by[""]; len(hs) > 0 {
		return hs[len(hs)-1]
	}
	return nil
}
