#!/usr/bin/env bash
# Thin volume vs raw malloc, 4 KiB qd32, one I/O core (core 0) and the
# pool's metadata core (core 1). Rounds interleave thin and raw runs; the
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
  R[rawover]+="$($B bench --json configs/bench-thin-raw.json -m 0x1 -q 32 -o 4096 -w randwrite -t "$T" --prefill | iops Raw0) "
  R[read]+="$($B bench --json configs/bench-thin.json -m 0x3 -q 32 -o 4096 -w randread -t "$T" --prefill | iops thin0) "
  R[rawread]+="$($B bench --json configs/bench-thin-raw.json -m 0x1 -q 32 -o 4096 -w randread -t "$T" --prefill | iops Raw0) "
done
for k in empty seqblk over rawover read rawread; do
  m=$(echo "${R[$k]}" | tr ' ' '\n' | grep . | median)
  printf '%-8s median %12.0f   runs: %s\n' "$k" "$m" "${R[$k]}"
  declare "M_$k=$m"
done
echo "overwrite thin/raw: $(echo "$M_over / $M_rawover" | bc -l | cut -c1-5)"
echo "randread  thin/raw: $(echo "$M_read / $M_rawread" | bc -l | cut -c1-5)"
