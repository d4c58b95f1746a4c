package caddymodule

import (
	"io"
	"mime"
	"net/http"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/sse"
)

// Bounds of the legacy endpoint rewriter's SSE parser.
const (
	legacyMaxEvent = 1 << 20
	legacyMaxLine  = 1 << 20
)

// responseWriter relays an upstream response to the client. Before the
// status is written it seals a new upstream session id (and restores the
// client's token for a known one); on a legacy SSE stream it parses the
// events and rewrites the `endpoint` event so the client's POSTs come back
// through the proxy to the same upstream.
type responseWriter struct {
	*caddyhttp.ResponseWriterWrapper
	h    *Handler
	r    *http.Request
	call *mcp.Call
	res  resolution

	wroteHeader bool
	parser      *sse.Parser // non-nil while relaying a legacy SSE stream
	rewritten   bool        // the endpoint event was seen
	writeErr    error
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

// WriteHeader seals session ids and decides how the body is relayed.
func (rw *responseWriter) WriteHeader(status int) {
	if rw.wroteHeader {
		return
	}
	rw.wroteHeader = true
	hdr := rw.Header()
	if sid := hdr.Get(mcp.HeaderSessionID); sid != "" && rw.call.Era != mcp.EraStateless {
		rw.sealSessionHeader(hdr, sid)
	}
	if status == http.StatusOK && rw.r.Method == http.MethodGet && rw.res.session == nil &&
		rw.call.Era != mcp.EraSession && rw.call.Era != mcp.EraStateless && isEventStream(hdr) {
		rw.parser = sse.NewParser(legacyMaxEvent, legacyMaxLine)
		hdr.Del("Content-Length")
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
}

func isEventStream(h http.Header) bool {
	mt, _, err := mime.ParseMediaType(h.Get("Content-Type"))
	return err == nil && mt == "text/event-stream"
}

// Write relays body bytes, through the legacy rewriter when one is active.
func (rw *responseWriter) Write(p []byte) (int, error) {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	if rw.parser == nil {
		return rw.ResponseWriter.Write(p)
	}
	if err := rw.parser.Feed(p, rw.emitLegacy); err != nil {
		if rw.writeErr != nil {
			return 0, rw.writeErr
		}
		rw.h.logger.Warn("legacy SSE stream from upstream is malformed", zap.Error(err))
		return 0, err
	}
	return len(p), nil
}

// emitLegacy forwards one event of a legacy stream, rewriting the first
// `endpoint` event.
func (rw *responseWriter) emitLegacy(ev *sse.Event) error {
	out := ev.Raw
	if !rw.rewritten && ev.Name == "endpoint" {
		rw.rewritten = true
		if data, ok := rw.rewriteEndpoint(string(ev.Data)); ok {
			out = sse.AppendEvent(nil, ev.ID, "endpoint", []byte(data))
		}
	}
	if _, err := rw.ResponseWriter.Write(out); err != nil {
		rw.writeErr = err
		return err
	}
	return nil
}

// rewriteEndpoint maps the upstream's endpoint URL under the proxy's
// origin and route prefix, with the sealed route to the upstream.
func (rw *responseWriter) rewriteEndpoint(data string) (string, bool) {
	upstream, _ := caddyhttp.GetVar(rw.r.Context(), varSelected).(string)
	tok, err := rw.h.sealer.Seal(&mcp.Session{
		Kind:     mcp.TokenLegacy,
		Upstream: upstream,
		Version:  mcp.Version20241105,
		Expires:  rw.h.now().Add(rw.h.lifetime),
	})
	if err != nil {
		rw.h.logger.Warn("cannot seal legacy route", zap.Error(err))
		return "", false
	}
	prefix := ""
	if orig, ok := rw.r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		prefix = mcp.StrippedPrefix(orig.URL.Path, rw.r.URL.Path)
	}
	out, err := mcp.RewriteEndpoint(data, rw.r.URL.Path, prefix, tok)
	if err != nil {
		rw.h.logger.Warn("legacy endpoint event not rewritten", zap.Error(err))
		return "", false
	}
	return out, true
}

// ReadFrom copies through Write so that nothing bypasses the relay.
func (rw *responseWriter) ReadFrom(r io.Reader) (int64, error) {
	if rw.parser == nil && rw.wroteHeader {
		return rw.ResponseWriterWrapper.ReadFrom(r)
	}
	return io.Copy(writerOnly{rw}, r)
}

type writerOnly struct{ io.Writer }

// FlushError flushes the client connection.
func (rw *responseWriter) FlushError() error {
	if !rw.wroteHeader {
		rw.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(rw.ResponseWriter).Flush()
}
