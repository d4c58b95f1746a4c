// Package caddymodule wires the mcpgate libraries into Caddy: module
// registration, Caddyfile parsing, provisioning, metrics and admin routes.
package caddymodule
