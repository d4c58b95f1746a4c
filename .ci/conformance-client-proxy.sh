#!/usr/bin/env bash
# Client command wrapper for `conformance client`: puts a Caddy between an
# MCP client and the conformance suite's test server of one scenario.
#
# usage: conformance-client-proxy.sh <client> [<client args>...] <server-url>
#
# The conformance CLI appends the scenario's server URL (e.g.
# http://localhost:41234/mcp) to the command. This script starts a Caddy on
# a free loopback port whose only site proxies to that server's host:port,
# runs the client with the URL rewritten to go through Caddy (same path and
# query), and stops Caddy when the client exits, fails, times out or this
# script is signalled. MCP_CONFORMANCE_SCENARIO and MCP_CONFORMANCE_CONTEXT
# reach the client unchanged. The exit code is the client's.
#
# Environment:
#   CADDY_BIN                  Caddy binary with the mcpgate modules (required)
#   CONFORMANCE_PROXY          mcp_proxy (default) or reverse_proxy: the handler
#                              in front of the test server's MCP endpoint
#                              (reverse_proxy alone is the control that shows
#                              what any reverse proxy on another origin changes)
#   CONFORMANCE_PROXY_TIMEOUT  seconds the client may run (default 25, below the
#                              CLI's own 30s)
#   CONFORMANCE_PROXY_OPTIONS  lines for mcp_proxy's block, e.g.
#                              "require_session off" (default: none)
#   CONFORMANCE_PROXY_LOGS     directory to copy each Caddyfile and Caddy log to
set -uo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 <client> [<client args>...] <server-url>" >&2
  exit 2
fi
CADDY="${CADDY_BIN:?CADDY_BIN must name a Caddy binary with the mcpgate modules}"
HANDLER="${CONFORMANCE_PROXY:-mcp_proxy}"
case "$HANDLER" in
  mcp_proxy | reverse_proxy) ;;
  *) echo "CONFORMANCE_PROXY must be mcp_proxy or reverse_proxy, not $HANDLER" >&2; exit 2 ;;
esac

URL="${*: -1}"
CLIENT=("${@:1:$#-1}")
if [[ ! "$URL" =~ ^http://([^/?#]+)(.*)$ ]]; then
  echo "$0: not an http:// URL: $URL" >&2
  exit 2
fi
UPSTREAM="${BASH_REMATCH[1]}"
REST="${BASH_REMATCH[2]}"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/mcpgate-client-proxy.XXXXXX")"
CADDY_PID=""
CLIENT_PID=""
# shellcheck source=procs.sh
source "$(dirname "${BASH_SOURCE[0]}")/procs.sh"
stop_caddy() {
  [[ -n "$CADDY_PID" ]] || return 0
  stop_group "$CADDY_PID"
  CADDY_PID=""
}
cleanup() {
  local rc=$?
  [[ -n "$CLIENT_PID" ]] && kill -TERM -- "-$CLIENT_PID" 2>/dev/null
  stop_caddy
  if [[ -n "${CONFORMANCE_PROXY_LOGS:-}" ]]; then
    local name="${MCP_CONFORMANCE_SCENARIO:-scenario}"
    mkdir -p "$CONFORMANCE_PROXY_LOGS" &&
      cp "$TMP/caddy.log" "$CONFORMANCE_PROXY_LOGS/${name//\//_}.caddy.log" 2>/dev/null
    cp "$TMP/Caddyfile" "$CONFORMANCE_PROXY_LOGS/${name//\//_}.Caddyfile" 2>/dev/null
  fi
  rm -rf "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM HUP
trap 'exit 130' INT

# probe <port> <nonce>: the Caddy on <port> answers the probe with <nonce>,
# so it is this script's Caddy and not one of a concurrent run's.
probe() {
  local reply
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET /.conformance-proxy-probe HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
  reply="$(timeout 2 cat <&3)"
  exec 3<&-
  [[ "$reply" == *"$2"* ]]
}

# The site: with mcp_proxy, the MCP endpoint and the OAuth discovery
# documents go to mcp_proxy, and the upstream's other paths (a 2025-03-26
# server that is its own authorization server serves /authorize, /token
# and /register on the MCP origin) to a plain reverse_proxy, as a
# deployment in front of such a server would route them. The control runs
# reverse_proxy alone.
MCP_PATH="${REST%%[?#]*}"
if [[ "$HANDLER" == mcp_proxy ]]; then
  SITE="@mcp path ${MCP_PATH:-/} /.well-known/*
	handle @mcp {
		mcp_proxy $UPSTREAM {
			${CONFORMANCE_PROXY_OPTIONS:-}
		}
	}
	handle {
		reverse_proxy $UPSTREAM
	}"
else
  SITE="handle {
		reverse_proxy $UPSTREAM
	}"
fi

# start_caddy <port>: 0 once this script's Caddy answers on <port>.
start_caddy() {
  local port="$1" nonce i
  nonce="probe-$$-$RANDOM$RANDOM"
  cat >"$TMP/Caddyfile" <<EOF
{
	admin off
	auto_https off
	persist_config off
}
http://:$port {
	bind 127.0.0.1
	handle /.conformance-proxy-probe {
		respond "$nonce" 200
	}
	$SITE
}
EOF
  XDG_DATA_HOME="$TMP/xdg" XDG_CONFIG_HOME="$TMP/xdg" \
    setsid "$CADDY" run --config "$TMP/Caddyfile" --adapter caddyfile \
    >"$TMP/caddy.log" 2>&1 </dev/null &
  CADDY_PID=$!
  for i in $(seq 1 100); do
    kill -0 "$CADDY_PID" 2>/dev/null || break
    if probe "$port" "$nonce" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  stop_caddy
  return 1
}

started=""
for attempt in 1 2 3 4 5; do
  port=$((20000 + RANDOM % 12000))
  if start_caddy "$port"; then
    started=1
    break
  fi
done
if [[ -z "$started" ]]; then
  echo "$0: caddy did not start; its last log:" >&2
  tail -n 20 "$TMP/caddy.log" >&2
  exit 1
fi

# The client runs in its own process group so that a timeout or a signal
# stops it and whatever it started.
setsid timeout -k 2 "${CONFORMANCE_PROXY_TIMEOUT:-25}" "${CLIENT[@]}" "http://127.0.0.1:$port$REST" &
CLIENT_PID=$!
wait "$CLIENT_PID"
rc=$?
CLIENT_PID=""
exit "$rc"
