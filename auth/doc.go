// Package auth is mcpgate's OAuth 2.1 resource server, as the MCP
// authorization specification asks of an HTTP MCP server: it validates
// Bearer access tokens (signed JWTs against static keys or a JWKS URL, or
// opaque tokens through RFC 7662 introspection), checks their issuer,
// audience (the resource indicator of RFC 8707), lifetime and scopes,
// serves the Protected Resource Metadata document of RFC 9728
// (ServeMetadata) and builds the WWW-Authenticate challenges that point
// clients at it. It also reads what a configuration or a request gives:
// verification keys in PEM, JWK or HMAC-secret form (ParseKey, SecretKey)
// and the Bearer token of an Authorization header (Bearer).
//
// JOSE is go-jose's: the package parses and verifies nothing by hand. Only
// the algorithms configured are accepted ("none" never is), a symmetric
// (HMAC) algorithm only with a static secret, never with a public key or a
// key from a JWKS.
//
// Bounds: a KeySet holds the keys of one JWKS document (at most
// MaxJWKSKeys, a document of at most MaxJWKSBytes) and fetches it at most
// once per MinRefresh whatever the tokens ask for, one fetch at a time; an
// Introspector caches at most MaxCached accepted results, each for no
// longer than its token lives, and MaxCached refusals, each for at most
// RefusalTTL, and sends at most MaxInFlight requests at once, a check
// waiting at most MaxSlotWait for one and a client (WithClient) having at
// most MaxPerClient checks under way. The package starts no goroutine.
//
// Scope rules (ScopeRule, CheckScopes) require scopes by MCP method and
// target, read as the access rules read them: the package imports the
// standard library, go-jose, mcp (the messages of a request) and policy
// (globs, targets and URI readings). The Caddy module mcp_auth (package
// caddymodule) wires it into Caddy.
package auth
