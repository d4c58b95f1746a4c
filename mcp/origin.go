package mcp

import (
	"net"
	"net/http"
	"net/url"
	"strings"
)

// OriginPolicy is the DNS-rebinding and cross-origin protection the MCP
// specification requires of servers, keyed on the browser's own signal:
// a request that carries no Origin header and no Sec-Fetch-Site other
// than "none" was not sent by a web page (MCP SDKs, command-line clients,
// tunnels and sidecars) and passes whatever its Host. A browser request
// passes only when the host of the page it comes from is one the site
// names (its site addresses or host matchers), is listed in Allowed, or,
// on a site that names no host, is a loopback host. Being equal to the
// request's Host header never counts by itself: a rebinding attacker
// controls both.
type OriginPolicy struct {
	// Allowed lists allowed origins: "*" for any, an exact origin such as
	// "https://app.example.com", or a wildcard host such as
	// "https://*.example.com".
	Allowed []string
}

// SiteHosts tells which hosts a site names. Named reports whether the site
// names any host at all; Match whether it names host (no port).
type SiteHosts interface {
	Named() bool
	Match(host string) bool
}

// Check decides on a request's Origin (origin), Sec-Fetch-Site (fetchSite)
// and Host (host) headers; site may be nil for a site that names no host.
// A refusal is a 403 whose message names the setting that would allow the
// request.
func (p *OriginPolicy) Check(origin, fetchSite, host string, site SiteHosts) *Refusal {
	if origin == "" && (fetchSite == "" || strings.EqualFold(fetchSite, "none")) {
		return nil
	}
	for _, a := range p.Allowed {
		if a == "*" {
			return nil
		}
	}
	var originHost string
	switch {
	case origin != "":
		u, err := url.Parse(origin)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return originRefusal(origin, "it is not an http(s) origin")
		}
		if p.listed(origin, u) {
			return nil
		}
		originHost = u.Hostname()
	case strings.EqualFold(fetchSite, "cross-site"):
		return Refuse(http.StatusForbidden, CodeServerError, "",
			"Forbidden: a cross-site browser request without an Origin header is refused")
	default:
		// A same-origin or same-site request sent without Origin (a GET):
		// the page is on the Host it was sent to.
		originHost = hostOnly(host)
		origin = "http://" + host
	}
	if site != nil && site.Named() {
		if site.Match(originHost) {
			return nil
		}
	} else if IsLoopbackHost(originHost) {
		return nil
	}
	return originRefusal(origin, "its host is not a host this site is served under")
}

// listed reports whether origin (parsed as u) is in Allowed.
func (p *OriginPolicy) listed(origin string, u *url.URL) bool {
	for _, a := range p.Allowed {
		if strings.EqualFold(a, origin) {
			return true
		}
		if i := strings.Index(a, "://*."); i >= 0 {
			scheme, suffix := a[:i], a[i+4:]
			if strings.EqualFold(u.Scheme, scheme) && len(u.Host) > len(suffix) &&
				strings.HasSuffix(strings.ToLower(u.Host), strings.ToLower(suffix)) {
				return true
			}
		}
	}
	return false
}

func originRefusal(origin, why string) *Refusal {
	return Refuse(http.StatusForbidden, CodeServerError, "",
		"Forbidden: origin "+origin+" is not allowed ("+why+"): list it in mcp_proxy's allowed_origins, or serve the site under that host name")
}

// hostOnly returns the host of a Host header, without port or brackets.
func hostOnly(hostport string) string {
	h, _, err := net.SplitHostPort(hostport)
	if err != nil {
		h = strings.Trim(hostport, "[]")
	}
	return h
}

// MatchHostPattern reports whether host matches a site host pattern as
// Caddy's host matcher does: case-insensitively, with "*" standing for
// exactly one label ("*.example.com" matches "a.example.com", not
// "example.com" nor "a.b.example.com").
func MatchHostPattern(pattern, host string) bool {
	pattern = strings.TrimSuffix(strings.ToLower(pattern), ".")
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if pattern == host {
		return true
	}
	if !strings.Contains(pattern, "*") {
		return false
	}
	pl, hl := strings.Split(pattern, "."), strings.Split(host, ".")
	if len(pl) != len(hl) {
		return false
	}
	for i := range pl {
		if pl[i] != "*" && pl[i] != hl[i] {
			return false
		}
	}
	return true
}

// IsLoopbackHost reports whether a Host header names the local machine
// (localhost, a loopback IP, with or without a port).
func IsLoopbackHost(host string) bool {
	h := hostOnly(host)
	if strings.EqualFold(h, "localhost") || strings.HasSuffix(strings.ToLower(h), ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
