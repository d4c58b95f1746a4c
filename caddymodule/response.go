package caddymodule

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/mcp"
)

// sealResponse runs on every upstream response, before reverse_proxy copies
// its headers to the client: it replaces the upstream's session id with
// the sealed token the client will present (a new one for a new session,
// the client's own for a known one).
func (st *relayState) sealResponse(resp *http.Response) {
	if st.call.Era == mcp.EraStateless {
		return
	}
	hdr := resp.Header
	sid := hdr.Get(mcp.HeaderSessionID)
	if sid == "" {
		return
	}
	h := st.h
	if st.res.session != nil && sid == st.res.session.UpstreamID {
		hdr.Set(mcp.HeaderSessionID, st.res.token)
		return
	}
	upstream, _ := caddyhttp.GetVar(st.r.Context(), varSelected).(string)
	if !mcp.ValidSessionID(sid) || upstream == "" {
		hdr.Del(mcp.HeaderSessionID)
		h.logger.Warn("dropping unusable session id from upstream",
			zap.String("upstream", upstream), zap.Int("length", len(sid)))
		return
	}
	version := st.call.Version
	if st.call.IsInitialize() {
		version = st.call.First().ProtocolVersion
	}
	tok, err := h.sealer.Seal(&mcp.Session{
		Kind:       mcp.TokenSession,
		Upstream:   upstream,
		UpstreamID: sid,
		Version:    version,
		Expires:    h.now().Add(h.lifetime),
	})
	if err != nil {
		hdr.Del(mcp.HeaderSessionID)
		h.logger.Warn("cannot seal upstream session id", zap.Error(err))
		return
	}
	hdr.Set(mcp.HeaderSessionID, tok)
	metrics.sessionsCreated.Inc()
	h.openSession(st, upstream, sid, version)
}

// isEventStream reports whether a response's media type is
// text/event-stream, ignoring case and parameters.
func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	const mt = "text/event-stream"
	if len(ct) < len(mt) || !strings.EqualFold(ct[:len(mt)], mt) {
		return false
	}
	rest := strings.TrimLeft(ct[len(mt):], " \t")
	return rest == "" || rest[0] == ';'
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
