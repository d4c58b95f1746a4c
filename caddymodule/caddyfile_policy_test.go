package caddymodule

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestRulesCaddyfileErrors checks that malformed governance subdirectives
// are refused with a message naming the problem.
func TestRulesCaddyfileErrors(t *testing.T) {
	cases := map[string]string{
		"rules {\n\t\tpermit tool x\n\t}":              "want allow, deny or default",
		"rules {\n\t\tdeny gadget x\n\t}":              `"gadget": want tool, prompt, resource or method`,
		"rules {\n\t\tdeny tool\n\t}":                  "want <tool|prompt|resource|method> <glob...>",
		"rules {\n\t\tdeny tool on tools/call\n\t}":    "no targets",
		"rules {\n\t\tdeny method x on y\n\t}":         "a method rule names its methods as targets",
		"rules {\n\t\tdeny tool x if\n\t}":             "if: want principal, scope, value or match",
		"rules {\n\t\tdeny tool x if colour red\n\t}":  `if "colour": want principal, scope, value or match`,
		"rules {\n\t\tdeny tool x if value {h}\n\t}":   "value: want <placeholder> <glob...>",
		"rules {\n\t\tdeny tool x if match @a @b\n\t}": "match: want one named matcher",
		"rules {\n\t\tdeny tool x if match @a\n\t}":    "named matchers need the Caddyfile",
		"rules {\n\t\tdefault maybe\n\t}":              "default: want allow or deny",
		"rules\n\trules":                               "rules given twice",
		"pin_tools sometimes":                          `"sometimes": want off, drop or warn`,
		"unknown_error gadget 1 x":                     `"gadget": want tool, prompt, resource or method`,
		"unknown_error tool one x":                     `code "one": want a number`,
		"tool x max_inflight 1 delay 2s":               `unknown option "delay"`,
		"tool x wait 1s wait 2s":                       "wait given twice",
		"audit {\n\t\tqueue lots\n\t}":                 `"lots": want a count`,
		"audit {\n\t\tshred /x\n\t}":                   `unrecognized audit option "shred"`,
		"max_response huge":                            `"huge": want a size`,
		"request_timeout soon":                         "soon",
	}
	for block, want := range cases {
		d := caddyfile.NewTestDispenser("mcp_proxy 127.0.0.1:1 {\n\t" + block + "\n}")
		err := new(Handler).UnmarshalCaddyfile(d)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one containing %q", block, err, want)
		}
	}
}
