#!/usr/bin/env bash
# Runs the multi-threaded crash test (thin/tests/thin_crash.rs, 200 seeds
# each) RUNS times in a row, stopping at the first failure, with LOAD busy
# loops on the side (default: one per core) so the reactors are preempted
# as on a loaded CI machine. Usage: bench/thin-crash-loop.sh [RUNS] [LOAD]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-50}
LOAD=${2:-$(nproc)}
cargo test --release -q -p thin --test thin_crash --no-run
hogs=()
trap 'kill "${hogs[@]}" 2>/dev/null || true' EXIT
for _ in $(seq 1 "$LOAD"); do
  ( while :; do :; done ) &
  hogs+=($!)
done
start=$(date +%s)
for i in $(seq 1 "$RUNS"); do
  if ! out=$(cargo test --release -q -p thin --test thin_crash -- --nocapture 2>&1); then
    echo "run $i failed:"; echo "$out" | grep -E "panicked|seed" | head -20
    exit 1
  fi
  echo "run $i: $(echo "$out" | grep -E 'thin crash:')"
done
echo "$RUNS runs passed in $(( $(date +%s) - start )) s"
