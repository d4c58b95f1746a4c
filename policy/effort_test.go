package policy

import (
	"testing"
)

func TestEffortModes(t *testing.T) {
	for _, c := range []struct {
		e           Effort
		audit, pins string
		skip        bool
	}{
		{EffortFull, "full", "full", false},
		{EffortReduced, "sampled", "changed_only", true},
		{EffortMinimal, "denials_and_errors", "changed_only", true},
	} {
		if c.e.AuditMode() != c.audit || c.e.PinMode() != c.pins || c.e.SkipUnchangedPins() != c.skip {
			t.Errorf("Effort %d: %s, %s, %v", c.e, c.e.AuditMode(), c.e.PinMode(), c.e.SkipUnchangedPins())
		}
	}
}

func TestEffortKeep(t *testing.T) {
	ok := func(method string) *Record { return &Record{Method: method, Decision: "allow", Status: 200} }
	denied := &Record{Method: "tools/call", Decision: "deny", Status: 200}
	failed := &Record{Method: "tools/list", Decision: "allow", Status: 503}
	coded := &Record{Method: "ping", Decision: "allow", Status: 200, Code: -32603}
	for _, e := range []Effort{EffortFull, EffortReduced, EffortMinimal} {
		for _, r := range []*Record{denied, failed, coded} {
			if !e.Keep(r, NewSampler(1000)) {
				t.Errorf("Effort %d dropped %+v", e, r)
			}
		}
	}
	if !EffortFull.Keep(ok("tools/list"), NewSampler(1000)) || !EffortReduced.Keep(ok("tools/call"), NewSampler(1000)) {
		t.Error("a successful call was dropped at full effort, or one not sampled at reduced effort")
	}
	if EffortMinimal.Keep(ok("tools/call"), nil) {
		t.Error("a successful call was kept at minimal effort")
	}
	s := NewSampler(3)
	kept := 0
	for range 9 {
		if EffortReduced.Keep(ok("ping"), s) {
			kept++
		}
		if EffortReduced.Keep(ok("resources/templates/list"), s) {
			kept++
		}
	}
	if kept != 6 {
		t.Errorf("reduced effort kept %d of 18 sampled records, want 6", kept)
	}
}

func TestArgumentsOf(t *testing.T) {
	for _, c := range []struct{ msg, want string }{
		{`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"login","arguments":{"user":"a","password":"p"}}}`, `{"password":"REDACTED","user":"a"}`},
		{`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`, ``},
		{`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":null}}`, `null`},
		{`not json`, ``},
	} {
		if got := string(ArgumentsOf([]byte(c.msg), []string{"/password"}, 0)); got != c.want {
			t.Errorf("ArgumentsOf(%s) = %s, want %s", c.msg, got, c.want)
		}
	}
}
