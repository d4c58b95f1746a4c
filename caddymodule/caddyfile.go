package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("mcp_proxy", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("mcp_proxy", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	rp, err := m.unmarshal(h.Dispenser)
	if err != nil {
		return nil, err
	}
	// handle_response routes need the helper to be finished.
	if err := rp.FinalizeUnmarshalCaddyfile(h); err != nil {
		return nil, err
	}
	m.ProxyRaw = caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil)
	return m, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	mcp_proxy [<matcher>] [<upstreams...>] {
//		session_key        <key> [<older_keys...>]
//		session_lifetime   <duration>
//		max_peek           <size>
//		allowed_origins    <origins...>
//		require_session    on|off
//
//		# any reverse_proxy subdirective, for example:
//		to                 <upstreams...>
//		lb_policy          <policy> [<options...>]
//		health_uri         <uri>
//		transport          <name> { ... }
//		header_up          <field> <value>
//	}
//
// Upstreams on the directive line and every subdirective mcp_proxy does not
// know are handed to reverse_proxy's own parser; a configured lb_policy
// becomes the fallback of the mcp_session policy.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	rp, err := h.unmarshal(d)
	if err != nil {
		return err
	}
	h.ProxyRaw = caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil)
	return nil
}

// unmarshal reads mcp_proxy's own subdirectives, deleting their tokens,
// and hands the rest to reverse_proxy's parser.
func (h *Handler) unmarshal(outer *caddyfile.Dispenser) (*reverseproxy.Handler, error) {
	d := outer.NewFromNextSegment()
	for d.Next() {
		for d.NextBlock(0) {
			if d.Nesting() != 1 {
				continue
			}
			switch d.Val() {
			case "session_key":
				args := d.RemainingArgs()
				if len(args) == 0 {
					return nil, d.ArgErr()
				}
				d.DeleteN(len(args) + 1)
				h.SessionKeys = append(h.SessionKeys, args...)
			case "session_lifetime":
				args := d.RemainingArgs()
				if len(args) != 1 {
					return nil, d.ArgErr()
				}
				d.DeleteN(len(args) + 1)
				dur, err := caddy.ParseDuration(args[0])
				if err != nil {
					return nil, d.Errf("bad session_lifetime %q: %v", args[0], err)
				}
				h.SessionLifetime = caddy.Duration(dur)
			case "max_peek":
				args := d.RemainingArgs()
				if len(args) != 1 {
					return nil, d.ArgErr()
				}
				d.DeleteN(len(args) + 1)
				size, err := humanize.ParseBytes(args[0])
				if err != nil || size == 0 || size > 1<<30 {
					return nil, d.Errf("bad max_peek %q: want a size between 1B and 1GiB", args[0])
				}
				h.MaxPeek = int64(size)
			case "allowed_origins":
				args := d.RemainingArgs()
				if len(args) == 0 {
					return nil, d.ArgErr()
				}
				d.DeleteN(len(args) + 1)
				h.AllowedOrigins = append(h.AllowedOrigins, args...)
			case "require_session":
				args := d.RemainingArgs()
				if len(args) != 1 {
					return nil, d.ArgErr()
				}
				d.DeleteN(len(args) + 1)
				on, err := parseOnOff(args[0])
				if err != nil {
					return nil, d.Errf("require_session: %v", err)
				}
				h.RequireSession = &on
			}
		}
	}
	d.Reset()
	d.Next() // the directive name
	rp := new(reverseproxy.Handler)
	if err := rp.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return rp, nil
}

func parseOnOff(s string) (bool, error) {
	switch s {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, strconv.ErrSyntax
	}
	return b, nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
