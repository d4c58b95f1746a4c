package mcp

import (
	"errors"
	"net/url"
	"strings"
)

// RouteParam is the query parameter mcpgate adds to a legacy endpoint URL
// to carry the sealed route of the session's POSTs. It is removed before a
// POST is forwarded.
const RouteParam = "mcpgate_route"

// ErrBadEndpoint means a legacy endpoint event did not hold a usable URL.
var ErrBadEndpoint = errors.New("legacy endpoint event holds no usable URL")

// RewriteEndpoint maps the data of a legacy (2024-11-05) `endpoint` event
// to a root-relative URL that reaches the same upstream path through the
// proxy. data may be absolute, root-relative or relative to the SSE URL;
// it is resolved against streamPath, the path the upstream served the SSE
// GET on. prefix is the path the proxy stripped before forwarding (for
// example by handle_path), restored in front of the result. The sealed
// route token is appended as RouteParam. The result is same-origin by
// construction, so clients that reject a cross-origin endpoint accept it.
func RewriteEndpoint(data, streamPath, prefix, token string) (string, error) {
	data = strings.TrimSpace(data)
	if data == "" {
		return "", ErrBadEndpoint
	}
	base := &url.URL{Scheme: "http", Host: "upstream", Path: streamPath}
	if streamPath == "" {
		base.Path = "/"
	}
	ref, err := url.Parse(data)
	if err != nil {
		return "", ErrBadEndpoint
	}
	u := base.ResolveReference(ref)
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	prefix = strings.TrimSuffix(prefix, "/")
	q := u.RawQuery
	if token != "" {
		if q != "" {
			q += "&"
		}
		q += RouteParam + "=" + url.QueryEscape(token)
	}
	out := prefix + path
	if q != "" {
		out += "?" + q
	}
	return out, nil
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
