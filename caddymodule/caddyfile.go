package caddymodule

import (
	"fmt"
	"math"
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
//		client_max_inflight  <n>
//		client_max_streams   <n>
//		client_ipv6_prefix   <bits>
//		client_session_rate  <per_second> [<burst>]
//		session_max_inflight <n>
//		tool <name-glob> max_inflight <n> [timeout <duration>]
//		limit adaptive [min <n>] [max <n>] [initial <n>]
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
	seen := map[string]bool{}
	for d.Next() {
		for d.NextBlock(0) {
			if d.Nesting() != 1 {
				continue
			}
			name := d.Val()
			count, ours := subdirectiveArgs[name]
			if !ours {
				continue
			}
			if seen[name] && !repeatable[name] {
				return nil, d.Errf("%s given twice: give it once (the second would replace the first)", name)
			}
			seen[name] = true
			args := d.RemainingArgs()
			if !count(len(args)) {
				return nil, d.ArgErr()
			}
			d.DeleteN(len(args) + 1)
			if err := h.parseSubdirective(name, args); err != nil {
				return nil, d.Errf("%s: %v", name, err)
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

// subdirectiveArgs names mcp_proxy's own subdirectives with the argument
// counts each accepts; every other subdirective is reverse_proxy's.
var subdirectiveArgs = map[string]func(n int) bool{
	"session_key":          atLeast(1),
	"session_lifetime":     exactly(1),
	"max_peek":             exactly(1),
	"max_body":             exactly(1),
	"body_timeout":         exactly(1),
	"allowed_origins":      atLeast(1),
	"allowed_hosts":        atLeast(0),
	"require_session":      exactly(1),
	"max_event_size":       exactly(1),
	"stream_buffer":        exactly(2),
	"replay":               exactly(3),
	"write_timeout":        exactly(1),
	"keepalive":            exactly(1),
	"retry_hint":           exactly(1),
	"stream_handoff":       exactly(1),
	"drain":                exactly(1),
	"max_inflight":         exactly(1),
	"max_streams":          exactly(1),
	"client_max_inflight":  exactly(1),
	"client_max_streams":   exactly(1),
	"client_ipv6_prefix":   exactly(1),
	"session_max_inflight": exactly(1),
	"queue":                exactly(2),
	"client_key":           exactly(1),
	"client_session_rate":  func(n int) bool { return n == 1 || n == 2 },
	"tool":                 func(n int) bool { return n == 3 || n == 5 },
	"limit":                atLeast(1),
}

// repeatable names the subdirectives that may be given more than once.
var repeatable = map[string]bool{"tool": true}

func exactly(want int) func(int) bool  { return func(n int) bool { return n == want } }
func atLeast(least int) func(int) bool { return func(n int) bool { return n >= least } }

// parseSubdirective applies one of mcp_proxy's own subdirectives, whose
// argument count is already checked.
func (h *Handler) parseSubdirective(name string, args []string) error {
	switch name {
	case "session_key":
		h.SessionKeys = append(h.SessionKeys, args...)
	case "allowed_origins":
		h.AllowedOrigins = append(h.AllowedOrigins, args...)
	case "allowed_hosts":
		return fmt.Errorf("allowed_hosts is gone: requests without an Origin header (MCP clients, tunnels, local load balancers) now pass whatever their Host; list browser origins in allowed_origins")
	case "max_body":
		if args[0] == "0" || args[0] == "off" {
			h.MaxBody = -1
			break
		}
		size, err := parseSize(args[0])
		if err != nil {
			return fmt.Errorf("bad max_body: %v", err)
		}
		h.MaxBody = size
	case "client_key":
		h.ClientKey = args[0]
	case "require_session", "stream_handoff":
		on, err := parseOnOff(args[0])
		if err != nil {
			return err
		}
		if name == "require_session" {
			h.RequireSession = &on
		} else {
			h.StreamHandoff = &on
		}
	case "session_lifetime", "write_timeout", "keepalive", "retry_hint", "drain", "body_timeout":
		dur, err := caddy.ParseDuration(args[0])
		if err != nil || dur <= 0 {
			return fmt.Errorf("bad %s %q: want a positive duration", name, args[0])
		}
		*map[string]*caddy.Duration{
			"session_lifetime": &h.SessionLifetime, "write_timeout": &h.WriteTimeout,
			"keepalive": &h.Keepalive, "retry_hint": &h.RetryHint, "drain": &h.Drain,
			"body_timeout": &h.BodyTimeout,
		}[name] = caddy.Duration(dur)
	case "max_peek", "max_event_size":
		size, err := parseSize(args[0])
		if err != nil {
			return fmt.Errorf("bad %s: %v", name, err)
		}
		if name == "max_peek" {
			h.MaxPeek = size
		} else {
			h.MaxEventSize = size
		}
	case "max_inflight", "max_streams", "client_max_inflight", "client_max_streams", "session_max_inflight":
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 {
			return fmt.Errorf("bad %s %q: want a count", name, args[0])
		}
		*map[string]*int{
			"max_inflight": &h.MaxInflight, "max_streams": &h.MaxStreams,
			"client_max_inflight": &h.ClientMaxInflight, "client_max_streams": &h.ClientMaxStreams,
			"session_max_inflight": &h.SessionMaxInflight,
		}[name] = n
	case "client_ipv6_prefix":
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 1 || n > 128 {
			return fmt.Errorf("bad client_ipv6_prefix %q: want 1 to 128 bits", args[0])
		}
		h.ClientIPv6Prefix = n
	case "stream_buffer":
		n, err := strconv.Atoi(args[0])
		if err != nil || n <= 0 {
			return fmt.Errorf("bad stream_buffer event count %q", args[0])
		}
		size, err := parseSize(args[1])
		if err != nil {
			return fmt.Errorf("bad stream_buffer size: %v", err)
		}
		h.StreamBufferEvents, h.StreamBufferBytes = n, size
	case "replay":
		n, err := strconv.Atoi(args[0])
		if err != nil || n <= 0 {
			return fmt.Errorf("bad replay event count %q", args[0])
		}
		size, err := parseSize(args[1])
		if err != nil {
			return fmt.Errorf("bad replay size: %v", err)
		}
		age, err := caddy.ParseDuration(args[2])
		if err != nil || age <= 0 {
			return fmt.Errorf("bad replay age %q", args[2])
		}
		h.ReplayEvents, h.ReplayBytes, h.ReplayAge = n, size, caddy.Duration(age)
	case "queue":
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 {
			return fmt.Errorf("bad queue size %q", args[0])
		}
		dur, err := caddy.ParseDuration(args[1])
		if err != nil || dur <= 0 {
			return fmt.Errorf("bad queue timeout %q", args[1])
		}
		h.QueueSize, h.QueueTimeout = n, caddy.Duration(dur)
	case "client_session_rate":
		rate, err := strconv.ParseFloat(args[0], 64)
		if err != nil || rate <= 0 || math.IsInf(rate, 0) {
			return fmt.Errorf("bad client_session_rate %q", args[0])
		}
		h.ClientSessionRate = rate
		if len(args) == 2 {
			burst, err := strconv.Atoi(args[1])
			if err != nil || burst <= 0 {
				return fmt.Errorf("bad client_session_rate burst %q", args[1])
			}
			h.ClientSessionBurst = burst
		}
	case "tool":
		rule, err := parseToolLimit(args)
		if err != nil {
			return err
		}
		h.Tools = append(h.Tools, rule)
	case "limit":
		a, err := parseAdaptive(args)
		if err != nil {
			return err
		}
		h.Adaptive = a
	}
	return nil
}

// parseToolLimit parses `<name-glob> max_inflight <n> [timeout <d>]`.
func parseToolLimit(args []string) (ToolLimit, error) {
	if args[1] != "max_inflight" {
		return ToolLimit{}, fmt.Errorf("tool %s: expected max_inflight, got %q", args[0], args[1])
	}
	n, err := strconv.Atoi(args[2])
	if err != nil || n < 0 {
		return ToolLimit{}, fmt.Errorf("tool %s: bad max_inflight %q", args[0], args[2])
	}
	rule := ToolLimit{Pattern: args[0], MaxInflight: n}
	if len(args) == 5 {
		if args[3] != "timeout" {
			return ToolLimit{}, fmt.Errorf("tool %s: expected timeout, got %q", args[0], args[3])
		}
		dur, err := caddy.ParseDuration(args[4])
		if err != nil || dur <= 0 {
			return ToolLimit{}, fmt.Errorf("tool %s: bad timeout %q", args[0], args[4])
		}
		rule.Timeout = caddy.Duration(dur)
	}
	return rule, nil
}

// parseAdaptive parses `adaptive [min <n>] [max <n>] [initial <n>]`.
func parseAdaptive(args []string) (*AdaptiveLimit, error) {
	if args[0] != "adaptive" || len(args)%2 != 1 {
		return nil, fmt.Errorf("expected: limit adaptive [min <n>] [max <n>] [initial <n>]")
	}
	a := new(AdaptiveLimit)
	for i := 1; i < len(args); i += 2 {
		n, err := strconv.Atoi(args[i+1])
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("limit adaptive: bad %s %q", args[i], args[i+1])
		}
		switch args[i] {
		case "min":
			a.Min = n
		case "max":
			a.Max = n
		case "initial":
			a.Initial = n
		default:
			return nil, fmt.Errorf("limit adaptive: unknown option %q", args[i])
		}
	}
	return a, nil
}

// parseSize parses a humanized size such as 64KiB or 1MB, between 1 byte
// and 1GiB.
func parseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, err
	}
	if n == 0 || n > 1<<30 {
		return 0, fmt.Errorf("%s is not between 1B and 1GiB", s)
	}
	return int64(n), nil
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
