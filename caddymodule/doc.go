// Package caddymodule wires the mcpgate libraries into Caddy: the module
// types (mcp_proxy, its mcp_relay transport and mcp_session policy,
// mcp_auth, the mcp app, mcp_health, mcp_connections, the admin routes),
// Caddyfile parsing, provisioning, metrics registration and Caddy events.
// The protocol, access policy, authentication, relaying, streaming,
// admission and resource logic lives in the packages mcp, policy, auth,
// relay, sse, h1stream, admission, resources and governor.
//
// # A request through mcp_proxy
//
// Handler.ServeHTTP runs a pipeline: classify (the request's shape, its
// origin, its MCP headers, the peek of its body), resolve its session
// from the sealed token, apply the access rules (policy), admit it
// (service level, session table, limits) and forward it through the
// embedded reverse_proxy, whose mcp_relay transport hands each attempt
// and its answer to the request's relay.State (package relay: session ids
// sealed in the answer, list results filtered, deadlines, SSE bodies
// relayed to the client).
//
// # The admission queue
//
// A queue that drains, or refuses nobody, absorbs bursts at its full
// size: within a priority it serves the oldest first, but the newest once
// the oldest has waited half of the queue timeout, so stale waiters time
// out instead of holding up fresh ones. Under sustained overload (the
// queue has not been empty for an interval, 100ms or half the timeout if
// shorter, and has refused a request in it) the queue is standing, as in
// CoDel: it holds at most clamp(⌊r × 5ms⌋, 1, size) waiters, r being the
// rate at which it handed slots to waiters over the last interval, serves
// them oldest first, and refuses newcomers beyond that at once, so
// admitted requests wait about 5ms and refused ones do not wait at all.
// It stands until it has refused nothing for an interval. A timeout of at
// most 5ms turns this off. See admission.Limiter.
package caddymodule
