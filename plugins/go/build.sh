#!/usr/bin/env bash
# Builds the Go example plugins into target/plugins/<example>.wasm with standard Go (and
# <example>.wasm.gz: a standard-Go plugin fits a ConfigMap only compressed), and checks the Go
# code. A no-op per plugin when nothing that goes into its build changed (stamp file).
#
#   plugins/go/build.sh          build (skipped when the stamp matches)
#   plugins/go/build.sh check    gofmt, go vet (native and wasip1), go test, for both modules
#
# Needs Go >= 1.24 (//go:wasmexport); go.mod says 1.26, which `go` fetches when older.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
pdk="$root/plugins/go"
examples=(website-go machine-go)
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"

if [[ "${1:-build}" == "check" ]]; then
    for mod in "$pdk" "${examples[@]/#/$root/plugins/examples/}"; do
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

# Everything that decides one example's output: sources, module files, this script, Go.
inputs() {  # example
    (cd "$root" && find plugins/go "plugins/examples/$1" -type f \
        \( -name '*.go' -o -name go.mod -o -name go.sum -o -name build.sh \) \
        -not -path '*/testdata/*' -not -name '*_test.go' | LC_ALL=C sort | xargs sha256sum)
    go version
}

for example in "${examples[@]}"; do
    out="$root/target/plugins/$example.wasm"
    stamp="$out.stamp"
    want="$(inputs "$example" | sha256sum | cut -d' ' -f1)"
    if [[ -f "$out" && -f "$out.gz" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "$example.wasm is up to date"
        continue
    fi
    mkdir -p "$(dirname "$out")"
    (
        cd "$root/plugins/examples/$example"
        GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -trimpath -ldflags="-s -w" -o "$out.tmp" .
    )
    mv "$out.tmp" "$out"
    gzip -9 -n -c "$out" >"$out.gz"
    echo "$want" > "$stamp"
    echo "built $(realpath --relative-to="$root" "$out") ($(stat -c %s "$out") bytes, $(stat -c %s "$out.gz") gzipped)"
done
