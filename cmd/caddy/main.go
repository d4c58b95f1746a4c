// Command caddy is Caddy with its standard modules, the mcpgate modules and
// a small demo MCP server (the mcp_demo handler), so that
//
//	go run ./cmd/caddy run --config Caddyfile.example
//
// serves a working MCP proxy with nothing else running.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// Caddy's standard modules.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	// The mcpgate modules.
	_ "github.com/mcpgate/mcpgate"

	// The demo MCP server, mcp_demo.
	_ "github.com/mcpgate/mcpgate/internal/demo/caddydemo"
)

func main() {
	caddycmd.Main()
}
