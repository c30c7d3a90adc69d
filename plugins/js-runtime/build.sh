#!/usr/bin/env bash
# Builds the wasmop JavaScript runtime: target/wasm32-wasip1/plugin/wasmop_js_runtime.wasm
# (or under $CARGO_TARGET_DIR). The one place that knows how to compile QuickJS for WASI.
#
# Needs Debian's WASI C toolchain (rquickjs would otherwise download the WASI SDK from GitHub):
#   apt-get install -y clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v clang-16 >/dev/null || [ ! -e /usr/lib/wasm32-wasi/libc.a ]; then
  echo "error: the WASI C toolchain is missing; install it with:" >&2
  echo "  apt-get install -y clang-16 lld-16 wasi-libc libclang-rt-16-dev-wasm32" >&2
  exit 1
fi

export RQUICKJS_SYS_NO_WASI_SDK=1
export CC_wasm32_wasip1=clang-16
export AR_wasm32_wasip1=llvm-ar-16
export CFLAGS_wasm32_wasip1="--target=wasm32-wasi --sysroot=/usr"
exec cargo build -p wasmop-js-runtime --target wasm32-wasip1 --profile plugin "$@"
