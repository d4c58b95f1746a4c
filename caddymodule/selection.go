package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(new(SessionSelection))
}

// Variables mcp_proxy and the mcp_session policy share through the
// request's vars.
const (
	// varPinned holds the dial address a request's session is pinned to.
	varPinned = "mcp.pinned_upstream"
	// varSelected holds the dial address the policy chose.
	varSelected = "mcp.selected_upstream"
	// varPinMissing is set when the pinned upstream is not in the pool.
	varPinMissing = "mcp.pinned_upstream_missing"
)

// SessionSelection is the `mcp_session` load-balancing policy. A request
// that belongs to an MCP session goes to the upstream its sealed session
// token names, with no shared state, so any Caddy instance holding the
// session key routes it alike, and it does so while that upstream is in
// the pool, healthy or not: a health check's blip does not end sessions
// (a request that cannot reach it gets 503 with Retry-After from
// mcp_proxy, and the client retries). A request without a session
// (initialize, a legacy SSE GET) goes to the fallback policy, which
// avoids unavailable upstreams. When the pinned upstream has left the
// pool no upstream is selected and mcp_proxy answers 404 so the client
// starts a new session.
//
// mcp_proxy installs this policy itself, keeping any `lb_policy` the user
// sets as the fallback; it is not meant to be used with plain
// reverse_proxy.
type SessionSelection struct {
	// FallbackRaw is the policy for requests without a session. Default:
	// random.
	FallbackRaw json.RawMessage `json:"fallback,omitempty" caddy:"namespace=http.reverse_proxy.selection_policies inline_key=policy"`

	fallback reverseproxy.Selector
}

// CaddyModule returns the Caddy module information.
func (*SessionSelection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.mcp_session",
		New: func() caddy.Module { return new(SessionSelection) },
	}
}

// Provision loads the fallback policy.
func (s *SessionSelection) Provision(ctx caddy.Context) error {
	if s.FallbackRaw == nil {
		s.FallbackRaw = caddyconfig.JSONModuleObject(reverseproxy.RandomSelection{}, "policy", "random", nil)
	}
	mod, err := ctx.LoadModule(s, "FallbackRaw")
	if err != nil {
		return fmt.Errorf("loading fallback selection policy: %w", err)
	}
	s.fallback = mod.(reverseproxy.Selector)
	return nil
}

// Select returns the pinned upstream of the request's session, or the
// fallback policy's choice for a request without one.
func (s *SessionSelection) Select(pool reverseproxy.UpstreamPool, r *http.Request, w http.ResponseWriter) *reverseproxy.Upstream {
	if pinned, _ := caddyhttp.GetVar(r.Context(), varPinned).(string); pinned != "" {
		for _, u := range pool {
			if u.String() == pinned {
				caddyhttp.SetVar(r.Context(), varSelected, pinned)
				return u
			}
		}
		caddyhttp.SetVar(r.Context(), varPinMissing, true)
		return nil
	}
	u := s.fallback.Select(pool, r, w)
	if u != nil {
		caddyhttp.SetVar(r.Context(), varSelected, u.String())
	}
	return u
}

// Interface guards
var (
	_ caddy.Provisioner     = (*SessionSelection)(nil)
	_ reverseproxy.Selector = (*SessionSelection)(nil)
)
