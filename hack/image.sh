#!/usr/bin/env bash
# Builds wasmop's container image without a Docker engine, with the pinned crane
# (hack/tools.sh): the wasmop binary, the shared libraries it links (glibc, libgcc_s: copied
# from this machine, so the image runs wherever this binary runs), the JS runtime beside it,
# a non-root user, nothing else. One layer, packed reproducibly (sorted, owner 0, mtime 0), onto
# an empty OCI base with `crane append`; entrypoint, user and env set with `crane mutate`.
#
# Usage: hack/image.sh [--binary PATH] [--tag TAG] [--push REF]
#   --binary PATH  the wasmop binary (default: cargo build --release -p wasmop)
#   --tag TAG      image tag (default: the workspace version)
#   --push REF     also copy the image to REF (e.g. registry.example/wasmop:0.1.0; a
#                  localhost/127.0.0.1 registry is spoken to over plain HTTP)
# Writes target/image/rootfs/ (what deploy/Dockerfile copies) and target/image/oci/ (an OCI
# image layout); prints the image digest last.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET/image"

binary="" tag="" push=""
while (($#)); do
	case $1 in
	--binary) binary=$2; shift ;;
	--tag) tag=$2; shift ;;
	--push) push=$2; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "image: unknown argument '$1' (see --help)" >&2; exit 2 ;;
	esac
	shift
done
log() { echo "image: $*" >&2; }

if [[ -z $binary ]]; then
	log "building the release binary (cargo build --release -p wasmop)"
	cargo build --release -p wasmop >&2
	binary="$TARGET/release/wasmop"
fi
[[ -x $binary ]] || { log "no executable at $binary"; exit 1; }
runtime="$TARGET/wasm32-wasip1/plugin/wasmop_js_runtime.wasm"
[[ -f $runtime ]] || bash plugins/js-runtime/build.sh >&2
tag=${tag:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
crane="$(bash hack/tools.sh crane | tail -n1)/crane"

# The root filesystem.
rootfs="$OUT/rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/local/lib/wasmop" "$rootfs/etc" \
	"$rootfs/tmp" "$rootfs/var/cache/wasmop"
install -m 0755 "$binary" "$rootfs/usr/local/bin/wasmop"
install -m 0644 "$runtime" "$rootfs/usr/local/lib/wasmop/wasmop_js_runtime.wasm"
# Every shared library the binary needs, and the dynamic loader, at their paths on this machine.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
	mkdir -p "$rootfs$(dirname "$lib")"
	cp -L "$lib" "$rootfs$lib"
done
echo "root:x:0:0:root:/:/sbin/nologin" >"$rootfs/etc/passwd"
echo "wasmop:x:65532:65532:wasmop:/var/cache/wasmop:/sbin/nologin" >>"$rootfs/etc/passwd"
printf 'root:x:0:\nwasmop:x:65532:\n' >"$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"
layer="$OUT/layer.tar"
# Reproducible: sorted, mtime 0, owned by root except the cache directory (the non-root user's,
# so the image also runs without a volume there).
python3 - "$rootfs" "$layer" <<'PY'
import os, sys, tarfile
root, out = sys.argv[1], sys.argv[2]
def add(tar, path):
    rel = os.path.relpath(path, root)
    info = tar.gettarinfo(path, arcname=rel)
    info.mtime, info.uname, info.gname = 0, "", ""
    info.uid = info.gid = 65532 if rel.startswith("var/cache/wasmop") else 0
    if info.isfile():
        with open(path, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)
    if info.isdir():
        for name in sorted(os.listdir(path)):
            add(tar, os.path.join(path, name))
with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
    for name in sorted(os.listdir(root)):
        add(tar, os.path.join(root, name))
PY
log "layer: $(du -h "$layer" | cut -f1) ($(ldd "$binary" | grep -c '/') shared libraries)"

# A throwaway in-memory registry on a free port: crane mutate works on registry references.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$crane" registry serve --address "127.0.0.1:$port" >"$OUT/registry.log" 2>&1 &
registry=$!
trap 'kill "$registry" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
	"$crane" catalog --insecure "127.0.0.1:$port" >/dev/null 2>&1 && break
	sleep 0.1
done
local_ref="127.0.0.1:$port/wasmop"
"$crane" append --insecure --oci-empty-base -f "$layer" -t "$local_ref:layer" >/dev/null
"$crane" mutate --insecure "$local_ref:layer" -t "$local_ref:$tag" \
	--set-platform linux/amd64 \
	--entrypoint /usr/local/bin/wasmop --user 65532:65532 --workdir / \
	--env WASMOP_JS_RUNTIME=/usr/local/lib/wasmop/wasmop_js_runtime.wasm \
	--env WASMOP_CACHE_DIR=/var/cache/wasmop/plugins \
	--label org.opencontainers.image.title=wasmop \
	--label "org.opencontainers.image.version=$tag" >/dev/null
rm -rf "$OUT/oci"
"$crane" pull --insecure --format oci "$local_ref:$tag" "$OUT/oci"
digest=$("$crane" digest --insecure "$local_ref:$tag")
log "wrote $OUT/oci (OCI image layout) and $rootfs"
if [[ -n $push ]]; then
	insecure=()
	[[ $push == localhost* || $push == 127.0.0.1* ]] && insecure=(--insecure)
	"$crane" copy "${insecure[@]}" "$local_ref:$tag" "$push" >&2
	log "pushed $push@$digest"
fi
echo "$digest"
