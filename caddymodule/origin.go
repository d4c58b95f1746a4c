package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/mcpgate/mcpgate/mcp"
)

// checkOrigin applies the Origin policy: a browser request must come from
// a page on a host the site names, an allowed origin, or, on a site that
// names no host, a loopback host (see mcp.OriginPolicy).
func (h *Handler) checkOrigin(r *http.Request) *mcp.Refusal {
	origin, fetchSite := r.Header.Get("Origin"), r.Header.Get("Sec-Fetch-Site")
	if origin == "" && fetchSite == "" {
		return nil
	}
	return h.origins.Check(origin, fetchSite, r.Host, h.siteHosts(r))
}

// siteHosts returns the hosts named by the host matchers of the routes
// that lead to this handler in the request's server (its site addresses),
// worked out once per server.
func (h *Handler) siteHosts(r *http.Request) mcp.SiteHosts {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return nil
	}
	if v, ok := h.sites.Load(srv); ok {
		return v.(hostSet)
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	var hosts hostSet
	if found, ok := routeHosts(srv.Routes, h, nil); ok {
		hosts = found
	} else {
		for _, nr := range srv.NamedRoutes {
			if found, ok := routeHosts(caddyhttp.RouteList{*nr}, h, nil); ok {
				hosts = found
				break
			}
		}
	}
	for i, p := range hosts {
		if repl != nil {
			hosts[i] = repl.ReplaceAll(p, "")
		}
	}
	h.sites.Store(srv, hosts)
	return hosts
}

// routeHosts walks routes, depth first, for the route holding target and
// returns the host patterns of the matchers on the way to it.
func routeHosts(routes caddyhttp.RouteList, target caddyhttp.MiddlewareHandler, above hostSet) (hostSet, bool) {
	for _, rt := range routes {
		hosts := above
		for _, set := range rt.MatcherSets {
			for _, m := range set {
				switch mh := m.(type) {
				case caddyhttp.MatchHost:
					hosts = append(hosts[:len(hosts):len(hosts)], mh...)
				case *caddyhttp.MatchHost:
					hosts = append(hosts[:len(hosts):len(hosts)], (*mh)...)
				}
			}
		}
		for _, hd := range rt.Handlers {
			if hd == target {
				return hosts, true
			}
			if sub, ok := hd.(*caddyhttp.Subroute); ok {
				if found, ok := routeHosts(sub.Routes, target, hosts); ok {
					return found, true
				}
			}
		}
	}
	return nil, false
}

// hostSet is the host patterns a site names (mcp.SiteHosts).
type hostSet []string

// Named reports whether the site names any host.
func (s hostSet) Named() bool { return len(s) > 0 }

// Match reports whether host matches one of the patterns.
func (s hostSet) Match(host string) bool {
	for _, p := range s {
		if mcp.MatchHostPattern(p, host) {
			return true
		}
	}
	return false
}
