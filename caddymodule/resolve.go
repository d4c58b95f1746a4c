package caddymodule

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/relay"
)

// resolution is the session a request belongs to.
type resolution = relay.Resolution

// resolve opens the request's session token, from the legacy route
// parameter or Mcp-Session-Id, whatever version header the request
// carries: a token that does not open is refused with 404, and the
// request is then handled in the era its token records (a version header
// of another era gets 400, as the session's servers answer it). The upstream
// gets its own session id (or legacy endpoint) in place of the token,
// never the token, and a client's raw id is never forwarded. A batch is
// refused where the request's version, or else its session's, forbids
// batches.
func (h *Handler) resolve(x *exchange) *mcp.Refusal {
	r, call := x.r, &x.call
	id := call.First().ID
	x.principal = h.principalOf(r)
	var res resolution
	var ref *mcp.Refusal
	if rest, tok := mcp.StripRouteParam(r.URL.RawQuery); tok != "" {
		res, ref = h.resolveLegacy(r, call, tok, rest, x.principal)
	} else if tok := r.Header.Get(mcp.HeaderSessionID); tok != "" {
		res, ref = h.resolveSession(r, call, tok, x.principal)
	} else if h.requireSess && mcp.NeedsSession(r.Method, call) {
		metrics.sessionRefusals.WithLabelValues("missing").Inc()
		ref = mcp.Refuse(http.StatusBadRequest, mcp.CodeServerError, id, "Bad Request: Mcp-Session-Id header is required")
	}
	if ref == nil && call.Peek.Batch {
		version := ""
		if res.Session != nil {
			version = res.Session.Version
		}
		ref = mcp.BatchRefusal(call, version)
	}
	if ref != nil {
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

// resolveLegacy opens a legacy route token; the POST goes to the
// upstream's own endpoint, which the token carries.
func (h *Handler) resolveLegacy(r *http.Request, call *mcp.Call, tok, rest, principal string) (resolution, *mcp.Refusal) {
	sess, ref := h.open(tok, mcp.TokenLegacy, call.First().ID, principal)
	if ref != nil {
		return resolution{}, ref
	}
	path, query := mcp.SplitEndpoint(sess.Endpoint)
	if sess.Endpoint == "" {
		path, query = r.URL.EscapedPath(), rest
	}
	if p, err := url.PathUnescape(path); err == nil {
		r.URL.Path, r.URL.RawPath = p, path
	}
	r.URL.RawQuery = query
	r.RequestURI = ""
	call.Era = mcp.EraLegacy
	return resolution{Session: sess, Token: tok, Pinned: sess.Upstream, Key: mcp.SessionKey(sess.Upstream, sess.UpstreamID)}, nil
}

// resolveSession opens a Mcp-Session-Id token; the upstream gets its own
// id in its place.
func (h *Handler) resolveSession(r *http.Request, call *mcp.Call, tok, principal string) (resolution, *mcp.Refusal) {
	id := call.First().ID
	sess, ref := h.open(tok, mcp.TokenSession, id, principal)
	if ref != nil {
		return resolution{}, ref
	}
	if era, ok := mcp.EraOf(sess.Version); ok && era != call.Era && call.Version != "" {
		// The request is the session's, whose era refuses a version
		// header of another era, as its servers do.
		return resolution{}, mcp.Refuse(http.StatusBadRequest, mcp.CodeInvalidRequest, id,
			"Bad Request: MCP-Protocol-Version "+call.Version+" is not the session's version "+sess.Version)
	} else if ok {
		call.Era = era
	}
	r.Header.Set(mcp.HeaderSessionID, sess.UpstreamID)
	return resolution{Session: sess, Token: tok, Pinned: sess.Upstream, Key: mcp.SessionKey(sess.Upstream, sess.UpstreamID)}, nil
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

// open opens a sealed token and checks that its upstream is still
// configured and that it belongs to the request's principal (a session
// opened by a principal, presented by another or by none, and an
// unauthenticated session presented with a principal, are unknown); every
// failure is a 404 so the client starts a new session.
func (h *Handler) open(tok string, kind mcp.TokenKind, id, principal string) (*mcp.Session, *mcp.Refusal) {
	now := h.now()
	sess := h.tokens.Get(tok, now)
	var err error
	if sess == nil {
		if sess, err = h.sealer.Open(tok, now); err == nil {
			h.tokens.Put(tok, sess)
		}
	}
	if err == nil && sess.Kind != kind {
		err = mcp.ErrTokenInvalid
	}
	if err == nil && h.upstreams != nil {
		if _, ok := h.upstreams[sess.Upstream]; !ok {
			err = errors.New("session upstream no longer configured")
		}
	}
	if err == nil && !h.sealer.Bound(sess, principal) {
		metrics.sessionRefusals.WithLabelValues("principal").Inc()
		h.logger.Warn("session presented by another principal than its own; answered as unknown",
			zap.String("session", sessionID(mcp.SessionKey(sess.Upstream, sess.UpstreamID))), zap.String("principal", principal))
		return nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, id, "session not found")
	}
	if err != nil {
		if c := h.logger.Check(zapcore.DebugLevel, "session refused"); c != nil {
			c.Write(zap.Error(err))
		}
		metrics.sessionRefusals.WithLabelValues("not_found").Inc()
		return nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, id, "session not found")
	}
	return sess, nil
}
