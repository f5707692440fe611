#!/usr/bin/env bash
# Two builds side by side on bench/thin.sh's paired workloads: overwrite
# (4 KiB randwrite over provisioned blocks) and mapped randread, thin
# volume against raw malloc in one process (--alternate 0.1). Each round
# runs every binary in turn, so drift hits both alike; prints each
# round's paired ratio (thin/raw, the median over its turns) per binary
# and the median per binary. For a refactor: the ratios of the old and
# new builds should agree within this machine's noise.
# Usage: bench/thin-ab.sh OLD_BINARY NEW_BINARY [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1
NEW=$2
ROUNDS=${3:-5}
T=${4:-2}
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A R
for r in $(seq "$ROUNDS"); do
  for w in randwrite randread; do
    for b in old new; do
      B=$OLD
      [ "$b" = new ] && B=$NEW
      ratio=$("$B" bench --json configs/bench-thin-vs-raw.json -m 0x3 -T Raw0 -T thin0 -q 32 -o 4096 \
        -w "$w" -t "$T" --prefill --alternate 0.1 2>/dev/null | grep -E "thin0 +: median" | awk '{print $4}')
      R[$b$w]+="$ratio "
    done
  done
done
for k in oldrandwrite newrandwrite oldrandread newrandread; do
  printf '%-14s median %8s   rounds: %s\n' "$k" "$(echo "${R[$k]}" | tr ' ' '\n' | grep . | median)" "${R[$k]}"
done
echo "(randwrite is the overwrite of provisioned blocks; each value a round's median turn ratio, thin/raw)"
