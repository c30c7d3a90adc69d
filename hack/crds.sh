#!/usr/bin/env bash
# Copies the real third-party CRDs the tests and samples use out of their pinned Go modules:
#   sigs.k8s.io/cluster-api   config/crd/bases/cluster.x-k8s.io_machines.yaml   (Machine v1beta2)
#   sigs.k8s.io/gateway-api   config/crd/standard/ HTTPRoute, Gateway, GatewayClass (standard channel)
# Versions live in hack/versions.env (CLUSTER_API=, GATEWAY_API=: <module>@<version>), the one
# place they are pinned. The Go module proxy serves the modules with their YAML; nothing is
# built. Each module has its own stamped directory, so a second run is free and a bump fetches
# only what moved.
#
# Usage: hack/crds.sh            fetch what is missing; prints the output directory
# Environment: WASMOP_CRDS_DIR  output directory (default: $HOME/.cache/wasmop/crds, outside git)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${WASMOP_CRDS_DIR:-$HOME/.cache/wasmop/crds}"
die() { echo "crds: error: $*" >&2; exit 1; }
pin() { sed -n "s/^$1=\\(.*\\)$/\\1/p" "$ROOT/hack/versions.env" | tail -n1; }
command -v go >/dev/null 2>&1 || die "Go is not on PATH (make setup installs it)"

# fetch <KEY> <file under the module>...: into $OUT/<module base>-<version>/.
fetch() {
	local spec mod ver dest dir
	spec=$(pin "$1")
	[[ -n "$spec" ]] || die "$1 is missing from hack/versions.env"
	shift
	mod=${spec%@*} ver=${spec#*@}
	dest="$OUT/$(basename "$mod")-$ver"
	[[ -f "$dest/.stamp" ]] && return
	echo "crds: fetching $spec from the Go module proxy" >&2
	dir=$(cd "$ROOT" && GOFLAGS=-mod=mod go mod download -json "$spec" |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])') ||
		die "go mod download $spec failed"
	rm -rf "$dest" && mkdir -p "$dest"
	for f in "$@"; do
		[[ -f "$dir/$f" ]] || die "$spec has no $f"
		cp "$dir/$f" "$dest/"
		chmod u+w "$dest/$(basename "$f")"
	done
	echo "$spec" >"$dest/.stamp"
}

fetch CLUSTER_API config/crd/bases/cluster.x-k8s.io_machines.yaml
fetch GATEWAY_API \
	config/crd/standard/gateway.networking.k8s.io_gatewayclasses.yaml \
	config/crd/standard/gateway.networking.k8s.io_gateways.yaml \
	config/crd/standard/gateway.networking.k8s.io_httproutes.yaml
echo "$OUT"
