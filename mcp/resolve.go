package mcp

import (
	"errors"
	"net/http"
	"net/url"
	"time"
)

// Resolution is the session a request belongs to, as Resolve found it.
type Resolution struct {
	// Session is the opened token, nil for a request without a session.
	Session *Session
	// Token is the client's token as presented.
	Token string
	// Pinned is the dial address of the upstream the request must reach.
	Pinned string
	// Key names the session in the proxy's registries (SessionKey), ""
	// without a session.
	Key string
}

// Kinds of refusal Resolver.Refused reports.
const (
	RefusedMissing   = "missing"   // a request that needs a session has none
	RefusedNotFound  = "not_found" // a token that does not open, or names an upstream no longer configured
	RefusedPrincipal = "principal" // a session presented by another principal than its own
)

// Resolver opens the session tokens of requests.
type Resolver struct {
	Sealer *Sealer
	// Tokens caches the tokens Sealer opened.
	Tokens *TokenCache
	// Upstreams are the dial addresses a session may be pinned to; nil
	// for any (upstreams known only at run time).
	Upstreams map[string]struct{}
	// RequireSession refuses, with 400, a session-era request other than
	// initialize that carries no session (see NeedsSession).
	RequireSession bool
	Now            func() time.Time
	// Legacy, when set, names the query parameters of legacy endpoints: a
	// request without a route token that carries one is refused with 404
	// (its value may be an upstream's own session id).
	Legacy *LegacyParams
	// Refused, when set, is told of every refusal for a session problem:
	// its kind, the session's key when known, the principal that
	// presented it, and the cause.
	Refused func(kind, key, principal string, err error)
}

// errSessionUpstreamGone is the cause of a token whose upstream left the
// configuration.
var errSessionUpstreamGone = errors.New("session upstream no longer configured")

// errRawLegacyID is the cause of a request that names a legacy endpoint's
// parameter without a route token.
var errRawLegacyID = errors.New("a legacy endpoint's query parameter without the proxy's route token")

// Resolve opens the request's session token, from the legacy route
// parameter or Mcp-Session-Id, whatever version header the request
// carries: a token that does not open, or opens for another principal than
// principal, is refused with 404, and the request is then handled in the
// era its token records (a version header of another era gets 400, as the
// session's servers answer it, except a version older than the session
// era's, which a Streamable HTTP session may have negotiated). The
// upstream gets its own session id (or legacy endpoint) in place of the
// token: r is rewritten, and a client's raw id is never forwarded; nor is
// a query naming a legacy endpoint's parameter (see Legacy) without a
// route token: that is a 404. Without a token, a request that needs a
// session is refused under RequireSession, except a GET, which opens a
// legacy stream whatever its version header. A batch is refused where the
// request's version, or else its session's, forbids batches.
func (rv *Resolver) Resolve(r *http.Request, call *Call, principal string) (Resolution, *Refusal) {
	var res Resolution
	var ref *Refusal
	if rest, tok := StripRouteParam(r.URL.RawQuery); tok != "" {
		res, ref = rv.resolveLegacy(r, call, tok, rest, principal)
	} else if rv.Legacy != nil && rv.Legacy.Named(r.URL.RawQuery) {
		rv.refused(RefusedNotFound, "", principal, errRawLegacyID)
		ref = Refuse(http.StatusNotFound, CodeSessionNotFound, call.First().ID, "session not found")
	} else if tok := r.Header.Get(HeaderSessionID); tok != "" {
		res, ref = rv.resolveSession(r, call, tok, principal)
	} else if rv.RequireSession && r.Method == http.MethodGet && call.Era == EraSession {
		// No Streamable HTTP stream: its upstream issues sessions (else
		// require_session would be off). It is a legacy client reopening
		// its stream with the version it negotiated (the TypeScript SDK's
		// SSE client sends it on every request): it opens a legacy
		// session, as without the header, and an upstream that serves no
		// legacy SSE refuses it itself.
		call.Era = EraLegacy
	} else if rv.RequireSession && NeedsSession(r.Method, call) {
		rv.refused(RefusedMissing, "", principal, nil)
		ref = Refuse(http.StatusBadRequest, CodeServerError, call.First().ID, "Bad Request: Mcp-Session-Id header is required")
	}
	if ref == nil && call.Peek.Batch {
		version := ""
		if res.Session != nil {
			version = res.Session.Version
		}
		ref = BatchRefusal(call, version)
	}
	if ref != nil {
		return Resolution{}, ref
	}
	return res, nil
}

// resolveLegacy opens a legacy route token; the POST goes to the
// upstream's own endpoint, which the token carries.
func (rv *Resolver) resolveLegacy(r *http.Request, call *Call, tok, rest, principal string) (Resolution, *Refusal) {
	if r.Method != http.MethodPost {
		// A legacy session's endpoint takes its messages; the session's
		// one GET is the stream that opened it. A GET of the endpoint
		// would open another upstream session, outside the proxy's.
		return Resolution{}, Refuse(http.StatusMethodNotAllowed, CodeInvalidRequest, call.First().ID,
			"a legacy session's endpoint takes POST only")
	}
	sess, ref := rv.open(tok, TokenLegacy, call.First().ID, principal)
	if ref != nil {
		return Resolution{}, ref
	}
	// The upstream knows the session by the endpoint alone; a session id
	// header is the client's, never forwarded.
	r.Header.Del(HeaderSessionID)
	path, query := SplitEndpoint(sess.Endpoint)
	if sess.Endpoint == "" {
		path, query = r.URL.EscapedPath(), rest
	}
	if p, err := url.PathUnescape(path); err == nil {
		r.URL.Path, r.URL.RawPath = p, path
	}
	r.URL.RawQuery = query
	r.RequestURI = ""
	call.Era = EraLegacy
	return resolutionOf(sess, tok), nil
}

// resolveSession opens a Mcp-Session-Id token; the upstream gets its own
// id in its place.
func (rv *Resolver) resolveSession(r *http.Request, call *Call, tok, principal string) (Resolution, *Refusal) {
	id := call.First().ID
	sess, ref := rv.open(tok, TokenSession, id, principal)
	if ref != nil {
		return Resolution{}, ref
	}
	if era, ok := EraOf(sess.Version); ok && era != call.Era && call.Version != "" &&
		(era != EraSession || call.Era != EraLegacy) {
		// The request is the session's, whose era refuses a version
		// header of another era, as its servers do. A version older than
		// the session era's is one its client and server agreed on over
		// Streamable HTTP (SDKs still negotiate 2024-11-05 there): the
		// session's transport, not the version, makes its era.
		return Resolution{}, Refuse(http.StatusBadRequest, CodeInvalidRequest, id,
			"Bad Request: MCP-Protocol-Version "+call.Version+" is not the session's version "+sess.Version)
	} else if ok {
		call.Era = era
	}
	r.Header.Set(HeaderSessionID, sess.UpstreamID)
	return resolutionOf(sess, tok), nil
}

func resolutionOf(sess *Session, tok string) Resolution {
	return Resolution{Session: sess, Token: tok, Pinned: sess.Upstream, Key: SessionKey(sess.Upstream, sess.UpstreamID)}
}

// open opens a sealed token and checks that its upstream is still
// configured and that it belongs to principal (a session opened by a
// principal, presented by another or by none, and an unauthenticated
// session presented with a principal, are unknown); every failure is a
// 404 so the client starts a new session.
func (rv *Resolver) open(tok string, kind TokenKind, id, principal string) (*Session, *Refusal) {
	now := rv.Now()
	sess := rv.Tokens.Get(tok, now)
	var err error
	if sess == nil {
		if sess, err = rv.Sealer.Open(tok, now); err == nil {
			rv.Tokens.Put(tok, sess)
		}
	}
	if err == nil && sess.Kind != kind {
		err = ErrTokenInvalid
	}
	if err == nil && rv.Upstreams != nil {
		if _, ok := rv.Upstreams[sess.Upstream]; !ok {
			err = errSessionUpstreamGone
		}
	}
	switch {
	case err != nil:
		rv.refused(RefusedNotFound, "", principal, err)
	case !rv.Sealer.Bound(sess, principal):
		rv.refused(RefusedPrincipal, SessionKey(sess.Upstream, sess.UpstreamID), principal, nil)
	default:
		return sess, nil
	}
	return nil, Refuse(http.StatusNotFound, CodeSessionNotFound, id, "session not found")
}

func (rv *Resolver) refused(kind, key, principal string, err error) {
	if rv.Refused != nil {
		rv.Refused(kind, key, principal, err)
	}
}
