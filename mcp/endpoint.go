package mcp

import (
	"errors"
	"net/url"
	"strings"
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
