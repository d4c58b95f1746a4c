package auth

import (
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/mcpgate/mcpgate/mcp"
	"github.com/mcpgate/mcpgate/policy"
)

// ScopeRule requires scopes for MCP requests whose method, and target
// (tool, prompt or resource), match globs. The globs are the access
// rules' (policy.Glob): `*` matches any run of characters, `/` included
// (resource URIs hold slashes), `?` one character, and `\` escapes the
// next; a resource URI matches in every reading the access rules judge it
// in (policy.GlobURI).
type ScopeRule struct {
	// Method is a glob over the JSON-RPC method; empty matches only a
	// request without a method (a GET).
	Method string `json:"method"`
	// Target, when set, is a glob over the tool name (tools/call), the
	// prompt name (prompts/get) or the resource URI (resources/read,
	// resources/subscribe).
	Target string `json:"target,omitempty"`
	// Scopes must all be held.
	Scopes []string `json:"scopes"`
}

// Matches reports whether the rule applies to method and target. For a
// method that targets a resource both globs are read as over URIs
// (policy.GlobURI), so that another spelling of a URI matches too.
func (r *ScopeRule) Matches(method, target string) bool {
	glob := policy.Glob
	if kind, _ := policy.TargetOf(method, ""); kind == policy.KindResource {
		glob = policy.GlobURI
	}
	if r.Method == "" {
		if method != "" {
			return false
		}
	} else if !glob(r.Method, method) {
		return false
	}
	return r.Target == "" || glob(r.Target, target)
}

// RequiredScopes returns the scopes every rule matching method and target
// (see ScopeRule.Matches) requires, in rule order, without repeats.
func RequiredScopes(rules []ScopeRule, method, target string) []string {
	var out []string
	for i := range rules {
		if rules[i].Matches(method, target) {
			out = appendNew(out, rules[i].Scopes)
		}
	}
	return out
}

// ScopesFor returns the scopes rules require of message m: those of its
// method and target and, for a completion, those of the prompt
// (prompts/get) or resource template (resources/read) it completes, as
// the access rules judge a completion, and for a subscriptions/listen
// those of a resources/subscribe of each resource it subscribes to.
func ScopesFor(rules []ScopeRule, m *mcp.Envelope) []string {
	need := RequiredScopes(rules, m.Method, m.Name)
	switch kind, target, ok := policy.RefOf(m); {
	case ok && kind == policy.KindPrompt:
		need = appendNew(need, RequiredScopes(rules, "prompts/get", target))
	case ok && kind == policy.KindResource:
		need = appendNew(need, RequiredScopes(rules, "resources/read", target))
	}
	for _, uri := range m.Subscriptions {
		// A subscriptions/listen subscribes to each of these resources
		// as a resources/subscribe of it would.
		need = appendNew(need, RequiredScopes(rules, "resources/subscribe", uri))
	}
	return need
}

// CheckScopes returns the 403 for a principal lacking a scope that one of
// msgs, or a request without messages (a GET) when msgs is empty, needs
// under rules; nil when it holds them all.
func CheckScopes(rules []ScopeRule, p *Principal, msgs []mcp.Envelope) *Error {
	if len(rules) == 0 {
		return nil
	}
	if len(msgs) == 0 {
		msgs = []mcp.Envelope{{}}
	}
	for i := range msgs {
		if need := ScopesFor(rules, &msgs[i]); !p.HasScopes(need) {
			return InsufficientScope(need)
		}
	}
	return nil
}

// ValidScopeRules refuses a rule whose method or target is a malformed
// glob (see policy.ValidGlob), which would match nothing and so require
// no scope, or holds an unescaped `[`: these globs once had path.Match's
// character classes, and a class now matches only itself, which would
// leave the rule requiring nothing.
func ValidScopeRules(rules []ScopeRule) error {
	for i, r := range rules {
		for _, g := range []string{r.Method, r.Target} {
			if g == "" {
				continue
			}
			if err := policy.ValidGlob(g); err != nil {
				return fmt.Errorf("scope rule %d (%s): glob %q: %w", i+1, r.Method, g, err)
			}
			if unescapedBracket(g) {
				return fmt.Errorf("scope rule %d (%s): glob %q: character classes ([...]) are not supported; write \\[ for a literal bracket", i+1, r.Method, g)
			}
		}
	}
	return nil
}

// unescapedBracket reports a `[` not escaped by `\` in glob g.
func unescapedBracket(g string) bool {
	for i := 0; i < len(g); i++ {
		switch g[i] {
		case '\\':
			i++
		case '[':
			return true
		}
	}
	return false
}

// appendNew appends to dst the strings of src it does not hold yet.
func appendNew(dst, src []string) []string {
	for _, s := range src {
		if !slices.Contains(dst, s) {
			dst = append(dst, s)
		}
	}
	return dst
}

// StepUp returns the 403 e (insufficient_scope) for p with the scopes of
// keep that p holds named after those e names. The MCP specification
// (2025-11-25, Scope Challenge Handling) has the client take the
// challenge's scopes as authoritative and authorize again for them: a
// challenge naming only what the request lacks gets the client a token
// without the scopes it held, and its next request needing one of those a
// 403 of its own.
func StepUp(e *Error, p *Principal, keep []string) *Error {
	scopes := strings.Fields(e.Scope)
	for _, s := range keep {
		if slices.Contains(p.Scopes, s) {
			scopes = appendNew(scopes, []string{s})
		}
	}
	out := *e
	out.Scope = strings.Join(scopes, " ")
	return &out
}

// InsufficientScope is the 403 for a principal that lacks scopes.
func InsufficientScope(scopes []string) *Error {
	return &Error{Status: http.StatusForbidden, Code: "insufficient_scope",
		Description: "the token lacks a scope this request needs", Scope: strings.Join(scopes, " ")}
}
