package caddymodule

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/mcpgate/mcpgate/auth"
	"github.com/mcpgate/mcpgate/policy"
)

// Rule is one access rule of mcp_proxy (see Handler.Rules).
type Rule struct {
	// Action is "allow" or "deny". Required.
	Action string `json:"action"`

	// Kind is what Targets name: "tool" (tools/call), "prompt"
	// (prompts/get), "resource" (resources/read, resources/subscribe,
	// resources/unsubscribe) or "method" (any JSON-RPC method). Required.
	Kind string `json:"kind"`

	// Targets are globs over the tool names, prompt names, resource URIs
	// or methods: `*` matches any characters, `/` included, `?` one. A
	// resource URI is allowed only if allowed both as written and in its
	// canonical form (escapes decoded, case, dot segments: see the
	// policy package's CanonicalURI). Required: at least one.
	Targets []string `json:"targets"`

	// Methods, for tool, prompt and resource rules, restricts the rule to
	// messages of these methods (globs), e.g. resources/subscribe.
	// Default: every method of the kind.
	Methods []string `json:"methods,omitempty"`

	// Unless makes the condition an exception: the rule applies to the
	// subjects that do not meet it. Default: false (the rule applies to
	// those that do).
	Unless bool `json:"unless,omitempty"`

	// Principals restricts the rule to these principals (exact). Default:
	// any.
	Principals []string `json:"principals,omitempty"`

	// Scopes restricts the rule to subjects holding all these OAuth
	// scopes (from mcp_auth, or `{http.auth.user.scope}`). Default: none
	// needed.
	Scopes []string `json:"scopes,omitempty"`

	// Placeholder, with Values, restricts the rule to requests where the
	// placeholder's value matches one of Values (globs), e.g.
	// `{http.request.header.X-Tenant}`. Default: none.
	Placeholder string `json:"placeholder,omitempty"`

	// Values are the globs Placeholder's value is matched against; the
	// condition holds when one matches. Required with Placeholder.
	// Default: none.
	Values []string `json:"values,omitempty"`

	// MatchRaw restricts the rule to requests a matcher set matches, as a
	// route's `match` would. Default: none.
	MatchRaw caddy.ModuleMap `json:"match,omitempty" caddy:"namespace=http.matchers"`
}

// UnknownError is the JSON-RPC error a denied call gets, for one kind of
// target; "%s" in Message stands for the target's name.
type UnknownError struct {
	// Code is the JSON-RPC error code. Required.
	Code int `json:"code"`
	// Message is the error message; "%s" is replaced by the name, quoted
	// as Go's %q quotes it when written "%q". Required.
	Message string `json:"message"`
}

// governance is the compiled policy of a handler: the rules, their
// matchers, the errors denied calls get, tool pinning.
type governance struct {
	policy   policy.Policy
	matchers []caddyhttp.MatcherSet
	unknown  policy.UnknownErrors
	pins     *policy.Pins // toolPins, nil without pin_tools
	pinWarn  bool         // pin_tools warn: a changed tool passes
	// skips lets the pin checks leave alone, at reduced service levels,
	// the definitions this handler last found as pinned.
	skips policy.PinSkips
}

// enforces reports whether any message can be denied.
func (g *governance) enforces() bool {
	return g != nil && (len(g.policy.Rules) > 0 || g.policy.Default == policy.Deny)
}

// filters reports whether list results need reading: rules exist or
// tools are pinned.
func (g *governance) filters() bool {
	return g.enforces() || g != nil && g.pins != nil
}

// provisionGovernance compiles the rules and the pinning table.
func (h *Handler) provisionGovernance(ctx caddy.Context) error {
	g := &governance{unknown: policy.DefaultUnknownErrors()}
	switch h.RulesDefault {
	case "", "allow":
		g.policy.Default = policy.Allow
	case "deny":
		g.policy.Default = policy.Deny
	default:
		return fmt.Errorf("rules_default %q: want allow or deny", h.RulesDefault)
	}
	for i := range h.Rules {
		rule, err := h.compileRule(ctx, i, g)
		if err != nil {
			return fmt.Errorf("rule %d: %w", i+1, err)
		}
		g.policy.Rules = append(g.policy.Rules, rule)
	}
	if err := g.policy.Compile(); err != nil {
		return err
	}
	for name, e := range h.UnknownErrors {
		kind, ok := policy.ParseKind(name)
		if !ok {
			return fmt.Errorf("unknown_errors %q: want tool, prompt, resource or method", name)
		}
		if e.Code == 0 || e.Message == "" {
			return fmt.Errorf("unknown_errors %q: want a non-zero code and a message", name)
		}
		g.unknown[kind] = policy.UnknownError{Code: e.Code, Message: e.Message}
	}
	switch h.PinTools {
	case "", "off":
	case "drop", "on", "warn":
		g.pins = toolPins
		g.pinWarn = h.PinTools == "warn"
	default:
		return fmt.Errorf("pin_tools %q: want off, drop or warn", h.PinTools)
	}
	h.gov = g
	return nil
}

// toolPins are the pinned tool definitions of every upstream, shared by
// the handlers of every config, so a reload keeps them; DELETE /mcp/pins
// forgets them after an operator approved a change.
var toolPins = &policy.Pins{Max: policy.DefaultMaxPins, PerUpstream: policy.DefaultMaxPins / 4}

// compileRule turns rule i of the config into a policy rule, loading its
// matcher set.
func (h *Handler) compileRule(ctx caddy.Context, i int, g *governance) (policy.Rule, error) {
	c := &h.Rules[i]
	var out policy.Rule
	switch c.Action {
	case "allow":
		out.Action = policy.Allow
	case "deny":
		out.Action = policy.Deny
	default:
		return out, fmt.Errorf("action %q: want allow or deny", c.Action)
	}
	kind, ok := policy.ParseKind(c.Kind)
	if !ok {
		return out, fmt.Errorf("kind %q: want tool, prompt, resource or method", c.Kind)
	}
	if len(c.Targets) == 0 {
		return out, fmt.Errorf("no targets")
	}
	out.Kind, out.Targets, out.Methods = kind, c.Targets, c.Methods
	out.Label = "rule " + strconv.Itoa(i+1) + ": " + c.Action + " " + c.Kind + " " + strings.Join(c.Targets, " ")
	cond := &policy.Condition{Negate: c.Unless, Principals: c.Principals, Scopes: c.Scopes,
		Placeholder: c.Placeholder, Values: c.Values, Matcher: -1}
	if c.MatchRaw != nil {
		mods, err := ctx.LoadModule(c, "MatchRaw")
		if err != nil {
			return out, fmt.Errorf("loading matchers: %w", err)
		}
		var set caddyhttp.MatcherSet
		for _, m := range mods.(map[string]any) {
			set = append(set, m)
		}
		cond.Matcher = len(g.matchers)
		g.matchers = append(g.matchers, set)
	}
	if len(cond.Principals) > 0 || len(cond.Scopes) > 0 || cond.Placeholder != "" || cond.Matcher >= 0 {
		out.When = cond
	} else if c.Unless {
		return out, fmt.Errorf("unless without a condition")
	}
	return out, nil
}

// subject is who sends a request, for the rules: read lazily from the
// request, each fact once.
type subject struct {
	r         *http.Request
	repl      *caddy.Replacer
	principal string
	scopes    []string
	scopesSet bool
	matchers  []caddyhttp.MatcherSet
	matched   map[int]bool
}

func newSubject(r *http.Request, principal string, matchers []caddyhttp.MatcherSet) *subject {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	return &subject{r: r, repl: repl, principal: principal, matchers: matchers}
}

func (s *subject) Principal() string { return s.principal }

func (s *subject) Value(placeholder string) string {
	if s.repl == nil {
		return ""
	}
	return s.repl.ReplaceAll(placeholder, "")
}

func (s *subject) HasScopes(need []string) bool {
	if !s.scopesSet {
		s.scopesSet = true
		if p, ok := caddyhttp.GetVar(s.r.Context(), varAuth).(*auth.Principal); ok && p != nil {
			s.scopes = p.Scopes
		} else if s.repl != nil {
			v, _ := s.repl.GetString("http.auth.user.scope")
			s.scopes = strings.Fields(v)
		}
	}
	for _, n := range need {
		if !slices.Contains(s.scopes, n) {
			return false
		}
	}
	return true
}

func (s *subject) Match(set int) bool {
	if ok, seen := s.matched[set]; seen {
		return ok
	}
	if set < 0 || set >= len(s.matchers) {
		return false
	}
	ok, err := s.matchers[set].MatchWithError(s.r)
	if err != nil {
		ok = false
	}
	if s.matched == nil {
		s.matched = map[int]bool{}
	}
	s.matched[set] = ok
	return ok
}
