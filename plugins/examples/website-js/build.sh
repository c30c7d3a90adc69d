#!/usr/bin/env bash
# Builds the TypeScript Website example into target/plugins/website-js.wasm:
#   npm ci -> tsc --noEmit (type check) -> esbuild (one ES2020 module) -> wasmop-js-build.
# Needs node/npm and the WASI C toolchain for the runtime (see plugins/js-runtime/build.sh).
# Options after the script name go to wasmop-js-build (e.g. --wasm-opt).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="${CARGO_TARGET_DIR:-$root/target}/plugins"
mkdir -p "$out"

cd "$here"
npm ci --no-audit --no-fund --loglevel=error
npm run --silent check
npx --no-install esbuild src/index.ts --bundle --format=esm --target=es2020 --platform=neutral \
  --log-level=warning --outfile="$out/website-js.js"

# The runtime is a no-op rebuild when it is fresh (progress shows on a cold build).
"$root/plugins/js-runtime/build.sh"
cd "$root"
# Prefer the wasmop binary `make build` made: a `cargo run -p <one package>` resolves features
# for that package alone and would recompile part of wasmtime a second time.
wasmop="${WASMOP_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/wasmop}"
if [ -x "$wasmop" ]; then
  "$wasmop" js build "$out/website-js.js" -o "$out/website-js.wasm" "$@"
else
  cargo run --quiet -p wasmop-js-build --bin wasmop-js-build -- \
    "$out/website-js.js" -o "$out/website-js.wasm" "$@"
fi
