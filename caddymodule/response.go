package caddymodule

import (
	"io"
	"mime"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/mcp"
)

// responseWriter is the writer reverse_proxy writes the upstream response
// to. Before the status is written it seals a new upstream session id
// (and restores the client's token for a known one). SSE bodies never pass
// through it: the transport hands them to the relay.
type responseWriter struct {
	*caddyhttp.ResponseWriterWrapper
	h    *Handler
	r    *http.Request
	call *mcp.Call
	res  resolution
	st   *relayState

	wroteHeader bool
	status      int
}

func newResponseWriter(h *Handler, w http.ResponseWriter, r *http.Request, call *mcp.Call, res resolution) *responseWriter {
	return &responseWriter{
		ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		h:                     h,
		r:                     r,
		call:                  call,
		res:                   res,
	}
}

// WriteHeader seals session ids before the status goes out.
func (rw *responseWriter) WriteHeader(status int) {
	if rw.wroteHeader {
		return
	}
	rw.wroteHeader, rw.status = true, status
	hdr := rw.Header()
	if sid := hdr.Get(mcp.HeaderSessionID); sid != "" && rw.call.Era != mcp.EraStateless {
		rw.sealSessionHeader(hdr, sid)
	}
	rw.ResponseWriter.WriteHeader(status)
}

// sealSessionHeader replaces the upstream's session id with the sealed
// token the client will present.
func (rw *responseWriter) sealSessionHeader(hdr http.Header, sid string) {
	if rw.res.session != nil && sid == rw.res.session.UpstreamID {
		hdr.Set(mcp.HeaderSessionID, rw.res.token)
		return
	}
	upstream, _ := caddyhttp.GetVar(rw.r.Context(), varSelected).(string)
	if !mcp.ValidSessionID(sid) || upstream == "" {
		hdr.Del(mcp.HeaderSessionID)
		rw.h.logger.Warn("dropping unusable session id from upstream",
			zap.String("upstream", upstream), zap.Int("length", len(sid)))
		return
	}
	version := rw.call.Version
	if rw.call.IsInitialize() {
		version = rw.call.First().ProtocolVersion
	}
	tok, err := rw.h.sealer.Seal(&mcp.Session{
		Kind:       mcp.TokenSession,
		Upstream:   upstream,
		UpstreamID: sid,
		Version:    version,
		Expires:    rw.h.now().Add(rw.h.lifetime),
	})
	if err != nil {
		hdr.Del(mcp.HeaderSessionID)
		rw.h.logger.Warn("cannot seal upstream session id", zap.Error(err))
		return
	}
	hdr.Set(mcp.HeaderSessionID, tok)
	metrics.sessionsCreated.Inc()
	if rw.st != nil {
		rw.h.openSession(rw.st, upstream, sid, version)
	}
}

func isEventStream(h http.Header) bool {
	mt, _, err := mime.ParseMediaType(h.Get("Content-Type"))
	return err == nil && mt == "text/event-stream"
}

// Write relays body bytes.
func (rw *responseWriter) Write(p []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriter.Write(p)
}

// ReadFrom copies through Write so a status is always sealed first.
func (rw *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return rw.ResponseWriterWrapper.ReadFrom(r)
}

// FlushError flushes the client connection.
func (rw *responseWriter) FlushError() error {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(rw.ResponseWriter).Flush()
}

// rewriteEndpoint maps a legacy endpoint URL under the proxy's origin and
// route prefix, with the sealed route to the upstream that serves r.
func (h *Handler) rewriteEndpoint(r *http.Request, data string) (string, bool) {
	upstream, _ := caddyhttp.GetVar(r.Context(), varSelected).(string)
	tok, err := h.sealer.Seal(&mcp.Session{
		Kind:     mcp.TokenLegacy,
		Upstream: upstream,
		Version:  mcp.Version20241105,
		Expires:  h.now().Add(h.lifetime),
	})
	if err != nil {
		h.logger.Warn("cannot seal legacy route", zap.Error(err))
		return "", false
	}
	prefix := ""
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		prefix = mcp.StrippedPrefix(orig.URL.Path, r.URL.Path)
	}
	out, err := mcp.RewriteEndpoint(data, r.URL.Path, prefix, tok)
	if err != nil {
		h.logger.Warn("legacy endpoint event not rewritten", zap.Error(err))
		return "", false
	}
	return out, true
}
