package caddytest

import (
	"os"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestREADMECaddyfiles adapts every complete Caddyfile in README.md (a
// caddyfile block that opens a site), so the examples stay valid.
func TestREADMECaddyfiles(t *testing.T) {
	t.Setenv("MCP_SESSION_KEY", "a-passphrase-of-at-least-32-characters")
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	rest := string(readme)
	n := 0
	for {
		var block string
		var ok bool
		if _, rest, ok = strings.Cut(rest, "```caddyfile\n"); !ok {
			break
		}
		block, rest, _ = strings.Cut(rest, "```")
		first, _, _ := strings.Cut(block, "\n")
		addr, _, _ := strings.Cut(first, " ")
		if first != "{" && !strings.ContainsAny(addr, ".:") {
			continue // a snippet of a site or of the global block
		}
		n++
		if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(block), map[string]any{"filename": "README"}); err != nil {
			t.Errorf("README Caddyfile does not adapt: %v\n%s", err, block)
		}
	}
	if n < 3 {
		t.Errorf("found %d Caddyfiles in README.md", n)
	}
}
