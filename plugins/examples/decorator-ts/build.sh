#!/usr/bin/env bash
# Builds the decorator example into target/plugins/decorator-ts.wasm:
#   tsc --noEmit (type check) -> esbuild (one ES2020 module) -> wasmop js build.
# The TypeScript examples share one pinned toolchain: plugins/examples/website-js/package.json
# (its build.sh runs `npm ci` first; this script runs it only when node_modules is missing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
tools="$root/plugins/examples/website-js"
out="${CARGO_TARGET_DIR:-$root/target}/plugins"
mkdir -p "$out"
[ -x "$tools/node_modules/.bin/esbuild" ] || (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)

cd "$here"
"$tools/node_modules/.bin/tsc" --noEmit -p .
"$tools/node_modules/.bin/esbuild" src/index.ts --bundle --format=esm --target=es2020 \
  --platform=neutral --log-level=warning --outfile="$out/decorator-ts.js"

"$root/plugins/js-runtime/build.sh"
cd "$root"
wasmop="${WASMOP_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/wasmop}"
if [ -x "$wasmop" ]; then
  "$wasmop" js build "$out/decorator-ts.js" -o "$out/decorator-ts.wasm" "$@"
else
  cargo run --quiet -p wasmop-js-build --bin wasmop-js-build -- \
    "$out/decorator-ts.js" -o "$out/decorator-ts.wasm" "$@"
fi
