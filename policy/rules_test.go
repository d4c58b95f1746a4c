package policy

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// subject is a Subject for tests; calls counts the calls made to it.
type subject struct {
	principal string
	values    map[string]string
	scopes    []string
	sets      map[int]bool
	calls     int
}

func (s *subject) Principal() string { s.calls++; return s.principal }
func (s *subject) Value(p string) string {
	s.calls++
	return s.values[p]
}
func (s *subject) HasScopes(want []string) bool {
	s.calls++
	for _, w := range want {
		if !slices.Contains(s.scopes, w) {
			return false
		}
	}
	return true
}
func (s *subject) Match(set int) bool { s.calls++; return s.sets[set] }

func TestStrings(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{Allow.String(), "allow"},
		{Deny.String(), "deny"},
		{KindMethod.String(), "method"},
		{KindTool.String(), "tool"},
		{KindPrompt.String(), "prompt"},
		{KindResource.String(), "resource"},
		{PinNew.String(), "new"},
		{PinSame.String(), "same"},
		{PinChanged.String(), "changed"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestTargetOf(t *testing.T) {
	tests := []struct {
		method, name string
		kind         Kind
		target       string
	}{
		{"tools/call", "echo", KindTool, "echo"},
		{"prompts/get", "greet", KindPrompt, "greet"},
		{"resources/read", "file:///a", KindResource, "file:///a"},
		{"resources/subscribe", "file:///a", KindResource, "file:///a"},
		{"resources/unsubscribe", "file:///a", KindResource, "file:///a"},
		{"tools/list", "ignored", KindMethod, "tools/list"},
		{"initialize", "", KindMethod, "initialize"},
		{"notifications/initialized", "", KindMethod, "notifications/initialized"},
	}
	for _, tt := range tests {
		k, target := TargetOf(tt.method, tt.name)
		if k != tt.kind || target != tt.target {
			t.Errorf("TargetOf(%q, %q) = %v, %q; want %v, %q", tt.method, tt.name, k, target, tt.kind, tt.target)
		}
	}
}

func TestListKind(t *testing.T) {
	tests := []struct {
		method string
		kind   Kind
		ok     bool
	}{
		{"tools/list", KindTool, true},
		{"prompts/list", KindPrompt, true},
		{"resources/list", KindResource, true},
		{"resources/templates/list", KindResource, true},
		{"tools/call", KindMethod, false},
		{"roots/list", KindMethod, false},
	}
	for _, tt := range tests {
		k, ok := ListKind(tt.method)
		if k != tt.kind || ok != tt.ok {
			t.Errorf("ListKind(%q) = %v, %v; want %v, %v", tt.method, k, ok, tt.kind, tt.ok)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	tests := []struct {
		name   string
		policy Policy
		err    string // substring; "" for no error
	}{
		{"empty policy", Policy{}, ""},
		{"ok", Policy{Rules: []Rule{
			{Action: Deny, Kind: KindTool, Targets: []string{"delete_*"}},
			{Action: Allow, Kind: KindResource, Targets: []string{"file:///*"}, Methods: []string{"resources/subscribe"}},
			{Action: Allow, Kind: KindResource, Targets: []string{"*"}, Methods: []string{"resources/*subscribe"}},
			{Action: Deny, Kind: KindMethod, Targets: []string{"tools/*"}, When: &Condition{Principals: []string{""}, Matcher: -1}},
			{Action: Deny, Kind: KindTool, Targets: []string{"*"}, When: &Condition{Matcher: 0}},
			{Action: Deny, Kind: KindTool, Targets: []string{"*"}, When: &Condition{Placeholder: "{x}", Values: []string{"a*"}, Matcher: -1}},
		}}, ""},
		{"bad default", Policy{Default: 7}, "default"},
		{"bad action", Policy{Rules: []Rule{{Action: 2, Targets: []string{"x"}}}}, "unknown action"},
		{"bad kind", Policy{Rules: []Rule{{Kind: 9, Targets: []string{"x"}}}}, "unknown kind"},
		{"no targets", Policy{Rules: []Rule{{Kind: KindTool}}}, "no targets"},
		{"empty target", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{""}}}}, "empty pattern"},
		{"bad target", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{`x\`}}}}, "unescaped"},
		{"label in error", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{`x\`}, Label: "rule 1: x"}}}, "rule 0 (rule 1: x)"},
		{"methods on method rule", Policy{Rules: []Rule{{Kind: KindMethod, Targets: []string{"x"}, Methods: []string{"x"}}}}, "methods restrict"},
		{"method of another kind", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{"x"}, Methods: []string{"resources/read"}}}}, "matches none"},
		{"bad method glob", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{"x"}, Methods: []string{""}}}}, "empty pattern"},
		{"placeholder without values", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{"x"}, When: &Condition{Placeholder: "{x}", Matcher: -1}}}}, "without values"},
		{"values without placeholder", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{"x"}, When: &Condition{Values: []string{"a"}, Matcher: -1}}}}, "without a placeholder"},
		{"bad value glob", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{"x"}, When: &Condition{Placeholder: "{x}", Values: []string{`a\`}, Matcher: -1}}}}, "value"},
		{"bad matcher", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{"x"}, When: &Condition{Principals: []string{"a"}, Matcher: -2}}}}, "matcher -2"},
		{"empty scope", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{"x"}, When: &Condition{Scopes: []string{""}, Matcher: -1}}}}, "empty scope"},
		{"empty condition", Policy{Rules: []Rule{{Kind: KindTool, Targets: []string{"x"}, When: &Condition{Negate: true, Matcher: -1}}}}, "restricts nothing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.policy.Compile()
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("Compile: %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("Compile = %v, want an error containing %q", err, tt.err)
			}
		})
	}
}

// testPolicy is the policy TestDecide checks.
func testPolicy() *Policy {
	return &Policy{
		Default: Deny,
		Rules: []Rule{
			0:  {Action: Deny, Kind: KindMethod, Targets: []string{"logging/setLevel"}},
			1:  {Action: Allow, Kind: KindMethod, Targets: []string{"initialize", "notifications/*", "ping", "*/list"}},
			2:  {Action: Deny, Kind: KindTool, Targets: []string{"delete_*", "drop_table"}},
			3:  {Action: Allow, Kind: KindTool, Targets: []string{"admin_*"}, When: &Condition{Principals: []string{"alice", "bob"}, Matcher: -1}},
			4:  {Action: Allow, Kind: KindTool, Targets: []string{"tenant_*"}, When: &Condition{Placeholder: "{http.request.header.X-Tenant}", Values: []string{"acme", "acme-*"}, Matcher: -1}},
			5:  {Action: Allow, Kind: KindTool, Targets: []string{"write_*"}, When: &Condition{Scopes: []string{"write", "tools"}, Matcher: -1}},
			6:  {Action: Allow, Kind: KindTool, Targets: []string{"internal_*"}, When: &Condition{Matcher: 2}},
			7:  {Action: Deny, Kind: KindTool, Targets: []string{"*"}, When: &Condition{Negate: true, Principals: []string{"alice"}, Matcher: -1}},
			8:  {Action: Allow, Kind: KindTool, Targets: []string{"*"}},
			9:  {Action: Deny, Kind: KindResource, Targets: []string{"file:///secret/*"}, Methods: []string{"resources/subscribe"}},
			10: {Action: Allow, Kind: KindResource, Targets: []string{"file:///*"}},
			11: {Action: Allow, Kind: KindPrompt, Targets: []string{"greet"}},
			12: {Action: Allow, Kind: KindMethod, Targets: []string{"prompts/get"}, When: &Condition{Principals: []string{"carol"}, Matcher: -1}},
		},
	}
}

func TestDecide(t *testing.T) {
	p := testPolicy()
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	alice := &subject{principal: "alice"}
	bob := &subject{principal: "bob"}
	carol := &subject{principal: "carol"}
	acme := &subject{principal: "alice", values: map[string]string{"{http.request.header.X-Tenant}": "acme-eu"}}
	other := &subject{principal: "bob", values: map[string]string{"{http.request.header.X-Tenant}": "other"}}
	writer := &subject{principal: "bob", scopes: []string{"tools", "write", "read"}}
	reader := &subject{principal: "bob", scopes: []string{"read", "write"}}
	internal := &subject{principal: "bob", sets: map[int]bool{2: true}}
	tests := []struct {
		name         string
		s            Subject
		method, item string
		want         Action
		rule         int
	}{
		{"method denied", alice, "logging/setLevel", "", Deny, 0},
		{"method allowed", alice, "initialize", "", Allow, 1},
		{"method glob", alice, "notifications/initialized", "", Allow, 1},
		{"list", bob, "tools/list", "", Allow, 1},
		{"templates list", bob, "resources/templates/list", "", Allow, 1},
		{"unknown method: default", alice, "sampling/createMessage", "", Deny, -1},
		{"tool denied for all", alice, "tools/call", "delete_user", Deny, 2},
		{"tool literal", alice, "tools/call", "drop_table", Deny, 2},
		{"principal allowed", bob, "tools/call", "admin_reset", Allow, 3},
		{"principal not listed", carol, "tools/call", "admin_reset", Deny, 7},
		{"placeholder glob", acme, "tools/call", "tenant_report", Allow, 4},
		{"placeholder mismatch", other, "tools/call", "tenant_report", Deny, 7},
		{"scopes held", writer, "tools/call", "write_file", Allow, 5},
		{"scope missing", reader, "tools/call", "write_file", Deny, 7},
		{"matcher set", internal, "tools/call", "internal_debug", Allow, 6},
		{"unless principal", bob, "tools/call", "echo", Deny, 7},
		{"unless principal, principal holds", alice, "tools/call", "echo", Allow, 8},
		{"nil subject", nil, "tools/call", "echo", Deny, 7},
		{"nil subject, principal rule", nil, "tools/call", "admin_x", Deny, 7},
		{"resource read", bob, "resources/read", "file:///secret/key", Allow, 10},
		{"resource subscribe restricted", bob, "resources/subscribe", "file:///secret/key", Deny, 9},
		{"resource unsubscribe", bob, "resources/unsubscribe", "file:///secret/key", Allow, 10},
		{"resource other scheme", bob, "resources/read", "https://x", Deny, -1},
		{"prompt", bob, "prompts/get", "greet", Allow, 11},
		{"prompt default", bob, "prompts/get", "other", Deny, -1},
		{"method rule over a prompt", carol, "prompts/get", "other", Allow, 12},
		{"tool rule does not match a prompt", alice, "prompts/get", "delete_x", Deny, -1},
		{"resource rule does not match a tool", alice, "tools/call", "file:///x", Allow, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, i := p.Decide(tt.s, tt.method, tt.item)
			if a != tt.want || i != tt.rule {
				t.Fatalf("Decide(%q, %q) = %v, %d; want %v, %d", tt.method, tt.item, a, i, tt.want, tt.rule)
			}
			// A snapshot of the subject decides the same.
			if a, i := p.Decide(p.Snapshot(tt.s), tt.method, tt.item); a != tt.want || i != tt.rule {
				t.Fatalf("Decide(Snapshot, %q, %q) = %v, %d; want %v, %d", tt.method, tt.item, a, i, tt.want, tt.rule)
			}
		})
	}
}

// TestSubjectSnapshot checks that a snapshot keeps nothing of its subject
// but the standing it had when taken, and stands as nobody under another
// compiled policy.
func TestSubjectSnapshot(t *testing.T) {
	p := testPolicy()
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	bob := &subject{principal: "bob"}
	snap := p.Snapshot(bob)
	calls := bob.calls
	bob.principal = "carol"
	if a, i := p.Decide(snap, "tools/call", "admin_reset"); a != Allow || i != 3 || bob.calls != calls {
		t.Fatalf("Decide(snapshot of bob) = %v, %d, %d subject calls; want allow by rule 3 without asking the subject", a, i, bob.calls-calls)
	}
	if snap.Principal() != "" || snap.Value("{x}") != "" || snap.HasScopes([]string{"s"}) || snap.Match(0) {
		t.Fatal("a snapshot's own methods answer as someone")
	}
	other := testPolicy()
	if err := other.Compile(); err != nil {
		t.Fatal(err)
	}
	if a, i := other.Decide(snap, "tools/call", "admin_reset"); a != Deny || i != 7 {
		t.Fatalf("Decide(snapshot) under another policy = %v, %d; want deny by rule 7, as nobody", a, i)
	}
	if a, i := p.Decide((&Policy{}).Snapshot(bob), "tools/call", "admin_reset"); a != Deny || i != 7 {
		t.Fatalf("Decide(snapshot under an uncompiled policy) = %v, %d; want deny by rule 7", a, i)
	}
}

func TestDecideDefaultAllow(t *testing.T) {
	p := &Policy{Rules: []Rule{{Action: Deny, Kind: KindTool, Targets: []string{"x"}}}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	if a, i := p.Decide(nil, "tools/call", "y"); a != Allow || i != -1 {
		t.Fatalf("Decide = %v, %d; want allow, -1", a, i)
	}
	if a, i := p.Decide(nil, "tools/call", "x"); a != Deny || i != 0 {
		t.Fatalf("Decide = %v, %d; want deny, 0", a, i)
	}
}

func TestDecideUncompiled(t *testing.T) {
	p := &Policy{Default: Allow}
	if a, i := p.Decide(nil, "ping", ""); a != Deny || i != -1 {
		t.Fatalf("uncompiled Decide = %v, %d; want deny, -1", a, i)
	}
	if p.Allows(nil, KindTool, "x") {
		t.Fatal("uncompiled Allows = true")
	}
}

// TestDecideSnapshot checks that a compiled policy keeps deciding as
// compiled until the next Compile, and that a failed Compile keeps the
// last good one.
func TestDecideSnapshot(t *testing.T) {
	p := &Policy{Rules: []Rule{{Action: Deny, Kind: KindTool, Targets: []string{"x"}}}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	p.Rules[0].Targets[0] = "y"
	p.Rules[0].Action = Allow
	if a, _ := p.Decide(nil, "tools/call", "x"); a != Deny {
		t.Fatal("a change to Rules took effect without Compile")
	}
	p.Rules[0].Targets = nil
	if err := p.Compile(); err == nil {
		t.Fatal("Compile accepted a rule without targets")
	}
	if a, _ := p.Decide(nil, "tools/call", "x"); a != Deny {
		t.Fatal("a failed Compile changed the policy")
	}
}

func TestDecideLazyConditions(t *testing.T) {
	p := &Policy{Rules: []Rule{
		{Action: Deny, Kind: KindTool, Targets: []string{"a"}, When: &Condition{Principals: []string{"x"}, Scopes: []string{"s"}, Placeholder: "{p}", Values: []string{"v"}, Matcher: 1}},
		{Action: Deny, Kind: KindMethod, Targets: []string{"ping"}, When: &Condition{Principals: []string{"x"}, Matcher: -1}},
		{Action: Allow, Kind: KindTool, Targets: []string{"*"}},
	}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	s := &subject{principal: "x"}
	if a, i := p.Decide(s, "tools/call", "b"); a != Allow || i != 2 || s.calls != 0 {
		t.Fatalf("Decide = %v, %d with %d subject calls; want allow, 2 with none", a, i, s.calls)
	}
	// The first test that fails ends the evaluation: the principal holds,
	// matcher set 1 does not, so neither the placeholder nor the scopes
	// are asked for.
	if a, i := p.Decide(s, "tools/call", "a"); a != Allow || i != 2 || s.calls != 2 {
		t.Fatalf("Decide = %v, %d with %d subject calls; want allow, 2 with 2", a, i, s.calls)
	}
}

func TestAllows(t *testing.T) {
	p := &Policy{Default: Deny, Rules: []Rule{
		{Action: Deny, Kind: KindMethod, Targets: []string{"tools/call"}, When: &Condition{Principals: []string{"mallory"}, Matcher: -1}},
		{Action: Allow, Kind: KindTool, Targets: []string{"read_*"}},
		{Action: Allow, Kind: KindPrompt, Targets: []string{"greet"}},
		{Action: Deny, Kind: KindResource, Targets: []string{"file:///secret/*"}},
		{Action: Allow, Kind: KindResource, Targets: []string{"file:///*"}},
		{Action: Allow, Kind: KindResource, Targets: []string{"subscribe-only://*"}, Methods: []string{"resources/subscribe"}},
		{Action: Allow, Kind: KindMethod, Targets: []string{"ping"}},
	}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	alice := &subject{principal: "alice"}
	mallory := &subject{principal: "mallory"}
	tests := []struct {
		s      Subject
		k      Kind
		target string
		want   bool
	}{
		{alice, KindTool, "read_file", true},
		{alice, KindTool, "write_file", false},
		{mallory, KindTool, "read_file", false},
		{alice, KindPrompt, "greet", true},
		{alice, KindPrompt, "read_file", false},
		{alice, KindResource, "file:///home/a", true},
		{alice, KindResource, "file:///secret/a", false},
		{alice, KindResource, "file:///secret/{name}", false}, // a template, matched as a URI
		{alice, KindResource, "file:///{path}", true},
		{alice, KindResource, "subscribe-only://x", false}, // only resources/read counts
		{alice, KindMethod, "ping", true},
		{alice, KindMethod, "tools/list", false},
		{alice, Kind(9), "x", false},
	}
	for _, tt := range tests {
		if got := p.Allows(tt.s, tt.k, tt.target); got != tt.want {
			t.Errorf("Allows(%v, %q) = %v, want %v", tt.k, tt.target, got, tt.want)
		}
	}
}

func TestManyLiterals(t *testing.T) {
	var targets []string
	for i := range 100 {
		targets = append(targets, fmt.Sprintf("tool_%d", i))
	}
	targets = append(targets, "glob_*")
	p := &Policy{Default: Deny, Rules: []Rule{{Action: Allow, Kind: KindTool, Targets: targets}}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		want Action
	}{{"tool_0", Allow}, {"tool_99", Allow}, {"tool_100", Deny}, {"glob_x", Allow}, {"tool_", Deny}} {
		if a, _ := p.Decide(nil, "tools/call", tt.name); a != tt.want {
			t.Errorf("Decide(%q) = %v, want %v", tt.name, a, tt.want)
		}
	}
}

// constSubject is a Subject without state, safe for concurrent use.
type constSubject string

func (c constSubject) Principal() string       { return string(c) }
func (constSubject) Value(string) string       { return "acme" }
func (constSubject) HasScopes(s []string) bool { return true }
func (constSubject) Match(int) bool            { return true }

func TestDecideConcurrent(t *testing.T) {
	p := testPolicy()
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			s := constSubject(fmt.Sprint("user", g))
			for range 1000 {
				if a, i := p.Decide(s, "tools/call", "delete_x"); a != Deny || i != 2 {
					t.Errorf("Decide = %v, %d", a, i)
					return
				}
				p.Allows(s, KindResource, "file:///a")
			}
		})
	}
	wg.Wait()
}

// benchPolicy has ten rules, the last one the one that decides the
// benchmarked call.
func benchPolicy() *Policy {
	return &Policy{Default: Deny, Rules: []Rule{
		{Action: Deny, Kind: KindMethod, Targets: []string{"logging/setLevel", "sampling/*"}},
		{Action: Allow, Kind: KindMethod, Targets: []string{"initialize", "ping", "notifications/*", "*/list"}},
		{Action: Deny, Kind: KindTool, Targets: []string{"delete_*", "drop_*", "*_admin"}},
		{Action: Allow, Kind: KindTool, Targets: []string{"admin_*"}, When: &Condition{Principals: []string{"alice", "bob"}, Matcher: -1}},
		{Action: Deny, Kind: KindResource, Targets: []string{"file:///etc/*"}},
		{Action: Allow, Kind: KindResource, Targets: []string{"file:///srv/*"}},
		{Action: Allow, Kind: KindPrompt, Targets: []string{"greet", "summarise"}},
		{Action: Allow, Kind: KindTool, Targets: []string{"tenant_*"}, When: &Condition{Placeholder: "{http.request.header.X-Tenant}", Values: []string{"acme-*"}, Matcher: -1}},
		{Action: Deny, Kind: KindTool, Targets: []string{"*exec*", "shell?"}, When: &Condition{Negate: true, Scopes: []string{"exec"}, Matcher: -1}},
		{Action: Allow, Kind: KindTool, Targets: []string{"read_file", "list_dir", "search", "fetch_url"}, When: &Condition{Scopes: []string{"read"}, Matcher: -1}},
	}}
}

func BenchmarkDecide(b *testing.B) {
	p := benchPolicy()
	if err := p.Compile(); err != nil {
		b.Fatal(err)
	}
	s := constSubject("carol")
	b.ReportAllocs()
	for b.Loop() {
		if a, i := p.Decide(s, "tools/call", "search"); a != Allow || i != 9 {
			b.Fatalf("Decide = %v, %d", a, i)
		}
	}
}
