package mcp

import (
	"iter"
	"mime"
	"net/http"
	"slices"
	"strings"
)

// AllowedMethods is the Allow header of a 405 answer: the HTTP methods an
// MCP endpoint serves (OPTIONS only as a CORS preflight).
const AllowedMethods = "GET, POST, DELETE, OPTIONS"

// CheckShape refuses a request that cannot be MCP over HTTP, before
// anything else is read:
//   - a method other than GET, POST, DELETE (and OPTIONS when it is a
//     CORS preflight) gets 405; the caller sets the Allow header;
//   - a GET whose Accept does not admit text/event-stream gets 406;
//   - a POST whose body is not JSON in UTF-8 gets 415 (see
//     CheckMediaType);
//   - a path with dot segments (".", "..", also percent-encoded, or made
//     by decoding an encoded slash) gets 400.
//
// Three more get 400, because reverse_proxy would change the request the
// proxy checked before the upstream reads it:
//   - a request that announces trailers (the Trailer header of a chunked
//     HTTP/1.1 body, or over HTTP/2 and HTTP/3): they would be passed on,
//     and an upstream that reads a trailer field as a header would take
//     an Mcp-Session-Id, an Mcp-Method or an Authorization the proxy never
//     checked (trailers a client sends without announcing them are not
//     passed on);
//   - an HTTP/1 request whose Connection header names a field that is not
//     hop-by-hop (close, keep-alive, upgrade, HTTP2-Settings and the
//     hop-by-hop fields pass): every field it names would be dropped,
//     so Connection: Mcp-Session-Id would take the session away after
//     the proxy pinned it, and Connection: X-Tenant a header a matcher
//     read;
//   - a request for a protocol upgrade (Connection: upgrade and an Upgrade
//     header) other than to h2c: on the upstream's 101 the client's
//     connection would become a tunnel to the upstream that passes no
//     check of the proxy's. The caller declines an upgrade to h2c by
//     dropping the Upgrade header.
func CheckShape(r *http.Request) *Refusal {
	switch r.Method {
	case http.MethodPost:
		if ref := CheckMediaType(r.Header); ref != nil {
			return ref
		}
	case http.MethodGet:
		if !AcceptsEventStream(r.Header.Values("Accept")) {
			return Refuse(http.StatusNotAcceptable, CodeInvalidRequest, "", "Not Acceptable: a GET must accept text/event-stream")
		}
	case http.MethodDelete:
	case http.MethodOptions:
		if !IsPreflight(r) {
			return Refuse(http.StatusMethodNotAllowed, CodeInvalidRequest, "", "Method Not Allowed: OPTIONS is served only as a CORS preflight")
		}
	default:
		return Refuse(http.StatusMethodNotAllowed, CodeInvalidRequest, "", "Method Not Allowed: an MCP endpoint serves GET, POST and DELETE")
	}
	if HasDotSegment(r.URL.EscapedPath()) || hasDecodedDotSegment(r.URL.Path) {
		return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "Bad Request: the path has dot segments")
	}
	if len(r.Trailer) > 0 {
		return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "Bad Request: request trailers are not accepted")
	}
	if f := endToEndOption(r.Header); f != "" {
		return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "Bad Request: the Connection header names "+f+", which is not hop-by-hop")
	}
	return CheckUpgrade(r.Header)
}

// CheckUpgrade refuses, with 400, a request for a protocol upgrade other
// than to h2c (see CheckShape); the caller declines an upgrade to h2c by
// dropping the Upgrade header.
func CheckUpgrade(h http.Header) *Refusal {
	if up := upgradeAsked(h); up != "" && !strings.EqualFold(up, "h2c") {
		return Refuse(http.StatusBadRequest, CodeInvalidRequest, "", "Bad Request: the proxy does not switch protocols (Upgrade: "+up[:min(len(up), 64)]+")")
	}
	return nil
}

// upgradeAsked returns the Upgrade header of a request that asks for a
// protocol upgrade (a Connection option "upgrade"), "" for one that does
// not.
func upgradeAsked(h http.Header) string {
	for o := range connectionOptions(h) {
		if strings.EqualFold(o, "upgrade") {
			return strings.Join(h.Values("Upgrade"), ", ")
		}
	}
	return ""
}

// RemoveConnectionFields removes from an upstream's answer the fields its
// Connection header names (RFC 9110, section 7.6.1). They are for one hop
// only, and reverse_proxy removes them before the client gets the answer:
// removed before the proxy acts on the answer, they do not make it act on
// what the client never gets (seal and register a session id). The
// caller refuses a body it cannot read (a content coding) first: the
// field goes, the coding stays.
func RemoveConnectionFields(h http.Header) {
	for o := range connectionOptions(h) {
		if !strings.EqualFold(o, "Connection") {
			h.Del(o)
		}
	}
}

// connectionOptions yields the options of h's Connection header, trimmed,
// the empty ones left out.
func connectionOptions(h http.Header) iter.Seq[string] {
	return func(yield func(string) bool) {
		for _, v := range h.Values("Connection") {
			for o := range strings.SplitSeq(v, ",") {
				if o = strings.TrimSpace(o); o != "" && !yield(o) {
					return
				}
			}
		}
	}
}

// hopOptions are the options a request's Connection header may carry: its
// own (close, keep-alive, upgrade, and HTTP2-Settings for an h2c upgrade)
// and the names of hop-by-hop fields, which reverse_proxy drops anyway.
var hopOptions = []string{"close", "keep-alive", "upgrade", "http2-settings", "te", "trailer", "transfer-encoding",
	"proxy-connection", "proxy-authenticate", "proxy-authorization", "alt-svc", "connection"}

// endToEndOption returns the first option of h's Connection header that
// is not in hopOptions (at most 64 bytes of it), "" when there is none.
func endToEndOption(h http.Header) string {
	for o := range connectionOptions(h) {
		if !slices.ContainsFunc(hopOptions, func(k string) bool { return strings.EqualFold(k, o) }) {
			return o[:min(len(o), 64)]
		}
	}
	return ""
}

// IsPreflight reports whether r is a CORS preflight: OPTIONS with Origin
// and Access-Control-Request-Method.
func IsPreflight(r *http.Request) bool {
	return r.Method == http.MethodOptions && r.Header.Get("Origin") != "" &&
		r.Header.Get("Access-Control-Request-Method") != ""
}

// CheckMediaType refuses, with 415, a POST whose body is not declared as
// JSON in UTF-8 by exactly one Content-Type header (see IsJSON), or is
// declared encoded by a Content-Encoding other than identity (the answer
// then carries "Accept-Encoding: identity", as RFC 9110 asks). Such a
// body is refused, not read as it is: a server that decodes it by its
// charset (UTF-7, UTF-16, Latin-1) or its coding (body parsers inflate
// gzip, deflate and br) would read other messages than the proxy checked.
func CheckMediaType(h http.Header) *Refusal {
	if cts := h.Values("Content-Type"); len(cts) != 1 || !IsJSON(cts[0]) {
		return Refuse(http.StatusUnsupportedMediaType, CodeInvalidRequest, "", "Unsupported Media Type: Content-Type must be application/json, in UTF-8")
	}
	if coding := contentCoding(h); coding != "" {
		ref := Refuse(http.StatusUnsupportedMediaType, CodeInvalidRequest, "",
			"Unsupported Media Type: the body must not be encoded (Content-Encoding "+coding+")")
		ref.Header = http.Header{"Accept-Encoding": {"identity"}}
		return ref
	}
	return nil
}

// contentCoding returns the first content coding of h other than
// identity (at most 32 bytes of it), "" when there is none.
func contentCoding(h http.Header) string {
	for _, v := range h.Values("Content-Encoding") {
		for c := range strings.SplitSeq(v, ",") {
			if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
				return c[:min(len(c), 32)]
			}
		}
	}
	return ""
}

// IsJSON reports whether a Content-Type is application/json (any case)
// with no parameter but, at most, charset=utf-8 (or utf8; any case,
// quoted or not). A `*` anywhere refuses it: Go's mime package folds an
// RFC 2231 parameter (`charset*`, `charset*0`) into
// charset, over a plain charset, while Node's content-type package
// (Express's JSON parser, the TypeScript SDK's body reading) keeps it
// apart and decodes the body by the plain charset, UTF-7 say.
func IsJSON(ct string) bool {
	if strings.EqualFold(ct, "application/json") {
		return true // what clients send, without a parse
	}
	if strings.ContainsRune(ct, '*') {
		return false
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") && !strings.EqualFold(v, "utf8") {
			return false
		}
	}
	return true
}

// AcceptsEventStream reports whether Accept header values admit
// text/event-stream: the type itself, text/*, */*, or no Accept header at
// all (which accepts anything). A media range with q=0 does not admit.
func AcceptsEventStream(values []string) bool {
	return len(values) == 0 || acceptsOneOf(values, "text/event-stream", "text/*", "*/*")
}

// acceptsOneOf reports whether Accept header values hold one of the media
// ranges types (lower case) without q=0.
func acceptsOneOf(values []string, types ...string) bool {
	for _, v := range values {
		for item := range strings.SplitSeq(v, ",") {
			mt, params, _ := strings.Cut(item, ";")
			mt = strings.ToLower(strings.TrimSpace(mt))
			if slices.Contains(types, mt) && !zeroQ(params) {
				return true
			}
		}
	}
	return false
}

// zeroQ reports whether media-range parameters carry q=0.
func zeroQ(params string) bool {
	for p := range strings.SplitSeq(params, ";") {
		k, v, ok := strings.Cut(strings.TrimSpace(p), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "q") {
			v = strings.TrimRight(strings.TrimSpace(v), "0")
			return v == "0" || v == "0." || v == ""
		}
	}
	return false
}

// HasDotSegment reports whether an escaped URL path has a "." or ".."
// segment, written plainly or percent-encoded (%2e, %2E), which an
// upstream would resolve to another path than the one matched.
func HasDotSegment(escapedPath string) bool {
	for seg := range strings.SplitSeq(escapedPath, "/") {
		if len(seg) == 0 || len(seg) > 6 {
			continue
		}
		s := strings.ReplaceAll(strings.ToLower(seg), "%2e", ".")
		if s == "." || s == ".." {
			return true
		}
	}
	return false
}

// hasDecodedDotSegment reports whether a decoded URL path has a "." or
// ".." segment, which an encoded slash (%2F) can make where the escaped
// path has none: "/admin/..%2fpublic" is "/admin/../public". Caddy's path
// matchers clean the decoded path (/public), while uvicorn gives
// Starlette the decoded path uncleaned, which routes it under /admin, and
// Express matches its routes on the raw path, /admin too.
func hasDecodedDotSegment(path string) bool {
	for seg := range strings.SplitSeq(path, "/") {
		if seg == "." || seg == ".." {
			return true
		}
	}
	return false
}

// NeedsSession reports whether a request without a session id breaks the
// rules of its era: in every era but the stateless one, a DELETE, a
// session-era GET, and any POST but an initialize. (A GET without a
// version header opens a legacy SSE session.)
func NeedsSession(method string, c *Call) bool {
	if c.Era == EraStateless {
		return false
	}
	switch method {
	case http.MethodDelete:
		return true
	case http.MethodGet:
		return c.Era == EraSession
	case http.MethodPost:
		return !c.IsInitialize()
	}
	return false
}
