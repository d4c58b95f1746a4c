# Sourced by the .ci scripts that build the Go SDK's conformance programs.
# build_gosdk_conformance <program> <output> <scratch-dir> builds
# github.com/modelcontextprotocol/go-sdk/conformance/<program>
# (everything-server, everything-client) with the repo's go.mod, or, when
# that lacks something the program needs, against a scratch copy of
# go.mod/go.sum in <scratch-dir> (the checkout is never modified), saying
# so loudly. Run it from the repository root.
GO_SDK_MODULE="github.com/modelcontextprotocol/go-sdk"
GO_SDK_FALLBACK_VERSION="v1.8.0"

build_gosdk_conformance() {
  local program="$1" out="$2" scratch="$3" pkg sdk_version
  pkg="$GO_SDK_MODULE/conformance/$program"
  mkdir -p "$scratch"
  if go build -o "$out" "$pkg" 2>"$scratch/build-$program.log"; then
    return 0
  fi
  echo "NOTE: 'go build $pkg' failed with the repo's go.mod/go.sum:"
  sed 's/^/    /' "$scratch/build-$program.log" | head -n 8
  sdk_version="$(go list -m -f '{{.Version}}' "$GO_SDK_MODULE" 2>/dev/null || true)"
  sdk_version="${sdk_version:-$GO_SDK_FALLBACK_VERSION}"
  echo "NOTE: building it against a scratch copy of go.mod/go.sum with $GO_SDK_MODULE@$sdk_version instead"
  mkdir -p "$scratch/modfile"
  cp go.mod "$scratch/modfile/go.mod"
  cp go.sum "$scratch/modfile/go.sum" 2>/dev/null || true
  go get -modfile="$scratch/modfile/go.mod" "$GO_SDK_MODULE@$sdk_version" >/dev/null 2>&1 || true
  go build -modfile="$scratch/modfile/go.mod" -mod=mod -o "$out" "$pkg"
}
