#!/usr/bin/env bash
# The benchmarks (bench/, BENCHMARKS.md).
#   hack/bench.sh            release build (timed), every benchmark, rewrites BENCHMARKS.md
#   hack/bench.sh --smoke    debug build, tiny sizes, report in target/bench-smoke.md (make test)
# Further arguments go to `wasmop-bench run` (e.g. --only calls,load --runs 5; see --help).
# Needs the control plane (make control-plane) and the plugins (make plugins).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
TARGET=${CARGO_TARGET_DIR:-target}

if [[ "${1:-}" == "--smoke" ]]; then
  shift
  $CARGO build -q -p wasmop -p wasmop-bench --bins
  started=$(date +%s)
  WASMOP_BIN="$TARGET/debug/wasmop" "$TARGET/debug/wasmop-bench" run --smoke \
    --out "$TARGET/bench-smoke.md" "$@" > /dev/null
  echo "bench-smoke: every benchmark ran ($(( $(date +%s) - started )) s); report in $TARGET/bench-smoke.md"
  exit 0
fi

# The Rust plugin once more with the size-first profile, measured beside the default one.
$CARGO build -q -p website-plugin --target wasm32-unknown-unknown --profile plugin-small
cp "$TARGET/wasm32-unknown-unknown/plugin-small/website_plugin.wasm" "$TARGET/plugins/website-rust-small.wasm"
started=$(date +%s)
$CARGO build --release -p wasmop -p wasmop-bench --bins
build=$(( $(date +%s) - started ))
echo "bench: release build took ${build} s"
WASMOP_BIN="$TARGET/release/wasmop" "$TARGET/release/wasmop-bench" run \
  --build-seconds "$build" --out BENCHMARKS.md "$@"
echo "bench: done in $(( $(date +%s) - started )) s (build included); wrote BENCHMARKS.md"
