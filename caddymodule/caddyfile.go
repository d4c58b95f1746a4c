package caddymodule

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"

	"github.com/mcpgate/mcpgate/admission"
	"github.com/mcpgate/mcpgate/auth"
)

// Every Caddyfile form of the mcpgate modules is parsed here: the
// mcp_proxy and mcp_health directives, the mcp global option, the
// mcp_connections listener wrapper and the mcp_session policy. Counts,
// sizes and durations go through one set of parsers with the same bounds
// everywhere.

func init() {
	httpcaddyfile.RegisterHandlerDirective("mcp_proxy", parseProxyDirective)
	httpcaddyfile.RegisterDirectiveOrder("mcp_proxy", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterHandlerDirective("mcp_health", parseHealthDirective)
	httpcaddyfile.RegisterDirectiveOrder("mcp_health", httpcaddyfile.Before, "respond")
	httpcaddyfile.RegisterGlobalOption("mcp", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("mcp_auth", parseAuthDirective)
	httpcaddyfile.RegisterDirectiveOrder("mcp_auth", httpcaddyfile.After, "forward_auth")
}

// option is one subdirective or global option: which argument counts it
// takes and how it applies its arguments.
type option struct {
	nargs func(n int) bool
	apply func(args []string) error
	// repeat: the option may be given more than once.
	repeat bool
}

func exactly(want int) func(int) bool  { return func(n int) bool { return n == want } }
func atLeast(least int) func(int) bool { return func(n int) bool { return n >= least } }
func between(lo, hi int) func(int) bool {
	return func(n int) bool { return n >= lo && n <= hi }
}

// one is an option taking a single argument parsed by parse.
func one(parse func(string) error) option {
	return option{nargs: exactly(1), apply: func(a []string) error { return parse(a[0]) }}
}

// The shared value parsers. Each error says what was wrong and what the
// value should look like.

// parseCount reads a count: a whole number, 0 or more.
func parseCount(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q: want a count", s)
	}
	return n, nil
}

// parseSize reads a size such as 64KiB or 512MB, from 1 byte to 1 PiB.
func parseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil || n == 0 || n > 1<<50 {
		return 0, fmt.Errorf("%q: want a size such as 64KiB", s)
	}
	return int64(n), nil
}

// parseDuration reads a positive duration such as 10s or 5m.
func parseDuration(s string) (caddy.Duration, error) {
	d, err := caddy.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q: want a positive duration", s)
	}
	return caddy.Duration(d), nil
}

// parseOnOff reads on/off (or a boolean).
func parseOnOff(s string) (bool, error) {
	switch s {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%q: want on or off", s)
	}
	return b, nil
}

func countOpt(dst *int) option {
	return one(func(s string) (err error) { *dst, err = parseCount(s); return })
}

// countOrOff is a count whose 0 turns off a cap that has a default (JSON
// -1).
func countOrOff(dst *int) option {
	return one(func(s string) error {
		n, err := parseCount(s)
		if n == 0 {
			n = -1
		}
		*dst = n
		return err
	})
}

func sizeOpt(dst *int64) option {
	return one(func(s string) (err error) { *dst, err = parseSize(s); return })
}

func durationOpt(dst *caddy.Duration) option {
	return one(func(s string) (err error) { *dst, err = parseDuration(s); return })
}

func onOffOpt(dst **bool) option {
	return one(func(s string) error { b, err := parseOnOff(s); *dst = &b; return err })
}

func listOpt(dst *[]string) option {
	return option{nargs: atLeast(1), apply: func(a []string) error { *dst = append(*dst, a...); return nil }}
}

// parseBlock applies the options of a block, each at most once unless it
// repeats; what names the block's options in the error for an unknown one.
func parseBlock(d *caddyfile.Dispenser, opts map[string]option, what string) error {
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		o, ok := opts[name]
		if !ok {
			return d.Errf("unrecognized %s %q", what, name)
		}
		if err := applyOption(d, name, o, d.RemainingArgs(), seen); err != nil {
			return err
		}
	}
	return nil
}

// applyOption applies one option's arguments.
func applyOption(d *caddyfile.Dispenser, name string, o option, args []string, seen map[string]bool) error {
	if seen[name] && !o.repeat {
		return d.Errf("%s given twice: give it once (the second would replace the first)", name)
	}
	seen[name] = true
	if !o.nargs(len(args)) {
		return d.ArgErr()
	}
	if err := o.apply(args); err != nil {
		return d.Errf("bad %s %v", name, err)
	}
	return nil
}

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

// parseGlobalOption parses the `mcp` global option (see App for its
// syntax).
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	if err := parseBlock(d, app.options(), "mcp option"); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "mcp", Value: caddyconfig.JSON(app, nil)}, nil
}

// options are the mcp global option's settings.
func (a *App) options() map[string]option {
	return map[string]option{
		"max_connections":      countOpt(&a.MaxConnections),
		"max_inflight":         countOpt(&a.MaxInflight),
		"max_streams":          countOpt(&a.MaxStreams),
		"max_sessions":         countOrOff(&a.MaxSessions),
		"client_max_sessions":  countOrOff(&a.ClientMaxSessions),
		"goroutine_ceiling":    countOpt(&a.GoroutineCeiling),
		"memory_limit":         sizeOpt(&a.MemoryLimit),
		"session_memory":       sizeOpt(&a.SessionMemory),
		"session_idle_timeout": durationOpt(&a.SessionIdleTimeout),
		"refresh":              durationOpt(&a.Refresh),
		"sched_latency_target": durationOpt(&a.SchedLatencyTarget),
		"levels":               {nargs: between(3, 4), apply: a.parseLevels},
		"degraded_fraction": one(func(s string) error {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil || f <= 0 || f > 1 {
				return fmt.Errorf("%q: want a number in (0, 1]", s)
			}
			a.DegradedFraction = f
			return nil
		}),
	}
}

// parseLevels parses `<degraded> <essential> <protective> [<hysteresis>]`.
func (a *App) parseLevels(args []string) error {
	var v [4]float64
	for i, s := range args {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q: want a pressure between 0 and 1", s)
		}
		v[i] = f
	}
	a.Degraded, a.Essential, a.Protective, a.Hysteresis = v[0], v[1], v[2], v[3]
	th := admission.Thresholds{Degraded: v[0], Essential: v[1], Protective: v[2], Hysteresis: orDefault(v[3], admission.DefaultThresholds.Hysteresis)}
	return th.Validate()
}

// parseHealthDirective parses mcp_health.
func parseHealthDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Health)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	mcp_health [<matcher>] {
//		unhealthy_at degraded|essential|protective
//		details      on|off
//	}
//
// The block is optional; without it the endpoint answers 503 from the
// essential level on, with the status and level only. mcp_health is
// ordered just before `respond`, so `handle /healthz { mcp_health }` and
// `mcp_health /healthz` both work without an `order` line.
func (h *Health) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	return parseBlock(d, map[string]option{
		"unhealthy_at": one(func(s string) error {
			if _, err := parseUnhealthyAt(s); err != nil {
				return fmt.Errorf("%q: want degraded, essential or protective", s)
			}
			h.UnhealthyAt = s
			return nil
		}),
		"details": one(func(s string) (err error) { h.Details, err = parseOnOff(s); return }),
	}, "mcp_health subdirective")
}

// parseAuthDirective parses mcp_auth.
func parseAuthDirective(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Auth)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up mcp_auth from Caddyfile tokens. Syntax:
//
//	mcp_auth [<matcher>] {
//		issuer                <url...>
//		authorization_servers <url...>
//		resource              <uri>
//		audience              <aud...>
//		jwks_url              <url>
//		jwks_timeout          <duration>
//		jwks_refresh          <duration>
//		jwks_min_refresh      <duration>
//		jwks_max_stale        <duration>
//		key                   file|pem|jwk|secret <value> [kid <id>] [alg <alg>]
//		algorithms            <alg...>
//		leeway                <duration>
//		principal_claim       <claim>
//		require_scope         <scope...>
//		scope                 <method>[:<target-glob>] <scope...>
//		scopes_supported      <scope...>
//		introspect            <url> [client_id <id>] [client_secret <secret>] [cache <duration>]
//		forward_token         on|off
//		resource_name         <name>
//	}
//
// key and scope may be given more than once; every other option once.
func (a *Auth) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	return parseBlock(d, a.options(), "mcp_auth option")
}

// options are mcp_auth's settings.
func (a *Auth) options() map[string]option {
	str := func(dst *string) option { return one(func(s string) error { *dst = s; return nil }) }
	return map[string]option{
		"issuer":                listOpt(&a.Issuers),
		"authorization_servers": listOpt(&a.AuthorizationServers),
		"resource":              str(&a.Resource),
		"audience":              listOpt(&a.Audiences),
		"jwks_url":              str(&a.JWKSURL),
		"jwks_timeout":          durationOpt(&a.JWKSTimeout),
		"jwks_refresh":          durationOpt(&a.JWKSRefresh),
		"jwks_min_refresh":      durationOpt(&a.JWKSMinRefresh),
		"jwks_max_stale":        durationOpt(&a.JWKSMaxStale),
		"algorithms":            listOpt(&a.Algorithms),
		"leeway":                durationOpt(&a.Leeway),
		"principal_claim":       str(&a.PrincipalClaim),
		"require_scope":         listOpt(&a.RequiredScopes),
		"scopes_supported":      listOpt(&a.ScopesSupported),
		"resource_name":         str(&a.ResourceName),
		"forward_token":         one(func(s string) (err error) { a.ForwardToken, err = parseOnOff(s); return }),
		"key":                   {nargs: func(n int) bool { return n == 2 || n == 4 || n == 6 }, repeat: true, apply: a.parseKey},
		"scope": {nargs: atLeast(2), repeat: true, apply: func(args []string) error {
			method, target, _ := strings.Cut(args[0], ":")
			a.ScopeRules = append(a.ScopeRules, auth.ScopeRule{Method: method, Target: target, Scopes: args[1:]})
			return nil
		}},
		"introspect": {nargs: func(n int) bool { return n%2 == 1 }, apply: a.parseIntrospect},
	}
}

// parseKey parses `file|pem|jwk|secret <value> [kid <id>] [alg <alg>]`.
func (a *Auth) parseKey(args []string) error {
	var k StaticKey
	switch args[0] {
	case "file":
		k.File = args[1]
	case "pem":
		k.PEM = args[1]
	case "jwk":
		k.JWK = json.RawMessage(args[1])
	case "secret":
		k.Secret = args[1]
	default:
		return fmt.Errorf("%q: want file, pem, jwk or secret", args[0])
	}
	for i := 2; i+1 < len(args); i += 2 {
		switch args[i] {
		case "kid":
			k.KeyID = args[i+1]
		case "alg":
			k.Algorithm = args[i+1]
		default:
			return fmt.Errorf("%q: want kid or alg", args[i])
		}
	}
	a.Keys = append(a.Keys, k)
	return nil
}

// parseIntrospect parses `<url> [client_id <id>] [client_secret <secret>]
// [cache <duration>]`.
func (a *Auth) parseIntrospect(args []string) error {
	in := &IntrospectionConfig{URL: args[0]}
	for i := 1; i+1 < len(args); i += 2 {
		var err error
		switch args[i] {
		case "client_id":
			in.ClientID = args[i+1]
		case "client_secret":
			in.ClientSecret = args[i+1]
		case "cache":
			in.CacheTTL, err = parseDuration(args[i+1])
		default:
			err = fmt.Errorf("%q: want client_id, client_secret or cache", args[i])
		}
		if err != nil {
			return err
		}
	}
	a.Introspection = in
	return nil
}

// UnmarshalCaddyfile parses the listener wrapper:
//
//	mcp_connections {
//		write_buffer <size>
//	}
func (l *ConnLimit) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	return parseBlock(d, map[string]option{"write_buffer": sizeOpt(&l.WriteBuffer)}, "mcp_connections option")
}

// UnmarshalCaddyfile sets up the policy from Caddyfile tokens. Syntax:
//
//	lb_policy mcp_session [<fallback_policy> [<args...>]]
func (s *SessionSelection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	if !d.NextArg() {
		return nil
	}
	name := d.Val()
	modID := "http.reverse_proxy.selection_policies." + name
	unm, err := caddyfile.UnmarshalModule(d, modID)
	if err != nil {
		return err
	}
	sel, ok := unm.(reverseproxy.Selector)
	if !ok {
		return d.Errf("module %s (%T) is not a reverseproxy.Selector", modID, unm)
	}
	s.FallbackRaw = caddyconfig.JSONModuleObject(sel, "policy", name, nil)
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Health)(nil)
	_ caddyfile.Unmarshaler = (*ConnLimit)(nil)
	_ caddyfile.Unmarshaler = (*SessionSelection)(nil)
	_ caddyfile.Unmarshaler = (*Auth)(nil)
)
