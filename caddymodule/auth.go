package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	jose "github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/auth"
	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/resources"
)

func init() {
	caddy.RegisterModule(new(Auth))
}

// varAuth holds the request's *auth.Principal, for mcp_proxy.
const varAuth = "mcp.auth"

// Auth is `mcp_auth`, an OAuth 2.1 resource server in front of MCP
// servers (or any route), as the MCP authorization specification asks of
// an HTTP MCP server. It accepts a request only with a valid Bearer access
// token issued for this resource: a JWT verified against static keys or a
// JWKS URL (issuer, audience, expiry, algorithm allow-list, required
// scopes), or an opaque token checked by RFC 7662 introspection. It
// serves the Protected Resource Metadata of RFC 9728 at
// /.well-known/oauth-protected-resource (and its path-suffixed form, e.g.
// /.well-known/oauth-protected-resource/mcp), and answers a request
// without a valid token with 401 and `WWW-Authenticate: Bearer
// resource_metadata="…"` pointing at it, a token lacking a scope with 403
// `insufficient_scope`. A matcher on mcp_auth must therefore cover
// /.well-known/oauth-protected-resource* as well as the MCP endpoint
// (`@auth path /mcp* /.well-known/oauth-protected-resource*`): with
// `mcp_auth /mcp*` alone the metadata the 401 names is not served.
//
// The principal becomes `{http.auth.user.id}` (from PrincipalClaim) and
// its claims `{http.auth.user.<claim>}`, as Caddy's own authentication
// sets them; mcp_proxy binds sessions to it. The client's Authorization
// header is removed before the request goes on, unless ForwardToken is
// set: the token is for this resource, not for the servers behind it.
// mcp_auth reads the JSON-RPC messages of a POST with a JSON body, as
// mcp_proxy does, to enforce ScopeRules by MCP method and target and to set
// the MCP placeholders (see Handler) for the matchers and handlers behind
// it; a body that is not valid MCP is refused as mcp_proxy refuses it.
// With ScopeRules, a POST whose body is not JSON in UTF-8 is refused with
// 415, as its messages cannot be checked.
// mcp_auth is ordered just after forward_auth, before respond and
// mcp_proxy.
type Auth struct {
	// Issuers lists the accepted token issuers (the iss claim). With
	// several, each key is bound to the issuers it signs for (see
	// StaticKey.Issuers and JWKSIssuers), and the principal,
	// `{http.auth.user.id}`, to which sessions are bound, is the issuer,
	// a space, and the PrincipalClaim (e.g. `https://as-b.example.com
	// alice`), so that two issuers' users of the same name are not one
	// principal; an issuer then may not hold a space. Default: any issuer
	// whose keys verify the token.
	Issuers []string `json:"issuers,omitempty"`

	// AuthorizationServers lists the authorization servers the metadata
	// names. Default: Issuers.
	AuthorizationServers []string `json:"authorization_servers,omitempty"`

	// Resource is this resource's URI, the audience tokens must name (RFC
	// 8707). Default: the request's scheme and host with the MCP
	// endpoint's path (the path the client asked for, before handle_path
	// or a rewrite stripped a prefix, with its trailing slash, tokens for
	// the path without it or with it passing too; the path after
	// /.well-known/oauth-protected-resource for the metadata). Set it when
	// one MCP server spans several paths, as a legacy HTTP+SSE one does,
	// and on a site that answers any host: the host is then the client's
	// to choose, and a token the issuer made for another resource would
	// pass with that resource's host.
	Resource string `json:"resource,omitempty"`

	// Audiences lists more audiences accepted besides Resource. Default:
	// none.
	Audiences []string `json:"audiences,omitempty"`

	// JWKSURL is where the issuer publishes its signing keys. The set is
	// fetched with a timeout of JWKSTimeout, kept for its max-age (or
	// JWKSRefresh), fetched again when a token names a key it does not
	// hold (at most every JWKSMinRefresh), and used for JWKSMaxStale past
	// its freshness while fetching fails. Default: none (tokens are
	// checked against Keys, or by Introspection).
	JWKSURL string `json:"jwks_url,omitempty"`

	// JWKSIssuers lists the issuers whose tokens the JWKS's keys verify,
	// each one of Issuers: a token of another iss signed with one of them
	// is refused. Default: Issuers (any issuer when none); required when
	// several Issuers are accepted along with static Keys, which belong to
	// some of them.
	JWKSIssuers []string `json:"jwks_issuers,omitempty"`

	// JWKSTimeout bounds one fetch of the JWKS. Default: 5s.
	JWKSTimeout caddy.Duration `json:"jwks_timeout,omitempty"`

	// JWKSRefresh is how long a JWKS is used when its answer sets no
	// max-age. Default: 1h.
	JWKSRefresh caddy.Duration `json:"jwks_refresh,omitempty"`

	// JWKSMinRefresh is how often, at most, an unknown key id makes the
	// JWKS be fetched again. Default: 1m.
	JWKSMinRefresh caddy.Duration `json:"jwks_min_refresh,omitempty"`

	// JWKSMaxStale is how long keys are used past their freshness while
	// the JWKS cannot be fetched. Default: 24h.
	JWKSMaxStale caddy.Duration `json:"jwks_max_stale,omitempty"`

	// Keys are static verification keys: PEM public keys or certificates
	// (inline or in a file), JWKs, or HMAC secrets. Default: none.
	Keys []StaticKey `json:"keys,omitempty"`

	// Algorithms lists the accepted JWS algorithms. "none" is never
	// accepted, and an HMAC algorithm only with a static secret. Default:
	// RS256/384/512, PS256/384/512, ES256/384/512, EdDSA.
	Algorithms []string `json:"algorithms,omitempty"`

	// Leeway is the clock skew allowed on exp, nbf and iat. Default: 30s.
	Leeway caddy.Duration `json:"leeway,omitempty"`

	// PrincipalClaim names the claim that identifies the principal, in a
	// JWT or an introspection answer. A token whose claim is missing,
	// empty or not a string is refused (401 invalid_token): without a
	// principal its sessions would be everybody's. Set it to client_id
	// for an introspection endpoint that gives client-credentials tokens
	// no sub. Default: sub.
	PrincipalClaim string `json:"principal_claim,omitempty"`

	// RequiredScopes must all be held by every token: a 401 names them, and
	// a token lacking one gets 403 insufficient_scope naming them, then
	// the scopes of this resource it holds (as ScopeRules' 403 does).
	// Default: none.
	RequiredScopes []string `json:"required_scopes,omitempty"`

	// ScopeRules require scopes for MCP requests by method and target
	// (tool, prompt or resource): a token lacking one gets 403
	// insufficient_scope naming the scopes, then those of this resource
	// (ScopesSupported, RequiredScopes, the rules') the token holds, which
	// a client stepping up asks for again. Every message of a batch is
	// checked. Method and target are globs as the policy rules read them:
	// `*` matches any run of characters, `/` included, `?` one character,
	// `\` escapes the next; a malformed glob (one ending in a lone `\`)
	// is refused at load, and so is an unescaped `[` (path.Match's
	// character classes, which these globs once had, are not read). An empty method matches only a request without
	// one (a GET). A resource URI matches as the access rules read it (as
	// written or canonical); a completion/complete also needs the scopes
	// of the prompt (prompts/get) or template (resources/read) it
	// completes. Default: none.
	ScopeRules []auth.ScopeRule `json:"scope_rules,omitempty"`

	// ScopesSupported is what the metadata lists. Default: the scopes of
	// RequiredScopes and ScopeRules.
	ScopesSupported []string `json:"scopes_supported,omitempty"`

	// Introspection checks opaque tokens with an RFC 7662 endpoint.
	// Default: none (only JWTs are accepted).
	Introspection *IntrospectionConfig `json:"introspection,omitempty"`

	// ForwardToken keeps the client's Authorization header on the request
	// for the handlers and upstreams behind. The MCP specification forbids
	// passing a token on to servers it was not issued for: set it only
	// when the upstream is part of this resource. Default: false.
	ForwardToken bool `json:"forward_token,omitempty"`

	// ResourceName is the human-readable name the metadata gives.
	// Default: none.
	ResourceName string `json:"resource_name,omitempty"`

	verifier *auth.Verifier
	// audiences are the accepted audiences when Resource is set; nil
	// when each request's resource is one.
	audiences []string
	// known are the scopes of this resource: ScopesSupported,
	// RequiredScopes and those of ScopeRules.
	known  []string
	memory *resources.Budget
	body   mcp.BodyLimits
	logger *zap.Logger
	// causeLogNext is when logCause may log again (Unix ns);
	// causeLogSkipped counts the causes it left out since.
	causeLogNext, causeLogSkipped atomic.Int64
}

// CaddyModule returns the Caddy module information.
func (*Auth) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_auth",
		New: func() caddy.Module { return new(Auth) },
	}
}

// Provision builds the verifier.
func (a *Auth) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	v := &auth.Verifier{Issuers: a.Issuers, Leeway: time.Duration(a.Leeway), PrincipalClaim: a.PrincipalClaim, RequiredScopes: a.RequiredScopes}
	for _, alg := range a.Algorithms {
		if strings.EqualFold(alg, "none") {
			return errors.New(`algorithm "none" is never accepted`)
		}
		v.Algorithms = append(v.Algorithms, jose.SignatureAlgorithm(alg))
	}
	bind := auth.KeyBinding{Issuers: a.Issuers, JWKS: a.JWKSURL != "", JWKSIssuers: a.JWKSIssuers}
	for _, k := range a.Keys {
		bind.KeyIssuers = append(bind.KeyIssuers, k.Issuers)
	}
	if err := bind.Check(); err != nil {
		return err
	}
	if a.JWKSURL != "" || len(a.Keys) > 0 {
		v.Keys = &auth.KeySet{URL: repl.ReplaceKnown(a.JWKSURL, ""), Issuers: a.JWKSIssuers, Refresh: time.Duration(a.JWKSRefresh),
			MinRefresh: time.Duration(a.JWKSMinRefresh), MaxStale: time.Duration(a.JWKSMaxStale), FetchTimeout: time.Duration(a.JWKSTimeout)}
		for i, k := range a.Keys {
			jwk, err := k.load(repl)
			if err != nil {
				return fmt.Errorf("key %d: %w", i, err)
			}
			v.Keys.AddStaticFor(k.Issuers, jwk)
		}
	}
	if in := a.Introspection; in != nil {
		if in.URL == "" {
			return errors.New("introspection needs a url")
		}
		v.Introspection = &auth.Introspector{URL: repl.ReplaceKnown(in.URL, ""), ClientID: repl.ReplaceKnown(in.ClientID, ""),
			ClientSecret: repl.ReplaceKnown(in.ClientSecret, ""), CacheTTL: time.Duration(in.CacheTTL)}
	}
	if v.Keys == nil && v.Introspection == nil {
		return errors.New("mcp_auth needs jwks_url, a key, or introspection")
	}
	if err := auth.ValidScopeRules(a.ScopeRules); err != nil {
		return err
	}
	a.known = auth.SupportedScopes(nil, append(slices.Clone(a.ScopesSupported), a.RequiredScopes...), a.ScopeRules)
	v.KnownScopes = a.known
	a.verifier = v
	if a.Resource != "" {
		a.audiences = append([]string{a.Resource}, a.Audiences...)
	}
	app, err := ctx.App("mcp")
	if err != nil {
		return fmt.Errorf("loading mcp app: %w", err)
	}
	a.memory = app.(*App).global.Memory()
	a.body = bodyLimits(defaultMaxPeek, 0, defaultBodyTimeout, a.memory)
	return registerMetrics(ctx)
}

// ServeHTTP serves the metadata, or authenticates the request, reads its
// MCP messages, checks their scopes, and passes it on.
func (a *Auth) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	path := clientPath(r)
	if rp, ok := auth.ResourcePathOf(path); ok && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		return a.serveMetadata(w, r, rp)
	}
	resource := a.resourceOf(r, path)
	tok := auth.Bearer(r.Header.Get("Authorization"))
	audiences := a.audiences
	if audiences == nil {
		audiences = append(auth.ResourceAudiences(resource), a.Audiences...)
	}
	ctx := r.Context()
	if a.verifier.Introspection != nil {
		// Introspection bounds each client's checks under way.
		ip, _ := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string)
		ctx = auth.WithClient(ctx, admission.ClientKeyForIP(ip, 0))
	}
	p, err := a.verifier.Verify(ctx, tok, audiences, time.Now())
	if err != nil {
		var ae *auth.Error
		if !errors.As(err, &ae) {
			ae = &auth.Error{Status: http.StatusUnauthorized, Code: "invalid_token", Description: "the token could not be checked", Cause: err}
		}
		reason := ae.Code
		if reason == "" {
			reason = "missing"
		}
		metrics.authRefusals.WithLabelValues(reason).Inc()
		if ae.Cause != nil {
			a.logCause(ae)
		}
		if c := a.logger.Check(zap.DebugLevel, "token refused"); c != nil {
			c.Write(zap.String("reason", ae.Description), zap.NamedError("cause", ae.Cause), zap.String("remote_ip", r.RemoteAddr))
		}
		if ae.Status == http.StatusUnauthorized && ae.Scope == "" && len(a.RequiredScopes) > 0 {
			// The scopes every request needs, for the client to ask for.
			e := *ae
			e.Scope = strings.Join(a.RequiredScopes, " ")
			ae = &e
		}
		return writeChallenge(w, ae, auth.MetadataURL(resource), "")
	}
	var call mcp.Call
	if r.Method == http.MethodPost {
		if ref := mcp.CheckMediaType(r.Header); ref == nil {
			pb, ref := a.readMessages(w, r, &call)
			defer a.memory.Release(pb.Held)
			if ref != nil {
				return writeRefusal(w, ref)
			}
			setCallFacts(r, &call)
			if pb.Whole != nil {
				// mcp_proxy behind takes the reading over instead of
				// reading the body again.
				caddyhttp.SetVar(r.Context(), varPeeked, &sharedPeek{call: call, whole: pb.Whole, body: r.Body})
			}
		} else if len(a.ScopeRules) > 0 {
			// Messages that cannot be read cannot be checked.
			return writeRefusal(w, ref)
		}
	}
	if e := auth.CheckScopes(a.ScopeRules, p, call.Peek.Messages); e != nil {
		metrics.authRefusals.WithLabelValues(e.Code).Inc()
		// The client authorizes again for the scopes named: with those
		// of this resource the token holds, it keeps them.
		return writeChallenge(w, auth.StepUp(e, p, a.known), auth.MetadataURL(resource), call.First().ID)
	}
	setPrincipal(r, p)
	caddyhttp.SetVar(r.Context(), varAuth, p)
	if !a.ForwardToken {
		r.Header.Del("Authorization")
	}
	return next.ServeHTTP(w, r)
}

// causeLogInterval is the least time between two WARNs of why tokens
// could not be checked: any client can make one per request while the
// JWKS or the introspection endpoint fails.
const causeLogInterval = 10 * time.Second

// logCause logs at WARN why a token could not be checked (the client is
// told only that it could not be), at most once per causeLogInterval,
// with the count of those left out since the last one.
func (a *Auth) logCause(e *auth.Error) {
	now := time.Now().UnixNano()
	next := a.causeLogNext.Load()
	if now < next || !a.causeLogNext.CompareAndSwap(next, now+int64(causeLogInterval)) {
		a.causeLogSkipped.Add(1)
		return
	}
	a.logger.Warn("token could not be checked", zap.String("reason", e.Description), zap.Error(e.Cause),
		zap.Int64("not_logged_since_last", a.causeLogSkipped.Swap(0)))
}

// readMessages reads the JSON-RPC messages of a POST body the way
// mcp_proxy does (the same strict reading, the rest of a long body checked
// as it streams on), so that scope rules, matchers and handlers behind see
// the method and target the upstream will.
func (a *Auth) readMessages(w http.ResponseWriter, r *http.Request, call *mcp.Call) (mcp.Body, *mcp.Refusal) {
	if ref := mcp.ClassifyHeaders(r.Header, call); ref != nil {
		return mcp.Body{}, ref
	}
	return mcp.ReadBody(w, r, call, a.body)
}

// setPrincipal sets {http.auth.user.id}, and makes the token's claims
// {http.auth.user.<claim>} and its scopes {http.auth.user.scope}, written
// out only when a placeholder asks for one.
func setPrincipal(r *http.Request, p *auth.Principal) {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return
	}
	repl.Set("http.auth.user.id", p.ID)
	repl.Map(func(key string) (any, bool) {
		name, ok := strings.CutPrefix(key, "http.auth.user.")
		if !ok {
			return nil, false
		}
		if name == "scope" {
			return strings.Join(p.Scopes, " "), true
		}
		v, ok := p.Claims[name]
		if !ok {
			return nil, false
		}
		return auth.ClaimString(v), true
	})
}

// varPeeked holds the *sharedPeek mcp_auth leaves for mcp_proxy.
const varPeeked = "mcp.peeked"

// sharedPeek is a POST body mcp_auth read whole and classified, and the
// reader it put back on the request: mcp_proxy uses them while the
// request still carries that reader.
type sharedPeek struct {
	call  mcp.Call
	whole []byte
	body  io.ReadCloser
}

// clientPath is the path of the URL the client asked for: the request's
// before a route rewrote it (handle_path, uri strip_prefix). That URL is
// the resource the client knows, asks a token for and finds the metadata
// of; the path left after handle_path /mcp* strips /mcp would make every
// server mounted so on a site the one resource of the site's root, and a
// token for one of them good at all.
func clientPath(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.URL != nil {
		return orig.URL.Path
	}
	return r.URL.Path
}

// resourceOf is the resource URI of a request to path.
func (a *Auth) resourceOf(r *http.Request, path string) string {
	if a.Resource != "" {
		return a.Resource
	}
	return auth.ResourceURL(r, path)
}

// serveMetadata serves the Protected Resource Metadata document.
func (a *Auth) serveMetadata(w http.ResponseWriter, r *http.Request, resourcePath string) error {
	servers := a.AuthorizationServers
	if len(servers) == 0 {
		servers = a.Issuers
	}
	auth.ServeMetadata(w, r, &auth.Metadata{Resource: a.resourceOf(r, resourcePath), AuthorizationServers: servers,
		ScopesSupported: auth.SupportedScopes(a.ScopesSupported, a.RequiredScopes, a.ScopeRules), ResourceName: a.ResourceName})
	return nil
}

// writeChallenge writes an auth refusal with a JSON-RPC error for id: a
// 401 or 403 with its challenge, a 429 or 503 (the token could not be
// checked yet) with Retry-After.
func writeChallenge(w http.ResponseWriter, e *auth.Error, metadataURL, id string) error {
	if e.Status == http.StatusServiceUnavailable || e.Status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	} else {
		w.Header().Set("WWW-Authenticate", auth.Challenge(e, metadataURL))
	}
	msg := http.StatusText(e.Status) + ": " + e.Description
	return writeRefusal(w, mcp.Refuse(e.Status, mcp.CodeServerError, id, msg))
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Auth)(nil)
	_ caddyhttp.MiddlewareHandler = (*Auth)(nil)
)
