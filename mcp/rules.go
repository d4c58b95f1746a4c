package mcp

import "net/http"

// The rules below decide, from a request's HTTP method, its
// classification and whether it carries a session token, how the proxy
// treats it across eras.

// OpensLegacyStream reports whether a request opens a legacy (2024-11-05)
// HTTP+SSE stream: a GET without a session of an era that is not the
// session era's or the stateless revision's (no version header, or a
// legacy one).
func OpensLegacyStream(method string, c *Call, inSession bool) bool {
	return method == http.MethodGet && !inSession && c.Era != EraSession && c.Era != EraStateless
}

// OpensSession reports whether a request starts a session: an initialize
// without one, or the GET of a legacy stream.
func OpensSession(method string, c *Call, inSession bool) bool {
	return !inSession && (c.IsInitialize() || OpensLegacyStream(method, c, inSession))
}

// Resumable reports whether a request's SSE answer survives its client's
// disconnect, to be resumed with Last-Event-ID: a session-era POST of one
// request (not initialize) in a Streamable HTTP session. legacyToken is
// set for a request routed by a legacy route token.
func Resumable(method string, c *Call, inSession, legacyToken bool) bool {
	first := c.First()
	return method == http.MethodPost && inSession && !legacyToken && c.Era != EraStateless &&
		!c.Peek.Batch && first.Kind == KindRequest && first.Method != "initialize"
}

// Finishing reports traffic that only finishes work already in flight: a
// DELETE, or a POST of notifications and responses only. Service levels
// let it through, and it is no sign of a session's activity.
func Finishing(method string, c *Call) bool {
	if method == http.MethodDelete {
		return true
	}
	if method != http.MethodPost || len(c.Peek.Messages) == 0 {
		return false
	}
	for i := range c.Peek.Messages {
		if k := c.Peek.Messages[i].Kind; k != KindResponse && k != KindNotification {
			return false
		}
	}
	return true
}
