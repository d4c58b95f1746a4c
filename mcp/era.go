// Package mcp holds the Model Context Protocol knowledge mcpgate needs on
// the wire: protocol revisions and their eras, a bounded JSON-RPC envelope
// peek and the reading of a POST body around it (ReadBody: the head within
// a memory budget and a timeout, the rest checked as it streams), method
// classes, the header checks of the stateless revision, sealed session
// tokens and the resolution of a request's session from them (Resolver),
// JSON-RPC error bodies and the rewriting of the legacy HTTP+SSE endpoint
// event. It does not import Caddy.
package mcp

import "net/http"

// Protocol revisions mcpgate knows by name.
const (
	Version20241105 = "2024-11-05"
	Version20250326 = "2025-03-26"
	Version20250618 = "2025-06-18"
	Version20251125 = "2025-11-25"
	Version20260728 = "2026-07-28"
)

// Header names used by MCP over HTTP. Header names are case-insensitive on
// the wire; these are the canonical forms Go uses as map keys.
const (
	HeaderSessionID       = "Mcp-Session-Id"
	HeaderProtocolVersion = "Mcp-Protocol-Version"
	HeaderMethod          = "Mcp-Method"
	HeaderName            = "Mcp-Name"
	HeaderLastEventID     = "Last-Event-Id"
)

// Era groups protocol revisions that share HTTP transport rules.
type Era uint8

const (
	// EraUnknown is a request that carries no version header; it is an
	// initialize, a 2025-03-26 client (the spec's default) or legacy traffic.
	EraUnknown Era = iota
	// EraLegacy is the 2024-11-05 HTTP+SSE transport.
	EraLegacy
	// EraSession is Streamable HTTP with Mcp-Session-Id, 2025-03-26 to
	// 2025-11-25.
	EraSession
	// EraStateless is the stateless revision, 2026-07-28 and later.
	EraStateless
)

// String returns a short lowercase name for logs and metrics.
func (e Era) String() string {
	switch e {
	case EraLegacy:
		return "legacy"
	case EraSession:
		return "session"
	case EraStateless:
		return "stateless"
	}
	return "unknown"
}

// EraOf maps a protocol version string to its era. Versions are ISO dates,
// so they compare as strings; anything at or after 2026-07-28 is stateless.
// A malformed version is EraUnknown with ok false.
func EraOf(version string) (era Era, ok bool) {
	if !validVersion(version) {
		return EraUnknown, false
	}
	switch {
	case version >= Version20260728:
		return EraStateless, true
	case version >= Version20250326:
		return EraSession, true
	default:
		return EraLegacy, true
	}
}

// validVersion reports whether v has the YYYY-MM-DD shape of a revision.
func validVersion(v string) bool {
	if len(v) != 10 || v[4] != '-' || v[7] != '-' {
		return false
	}
	for i := 0; i < len(v); i++ {
		if i == 4 || i == 7 {
			continue
		}
		if v[i] < '0' || v[i] > '9' {
			return false
		}
	}
	return true
}

// AllowsBatch reports whether JSON-RPC batches are allowed at the given
// negotiated version. Only 2025-03-26 allows them; a missing version means
// 2025-03-26 per the spec.
func AllowsBatch(version string) bool {
	return version == "" || version == Version20250326
}

// BatchAllowed reports whether a JSON-RPC batch is allowed on a request:
// the version is the MCP-Protocol-Version header when present, else the
// session's negotiated version when known, else 2025-03-26, the spec's
// default. Only 2025-03-26 allows batches.
func BatchAllowed(headerVersion, sessionVersion string) bool {
	v := headerVersion
	if v == "" {
		v = sessionVersion
	}
	return AllowsBatch(v)
}

// SupportsRetryHint reports whether a client at this version is known to
// honour an SSE `retry:` field before polling again (2025-11-25 and later;
// SEP-1699). Older clients still parse it, but the spec gives them no duty.
func SupportsRetryHint(version string) bool {
	return version >= Version20251125
}

// ProtocolVersion returns the request's MCP-Protocol-Version header.
func ProtocolVersion(h http.Header) string {
	if v := h[HeaderProtocolVersion]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// SessionVersion returns the version to record for a session an upstream
// created in answer to an initialize that offered version: the offered
// version when it is of the session era, else the session-era version
// nearest to it (the upstream gave a session id, so it speaks the session
// era whatever was offered).
func SessionVersion(offered string) string {
	era, ok := EraOf(offered)
	switch {
	case ok && era == EraSession:
		return offered
	case ok && era == EraStateless:
		return Version20251125
	}
	return Version20250326
}
