package caddymodule

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/mcpgate/mcpgate/mcp"
)

// resolution is the session a request belongs to.
type resolution struct {
	// session is the opened token, nil for a request without a session.
	session *mcp.Session
	// token is the client's token as presented.
	token string
	// pinned is the dial address of the upstream the request must reach.
	pinned string
	// key names the session in the registries (sessionKey), "" without
	// a session.
	key string
}

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
	var res resolution
	if rest, tok := mcp.StripRouteParam(r.URL.RawQuery); tok != "" {
		sess, ref := h.open(tok, mcp.TokenLegacy, id)
		if ref != nil {
			return ref
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
		res = resolution{session: sess, token: tok, pinned: sess.Upstream, key: sessionKey(sess.Upstream, sess.UpstreamID)}
	} else if tok := r.Header.Get(mcp.HeaderSessionID); tok != "" {
		sess, ref := h.open(tok, mcp.TokenSession, id)
		if ref != nil {
			return ref
		}
		if era, ok := mcp.EraOf(sess.Version); ok && era != call.Era && call.Version != "" {
			// The request is the session's, whose era refuses a version
			// header of another era, as its servers do.
			return mcp.Refuse(http.StatusBadRequest, mcp.CodeInvalidRequest, id,
				"Bad Request: MCP-Protocol-Version "+call.Version+" is not the session's version "+sess.Version)
		} else if ok {
			call.Era = era
		}
		r.Header.Set(mcp.HeaderSessionID, sess.UpstreamID)
		res = resolution{session: sess, token: tok, pinned: sess.Upstream, key: sessionKey(sess.Upstream, sess.UpstreamID)}
	} else if h.requireSess && mcp.NeedsSession(r.Method, call) {
		metrics.sessionRefusals.WithLabelValues("missing").Inc()
		return mcp.Refuse(http.StatusBadRequest, mcp.CodeServerError, id, "Bad Request: Mcp-Session-Id header is required")
	}
	if call.Peek.Batch {
		version := ""
		if res.session != nil {
			version = res.session.Version
		}
		if !mcp.BatchAllowed(call.Version, version) {
			if call.Version != "" {
				version = call.Version
			}
			return mcp.Refuse(http.StatusBadRequest, mcp.CodeInvalidRequest, "",
				"JSON-RPC batches are not allowed at protocol version "+version)
		}
	}
	if res.pinned != "" {
		caddyhttp.SetVar(r.Context(), varPinned, res.pinned)
	}
	x.res = res
	if c := h.logger.Check(zapcore.DebugLevel, "mcp request"); c != nil {
		c.Write(zap.String("era", call.Era.String()), zap.String("method", call.First().Method),
			zap.Bool("session", res.session != nil))
	}
	return nil
}

// open opens a sealed token and checks that its upstream is still
// configured; every failure is a 404 so the client starts a new session.
func (h *Handler) open(tok string, kind mcp.TokenKind, id string) (*mcp.Session, *mcp.Refusal) {
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
	if err != nil {
		if c := h.logger.Check(zapcore.DebugLevel, "session refused"); c != nil {
			c.Write(zap.Error(err))
		}
		metrics.sessionRefusals.WithLabelValues("not_found").Inc()
		return nil, mcp.Refuse(http.StatusNotFound, mcp.CodeSessionNotFound, id, "session not found")
	}
	return sess, nil
}
