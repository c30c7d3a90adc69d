#!/usr/bin/env bash
# Installs what a fresh machine lacks, and nothing twice. Safe to run repeatedly.
# - Rust: rustup installs the toolchain and wasm targets pinned in rust-toolchain.toml.
# - Debian: the WASI C toolchain (JS runtime plugin: QuickJS in Wasm) and binaryen.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if ! command -v rustup >/dev/null; then
  echo "rustup is required (https://rustup.rs); it then installs the pinned toolchain itself" >&2
  exit 1
fi
toolchain=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1 \
   || ! rustup +"$toolchain" target list --installed | grep -q wasm32-wasip1; then
  step "installing Rust $toolchain with wasm targets (rust-toolchain.toml)"
  rustup toolchain install "$toolchain" --profile minimal --component rustfmt,clippy \
    --target wasm32-unknown-unknown,wasm32-wasip1
fi

APT_PACKAGES=(clang-16 lld-16 llvm-16 wasi-libc libclang-rt-16-dev-wasm32 binaryen graphviz)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing Debian packages: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi

if ! command -v npm >/dev/null || ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 18 ? 1 : 0)'; then
  echo "Node.js >= 18 with npm is required to bundle the TypeScript example (esbuild)" >&2
  exit 1
fi

if ! command -v go >/dev/null; then
  echo "Go >= 1.26 is required to build the local control plane (https://go.dev/dl)" >&2
  exit 1
fi
