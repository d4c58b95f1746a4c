// Package mcpgate is a set of Caddy v2 modules that put Caddy in front of
// Model Context Protocol (MCP) servers. Importing this package registers
// every mcpgate module, so
//
//	xcaddy build --with github.com/mcpgate/mcpgate
//
// builds a Caddy with them.
package mcpgate

import (
	// Register the Caddy modules.
	_ "github.com/mcpgate/mcpgate/caddymodule"
)
