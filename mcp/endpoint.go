package mcp

import (
	"errors"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
)

// RouteParam is the query parameter of the legacy endpoint URL mcpgate
// gives clients: it carries the sealed route of the session's POSTs, the
// upstream's own endpoint included. A POST's query is replaced by the
// upstream's before it is forwarded.
const RouteParam = "mcpgate_route"

// ErrBadEndpoint means a legacy endpoint event did not hold a usable URL.
var ErrBadEndpoint = errors.New("legacy endpoint event holds no usable URL")

// MapEndpoint maps the data of a legacy (2024-11-05) `endpoint` event.
// data may be absolute, root-relative or relative to the SSE URL; it is
// resolved against streamPath, the path the upstream served the SSE GET
// on. It returns upstream, the path and query the upstream expects the
// session's POSTs on (its session id is in that query, so upstream is
// sealed into the route token and never shown to the client), and
// clientPath, the path the client posts to through the proxy: upstream's
// path under prefix, the path the proxy stripped before forwarding (for
// example by handle_path). clientPath is always path-absolute (one
// leading slash, never "//host"), so the endpoint the client sees is
// same-origin by construction and clients that reject a cross-origin
// endpoint accept it.
func MapEndpoint(data, streamPath, prefix string) (upstream, clientPath string, err error) {
	data = strings.TrimSpace(data)
	if data == "" {
		return "", "", ErrBadEndpoint
	}
	base := &url.URL{Scheme: "http", Host: "upstream", Path: streamPath}
	if streamPath == "" {
		base.Path = "/"
	}
	ref, err := url.Parse(data)
	if err != nil {
		return "", "", ErrBadEndpoint
	}
	u := base.ResolveReference(ref)
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	if strings.HasPrefix(path, "//") {
		// "//host/…" would be a network-path reference: another origin.
		path = "/" + strings.TrimLeft(path, "/")
	}
	upstream = path
	if u.RawQuery != "" {
		upstream += "?" + u.RawQuery
	}
	clientPath = strings.TrimSuffix(prefix, "/") + path
	return upstream, clientPath, nil
}

// EndpointURL returns the endpoint a legacy client is given: clientPath
// with the sealed route token as its only query parameter.
func EndpointURL(clientPath, token string) string {
	return clientPath + "?" + RouteParam + "=" + url.QueryEscape(token)
}

// SplitEndpoint splits an upstream endpoint from MapEndpoint into its
// escaped path and raw query.
func SplitEndpoint(upstream string) (escapedPath, rawQuery string) {
	escapedPath, rawQuery, _ = strings.Cut(upstream, "?")
	return escapedPath, rawQuery
}

// StripRouteParam removes RouteParam from a raw query and returns the
// remaining query and the token's value ("" when absent).
func StripRouteParam(rawQuery string) (rest, token string) {
	if !strings.Contains(rawQuery, RouteParam+"=") {
		return rawQuery, ""
	}
	parts := strings.Split(rawQuery, "&")
	kept := parts[:0]
	for _, p := range parts {
		if v, ok := strings.CutPrefix(p, RouteParam+"="); ok {
			if t, err := url.QueryUnescape(v); err == nil {
				token = t
			}
			continue
		}
		kept = append(kept, p)
	}
	return strings.Join(kept, "&"), token
}

// StrippedPrefix returns the path prefix removed between the path the
// client requested (original) and the path being forwarded (current), as
// handle_path and `uri strip_prefix` do; "" when current is not a suffix.
func StrippedPrefix(original, current string) string {
	if current == "/" && !strings.HasSuffix(original, "/") {
		return original
	}
	if len(original) <= len(current) || !strings.HasSuffix(original, current) {
		return ""
	}
	p := original[:len(original)-len(current)]
	if current == "" || current == "/" {
		p = strings.TrimSuffix(p, "/")
	}
	return p
}

// MaxLegacyParams bounds the names a LegacyParams remembers.
const MaxLegacyParams = 16

// LegacyParams remembers the names of the query parameters of the legacy
// endpoints upstreams gave (an upstream's session id is in one of them,
// such as sessionId), compared without case, at most MaxLegacyParams. A
// request that names one without a route token may carry an upstream's
// own session id, which the proxy never sealed and cannot check: the
// Resolver refuses it. The zero value is ready; it is safe for concurrent
// use, and Named takes no lock.
type LegacyParams struct {
	mu    sync.Mutex                          // serialises Note
	names atomic.Pointer[map[string]struct{}] // replaced whole by Note
}

// Note remembers the parameter names of a legacy endpoint's raw query.
func (lp *LegacyParams) Note(rawQuery string) {
	if rawQuery == "" {
		return
	}
	lp.mu.Lock()
	defer lp.mu.Unlock()
	var next map[string]struct{}
	for name := range queryNames(rawQuery) {
		cur := lp.names.Load()
		if cur != nil {
			if _, ok := (*cur)[name]; ok {
				continue
			}
		}
		if next == nil {
			next = make(map[string]struct{})
			if cur != nil {
				for k := range *cur {
					next[k] = struct{}{}
				}
			}
		}
		if len(next) < MaxLegacyParams {
			next[name] = struct{}{}
		}
	}
	if next != nil {
		lp.names.Store(&next)
	}
}

// Named reports whether rawQuery has a parameter of a name Note saw.
func (lp *LegacyParams) Named(rawQuery string) bool {
	names := lp.names.Load()
	if names == nil || rawQuery == "" {
		return false
	}
	for name := range queryNames(rawQuery) {
		if _, ok := (*names)[name]; ok {
			return true
		}
	}
	return false
}

// queryNames yields the parameter names of a raw query, unescaped as
// servers read them ("+" is a space) and lowercased; a name that does not
// unescape is yielded as it is. A name with brackets is yielded too as
// each run of characters between them, as qs (Express 4's query parser)
// nests it: `sessionId[]`, `sessionId[0]` and `[sessionId]` are all
// read there as sessionId. (Note remembers such pieces of an
// endpoint's names too, which only widens what Named refuses.)
func queryNames(rawQuery string) func(yield func(string) bool) {
	return func(yield func(string) bool) {
		for part := range strings.SplitSeq(rawQuery, "&") {
			name, _, _ := strings.Cut(part, "=")
			if un, err := url.QueryUnescape(name); err == nil {
				name = un
			}
			name = strings.ToLower(name)
			if !yield(name) {
				return
			}
			if !strings.ContainsAny(name, "[]") {
				continue
			}
			for piece := range strings.FieldsFuncSeq(name, func(r rune) bool { return r == '[' || r == ']' }) {
				if piece != name && !yield(piece) {
					return
				}
			}
		}
	}
}
