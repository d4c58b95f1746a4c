package policy

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/mcpgate/mcpgate/mcp"
)

func TestParseKind(t *testing.T) {
	for _, k := range []Kind{KindMethod, KindTool, KindPrompt, KindResource} {
		if got, ok := ParseKind(k.String()); !ok || got != k {
			t.Errorf("ParseKind(%q) = %v, %v", k, got, ok)
		}
	}
	if _, ok := ParseKind("tools"); ok {
		t.Error("ParseKind(tools) succeeded")
	}
}

func TestLifecycle(t *testing.T) {
	for m, want := range map[string]bool{
		"initialize": true, "ping": true, "notifications/initialized": true, "notifications/cancelled": true,
		"tools/list": true, "prompts/list": true, "resources/list": true, "resources/templates/list": true,
		"tools/call": false, "resources/read": false, "logging/setLevel": false, "sampling/createMessage": false,
	} {
		if got := Lifecycle(m); got != want {
			t.Errorf("Lifecycle(%q) = %v, want %v", m, got, want)
		}
	}
}

// envelopes parses a body as the proxy's peek does.
func envelopes(t *testing.T, body string) []mcp.Envelope {
	t.Helper()
	var p mcp.Peek
	if err := mcp.ParseEnvelope([]byte(body), true, &p); err != nil {
		t.Fatalf("%s: %v", body, err)
	}
	return p.Messages
}

func TestDecideAll(t *testing.T) {
	p := &Policy{Default: Deny, Rules: []Rule{
		{Action: Deny, Kind: KindTool, Targets: []string{"delete_*"}, Label: "no deletes"},
		{Action: Allow, Kind: KindTool, Targets: []string{"*"}, Label: "tools"},
	}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		body     string
		denied   []Denial
		last     Action
		lastRule string
	}{
		{`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}`, nil, Allow, "tools"},
		{`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`, nil, Allow, ""},
		{`{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{}}`,
			[]Denial{{Index: 0, Kind: KindMethod, Name: "logging/setLevel"}}, Deny, ""},
		{`[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repo"}},` +
			`{"jsonrpc":"2.0","method":"notifications/initialized"},` +
			`{"jsonrpc":"2.0","id":2,"method":"prompts/get","params":{"name":"greet"}},` +
			`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo"}}]`,
			[]Denial{{Index: 0, Kind: KindTool, Name: "delete_repo", Rule: "no deletes"}, {Index: 2, Kind: KindPrompt, Name: "greet"}},
			Allow, "tools"},
		{`{"jsonrpc":"2.0","id":1,"result":{}}`, nil, Allow, ""},
	}
	for _, c := range cases {
		denied, last, rule := p.DecideAll(nil, envelopes(t, c.body))
		if len(denied) != len(c.denied) || last != c.last || rule != c.lastRule {
			t.Errorf("%s: %v, %v, %q; want %v, %v, %q", c.body, denied, last, rule, c.denied, c.last, c.lastRule)
			continue
		}
		for i := range denied {
			if denied[i] != c.denied[i] {
				t.Errorf("%s: denial %d = %+v, want %+v", c.body, i, denied[i], c.denied[i])
			}
		}
	}
}

// TestDecideAllCompletion checks that a completion/complete is judged as
// the prompt or resource template its params.ref refers to, as well as
// the method: denied when either denies, as the prompt or resource when
// the method is allowed.
func TestDecideAllCompletion(t *testing.T) {
	complete := func(id int, ref string) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"completion/complete","params":{"ref":%s,"argument":{"name":"a","value":""}}}`, id, ref)
	}
	prompt := func(name string) string { return `{"type":"ref/prompt","name":"` + name + `"}` }
	template := func(uri string) string { return `{"type":"ref/resource","uri":"` + uri + `"}` }
	rules := []Rule{
		{Action: Deny, Kind: KindPrompt, Targets: []string{"admin_*"}, Label: "no admin"},
		{Action: Deny, Kind: KindResource, Targets: []string{"file:///secret/*"}, Label: "no secrets"},
		{Action: Deny, Kind: KindResource, Targets: []string{"secret://*"}, Methods: []string{"resources/subscribe"}, Label: "no watching"},
		{Action: Deny, Kind: KindMethod, Targets: []string{"completion/complete"}, When: &Condition{Principals: []string{"mallory"}, Matcher: -1}, Label: "no completing"},
		{Action: Allow, Kind: KindPrompt, Targets: []string{"greet"}, Label: "greet"},
	}
	p := &Policy{Rules: rules}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		body     string
		denied   []Denial
		last     Action
		lastRule string
	}{
		{complete(1, prompt("admin_reset")), []Denial{{Kind: KindPrompt, Name: "admin_reset", Rule: "no admin"}}, Deny, "no admin"},
		{complete(2, template("file:///secret/{name}")), []Denial{{Kind: KindResource, Name: "file:///secret/{name}", Rule: "no secrets"}}, Deny, "no secrets"},
		// The template is matched in its canonical form too.
		{complete(3, template("FILE:///public/../secret/{name}")), []Denial{{Kind: KindResource, Name: "FILE:///public/../secret/{name}", Rule: "no secrets"}}, Deny, "no secrets"},
		{complete(4, prompt("greet")), nil, Allow, "greet"},
		{complete(5, prompt("other")), nil, Allow, ""},
		{complete(6, template("file:///public/{name}")), nil, Allow, ""},
		// A rule narrowed to another method leaves the template listed,
		// and completed.
		{complete(7, template("secret://{name}")), nil, Allow, ""},
		// The target is the member the ref's type names.
		{complete(8, `{"type":"ref/prompt","name":"greet","uri":"file:///secret/{name}"}`), nil, Allow, "greet"},
		{complete(9, `{"type":"ref/resource","name":"admin_reset","uri":"file:///secret/{name}"}`), []Denial{{Kind: KindResource, Name: "file:///secret/{name}", Rule: "no secrets"}}, Deny, "no secrets"},
		// Another type is judged as the method only.
		{complete(10, `{"type":"ref/tool","name":"admin_reset"}`), nil, Allow, ""},
		// Other methods are not judged by a ref.
		{`{"jsonrpc":"2.0","id":11,"method":"x/y","params":{"ref":{"type":"ref/prompt","name":"admin_reset"}}}`, nil, Allow, ""},
		{`[` + complete(12, prompt("greet")) + `,` + complete(13, prompt("admin_x")) + `]`, []Denial{{Index: 1, Kind: KindPrompt, Name: "admin_x", Rule: "no admin"}}, Deny, "no admin"},
	}
	for _, c := range cases {
		denied, last, rule := p.DecideAll(nil, envelopes(t, c.body))
		if len(denied) != len(c.denied) || last != c.last || rule != c.lastRule {
			t.Errorf("%s: %v, %v, %q; want %v, %v, %q", c.body, denied, last, rule, c.denied, c.last, c.lastRule)
			continue
		}
		for i := range denied {
			if denied[i] != c.denied[i] {
				t.Errorf("%s: denial %d = %+v, want %+v", c.body, i, denied[i], c.denied[i])
			}
		}
	}

	// A method rule still applies, and names the method.
	s := &subject{principal: "mallory"}
	denied, _, rule := p.DecideAll(s, envelopes(t, complete(14, prompt("greet"))))
	if len(denied) != 1 || denied[0].Kind != KindMethod || denied[0].Name != "completion/complete" || rule != "no completing" {
		t.Errorf("completion by mallory: %+v, rule %q", denied, rule)
	}
	denied, _, _ = p.DecideAll(s, envelopes(t, complete(15, prompt("admin_reset"))))
	if len(denied) != 1 || denied[0].Kind != KindMethod {
		t.Errorf("completion of a denied prompt by mallory: %+v", denied)
	}

	// Under default deny the method and the item must both be allowed.
	p = &Policy{Default: Deny, Rules: []Rule{
		{Action: Allow, Kind: KindMethod, Targets: []string{"completion/complete"}, Label: "completing"},
		{Action: Allow, Kind: KindPrompt, Targets: []string{"greet"}, Label: "greet"},
	}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	if denied, _, rule := p.DecideAll(nil, envelopes(t, complete(16, prompt("greet")))); len(denied) != 0 || rule != "greet" {
		t.Errorf("default deny, allowed prompt: %+v, rule %q", denied, rule)
	}
	if denied, _, _ := p.DecideAll(nil, envelopes(t, complete(17, prompt("other")))); len(denied) != 1 || denied[0].Kind != KindPrompt || denied[0].Rule != "" {
		t.Errorf("default deny, other prompt: %+v", denied)
	}
	if denied, _, rule := p.DecideAll(nil, envelopes(t, complete(18, `{"type":"ref/tool","name":"x"}`))); len(denied) != 0 || rule != "completing" {
		t.Errorf("default deny, another type of ref: %+v, rule %q", denied, rule)
	}
}

func TestUnknownErrorAnswer(t *testing.T) {
	u := DefaultUnknownErrors()
	u[KindPrompt] = UnknownError{Code: -32000, Message: "no prompt %s here"}
	cases := []struct {
		d    Denial
		id   string
		want string
	}{
		{Denial{Kind: KindTool, Name: "delete_repo"}, `1`, `{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"unknown tool \"delete_repo\""}}`},
		{Denial{Kind: KindMethod, Name: "logging/setLevel"}, `"a"`, `{"jsonrpc":"2.0","id":"a","error":{"code":-32601,"message":"method not found: \"logging/setLevel\""}}`},
		{Denial{Kind: KindResource, Name: "file:///etc/passwd"}, `2`, `{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"Resource not found","data":{"uri":"file:///etc/passwd"}}}`},
		{Denial{Kind: KindPrompt, Name: "greet"}, ``, `{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"no prompt greet here"}}`},
		{Denial{Kind: KindTool, Name: "<b>"}, `3`, `{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"unknown tool \"\u003cb\u003e\""}}`},
	}
	for _, c := range cases {
		if got := string(u.Answer(c.d, c.id)); got != c.want {
			t.Errorf("Answer(%+v, %s) =\n%s\nwant\n%s", c.d, c.id, got, c.want)
		}
	}
}

func TestUnknownErrorsAnswers(t *testing.T) {
	u := DefaultUnknownErrors()
	msgs := envelopes(t, `[{"jsonrpc":"2.0","method":"notifications/x"},`+
		`{"jsonrpc":"2.0","id":1,"method":"logging/setLevel","params":{}},`+
		`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}]`)
	denied := []Denial{{Index: 0, Kind: KindMethod, Name: "notifications/x"}, {Index: 1, Kind: KindMethod, Name: "logging/setLevel"}}
	answers, code := u.Answers(msgs, denied)
	if code != mcp.CodeMethodNotFound || len(answers) != 2 {
		t.Fatalf("code %d, %d answers", code, len(answers))
	}
	if !strings.Contains(string(answers[0]), `"id":1,`) || !strings.Contains(string(answers[1]), `"batch not processed"`) {
		t.Errorf("answers: %s", answers)
	}
	if answers, code := u.Answers(msgs[:1], denied[:1]); len(answers) != 0 || code != 0 {
		t.Errorf("a denied notification: %s, code %d", answers, code)
	}
}

func TestStripDenied(t *testing.T) {
	u := DefaultUnknownErrors()
	body := `[ {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"delete_repo"}},` +
		` {"jsonrpc":"2.0","method":"notifications/x"},` +
		` {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}} ]`
	msgs := envelopes(t, body)
	denied := []Denial{{Index: 0, Kind: KindTool, Name: "delete_repo"}, {Index: 1, Kind: KindMethod, Name: "notifications/x"}}
	out, kept, answers, ok := u.StripDenied([]byte(body), msgs, denied)
	if !ok {
		t.Fatal("not stripped")
	}
	if want := `[{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}]`; string(out) != want {
		t.Errorf("body %s, want %s", out, want)
	}
	if len(kept) != 1 || kept[0].Name != "echo" {
		t.Errorf("kept %+v", kept)
	}
	if len(answers) != 1 || string(answers[0]) != string(u.Answer(denied[0], "1")) {
		t.Errorf("answers %s", answers)
	}
	if _, _, _, ok := u.StripDenied([]byte(`[1,2]`), msgs, denied); ok {
		t.Error("a body of other members was stripped")
	}
	if _, _, _, ok := u.StripDenied([]byte(`{}`), msgs, denied); ok {
		t.Error("a body that is not an array was stripped")
	}
}

func TestSpliceAnswers(t *testing.T) {
	got, err := SpliceAnswers([]byte(`[ {"jsonrpc":"2.0","id":2,"result":{}} ]`), [][]byte{[]byte(`{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}`)})
	if err != nil {
		t.Fatal(err)
	}
	var all []json.RawMessage
	if json.Unmarshal(got, &all) != nil || len(all) != 2 || !strings.Contains(string(all[1]), `"id":1`) {
		t.Errorf("spliced %s", got)
	}
	if _, err := SpliceAnswers([]byte(`{"jsonrpc":"2.0","id":2,"result":{}}`), nil); err == nil {
		t.Error("an answer that is not an array was spliced")
	}
}

// TestDecideAllListen: a 2026-07-28 subscriptions/listen subscribes to
// the resources its params.notifications.resourceSubscriptions names, as
// resources/subscribe does: each is judged as a resources/subscribe of
// it, and the listen is denied as the first denied one.
func TestDecideAllListen(t *testing.T) {
	listen := func(id int, uris string) string {
		return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true,"resourceSubscriptions":[%s]}}}`, id, uris)
	}
	p := &Policy{Rules: []Rule{
		{Action: Deny, Kind: KindResource, Targets: []string{"file:///secret/*"}, Label: "no secrets"},
		{Action: Deny, Kind: KindResource, Targets: []string{"secret://*"}, Methods: []string{"resources/subscribe"}, Label: "no watching"},
		{Action: Deny, Kind: KindResource, Targets: []string{"db://*"}, Methods: []string{"resources/read"}, Label: "no reading"},
	}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		body   string
		denied []Denial
	}{
		{listen(1, `"file:///secret/key"`), []Denial{{Kind: KindResource, Name: "file:///secret/key", Rule: "no secrets"}}},
		{listen(2, `"file:///public/a","file:///secret/key"`), []Denial{{Kind: KindResource, Name: "file:///secret/key", Rule: "no secrets"}}},
		{listen(3, `"secret://db"`), []Denial{{Kind: KindResource, Name: "secret://db", Rule: "no watching"}}},
		{listen(4, `"FILE:///public/../secret/key"`), []Denial{{Kind: KindResource, Name: "FILE:///public/../secret/key", Rule: "no secrets"}}},
		{listen(5, `"file:///public/a","db://x"`), nil},
		{listen(6, ``), nil},
		{`{"jsonrpc":"2.0","id":7,"method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true}}}`, nil},
		// Another method's params.notifications is not read.
		{`{"jsonrpc":"2.0","id":8,"method":"x/y","params":{"notifications":{"resourceSubscriptions":["file:///secret/key"]}}}`, nil},
	}
	for _, c := range cases {
		denied, _, _ := p.DecideAll(nil, envelopes(t, c.body))
		if len(denied) != len(c.denied) {
			t.Errorf("%s: %+v, want %+v", c.body, denied, c.denied)
			continue
		}
		for i := range denied {
			if denied[i] != c.denied[i] {
				t.Errorf("%s: denial %d = %+v, want %+v", c.body, i, denied[i], c.denied[i])
			}
		}
	}
	// Under default deny, the listen and each of its resources must be
	// allowed.
	p = &Policy{Default: Deny, Rules: []Rule{
		{Action: Allow, Kind: KindMethod, Targets: []string{"subscriptions/listen"}},
		{Action: Allow, Kind: KindResource, Targets: []string{"file:///public/*"}},
	}}
	if err := p.Compile(); err != nil {
		t.Fatal(err)
	}
	if denied, _, _ := p.DecideAll(nil, envelopes(t, listen(9, `"file:///public/a"`))); len(denied) != 0 {
		t.Errorf("default deny, allowed resource: %+v", denied)
	}
	if denied, _, _ := p.DecideAll(nil, envelopes(t, listen(10, `"file:///public/a","file:///other"`))); len(denied) != 1 || denied[0].Name != "file:///other" {
		t.Errorf("default deny, another resource: %+v", denied)
	}
}
