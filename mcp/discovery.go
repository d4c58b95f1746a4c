package mcp

import (
	"net/http"
	"strings"
)

// oauthMetadataPaths are the well-known paths of the OAuth discovery
// documents an MCP server may serve on its own origin: the protected
// resource metadata (RFC 9728) of a server that is its own resource
// server, and the authorization server metadata (RFC 8414, OpenID Connect
// Discovery) of a 2025-03-26 server that is its own authorization server.
var oauthMetadataPaths = [...]string{
	"/.well-known/oauth-protected-resource",
	"/.well-known/oauth-authorization-server",
	"/.well-known/openid-configuration",
}

// IsOAuthMetadata reports whether r fetches an OAuth discovery document:
// a GET or HEAD of one of those paths, or of its path-suffixed form
// (/.well-known/oauth-protected-resource/mcp for the resource at /mcp), its
// path free of dot segments, that carries no Mcp-Session-Id and does not
// ask for text/event-stream by name. MCP clients fetch these from the MCP server's
// origin as plain JSON documents, with no session and often with Accept:
// application/json, so a proxy in front of a server that does its own
// OAuth passes them on as they are rather than judge them as MCP requests.
func IsOAuthMetadata(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if r.Header.Get(HeaderSessionID) != "" || acceptsOneOf(r.Header.Values("Accept"), "text/event-stream") {
		// An MCP GET stream, whatever its path: an upstream that serves
		// MCP on every path would open it past the proxy's checks.
		return false
	}
	p := r.URL.Path
	if HasDotSegment(r.URL.EscapedPath()) || hasDecodedDotSegment(p) {
		return false
	}
	for _, prefix := range oauthMetadataPaths {
		if rest, ok := strings.CutPrefix(p, prefix); ok && (rest == "" || rest[0] == '/') {
			return true
		}
	}
	return false
}
