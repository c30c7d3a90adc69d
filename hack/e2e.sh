#!/usr/bin/env bash
# Runs the end-to-end test binaries (tests/tests/*.rs) in parallel: each starts its own local
# control plane and wasmop, so they are independent. E2E_JOBS (default 4) bounds how many run
# at once; E2E_ALONE (default "recovery leader_election sharding sharding_chaos": outages,
# restarts, a fault soak, Lease handovers and shard moves, whose timings should not depend on
# what else the two cores are doing) run
# afterwards, one at a time. Extra arguments go to every test binary (e.g. a test name filter).
# Prints each binary's output as it finishes, then one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${E2E_JOBS:-4}
alone=" ${E2E_ALONE-recovery leader_election sharding sharding_chaos} "
logs=$(mktemp -d "${TMPDIR:-/tmp}/wasmop-e2e-logs.XXXXXX")
trap 'rm -rf "$logs"' EXIT

# Build once, then take the test executables from cargo's JSON messages.
cargo test -p wasmop-e2e --tests --no-run --message-format=json-render-diagnostics >"$logs/build.json"
python3 - "$logs/build.json" >"$logs/bins" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and "test" in m["target"]["kind"] and m["target"]["name"] != "wasmop_e2e":
        print(m["target"]["name"], m["executable"])
PY
count=$(wc -l <"$logs/bins")
echo "==> running $count end-to-end test binaries, $jobs at a time"

run_one() {  # name executable [args...]
  local name=$1 exe=$2; shift 2
  local start=$SECONDS status=0
  "$exe" "$@" >"$logs/$name.log" 2>&1 || status=$?
  echo "$status" >"$logs/$name.status"
  echo "---- $name ($((SECONDS - start)) s, exit $status)"
  cat "$logs/$name.log"
}
export -f run_one
export logs
start=$SECONDS
while read -r name exe; do
  if [[ $alone == *" $name "* ]]; then echo "$name $exe" >>"$logs/alone"; else echo "$name $exe" >>"$logs/parallel"; fi
done <"$logs/bins"
touch "$logs/parallel" "$logs/alone"
xargs -r -P "$jobs" -L 1 bash -c 'run_one "$@" '"$(printf '%q ' "$@")" _ <"$logs/parallel"
xargs -r -P 1 -L 1 bash -c 'run_one "$@" '"$(printf '%q ' "$@")" _ <"$logs/alone"

passed=0 failed=0 bad=()
while read -r name _; do
  p=$(sed -n 's/^test result: .*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$logs/$name.log" | tail -1)
  passed=$((passed + ${p%% *}))
  failed=$((failed + ${p##* }))
  [ "$(cat "$logs/$name.status")" = 0 ] || bad+=("$name")
done <"$logs/bins"
echo "==> end-to-end: $count binaries in $((SECONDS - start)) s"
[ ${#bad[@]} -eq 0 ] || echo "==> failed: ${bad[*]}"
echo "e2e: $passed passed, $failed failed"
[ ${#bad[@]} -eq 0 ]
