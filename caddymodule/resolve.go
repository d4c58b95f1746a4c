package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
)

// resolve opens the request's session token (see mcp.Resolver.Resolve) for
// its principal, pins the request to its session's upstream and sets the
// session's placeholders.
func (h *Handler) resolve(x *exchange) *mcp.Refusal {
	r, call := x.r, &x.call
	x.principal = h.principalOf(r)
	res, ref := h.resolver.Resolve(r, call, x.principal)
	if ref != nil {
		if ref.Status == http.StatusMethodNotAllowed {
			x.w.Header().Set("Allow", http.MethodPost)
		}
		return ref
	}
	if res.Pinned != "" {
		caddyhttp.SetVar(r.Context(), varPinned, res.Pinned)
	}
	x.res = res
	setSessionFacts(r, res)
	if c := h.logger.Check(zapcore.DebugLevel, "mcp request"); c != nil {
		c.Write(zap.String("era", call.Era.String()), zap.String("method", call.First().Method),
			zap.Bool("session", res.Session != nil))
	}
	return nil
}

// sessionRefused counts a refusal for a session problem, and logs it:
// at WARN a session presented by another principal, at DEBUG the others.
func (h *Handler) sessionRefused(kind, key, principal string, err error) {
	metrics.sessionRefusals.WithLabelValues(kind).Inc()
	switch {
	case kind == mcp.RefusedPrincipal:
		h.logger.Warn("session presented by another principal than its own; answered as unknown",
			zap.String("session", resources.SessionID(key)), zap.String("principal", principal))
	case err != nil:
		if c := h.logger.Check(zapcore.DebugLevel, "session refused"); c != nil {
			c.Write(zap.Error(err))
		}
	}
}

// principalOf is the request's principal, the value of the principal
// placeholder (see Handler.Principal); "" for none.
func (h *Handler) principalOf(r *http.Request) string {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return ""
	}
	if h.principal == defaultPrincipal {
		p, _ := repl.GetString("http.auth.user.id")
		return p
	}
	return repl.ReplaceAll(h.principal, "")
}

// defaultPrincipal is the principal placeholder without a principal
// subdirective.
const defaultPrincipal = "{http.auth.user.id}"
