package caddymodule

import (
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/mcpgate/mcpgate/policy"
)

// The Caddyfile forms of mcp_proxy's governance: the rules and audit
// blocks, and the single-line options of deadlines, caps and pinning.
//
//	rules {
//		default allow|deny
//		<allow|deny> <tool|prompt|resource|method> <glob...> [on <method-glob...>] [if|unless <condition>]
//	}
//	# condition: principal <id...> | scope <scope...> | value <placeholder> <glob...> | match <@matcher>
//	unknown_error   <tool|prompt|resource|method> <code> <message>
//	pin_tools       off|drop|warn
//	request_timeout <duration>
//	max_timeout     <duration>
//	max_response    <size>
//	audit [{
//		queue             <n>
//		arguments         on|off
//		redact            <json-pointer...>
//		max_argument_size <size>
//		degraded_sample   <n>
//	}]

// governanceOptions are the single-line governance subdirectives.
func (h *Handler) governanceOptions(opts map[string]option) {
	opts["pin_tools"] = one(func(s string) error {
		switch s {
		case "on":
			s = "drop"
		case "off", "drop", "warn":
		default:
			return fmt.Errorf("%q: want off, drop or warn", s)
		}
		h.PinTools = s
		return nil
	})
	opts["request_timeout"] = durationOpt(&h.RequestTimeout)
	opts["max_timeout"] = durationOpt(&h.MaxTimeout)
	opts["max_response"] = sizeOpt(&h.MaxResponse)
	opts["unknown_error"] = option{nargs: exactly(3), repeat: true, apply: func(a []string) error {
		if _, ok := policy.ParseKind(a[0]); !ok {
			return fmt.Errorf("%q: want tool, prompt, resource or method", a[0])
		}
		code, err := strconv.Atoi(a[1])
		if err != nil {
			return fmt.Errorf("code %q: want a number", a[1])
		}
		if h.UnknownErrors == nil {
			h.UnknownErrors = map[string]UnknownError{}
		}
		h.UnknownErrors[a[0]] = UnknownError{Code: code, Message: a[2]}
		return nil
	}}
}

// blockOptions are the subdirectives that take a block.
var blockOptions = map[string]bool{"rules": true, "audit": true}

// parseBlockOption parses the rules or audit block in seg; helper, when
// set, resolves the named matchers of `match` conditions.
func (h *Handler) parseBlockOption(seg caddyfile.Segment, helper *httpcaddyfile.Helper) error {
	d := caddyfile.NewDispenser(seg)
	d.Next()
	switch name := d.Val(); name {
	case "rules":
		if d.NextArg() {
			return d.ArgErr()
		}
		return h.parseRules(d, helper)
	case "audit":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.Audit = new(AuditConfig)
		return parseBlock(d, h.Audit.options(), "audit option")
	}
	return nil
}

// options are the audit block's settings.
func (a *AuditConfig) options() map[string]option {
	return map[string]option{
		"queue":             countOpt(&a.QueueSize),
		"arguments":         one(func(s string) (err error) { a.Arguments, err = parseOnOff(s); return }),
		"redact":            listOpt(&a.Redact),
		"degraded_sample":   countOpt(&a.DegradedSample),
		"max_argument_size": one(func(s string) error { n, err := parseSize(s); a.MaxArgumentSize = int(n); return err }),
	}
}

// parseRules parses the lines of a rules block.
func (h *Handler) parseRules(d *caddyfile.Dispenser, helper *httpcaddyfile.Helper) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		first := d.Token()
		if first.Text == "default" {
			args := d.RemainingArgs()
			if len(args) != 1 || (args[0] != "allow" && args[0] != "deny") {
				return d.Errf("default: want allow or deny")
			}
			h.RulesDefault = args[0]
			continue
		}
		var toks []caddyfile.Token
		for d.NextArg() {
			toks = append(toks, d.Token())
		}
		rule, err := parseRule(first, toks, helper)
		if err != nil {
			return d.Errf("rule %q: %v", first.Text, err)
		}
		h.Rules = append(h.Rules, rule)
	}
	return nil
}

// parseRule parses `<allow|deny> <kind> <glob...> [on <method-glob...>]
// [if|unless <condition>]`.
func parseRule(action caddyfile.Token, toks []caddyfile.Token, helper *httpcaddyfile.Helper) (Rule, error) {
	r := Rule{Action: action.Text}
	if r.Action != "allow" && r.Action != "deny" {
		return r, fmt.Errorf("want allow, deny or default")
	}
	if len(toks) < 2 {
		return r, fmt.Errorf("want <tool|prompt|resource|method> <glob...>")
	}
	r.Kind = toks[0].Text
	if _, ok := policy.ParseKind(r.Kind); !ok {
		return r, fmt.Errorf("%q: want tool, prompt, resource or method", r.Kind)
	}
	i := 1
	for ; i < len(toks) && !isRuleKeyword(toks[i].Text); i++ {
		r.Targets = append(r.Targets, toks[i].Text)
	}
	if i < len(toks) && toks[i].Text == "on" {
		if r.Kind == "method" {
			return r, fmt.Errorf("on: a method rule names its methods as targets")
		}
		for i++; i < len(toks) && toks[i].Text != "if" && toks[i].Text != "unless"; i++ {
			r.Methods = append(r.Methods, toks[i].Text)
		}
	}
	if len(r.Targets) == 0 {
		return r, fmt.Errorf("no targets")
	}
	for _, g := range append(append([]string(nil), r.Targets...), r.Methods...) {
		if err := policy.ValidGlob(g); err != nil {
			return r, fmt.Errorf("glob %q: %v", g, err)
		}
	}
	if i == len(toks) {
		return r, nil
	}
	r.Unless = toks[i].Text == "unless"
	return r, parseCondition(&r, toks[i], toks[i+1:], helper)
}

// isRuleKeyword reports a keyword that ends a rule's targets.
func isRuleKeyword(s string) bool { return s == "on" || s == "if" || s == "unless" }

// parseCondition parses a rule's condition after if or unless.
func parseCondition(r *Rule, kw caddyfile.Token, toks []caddyfile.Token, helper *httpcaddyfile.Helper) error {
	if len(toks) < 2 {
		return fmt.Errorf("%s: want principal, scope, value or match and its arguments", kw.Text)
	}
	args := make([]string, 0, len(toks)-1)
	for _, t := range toks[1:] {
		args = append(args, t.Text)
	}
	switch toks[0].Text {
	case "principal":
		r.Principals = args
	case "scope":
		r.Scopes = args
	case "value":
		if len(args) < 2 {
			return fmt.Errorf("value: want <placeholder> <glob...>")
		}
		r.Placeholder, r.Values = args[0], args[1:]
	case "match":
		if len(args) != 1 {
			return fmt.Errorf("match: want one named matcher")
		}
		if helper == nil {
			return fmt.Errorf("match: named matchers need the Caddyfile's http server block")
		}
		hh := *helper
		hh.Dispenser = caddyfile.NewDispenser(caddyfile.Segment{toks[0], toks[1]})
		hh.Next()
		set, ok, err := hh.MatcherToken()
		if err != nil {
			return err
		}
		if !ok || set == nil {
			return fmt.Errorf("match %q: want a named matcher such as @internal", args[0])
		}
		r.MatchRaw = set
	default:
		return fmt.Errorf("%s %q: want principal, scope, value or match", kw.Text, toks[0].Text)
	}
	return nil
}
