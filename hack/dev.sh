#!/usr/bin/env bash
# `make dev`: the whole product on this machine, no cluster needed.
# Starts the real control plane (localcp), the wasmop operator, applies the Website sample,
# shows the children and status the plugin produced, then stays up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source hack/versions.env

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
step() { bold "==> $*"; }

target=${CARGO_TARGET_DIR:-$root/target}
state=$(mktemp -d "${TMPDIR:-/tmp}/wasmop-dev.XXXXXX")
kbin=${WASMOP_K8S_BIN:-$HOME/.cache/wasmop/k8s-$KUBERNETES_VERSION/bin}
if [ -x "$kbin/kubectl" ]; then KUBECTL="$kbin/kubectl"; else KUBECTL=$(command -v kubectl); fi
NS=${WASMOP_DEV_NAMESPACE:-demo}

pids=()
cleanup() {
  trap - EXIT INT TERM
  echo
  step "stopping wasmop and the control plane"
  for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$state"
  bold "stopped cleanly"
}
trap cleanup EXIT
trap 'exit 0' INT TERM  # Ctrl-C is how you stop it: a clean exit, not an error

step "starting the local control plane (etcd, kube-apiserver, kube-controller-manager)"
"$target/debug/localcp" up --dir "$state/cp" >"$state/localcp.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 240); do
  if grep -q '^export KUBECONFIG=' "$state/localcp.log" 2>/dev/null; then break; fi
  if ! kill -0 "${pids[0]}" 2>/dev/null; then cat "$state/localcp.log" >&2; echo "localcp failed to start" >&2; exit 1; fi
  sleep 0.5
done
kubeconfig=$(sed -n 's/^export KUBECONFIG=//p' "$state/localcp.log" | head -1)
[ -n "$kubeconfig" ] || { cat "$state/localcp.log" >&2; echo "localcp did not print its KUBECONFIG in 120 s" >&2; exit 1; }
export KUBECONFIG=$kubeconfig
k() { "$KUBECTL" "$@"; }

step "installing the WasmController CRD and the sample's Website CRD"
k apply --server-side -f crds/wasmcontroller.yaml -f samples/website/crd.yaml >/dev/null
k wait --for=condition=Established --timeout=60s crd/wasmcontrollers.wasmop.dev crd/websites.example.com >/dev/null

step "starting wasmop (log: $state/wasmop.log)"
"$target/debug/wasmop" run --metrics-addr 127.0.0.1:${WASMOP_METRICS_PORT:-8080} --cache-dir "$state/plugin-cache" >"$state/wasmop.log" 2>&1 &
pids+=($!)

step "applying the Website sample in namespace $NS (plugin: target/plugins/website-rust.wasm)"
k create namespace "$NS" >/dev/null
k -n "$NS" apply -f samples/website/rbac.yaml >/dev/null
k -n "$NS" create configmap website-plugin --from-file=plugin.wasm=target/plugins/website-rust.wasm >/dev/null
k -n "$NS" apply -f samples/website/wasmcontroller.yaml -f samples/website/websites.yaml

step "waiting for the plugin to produce children"
if ! k -n "$NS" wait --for=condition=Ready --timeout=90s wasmcontroller/website >/dev/null \
   || ! k -n "$NS" wait --for=jsonpath='{.status.phase}' --timeout=60s website/hello website/docs >/dev/null; then
  echo "the sample did not converge; wasmop log:" >&2
  tail -40 "$state/wasmop.log" >&2
  exit 1
fi
echo
k -n "$NS" get wasmcontrollers,websites,deployments,configmaps
echo
step "status the plugin reported on website/hello"
k -n "$NS" get website hello -o jsonpath='{.status}'; echo

cat <<EOT

$(bold "wasmop is running on the local control plane. Try:")
  export KUBECONFIG=$KUBECONFIG
  alias kubectl=$KUBECTL
  kubectl -n $NS get websites,deployments,configmaps
  kubectl -n $NS patch website hello --type merge -p '{"spec":{"replicas":4}}'   # children follow
  kubectl -n $NS patch website hello --type merge -p '{"spec":{"content":null}}' # ConfigMap pruned
  kubectl -n $NS describe wasmcontroller website                                 # conditions
  target/debug/wasmop graph -n $NS                                                # who owns, reads, patches what
  kubectl -n $NS get events --field-selector involvedObject.kind=Website
  curl -s 127.0.0.1:${WASMOP_METRICS_PORT:-8080}/metrics | grep ^wasmop_
  tail -f $state/wasmop.log

Press Ctrl-C to stop everything.
EOT
wait "${pids[@]}"
