package caddytest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddytester "github.com/caddyserver/caddy/v2/caddytest"
)

// TestCaddyfileAdapt compares the JSON that each Caddyfile in
// testdata/adapt adapts to with the JSON after its "----------" line.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/adapt/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt cases: %v", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		caddyfile, expected, ok := strings.Cut(string(data), "----------\n")
		if !ok {
			t.Fatalf("%s: no separator", f)
		}
		if !caddytester.CompareAdapt(t, f, caddyfile, "caddyfile", strings.TrimSpace(expected)) {
			t.Errorf("%s: adapted JSON differs", f)
		}
	}
}

// TestCaddyfileErrors checks that bad mcp_proxy blocks fail to adapt with
// a message naming the problem.
func TestCaddyfileErrors(t *testing.T) {
	for name, tt := range map[string]struct{ block, want string }{
		"max_peek":         {"max_peek lots", "bad max_peek"},
		"max_peek zero":    {"max_peek 0", "bad max_peek"},
		"session_lifetime": {"session_lifetime forever", "bad session_lifetime"},
		"require_session":  {"require_session maybe", "require_session"},
		"stream_handoff":   {"stream_handoff maybe", "stream_handoff"},
		"session_key":      {"session_key", "wrong argument count"},
		"allowed_origins":  {"allowed_origins", "wrong argument count"},
		"unknown":          {"no_such_thing 1", "no_such_thing"},
	} {
		cf := ":8080 {\n\tmcp_proxy localhost:3000 {\n\t\t" + tt.block + "\n\t}\n}\n"
		_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want it to mention %q", name, err, tt.want)
		}
	}
}
