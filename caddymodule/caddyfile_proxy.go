package caddymodule

import (
	"fmt"
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// parseProxyDirective parses mcp_proxy.
func parseProxyDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	rp, err := m.unmarshal(h.Dispenser, &h)
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
//		max_body           <size>|0
//		body_timeout       <duration>
//		allowed_origins    <origins...>
//		require_session    on|off
//		max_event_size     <size>
//		stream_buffer      <events> <size>
//		write_timeout      <duration>
//		keepalive          <duration>
//		replay             <events> <size> <age>
//		retry_hint         <duration>
//		stream_handoff     on|off
//		drain              <duration>
//
//		max_inflight         <n>
//		queue                <size> <timeout>
//		max_streams          <n>
//		client_key           <placeholder>
//		principal            <placeholder>
//		client_max_inflight  <n>
//		client_max_streams   <n>
//		client_ipv6_prefix   <bits>
//		client_session_rate  <per_second> [<burst>]
//		session_max_inflight <n>
//		tool <name-glob> [max_inflight <n>] [wait <duration>] [timeout <duration>]
//		limit adaptive [min <n>] [max <n>] [initial <n>]
//
//		rules { ... }       # see caddyfile_policy.go
//		unknown_error      <tool|prompt|resource|method> <code> <message>
//		pin_tools          off|drop|warn
//		request_timeout    <duration>
//		max_timeout        <duration>
//		max_response       <size>
//		audit [{ ... }]
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
// becomes the fallback of the mcp_session policy. Each subdirective but
// tool may be given once.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	rp, err := h.unmarshal(d, nil)
	if err != nil {
		return err
	}
	h.ProxyRaw = caddyconfig.JSONModuleObject(rp, "handler", "reverse_proxy", nil)
	return nil
}

// unmarshal reads mcp_proxy's own subdirectives, deleting their tokens,
// and hands the rest to reverse_proxy's parser.
func (h *Handler) unmarshal(outer *caddyfile.Dispenser, helper *httpcaddyfile.Helper) (*reverseproxy.Handler, error) {
	d := outer.NewFromNextSegment()
	opts := h.options()
	seen := map[string]bool{}
	for d.Next() {
		for d.NextBlock(0) {
			if name := d.Val(); d.Nesting() == 1 && blockOptions[name] {
				if seen[name] {
					return nil, d.Errf("%s given twice: give it once", name)
				}
				seen[name] = true
				seg := d.NextSegment()
				d.DeleteN(len(seg))
				if err := h.parseBlockOption(seg, helper); err != nil {
					return nil, err
				}
				continue
			}
			o, ours := opts[d.Val()]
			if d.Nesting() != 1 || !ours {
				continue
			}
			name, args := d.Val(), d.RemainingArgs()
			if err := applyOption(d, name, o, args, seen); err != nil {
				return nil, err
			}
			d.DeleteN(len(args) + 1)
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

// options are mcp_proxy's own subdirectives; every other one is
// reverse_proxy's.
func (h *Handler) options() map[string]option {
	opts := map[string]option{
		"session_key":      listOpt(&h.SessionKeys),
		"session_lifetime": durationOpt(&h.SessionLifetime),
		"max_peek":         sizeOpt(&h.MaxPeek),
		"max_body": one(func(s string) (err error) {
			if s == "0" || s == "off" {
				h.MaxBody = -1
				return nil
			}
			h.MaxBody, err = parseSize(s)
			return err
		}),
		"body_timeout":    durationOpt(&h.BodyTimeout),
		"allowed_origins": listOpt(&h.AllowedOrigins),
		"allowed_hosts": {nargs: atLeast(0), apply: func([]string) error {
			return fmt.Errorf("(the option is gone): requests without an Origin header (MCP clients, tunnels, local load balancers) pass whatever their Host; list browser origins in allowed_origins")
		}},
		"require_session":      onOffOpt(&h.RequireSession),
		"stream_handoff":       onOffOpt(&h.StreamHandoff),
		"max_event_size":       sizeOpt(&h.MaxEventSize),
		"write_timeout":        durationOpt(&h.WriteTimeout),
		"keepalive":            durationOpt(&h.Keepalive),
		"retry_hint":           durationOpt(&h.RetryHint),
		"drain":                durationOpt(&h.Drain),
		"max_inflight":         countOpt(&h.MaxInflight),
		"max_streams":          countOpt(&h.MaxStreams),
		"client_max_inflight":  countOpt(&h.ClientMaxInflight),
		"client_max_streams":   countOpt(&h.ClientMaxStreams),
		"session_max_inflight": countOpt(&h.SessionMaxInflight),
		"client_key":           one(func(s string) error { h.ClientKey = s; return nil }),
		"principal":            one(func(s string) error { h.Principal = s; return nil }),
		"client_ipv6_prefix": one(func(s string) (err error) {
			h.ClientIPv6Prefix, err = parseCount(s)
			if err == nil && (h.ClientIPv6Prefix < 1 || h.ClientIPv6Prefix > 128) {
				err = fmt.Errorf("%q: want 1 to 128 bits", s)
			}
			return err
		}),
		"stream_buffer": {nargs: exactly(2), apply: func(a []string) (err error) {
			if h.StreamBufferEvents, err = positive(a[0]); err == nil {
				h.StreamBufferBytes, err = parseSize(a[1])
			}
			return err
		}},
		"replay": {nargs: exactly(3), apply: func(a []string) (err error) {
			if h.ReplayEvents, err = positive(a[0]); err == nil {
				if h.ReplayBytes, err = parseSize(a[1]); err == nil {
					h.ReplayAge, err = parseDuration(a[2])
				}
			}
			return err
		}},
		"queue": {nargs: exactly(2), apply: func(a []string) (err error) {
			if h.QueueSize, err = parseCount(a[0]); err != nil {
				return fmt.Errorf("size %v", err)
			}
			if h.QueueTimeout, err = parseDuration(a[1]); err != nil {
				return fmt.Errorf("timeout %v", err)
			}
			return nil
		}},
		"client_session_rate": {nargs: between(1, 2), apply: h.parseSessionRate},
		"tool": {nargs: atLeast(3), repeat: true, apply: func(a []string) error {
			rule, err := parseToolLimit(a)
			h.Tools = append(h.Tools, rule)
			return err
		}},
		"limit": {nargs: atLeast(1), apply: func(a []string) (err error) {
			h.Adaptive, err = parseAdaptive(a)
			return err
		}},
	}
	h.governanceOptions(opts)
	return opts
}

// positive reads a count of at least 1.
func positive(s string) (int, error) {
	n, err := parseCount(s)
	if err == nil && n == 0 {
		err = fmt.Errorf("%q: want at least 1", s)
	}
	return n, err
}

// parseSessionRate parses `<per_second> [<burst>]`.
func (h *Handler) parseSessionRate(a []string) error {
	rate, err := strconv.ParseFloat(a[0], 64)
	if err != nil || rate <= 0 || math.IsInf(rate, 0) || math.IsNaN(rate) {
		return fmt.Errorf("%q: want sessions per second", a[0])
	}
	h.ClientSessionRate = rate
	if len(a) == 2 {
		if h.ClientSessionBurst, err = positive(a[1]); err != nil {
			return fmt.Errorf("burst %v", err)
		}
	}
	return nil
}

// parseToolLimit parses `<name-glob> [max_inflight <n>] [wait <d>]
// [timeout <d>]`.
func parseToolLimit(a []string) (ToolLimit, error) {
	rule := ToolLimit{Pattern: a[0]}
	if len(a)%2 != 1 || len(a) < 3 {
		return rule, fmt.Errorf("%s: want <name-glob> [max_inflight <n>] [wait <duration>] [timeout <duration>]", a[0])
	}
	seen := map[string]bool{}
	for i := 1; i < len(a); i += 2 {
		var err error
		switch a[i] {
		case "max_inflight":
			rule.MaxInflight, err = parseCount(a[i+1])
		case "wait":
			rule.Wait, err = parseDuration(a[i+1])
		case "timeout":
			rule.Timeout, err = parseDuration(a[i+1])
		default:
			return rule, fmt.Errorf("%s: unknown option %q: want max_inflight, wait or timeout", a[0], a[i])
		}
		if err != nil {
			return rule, fmt.Errorf("%s: bad %s %v", a[0], a[i], err)
		}
		if seen[a[i]] {
			return rule, fmt.Errorf("%s: %s given twice", a[0], a[i])
		}
		seen[a[i]] = true
	}
	return rule, nil
}

// parseAdaptive parses `adaptive [min <n>] [max <n>] [initial <n>]`.
func parseAdaptive(a []string) (*AdaptiveLimit, error) {
	if a[0] != "adaptive" || len(a)%2 != 1 {
		return nil, fmt.Errorf("(expected: limit adaptive [min <n>] [max <n>] [initial <n>])")
	}
	l := new(AdaptiveLimit)
	dst := map[string]*int{"min": &l.Min, "max": &l.Max, "initial": &l.Initial}
	for i := 1; i < len(a); i += 2 {
		p, ok := dst[a[i]]
		if !ok {
			return nil, fmt.Errorf("adaptive: unknown option %q", a[i])
		}
		n, err := positive(a[i+1])
		if err != nil {
			return nil, fmt.Errorf("adaptive: bad %s %v", a[i], err)
		}
		*p = n
	}
	return l, nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
