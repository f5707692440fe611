#!/usr/bin/env bash
# Runs the deterministic crash simulation (thin/tests/thin_sim.rs) for many
# seeds, release build, split over JOBS processes (default: the cores),
# and prints each part's count of seeds passed and of cuts that landed
# inside a commit's metadata writes. A failing seed replays exactly:
#   THIN_SIM_FIRST=N THIN_SIM_SEEDS=1 THIN_CRASH_TRACE=1 \
#     cargo test --release -p thin --test thin_sim simulated -- --nocapture
# Usage: bench/thin-sim.sh [SEEDS] [FIRST] [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-100000}
FIRST=${2:-0}
JOBS=${3:-$(nproc)}
cargo test --release -q -p thin --test thin_sim --no-run
start=$(date +%s)
per=$(( (SEEDS + JOBS - 1) / JOBS ))
pids=()
for j in $(seq 0 $((JOBS - 1))); do
  f=$(( FIRST + j * per ))
  n=$(( per < FIRST + SEEDS - f ? per : FIRST + SEEDS - f ))
  [ "$n" -gt 0 ] || continue
  THIN_SIM_SEEDS=$n THIN_SIM_FIRST=$f \
    cargo test --release -q -p thin --test thin_sim simulated -- --nocapture 2>&1 \
    | grep -E "thin sim:|panicked|seed" &
  pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
echo "elapsed: $(( $(date +%s) - start )) s"
exit $status
