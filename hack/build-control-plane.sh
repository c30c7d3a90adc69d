#!/usr/bin/env bash
# Builds the real Kubernetes control plane for wasmop's dev loop and tests (DESIGN.md §5):
# kube-apiserver, kube-controller-manager and etcd from the pinned k8s.io/kubernetes Go module
# (hack/k8s), plus kubectl when the one on PATH is not within one minor version of the server.
#
# Usage:
#   hack/build-control-plane.sh              build (a no-op when the stamp says up to date)
#   hack/build-control-plane.sh --force      rebuild even when up to date
#   hack/build-control-plane.sh --print-bin-dir
#                                            print where the binaries go and exit
#   hack/build-control-plane.sh --bump vX.Y.Z
#                                            move to another Kubernetes release: rewrite
#                                            hack/versions.env, hack/k8s/go.mod and go.sum
#                                            (replace lines, etcd version) and exit; review,
#                                            commit, then build
#
# Environment:
#   WASMOP_K8S_BIN  output directory (default: $HOME/.cache/wasmop/k8s-<version>/bin, outside
#                   the git clone so every clone on the machine shares it)
#   GOFLAGS, GOPROXY, GOCACHE, GOMODCACHE are honoured as usual.
#
# Versions live in hack/versions.env (one place); this script refuses to build when
# hack/k8s/go.mod disagrees with it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSIONS_ENV="$ROOT/hack/versions.env"
MODDIR="$ROOT/hack/k8s"
SCRIPT_START=$SECONDS

die() {
	echo "build-control-plane: error: $*" >&2
	exit 1
}
log() { echo "build-control-plane: $*"; }

# Reads KEY=value from hack/versions.env without sourcing it (it is data, not a script).
read_version() {
	local key=$1 value
	value=$(sed -n "s/^${key}=\\(.*\\)$/\\1/p" "$VERSIONS_ENV" | tail -n1)
	[[ -n "$value" ]] || die "$key is missing from $VERSIONS_ENV"
	echo "$value"
}

# v1.36.3 -> v0.36.3, the tag of the staging modules (k8s.io/api, k8s.io/client-go, ...).
staging_version() {
	local v=${1#v}
	echo "v0.${v#*.}"
}

# Checks that hack/k8s/go.mod pins what hack/versions.env says. Plain text checks: this runs on
# every invocation, so it must be fast (the up-to-date path must finish in well under a second).
check_gomod() {
	local k8s=$1 etcd=$2 staging got bad
	staging=$(staging_version "$k8s")
	got=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2}' "$MODDIR/go.mod")
	[[ "$got" == "$k8s" ]] ||
		die "hack/k8s/go.mod requires k8s.io/kubernetes ${got:-<nothing>} but hack/versions.env says KUBERNETES_VERSION=$k8s; run 'hack/build-control-plane.sh --bump $k8s' (or fix versions.env)"
	got=$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2}' "$MODDIR/go.mod")
	[[ "$got" == "$etcd" ]] ||
		die "hack/k8s/go.mod has go.etcd.io/etcd/server/v3 ${got:-<nothing>} but hack/versions.env says ETCD_VERSION=$etcd; run 'hack/build-control-plane.sh --bump $k8s'"
	bad=$(awk -v want="$staging" '$1 == "replace" {$1 = ""; $0 = $0} $2 == "=>" && $1 ~ /^k8s\.io\// && $4 != want {print $1 " => " $3 " " $4}' "$MODDIR/go.mod" | head -n3)
	[[ -z "$bad" ]] ||
		die "hack/k8s/go.mod replaces staging modules at a version other than $staging (for Kubernetes $k8s), e.g. $(echo "$bad" | head -n1); run 'hack/build-control-plane.sh --bump $k8s'"
}

# kubectl must be within one minor version of the server (kubectl's version skew policy).
path_kubectl_ok() {
	local minor=$1 json got
	command -v kubectl >/dev/null 2>&1 || return 1
	json=$(kubectl version --client -o json 2>/dev/null) || return 1
	got=$(printf '%s' "$json" | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p' | head -n1)
	[[ -n "$got" ]] || return 1
	((got >= minor - 1 && got <= minor + 1))
}

# Rewrites hack/k8s/go.mod, go.sum and hack/versions.env for another Kubernetes release.
bump() {
	local new=$1 staging info kmod etcd modules m
	[[ "$new" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || die "--bump wants a Kubernetes release such as v1.36.3, got '$new'"
	staging=$(staging_version "$new")
	log "bumping to Kubernetes $new (staging modules $staging)"
	info=$(cd "$MODDIR" && go mod download -json "k8s.io/kubernetes@$new") ||
		die "cannot download k8s.io/kubernetes@$new from the Go module proxy"
	kmod=$(printf '%s' "$info" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
	[[ -f "$kmod" ]] || die "go mod download did not report the go.mod of k8s.io/kubernetes@$new"
	# Every staging module is required at v0.0.0 by k8s.io/kubernetes (and replaced with a path
	# in its own go.mod, which does not apply to us).
	modules=$(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$kmod")
	etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$kmod")
	[[ -n "$modules" && -n "$etcd" ]] || die "unexpected go.mod layout in k8s.io/kubernetes@$new ($kmod)"
	(
		cd "$MODDIR"
		# Rewrite the replace block wholesale (go mod edit would scatter single-line replaces
		# and drop the comment): everything from its comment to the end of the file.
		awk '/^\/\/ k8s.io\/kubernetes requires its staging modules/ {exit} {print}' go.mod >go.mod.new
		{
			echo "// k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with"
			echo "// ./staging/src/... in its own go.mod, which does not apply to a dependent module: pin"
			echo "// each to the matching published v0.X.Y tag instead."
			echo "replace ("
			for m in $modules; do
				printf '\t%s => %s %s\n' "$m" "$m" "$staging"
			done
			echo ")"
		} >>go.mod.new
		mv go.mod.new go.mod
		go mod edit -require="k8s.io/kubernetes@$new" -require="go.etcd.io/etcd/server/v3@$etcd"
		go mod tidy
	)
	sed -i -e "s/^KUBERNETES_VERSION=.*/KUBERNETES_VERSION=$new/" -e "s/^ETCD_VERSION=.*/ETCD_VERSION=$etcd/" "$VERSIONS_ENV"
	log "hack/versions.env, hack/k8s/go.mod and go.sum now pin Kubernetes $new and etcd $etcd; review 'git diff' and commit them together"
}

FORCE=0
while (($#)); do
	case $1 in
	--force) FORCE=1 ;;
	--bump)
		[[ $# -ge 2 ]] || die "--bump needs a version, e.g. --bump v1.36.4"
		bump "$2"
		exit 0
		;;
	--print-bin-dir)
		v=$(read_version KUBERNETES_VERSION)
		echo "${WASMOP_K8S_BIN:-$HOME/.cache/wasmop/k8s-$v/bin}"
		exit 0
		;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument '$1' (see --help)" ;;
	esac
	shift
done

command -v go >/dev/null 2>&1 || die "Go is not on PATH; install Go $(sed -n 's/^go //p' "$MODDIR/go.mod") or newer"

K8S_VERSION=$(read_version KUBERNETES_VERSION)
ETCD_VERSION=$(read_version ETCD_VERSION)
check_gomod "$K8S_VERSION" "$ETCD_VERSION"

BIN_DIR="${WASMOP_K8S_BIN:-$HOME/.cache/wasmop/k8s-$K8S_VERSION/bin}"
STAMP="$BIN_DIR/.wasmop-build-stamp"
MINOR=${K8S_VERSION#v1.}
MINOR=${MINOR%%.*}

BINARIES=(kube-apiserver kube-controller-manager etcd)
KUBECTL_NOTE="kubectl on PATH is within one minor of $K8S_VERSION; not building it"
if ! path_kubectl_ok "$MINOR"; then
	BINARIES+=(kubectl)
	KUBECTL_NOTE="kubectl on PATH is missing or not within one minor of $K8S_VERSION; building it"
fi

# The stamp covers everything that changes the output: pinned versions, the module graph, the
# Go toolchain, the set of binaries and this script (ldflags live here).
GO_VERSION=$(go env GOVERSION)
KEY=$( {
	cat "$VERSIONS_ENV" "$MODDIR/go.mod" "$MODDIR/go.sum" "$MODDIR/cmd/etcd/main.go" "$0"
	echo "$GO_VERSION ${BINARIES[*]}"
} | sha256sum | cut -d' ' -f1)

up_to_date() {
	[[ -f "$STAMP" && "$(cat "$STAMP")" == "$KEY" ]] || return 1
	local b
	for b in "${BINARIES[@]}"; do
		[[ -x "$BIN_DIR/$b" ]] || return 1
	done
}

if ((FORCE == 0)) && up_to_date; then
	log "up to date: Kubernetes $K8S_VERSION, etcd $ETCD_VERSION (${BINARIES[*]}) in $BIN_DIR"
	echo "$BIN_DIR"
	exit 0
fi

log "building Kubernetes $K8S_VERSION and etcd $ETCD_VERSION with $GO_VERSION into $BIN_DIR"
log "$KUBECTL_NOTE"
log "a first build compiles several thousand packages and takes many minutes; later builds reuse the Go cache ($(go env GOCACHE))"
mkdir -p "$BIN_DIR"
rm -f "$STAMP"

# Version stamping as Kubernetes' hack/lib/version.sh does it, so `kube-apiserver --version`,
# GET /version and `kubectl version` report the release rather than v0.0.0-master.
BUILD_DATE=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' \
	"$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.info" 2>/dev/null || true)
BUILD_DATE=${BUILD_DATE:-1970-01-01T00:00:00Z}
LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION"
	LDFLAGS+=" -X $pkg.gitMajor=1"
	LDFLAGS+=" -X $pkg.gitMinor=$MINOR"
	# The module proxy does not record the release commit; empty beats "$Format:%H$".
	LDFLAGS+=" -X $pkg.gitCommit="
	LDFLAGS+=" -X $pkg.gitTreeState=clean"
	LDFLAGS+=" -X $pkg.buildDate=$BUILD_DATE"
done

package_of() {
	case $1 in
	etcd) echo ./cmd/etcd ;;
	*) echo "k8s.io/kubernetes/cmd/$1" ;;
	esac
}

cd "$MODDIR"
for b in "${BINARIES[@]}"; do
	start=$SECONDS
	log "[$b] building $(package_of "$b") ..."
	# The compiler is silent for minutes on a cold build: report progress so it does not look
	# hung. (Polling a background build needs no helper process to clean up afterwards.)
	CGO_ENABLED=0 go build -trimpath -ldflags "$LDFLAGS" -o "$BIN_DIR/$b.tmp" "$(package_of "$b")" &
	pid=$!
	next=60
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if ((SECONDS - start >= next)); then
			log "[$b] still building ($((SECONDS - start)) s)"
			next=$((next + 60))
		fi
	done
	status=0
	wait "$pid" || status=$?
	((status == 0)) || die "building $b failed (exit $status); the compiler output is above"
	mv -f "$BIN_DIR/$b.tmp" "$BIN_DIR/$b"
	log "[$b] done in $((SECONDS - start)) s"
done

# Check what was built reports the pinned versions.
got=$("$BIN_DIR/kube-apiserver" --version 2>&1 || true)
[[ "$got" == "Kubernetes $K8S_VERSION" ]] || die "kube-apiserver --version says '$got', expected 'Kubernetes $K8S_VERSION'"
got=$("$BIN_DIR/etcd" --version 2>&1 | sed -n 's/^etcd Version: //p')
[[ "v$got" == "$ETCD_VERSION" ]] || die "etcd --version says '$got', expected ${ETCD_VERSION#v}"

echo "$KEY" >"$STAMP"
log "built ${BINARIES[*]} in $((SECONDS - SCRIPT_START)) s"
echo "$BIN_DIR"
