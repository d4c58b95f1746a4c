// Package caddydemo registers the demo MCP server as the Caddy handler
// mcp_demo. Only ./cmd/caddy and the end-to-end tests import it; the
// mcpgate modules themselves (what xcaddy builds in) do not.
package caddydemo

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/mcpgate/mcpgate/internal/demo"
)

func init() {
	caddy.RegisterModule(new(Demo))
	httpcaddyfile.RegisterHandlerDirective("mcp_demo", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		d := new(Demo)
		err := d.UnmarshalCaddyfile(h.Dispenser)
		return d, err
	})
	httpcaddyfile.RegisterDirectiveOrder("mcp_demo", httpcaddyfile.Before, "respond")
}

// Demo is `mcp_demo`, a small MCP server (tools echo, add and countdown)
// built with the MCP Go SDK, so the example configuration works with
// nothing else running. It serves Streamable HTTP with sessions and
// resumable streams on every path, and the legacy HTTP+SSE transport under
// /sse. It is registered only by ./cmd/caddy (and the tests), not by the mcpgate
// package.
type Demo struct {
	handler http.Handler
}

// CaddyModule returns the Caddy module information.
func (*Demo) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.mcp_demo",
		New: func() caddy.Module { return new(Demo) },
	}
}

// Provision builds the demo server.
func (d *Demo) Provision(caddy.Context) error {
	d.handler = demo.Handler(demo.NewServer("mcpgate-demo"), "/sse", &mcp.StreamableHTTPOptions{
		EventStore: mcp.NewMemoryEventStore(nil),
	})
	return nil
}

// ServeHTTP serves the demo MCP server.
func (d *Demo) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	d.handler.ServeHTTP(w, r)
	return nil
}

// UnmarshalCaddyfile parses the directive, which takes no arguments:
//
//	mcp_demo
func (d *Demo) UnmarshalCaddyfile(disp *caddyfile.Dispenser) error {
	disp.Next()
	if disp.NextArg() {
		return disp.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Demo)(nil)
	_ caddyhttp.MiddlewareHandler = (*Demo)(nil)
	_ caddyfile.Unmarshaler       = (*Demo)(nil)
)
