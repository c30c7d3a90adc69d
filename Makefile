# wasmop: the verbs. Every target works on a bare machine (it installs what it needs).
#   make dev    build everything, start the local control plane + operator, apply the sample
#   make test   every test (unit, plugin, end-to-end on the real control plane)
#   make bench  the benchmarks (release): prints the tables and writes BENCHMARKS.md
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
PLUGIN_DIR := target/plugins
WASM_RUST := target/wasm32-unknown-unknown/plugin

.PHONY: help setup control-plane tools build plugins crds abi deploy image cluster dev test bench bench-smoke lint fmt clean

help:
	@grep -E '^#   make' Makefile | sed 's/^#   //'

## setup: system packages and toolchains a fresh machine lacks (idempotent, quick when done).
setup:
	@bash hack/setup.sh

## control-plane: build kube-apiserver, kube-controller-manager, etcd (+kubectl) from the pinned module.
control-plane: setup
	@bash hack/build-control-plane.sh

## tools: helm, promtool, crane, cosign, pinned in hack/versions.env, built from the Go module proxy (stamped);
## and the real Cluster API / Gateway API CRDs the tests run on, copied from their pinned modules (hack/crds.sh).
tools: setup
	@bash hack/tools.sh >/dev/null
	@bash hack/crds.sh >/dev/null

## build: the operator, the launcher and the test harness (host).
build: setup
	$(CARGO) build --workspace --bins

## plugins: every example plugin, from source, into target/plugins/.
plugins: build
	@mkdir -p $(PLUGIN_DIR)
	$(CARGO) build -p website-plugin -p misbehave-plugin --target wasm32-unknown-unknown --profile plugin
	$(CARGO) build -p patterns-plugin --target wasm32-wasip1 --profile plugin   # its conditions read the clock
	@cp $(WASM_RUST)/website_plugin.wasm $(PLUGIN_DIR)/website-rust.wasm
	@cp target/wasm32-wasip1/plugin/patterns_plugin.wasm $(PLUGIN_DIR)/patterns-rust.wasm
	@cp $(WASM_RUST)/misbehave_plugin.wasm $(PLUGIN_DIR)/misbehave.wasm
	@bash plugins/examples/website-js/build.sh   # QuickJS runtime + esbuild + pre-initialisation
	@bash plugins/examples/decorator-ts/build.sh
	@bash plugins/go/build.sh                    # standard Go, GOOS=wasip1 (stamped)
	@ls -l $(PLUGIN_DIR)/*.wasm

## crds: regenerate crds/ from the Rust types (a test fails when they drift).
crds:
	$(CARGO) run -q -p wasmop -- crd > crds/wasmcontroller.yaml

## abi: regenerate the ABI JSON Schema, TypeScript and Go types and docs/abi.md (drift-checked by a test).
abi:
	$(CARGO) run -q -p wasmop-schema

## deploy: render deploy/manifests/wasmop.yaml and samples/operator/rbac.yaml from the Helm chart (drift-checked by a test).
deploy: tools
	@bash hack/render-deploy.sh

## image: the OCI image without Docker (hack/image.sh: release binary + JS runtime, packed by crane)
## into target/image/oci; IMAGE=registry.example/wasmop:0.1.0 also pushes it there.
image: tools plugins
	@bash hack/image.sh $(if $(IMAGE),--push $(IMAGE))

## cluster: the local control plane in the foreground (prints the KUBECONFIG line).
cluster: control-plane
	$(CARGO) run -q -p localcp -- up

## dev: everything end to end on the local control plane; Ctrl-C stops it all.
dev: control-plane build plugins
	@bash hack/dev.sh

## test: all tests. End-to-end tests start the real control plane, wasmop and plugins.
test: control-plane tools build plugins
	@bash plugins/go/build.sh check
	$(CARGO) test --workspace --exclude wasmop-e2e --no-fail-fast
	@bash hack/e2e.sh   # the end-to-end binaries, in parallel (E2E_JOBS, default 4)
	@bash hack/bench.sh --smoke   # every benchmark at tiny sizes, so the code cannot rot

## bench: release build, every benchmark (calls, loads, end to end, memory, scale); writes BENCHMARKS.md.
bench: control-plane plugins
	@bash hack/bench.sh

## bench-smoke: the benchmarks at tiny sizes on a debug build (under a minute; part of make test).
bench-smoke: control-plane plugins
	@bash hack/bench.sh --smoke

lint: tools
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) run -q -p wasmop-schema -- --check
	@bash plugins/go/build.sh check
	@bash hack/render-deploy.sh --check

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
