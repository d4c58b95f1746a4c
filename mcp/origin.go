package mcp

import (
	"net"
	"net/url"
	"strings"
)

// OriginPolicy decides which browser origins may reach an MCP endpoint,
// the DNS-rebinding protection the spec requires of servers. A request
// without an Origin header (not a browser) is always allowed.
type OriginPolicy struct {
	// Allowed lists allowed origins: "*" for any, an exact origin such as
	// "https://app.example.com", or a wildcard host such as
	// "https://*.example.com". When empty, only an origin whose host and
	// port equal the request's Host is allowed.
	Allowed []string
}

// Allow reports whether a request with this Origin header value, sent to
// this Host, may proceed.
func (p *OriginPolicy) Allow(origin, host string) bool {
	if origin == "" {
		return true
	}
	if len(p.Allowed) == 0 {
		u, err := url.Parse(origin)
		if err != nil || u.Host == "" {
			return false
		}
		return sameHostPort(u, host)
	}
	for _, a := range p.Allowed {
		if a == "*" || strings.EqualFold(a, origin) {
			return true
		}
		if i := strings.Index(a, "://*."); i >= 0 {
			scheme, suffix := a[:i], a[i+4:]
			u, err := url.Parse(origin)
			if err == nil && strings.EqualFold(u.Scheme, scheme) && len(u.Host) > len(suffix) &&
				strings.HasSuffix(strings.ToLower(u.Host), strings.ToLower(suffix)) {
				return true
			}
		}
	}
	return false
}

// sameHostPort compares an origin URL with a Host header, filling in the
// scheme's default port where either omits it.
func sameHostPort(u *url.URL, host string) bool {
	oh, op := splitHostPort(u.Host, u.Scheme)
	rh, rp := splitHostPort(host, u.Scheme)
	return strings.EqualFold(oh, rh) && op == rp
}

func splitHostPort(hp, scheme string) (string, string) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		h, p = strings.Trim(hp, "[]"), ""
	}
	if p == "" {
		switch scheme {
		case "https", "wss":
			p = "443"
		default:
			p = "80"
		}
	}
	return h, p
}

// IsLoopbackHost reports whether a Host header names the local machine
// (localhost, a loopback IP, with or without a port).
func IsLoopbackHost(host string) bool {
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = strings.Trim(host, "[]")
	}
	if strings.EqualFold(h, "localhost") || strings.HasSuffix(strings.ToLower(h), ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
