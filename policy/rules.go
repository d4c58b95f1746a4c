package policy

import (
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/mcpgate/mcpgate/mcp"
)

// Action is what a rule does with a message it matches.
type Action uint8

const (
	Allow Action = iota // the message goes on
	Deny                // the message is refused
)

// String returns "allow" or "deny".
func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// Kind is what a rule's targets name.
type Kind uint8

const (
	KindMethod   Kind = iota // the JSON-RPC method itself
	KindTool                 // tools/call params.name
	KindPrompt               // prompts/get params.name (and completion/complete of a prompt, see RefOf)
	KindResource             // resources/read, resources/subscribe, resources/unsubscribe params.uri (and completion/complete of a template, see RefOf)
)

const numKinds = 4

// String returns "method", "tool", "prompt" or "resource".
func (k Kind) String() string {
	switch k {
	case KindMethod:
		return "method"
	case KindTool:
		return "tool"
	case KindPrompt:
		return "prompt"
	case KindResource:
		return "resource"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// The MCP methods whose messages name a tool, a prompt or a resource, and
// the list methods whose results list them.
const (
	methodToolsCall         = "tools/call"
	methodPromptsGet        = "prompts/get"
	methodResourcesRead     = "resources/read"
	methodResourcesSub      = "resources/subscribe"
	methodResourcesUnsub    = "resources/unsubscribe"
	methodToolsList         = "tools/list"
	methodPromptsList       = "prompts/list"
	methodResourcesList     = "resources/list"
	methodResourceTemplates = "resources/templates/list"
	methodComplete          = "completion/complete"
	methodListen            = "subscriptions/listen"
)

// kindMethods lists, for each kind but KindMethod, the methods whose
// messages are of that kind.
var kindMethods = [numKinds][]string{
	KindTool:     {methodToolsCall},
	KindPrompt:   {methodPromptsGet},
	KindResource: {methodResourcesRead, methodResourcesSub, methodResourcesUnsub},
}

// TargetOf returns the kind and target of a message: for tools/call the
// tool name (KindTool), prompts/get the prompt name (KindPrompt),
// resources/read|subscribe|unsubscribe the URI (KindResource); any other
// method is (KindMethod, method). name is the message's params.name or
// params.uri, whichever its method has. (A completion/complete is of
// KindMethod here; the prompt or template it completes is RefOf's.)
func TargetOf(method, name string) (Kind, string) {
	switch method {
	case methodToolsCall:
		return KindTool, name
	case methodPromptsGet:
		return KindPrompt, name
	case methodResourcesRead, methodResourcesSub, methodResourcesUnsub:
		return KindResource, name
	}
	return KindMethod, method
}

// RefOf returns what a completion/complete message refers to by its
// params.ref, whose arguments it asks the upstream to complete: the
// prompt of a "ref/prompt" (KindPrompt, its name), the resource template
// of a "ref/resource" (KindResource, its URI template). ok is false for
// another method or another type of ref, which upstreams refuse.
//
// DecideAll judges such a completion as the method completion/complete
// and as the prompt or resource it refers to (see Allows).
func RefOf(m *mcp.Envelope) (k Kind, target string, ok bool) {
	if m.Method != methodComplete {
		return KindMethod, "", false
	}
	switch m.RefType {
	case mcp.RefPrompt:
		return KindPrompt, m.RefTarget, true
	case mcp.RefResource:
		return KindResource, m.RefTarget, true
	}
	return KindMethod, "", false
}

// MessageTarget returns the kind and target a message is about: the
// prompt or resource template a completion/complete refers to (see
// RefOf), else TargetOf's.
func MessageTarget(m *mcp.Envelope) (Kind, string) {
	if k, target, ok := RefOf(m); ok {
		return k, target
	}
	return TargetOf(m.Method, m.Name)
}

// ListKind returns, for a list method (tools/list, prompts/list,
// resources/list, resources/templates/list), the kind of its items and
// true; false for any other method.
func ListKind(method string) (Kind, bool) {
	switch method {
	case methodToolsList:
		return KindTool, true
	case methodPromptsList:
		return KindPrompt, true
	case methodResourcesList, methodResourceTemplates:
		return KindResource, true
	}
	return KindMethod, false
}

// Subject is who sends a message, as the caller knows it.
type Subject interface {
	Principal() string               // "" when unauthenticated
	Value(placeholder string) string // the value of a Caddy placeholder such as "{http.request.header.X-Tenant}"
	HasScopes(scopes []string) bool  // holds every one of scopes (OAuth)
	Match(set int) bool              // whether the caller's matcher set number `set` matches the request
}

// nobody is the Subject Decide uses for a nil one: unauthenticated, every
// placeholder empty, no scopes, no matcher set matching.
type nobody struct{}

func (nobody) Principal() string              { return "" }
func (nobody) Value(string) string            { return "" }
func (nobody) HasScopes(scopes []string) bool { return len(scopes) == 0 }
func (nobody) Match(int) bool                 { return false }

// Condition restricts a rule to some subjects. All the fields set must
// hold (AND); Negate inverts the whole condition ("unless").
//
// Matcher's zero value 0 names matcher set 0: a condition without a
// matcher must set Matcher to -1. A condition that sets nothing is refused
// by Compile; a rule that always applies has When nil.
type Condition struct {
	Negate      bool
	Principals  []string // the principal is one of these (exact)
	Scopes      []string // the subject holds all of these
	Placeholder string   // with Values: the placeholder's value is one of Values (globs, see Glob)
	Values      []string
	Matcher     int // >= 0: Subject.Match(Matcher) must be true; -1 for none
}

// Rule allows or denies the messages whose target matches.
type Rule struct {
	Action  Action
	Kind    Kind
	Targets []string   // globs over the target (tool name, prompt name, resource URI, or method for KindMethod); a URI is matched as written and as CanonicalURI gives it, and so are URI patterns
	Methods []string   // optional, KindTool/KindPrompt/KindResource only: globs the message's method must also match (e.g. only resources/subscribe)
	When    *Condition // nil: always
	Label   string     // how audit records and logs name the rule, e.g. "rule 3: deny tool delete_*"
}

// Policy is an ordered list of rules: the first rule that matches a message
// decides; when none does, Default decides.
//
// Compile prepares a policy; Decide and Allows use what the last Compile
// prepared, so a change to Rules or Default takes effect only at the next
// Compile, which must not run concurrently with them.
type Policy struct {
	Rules   []Rule
	Default Action

	c *compiled
}

// compiled is a policy prepared by Compile. It is immutable.
type compiled struct {
	rules []compiledRule
	def   Action
	// byKind lists, for messages of each kind, the indices of the rules
	// that can match them (the KindMethod rules and the rules of that
	// kind), in policy order.
	byKind [numKinds][]int32
}

type compiledRule struct {
	action  Action
	kind    Kind
	targets matchSet
	methods *matchSet // nil: any method of the kind
	when    *compiledCond
}

type compiledCond struct {
	negate      bool
	principals  []string
	scopes      []string
	placeholder string
	values      *matchSet // nil: no placeholder test
	matcher     int
}

// matchSet is a compiled list of globs: literal patterns are compared
// directly (from a map when there are many), the others by the glob
// matcher. Empty sets match nothing.
type matchSet struct {
	all    bool
	lits   []string
	litMap map[string]struct{}
	globs  []glob
}

// litMapMin is the number of literal patterns from which a matchSet looks
// them up in a map rather than comparing them in turn.
const litMapMin = 8

func compileSet(patterns []string) (matchSet, error) {
	var m matchSet
	for _, p := range patterns {
		g, err := compileGlob(p)
		if err != nil {
			return matchSet{}, fmt.Errorf("%q: %w", p, err)
		}
		switch g.shape {
		case shapeAll:
			m.all = true
		case shapeExact:
			m.lits = append(m.lits, g.lit)
		default:
			m.globs = append(m.globs, g)
		}
	}
	if len(m.lits) >= litMapMin {
		m.litMap = make(map[string]struct{}, len(m.lits))
		for _, l := range m.lits {
			m.litMap[l] = struct{}{}
		}
		m.lits = nil
	}
	return m, nil
}

func (m *matchSet) match(s string) bool {
	if m.all {
		return true
	}
	if m.litMap != nil {
		if _, ok := m.litMap[s]; ok {
			return true
		}
	} else {
		for _, l := range m.lits {
			if l == s {
				return true
			}
		}
	}
	for i := range m.globs {
		if m.globs[i].match(s) {
			return true
		}
	}
	return false
}

// Compile checks the policy (globs well-formed, Kind-specific fields
// consistent, Values with Placeholder) and prepares it for Decide. Decide
// may be called concurrently after Compile. On error the policy keeps what
// an earlier Compile prepared.
func (p *Policy) Compile() error {
	if p.Default > Deny {
		return fmt.Errorf("default: unknown action %d", p.Default)
	}
	c := &compiled{rules: make([]compiledRule, len(p.Rules)), def: p.Default}
	for i := range p.Rules {
		r, err := compileRule(&p.Rules[i])
		if err != nil {
			name := fmt.Sprintf("rule %d", i)
			if l := p.Rules[i].Label; l != "" {
				name += " (" + l + ")"
			}
			return fmt.Errorf("%s: %w", name, err)
		}
		c.rules[i] = r
		for k := Kind(0); k < numKinds; k++ {
			if r.kind == KindMethod || r.kind == k {
				c.byKind[k] = append(c.byKind[k], int32(i))
			}
		}
	}
	p.c = c
	return nil
}

func compileRule(r *Rule) (compiledRule, error) {
	if r.Action > Deny {
		return compiledRule{}, fmt.Errorf("unknown action %d", r.Action)
	}
	if r.Kind >= numKinds {
		return compiledRule{}, fmt.Errorf("unknown kind %d", r.Kind)
	}
	if len(r.Targets) == 0 {
		return compiledRule{}, errors.New("no targets")
	}
	cr := compiledRule{action: r.Action, kind: r.Kind}
	var err error
	if cr.targets, err = compileSet(r.Targets); err != nil {
		return compiledRule{}, fmt.Errorf("target %w", err)
	}
	if r.Kind == KindResource {
		// A URI pattern also matches in the form an upstream reads (see
		// CanonicalURI), which decide checks a URI in too.
		var canon []string
		for _, t := range r.Targets {
			// A pattern whose escapes decode to bytes that are not
			// UTF-8 keeps its written form only.
			if c := canonicalPattern(t); c != t && utf8.ValidString(c) {
				canon = append(canon, c)
			}
		}
		if len(canon) > 0 {
			if cr.targets, err = compileSet(append(slices.Clip(r.Targets), canon...)); err != nil {
				return compiledRule{}, fmt.Errorf("target %w", err)
			}
		}
	}
	if len(r.Methods) > 0 {
		if r.Kind == KindMethod {
			return compiledRule{}, errors.New("methods restrict tool, prompt and resource rules only; a method rule's targets are methods")
		}
		ms, err := compileSet(r.Methods)
		if err != nil {
			return compiledRule{}, fmt.Errorf("method %w", err)
		}
		for _, m := range r.Methods {
			if !anyMatch(m, kindMethods[r.Kind]) {
				return compiledRule{}, fmt.Errorf("method %q matches none of the %s methods %q", m, r.Kind, kindMethods[r.Kind])
			}
		}
		cr.methods = &ms
	}
	if r.When != nil {
		cc, err := compileCond(r.When)
		if err != nil {
			return compiledRule{}, fmt.Errorf("condition: %w", err)
		}
		cr.when = cc
	}
	return cr, nil
}

func anyMatch(pattern string, targets []string) bool {
	for _, t := range targets {
		if Glob(pattern, t) {
			return true
		}
	}
	return false
}

func compileCond(w *Condition) (*compiledCond, error) {
	if w.Matcher < -1 {
		return nil, fmt.Errorf("matcher %d: want a matcher set number or -1 for none", w.Matcher)
	}
	if w.Placeholder != "" && len(w.Values) == 0 {
		return nil, fmt.Errorf("placeholder %s without values", w.Placeholder)
	}
	if w.Placeholder == "" && len(w.Values) > 0 {
		return nil, errors.New("values without a placeholder")
	}
	for _, s := range w.Scopes {
		if s == "" {
			return nil, errors.New("empty scope")
		}
	}
	if len(w.Principals) == 0 && len(w.Scopes) == 0 && w.Placeholder == "" && w.Matcher < 0 {
		return nil, errors.New("restricts nothing (set principals, scopes, a placeholder with values or a matcher)")
	}
	cc := &compiledCond{
		negate:      w.Negate,
		principals:  append([]string(nil), w.Principals...),
		scopes:      append([]string(nil), w.Scopes...),
		placeholder: w.Placeholder,
		matcher:     w.Matcher,
	}
	if w.Placeholder != "" {
		vs, err := compileSet(w.Values)
		if err != nil {
			return nil, fmt.Errorf("value %w", err)
		}
		cc.values = &vs
	}
	return cc, nil
}

// holds evaluates the condition for s, the cheap tests first.
func (c *compiledCond) holds(s Subject) bool {
	return c.test(s) != c.negate
}

func (c *compiledCond) test(s Subject) bool {
	if len(c.principals) > 0 {
		p, found := s.Principal(), false
		for _, q := range c.principals {
			if p == q {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	if c.matcher >= 0 && !s.Match(c.matcher) {
		return false
	}
	if c.values != nil && !c.values.match(s.Value(c.placeholder)) {
		return false
	}
	if len(c.scopes) > 0 && !s.HasScopes(c.scopes) {
		return false
	}
	return true
}

// Decide returns the action for a message (method and name as TargetOf
// takes them) sent by s, and the index of the rule that decided, or -1 for
// the default. A rule for KindMethod matches on the method; the others
// only messages of their kind. Conditions are evaluated lazily, only for
// rules whose targets match. A nil s is an unauthenticated subject with no
// scopes, empty placeholders and no matcher set matching.
//
// A policy that was never compiled denies everything (Deny, -1).
func (p *Policy) Decide(s Subject, method, name string) (Action, int) {
	k, target := TargetOf(method, name)
	return p.decide(s, method, k, target)
}

func (p *Policy) decide(s Subject, method string, k Kind, target string) (Action, int) {
	a, r := p.decideAs(s, method, k, target)
	if k == KindResource && a == Allow {
		// The upstream may read the URI otherwise than it is written
		// (escapes, case, dot segments): it is allowed only if allowed
		// in both readings.
		if canon := CanonicalURI(target); canon != target {
			if a2, r2 := p.decideAs(s, method, k, canon); a2 != Allow {
				return a2, r2
			}
		}
	}
	return a, r
}

// decideAs is decide for the target as given.
func (p *Policy) decideAs(s Subject, method string, k Kind, target string) (Action, int) {
	c := p.c
	if c == nil {
		return Deny, -1
	}
	if s == nil {
		s = nobody{}
	}
	for _, i := range c.byKind[k] {
		r := &c.rules[i]
		if r.kind == KindMethod {
			if !r.targets.match(method) {
				continue
			}
		} else {
			if !r.targets.match(target) {
				continue
			}
			if r.methods != nil && !r.methods.match(method) {
				continue
			}
		}
		if r.when != nil && !holds(s, c, i, r.when) {
			continue
		}
		return r.action, int(i)
	}
	return c.def, -1
}

// holds evaluates the condition w of rule i of c for s, or reads it from
// s when s is a snapshot taken under c.
func holds(s Subject, c *compiled, i int32, w *compiledCond) bool {
	if snap, ok := s.(*snapshot); ok && snap.c == c {
		return snap.holds[i]
	}
	return w.holds(s)
}

// Snapshot returns a Subject that stands under the policy, as last
// compiled, where s stands now: the condition of every rule is evaluated
// once, and only the results are kept, not s (nor the request s may read
// its facts from). It lets a decision be made after that request is gone.
// The snapshot's own methods answer as an unauthenticated subject with no
// scopes, empty placeholders and no matcher set matching, which is also
// how it stands under another compiled policy.
func (p *Policy) Snapshot(s Subject) Subject {
	c := p.c
	snap := &snapshot{c: c}
	if c == nil {
		return snap
	}
	if s == nil {
		s = nobody{}
	}
	snap.holds = make([]bool, len(c.rules))
	for i := range c.rules {
		if w := c.rules[i].when; w != nil {
			snap.holds[i] = w.holds(s)
		}
	}
	return snap
}

// snapshot is a Subject as Snapshot took it.
type snapshot struct {
	nobody
	c     *compiled
	holds []bool // by rule index: whether its condition held
}

// Allows reports whether an item of a list result, of kind k with target
// name, would be callable by s: Decide with the method that calls it
// (tools/call, prompts/get, resources/read). For resource templates (kind
// KindResource, target the uriTemplate string) the template string is
// matched as if it were a URI. For KindMethod, target is the method.
//
// A completion/complete of a prompt or resource template is allowed only
// where its item is (see DecideAll).
func (p *Policy) Allows(s Subject, k Kind, target string) bool {
	a, _ := p.decideItem(s, k, target)
	return a == Allow
}

// decideItem is Allows with the index of the rule that decided (-1 for
// the default).
func (p *Policy) decideItem(s Subject, k Kind, target string) (Action, int) {
	var method string
	switch k {
	case KindTool:
		method = methodToolsCall
	case KindPrompt:
		method = methodPromptsGet
	case KindResource:
		method = methodResourcesRead
	case KindMethod:
		method = target
	default:
		return Deny, -1
	}
	return p.decide(s, method, k, target)
}
