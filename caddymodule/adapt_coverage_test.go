package caddymodule

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdaptGoldenCoverage checks that the Caddyfile→JSON golden files of
// caddytest use every subdirective of mcp_proxy (its audit block
// included), every option of the mcp global option and of mcp_auth, so
// each one's adapted JSON is pinned by a test.
func TestAdaptGoldenCoverage(t *testing.T) {
	files, err := filepath.Glob("../caddytest/testdata/adapt/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	used := map[string]bool{} // first words of the Caddyfile lines
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		caddyfile, _, _ := strings.Cut(string(data), "----------\n")
		for line := range strings.SplitSeq(caddyfile, "\n") {
			if fields := strings.Fields(line); len(fields) > 0 {
				used[fields[0]] = true
			}
		}
	}
	sets := map[string]map[string]option{
		"mcp_proxy":       new(Handler).options(),
		"mcp_proxy audit": new(AuditConfig).options(),
		"mcp":             new(App).options(),
		"mcp_auth":        new(Auth).options(),
	}
	for name := range blockOptions {
		sets["mcp_proxy"][name] = option{}
	}
	// A removed option, refused with a note (caddytest TestCaddyfileErrors).
	delete(sets["mcp_proxy"], "allowed_hosts")
	for set, opts := range sets {
		for name := range opts {
			if !used[name] {
				t.Errorf("%s: no golden adapt file uses %s", set, name)
			}
		}
	}
}
