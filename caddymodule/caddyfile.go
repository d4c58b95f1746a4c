package caddymodule

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/dustin/go-humanize"
)

// Every Caddyfile form of the mcpgate modules is parsed in the
// caddyfile*.go files: here the mcp_health directive, the mcp_connections
// listener wrapper, the mcp_session policy and the parsers they all share;
// mcp_proxy in caddyfile_proxy.go and caddyfile_policy.go, the mcp global
// option in caddyfile_global.go, mcp_auth in caddyfile_auth.go. Counts,
// sizes and durations go through one set of parsers with the same bounds
// everywhere.

func init() {
	httpcaddyfile.RegisterHandlerDirective("mcp_proxy", parseProxyDirective)
	httpcaddyfile.RegisterDirectiveOrder("mcp_proxy", httpcaddyfile.Before, "reverse_proxy")
	httpcaddyfile.RegisterHandlerDirective("mcp_health", parseDirective[Health])
	httpcaddyfile.RegisterDirectiveOrder("mcp_health", httpcaddyfile.Before, "respond")
	httpcaddyfile.RegisterGlobalOption("mcp", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("mcp_auth", parseDirective[Auth])
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

// parseDirective parses a handler directive whose module unmarshals
// itself from the Caddyfile (mcp_health, mcp_auth).
func parseDirective[T any, PT interface {
	*T
	caddyfile.Unmarshaler
	caddyhttp.MiddlewareHandler
}](h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := PT(new(T))
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
	_ caddyfile.Unmarshaler = (*Health)(nil)
	_ caddyfile.Unmarshaler = (*ConnLimit)(nil)
	_ caddyfile.Unmarshaler = (*SessionSelection)(nil)
)
