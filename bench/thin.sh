#!/usr/bin/env bash
# Thin volume vs raw malloc, 4 KiB qd32, one I/O core (core 0) and the
# pool's metadata core (core 1); the raw baseline keeps an idle pool's
# metadata reactor on core 1 too, so both runs have the same reactors.
# cow: randwrite to the origin right after a snapshot of the prefilled
# volume (every first touch of a 64 KiB block copies it). Rounds interleave thin and raw runs; the
# medians and their ratios are printed. Usage: bench/thin.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
T=${2:-2}
cargo build --release -q
B=target/release/ferrothin
iops() { grep -E "^\s+$1 " | awk -F: '{print $2}' | awk '{print $2}'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A R
for r in $(seq "$ROUNDS"); do
  R[empty]+="$($B bench --json configs/bench-thin.json -m 0x3 -q 32 -o 4096 -w randwrite -t "$T" | iops thin0) "
  R[seqblk]+="$($B bench --json configs/bench-thin.json -m 0x3 -q 32 -o 65536 -w write -t "$T" | iops thin0) "
  R[over]+="$($B bench --json configs/bench-thin.json -m 0x3 -q 32 -o 4096 -w randwrite -t "$T" --prefill | iops thin0) "
  R[rawover]+="$($B bench --json configs/bench-thin-raw.json -m 0x3 -T Raw0 -q 32 -o 4096 -w randwrite -t "$T" --prefill | iops Raw0) "
  R[read]+="$($B bench --json configs/bench-thin.json -m 0x3 -q 32 -o 4096 -w randread -t "$T" --prefill | iops thin0) "
  R[rawread]+="$($B bench --json configs/bench-thin-raw.json -m 0x3 -T Raw0 -q 32 -o 4096 -w randread -t "$T" --prefill | iops Raw0) "
done
for k in empty seqblk over rawover read rawread; do
  m=$(echo "${R[$k]}" | tr ' ' '\n' | grep . | median)
  printf '%-8s median %12.0f   runs: %s\n' "$k" "$m" "${R[$k]}"
  declare "M_$k=$m"
done
# Ratios of the runs paired in one round (thin then raw, seconds apart)
# resist this machine's drifts better than a ratio of medians.
paired() {
  paste -d/ <(echo "${R[$1]}" | tr ' ' '\n' | grep .) <(echo "${R[$2]}" | tr ' ' '\n' | grep .) |
    bc -l | median | cut -c1-5
}
echo "overwrite thin/raw: $(echo "$M_over / $M_rawover" | bc -l | cut -c1-5) (median of per-round ratios: $(paired over rawover))"
# Copy on write: 0.2 s of randwrite to the origin right after a snapshot
# of the prefilled volume (short: within ~0.4 s every block has been
# copied); copies counted by the pool.
for r in $(seq "$ROUNDS"); do
  $B bench --json configs/bench-thin-cow.json -m 0x3 -q 32 -o 4096 -w randwrite -t 0.2 --prefill \
    --after-prefill configs/bench-thin-snap.json 2>&1 | grep -E "^\s+thin0 |thin pool pool0" | tr -s ' ' | tr '\n' ' ' |
    awk '{for (i=1;i<=NF;i++) if ($i=="copied,") c=$(i-1); printf "cow: %.0f IOPS, %.0f copies/s\n", $4, c/0.2}'
done
echo "randread  thin/raw: $(echo "$M_read / $M_rawread" | bc -l | cut -c1-5) (median of per-round ratios: $(paired read rawread))"
# FLUSH latency under the 4 KiB randwrite load: every 1000th I/O of the job
# is a FLUSH. Into an empty volume (flushes commit new mappings), then over
# provisioned blocks (a flush is the data bdev's).
for r in $(seq "$ROUNDS"); do
  for pre in "" --prefill; do
    $B bench --json configs/bench-thin.json -m 0x3 -q 32 -o 4096 -w randwrite -t "$T" $pre --flush-every 1000 2>&1 |
      grep -E "flush \(us\)" | sed "s/^/flush ${pre:-empty}: /"
  done
done

