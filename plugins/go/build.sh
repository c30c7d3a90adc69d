#!/usr/bin/env bash
# Builds the Go example plugin into target/plugins/website-go.wasm with standard Go, and checks
# the Go code. A no-op when nothing that goes into the build changed (stamp file).
#
#   plugins/go/build.sh          build (skipped when the stamp matches)
#   plugins/go/build.sh check    gofmt, go vet (native and wasip1), go test, for both modules
#
# Needs Go >= 1.24 (//go:wasmexport); go.mod says 1.26, which `go` fetches when older.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pdk="$root/plugins/go"
example="$root/plugins/examples/website-go"
out="$root/target/plugins/website-go.wasm"
stamp="$out.stamp"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

if [[ "${1:-build}" == "check" ]]; then
    for mod in "$pdk" "$example"; do
        (
            cd "$mod"
            unformatted="$(gofmt -l .)"
            if [[ -n "$unformatted" ]]; then
                echo "gofmt: these files need formatting (run gofmt -w):" >&2
                echo "$unformatted" >&2
                exit 1
            fi
            go vet ./...
            GOOS=wasip1 GOARCH=wasm go vet ./...
            go test ./...
        )
    done
    exit 0
fi

command -v go >/dev/null || { echo "build.sh: go is not on PATH (install Go >= 1.24)" >&2; exit 1; }

# Everything that decides the output: sources, module files, this script, the Go version.
inputs() {
    (cd "$root" && find plugins/go plugins/examples/website-go -type f \
        \( -name '*.go' -o -name go.mod -o -name go.sum -o -name build.sh \) \
        -not -path '*/testdata/*' | LC_ALL=C sort | xargs sha256sum)
    go version
}
want="$(inputs | sha256sum | cut -d' ' -f1)"
if [[ -f "$out" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "website-go.wasm is up to date"
    exit 0
fi

mkdir -p "$(dirname "$out")"
(
    cd "$example"
    GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags="-s -w" -o "$out.tmp" .
)
mv "$out.tmp" "$out"
echo "$want" > "$stamp"
echo "built $(realpath --relative-to="$root" "$out") ($(stat -c %s "$out") bytes)"
