package mcp

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"strings"
)

// HeaderMismatchError describes why the mirrored headers of a 2026-07-28
// request disagree with its body. It answers 400 with JSON-RPC error
// CodeHeaderMismatch.
type HeaderMismatchError struct {
	Header string
	Reason string
}

func (e *HeaderMismatchError) Error() string {
	return fmt.Sprintf("header %s: %s", e.Header, e.Reason)
}

// NameRequired reports whether a stateless-era request with this method
// must carry the Mcp-Name header.
func NameRequired(method string) bool {
	switch method {
	case "tools/call", "resources/read", "prompts/get":
		return true
	}
	return false
}

// CheckMirroredHeaders verifies the 2026-07-28 rules that bind the
// MCP-Protocol-Version, Mcp-Method and Mcp-Name headers to the body: every
// message needs Mcp-Method equal to its method, the three methods that name
// a target need Mcp-Name equal to params.name (or params.uri), and a body
// `_meta` protocol version must equal the header. Header values may use the
// `=?base64?…?=` form, decoded before comparing; values compare
// case-sensitively.
func CheckMirroredHeaders(h http.Header, version string, env *Envelope) error {
	if env.Kind == KindResponse {
		return &HeaderMismatchError{Header: HeaderMethod, Reason: "clients must not send responses in this revision"}
	}
	if env.MetaVersion != "" && env.MetaVersion != version {
		return &HeaderMismatchError{Header: HeaderProtocolVersion, Reason: "does not match _meta protocol version"}
	}
	method, ok := headerValue(h, HeaderMethod)
	switch {
	case !ok:
		return &HeaderMismatchError{Header: HeaderMethod, Reason: "missing"}
	case method != env.Method:
		return &HeaderMismatchError{Header: HeaderMethod, Reason: "does not match the body's method"}
	}
	name, ok := headerValue(h, HeaderName)
	switch {
	case NameRequired(env.Method) && !ok:
		return &HeaderMismatchError{Header: HeaderName, Reason: "missing"}
	case ok && name != env.Name:
		return &HeaderMismatchError{Header: HeaderName, Reason: "does not match the body's name"}
	}
	return nil
}

// headerValue returns a single header value, decoding the base64 form.
// A header present more than once, or with invalid base64, never matches.
func headerValue(h http.Header, key string) (string, bool) {
	vs := h[key]
	if len(vs) == 0 {
		return "", false
	}
	if len(vs) > 1 {
		return "\x00", true
	}
	return DecodeHeaderValue(vs[0]), true
}

// DecodeHeaderValue decodes the `=?base64?<b64>?=` form of an MCP header
// value; other values are returned unchanged. Invalid base64 yields a value
// no body field can equal.
func DecodeHeaderValue(v string) string {
	const pre, suf = "=?base64?", "?="
	if !strings.HasPrefix(v, pre) || !strings.HasSuffix(v, suf) || len(v) < len(pre)+len(suf) {
		return v
	}
	b, err := base64.StdEncoding.DecodeString(v[len(pre) : len(v)-len(suf)])
	if err != nil {
		return "\x00"
	}
	return string(b)
}
