package caddytest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	caddytester "github.com/caddyserver/caddy/v2/caddytest"

	// mcp_demo, which Caddyfile.example uses.
	_ "github.com/mcpgate/mcpgate/internal/demo/caddydemo"
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
		"allowed_hosts":    {"allowed_hosts a.example", "allowed_origins"},
		"given twice":      {"max_inflight 4\n\t\tmax_inflight 8", "given twice"},
		"max_body":         {"max_body huge", "bad max_body"},
		"body_timeout":     {"body_timeout -1s", "bad body_timeout"},
		"ipv6 prefix":      {"client_ipv6_prefix 129", "client_ipv6_prefix"},
		"client streams":   {"client_max_streams many", "client_max_streams"},
	} {
		adaptFails(t, name, proxyBlockCaddyfile("", tt.block), tt.want)
	}
}

// TestExampleInREADME: Caddyfile.example adapts, and to the JSON the
// README shows for it.
func TestExampleInREADME(t *testing.T) {
	t.Setenv("MCP_SESSION_KEY", "")
	os.Unsetenv("MCP_SESSION_KEY")
	example, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(example, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatalf("Caddyfile.example does not adapt: %v", err)
	}
	const open = "<details><summary>Caddyfile.example as JSON</summary>\n\n```json\n"
	_, block, ok := strings.Cut(string(readme), open)
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("README has no JSON block for Caddyfile.example")
	}
	var a, b bytes.Buffer
	if err := json.Compact(&a, got); err != nil {
		t.Fatal(err)
	}
	if err := json.Compact(&b, []byte(block)); err != nil {
		t.Fatalf("README's JSON: %v", err)
	}
	if a.String() != b.String() {
		t.Errorf("README's JSON for Caddyfile.example is not what it adapts to; regenerate it with\n  go run ./cmd/caddy adapt --config Caddyfile.example --pretty\ngot:\n%s", got)
	}
}
