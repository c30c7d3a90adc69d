#!/usr/bin/env bash
# Builds the pinned helper tools the tests and `make image` use, from the Go module proxy:
#   helm      (helm lint / helm template of deploy/chart/wasmop)
#   promtool  (promtool check rules / test rules of the PrometheusRule alerts)
#   crane     (packs the OCI image without a Docker engine; `crane registry serve` in tests)
#   cosign    (signs a plugin in the test of signed `oci` plugin sources)
# Versions live in hack/versions.env (HELM=, PROMTOOL=, CRANE=, COSIGN=: <package>@<module version>), the
# one place they are pinned. Each tool has its own stamp, so a second run is free and a bump
# rebuilds only the tool that moved.
#
# Usage:
#   hack/tools.sh [TOOL...]        build the named tools (default: all); prints the bin dir
#   hack/tools.sh --force [TOOL...]
#   hack/tools.sh --print-bin-dir
#
# Environment:
#   WASMOP_TOOLS_BIN  output directory (default: $HOME/.cache/wasmop/tools/bin, outside git)
#   GOFLAGS, GOPROXY, GOCACHE, GOMODCACHE are honoured as usual.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSIONS_ENV="$ROOT/hack/versions.env"
BIN_DIR="${WASMOP_TOOLS_BIN:-$HOME/.cache/wasmop/tools/bin}"
ALL_TOOLS=(helm promtool crane cosign)

die() {
	echo "tools: error: $*" >&2
	exit 1
}
log() { echo "tools: $*" >&2; }

# Reads KEY=value from hack/versions.env without sourcing it (it is data, not a script).
read_version() {
	local key=$1 value
	value=$(sed -n "s/^${key}=\\(.*\\)$/\\1/p" "$VERSIONS_ENV" | tail -n1)
	[[ -n "$value" ]] || die "$key is missing from $VERSIONS_ENV"
	echo "$value"
}

# helm -> HELM, promtool -> PROMTOOL.
spec_of() { read_version "$(echo "$1" | tr '[:lower:]' '[:upper:]')"; }

# Version stamping as each project's release build does it, so `helm version` and
# `promtool --version` report the pinned release.
ldflags_of() {
	local tool=$1 version=$2 flags="-s -w"
	case $tool in
	helm) flags+=" -X helm.sh/helm/v3/internal/version.version=$version" ;;
	promtool)
		# Prometheus tags its Go module v0.3XY.Z for release v3.XY.Z.
		local minor=${version#v0.3}
		flags+=" -X github.com/prometheus/common/version.Version=3.${minor#0}"
		;;
	esac
	echo "$flags"
}

# Build tags: promtool without the cloud service-discovery plugins (AWS, Azure, GCE, ...: most
# of Prometheus' module graph), which `promtool check rules` and `test rules` never use.
tags_of() {
	case $1 in
	promtool) echo remove_all_sd ;;
	esac
}

build_one() {
	local tool=$1 spec version key stamp start pid next status tmp
	spec=$(spec_of "$tool")
	version=${spec##*@}
	key="$spec $(go env GOVERSION) $(ldflags_of "$tool" "$version") tags=$(tags_of "$tool")"
	stamp="$BIN_DIR/.$tool.stamp"
	if ((FORCE == 0)) && [[ -x "$BIN_DIR/$tool" && -f "$stamp" && "$(cat "$stamp")" == "$key" ]]; then
		log "$tool up to date ($spec)"
		return 0
	fi
	log "[$tool] building $spec (a cold build takes minutes; later builds reuse the Go cache)"
	tmp=$(mktemp -d "$BIN_DIR/.build-$tool.XXXXXX")
	start=$SECONDS
	# go install pkg@version builds the module with its own go.mod and go.sum (checked against
	# the checksum database), independent of any module in this repository.
	GOBIN="$tmp" CGO_ENABLED=0 go install -trimpath -tags "$(tags_of "$tool")" \
		-ldflags "$(ldflags_of "$tool" "$version")" "$spec" &
	pid=$!
	next=60
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if ((SECONDS - start >= next)); then
			log "[$tool] still building ($((SECONDS - start)) s)"
			next=$((next + 60))
		fi
	done
	status=0
	wait "$pid" || status=$?
	((status == 0)) || {
		rm -rf "$tmp"
		die "building $tool ($spec) failed (exit $status); the compiler output is above"
	}
	mv -f "$tmp/$tool" "$BIN_DIR/$tool"
	rm -rf "$tmp"
	echo "$key" >"$stamp"
	log "[$tool] built in $((SECONDS - start)) s"
}

FORCE=0
TOOLS=()
while (($#)); do
	case $1 in
	--force) FORCE=1 ;;
	--print-bin-dir)
		echo "$BIN_DIR"
		exit 0
		;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
		exit 0
		;;
	helm | promtool | crane | cosign) TOOLS+=("$1") ;;
	*) die "unknown argument '$1' (tools: ${ALL_TOOLS[*]}; see --help)" ;;
	esac
	shift
done
((${#TOOLS[@]})) || TOOLS=("${ALL_TOOLS[@]}")

command -v go >/dev/null 2>&1 || die "Go is not on PATH; install Go 1.26 or newer"
mkdir -p "$BIN_DIR"
for t in "${TOOLS[@]}"; do
	build_one "$t"
done
echo "$BIN_DIR"
