#!/usr/bin/env bash
# Thin volume against raw malloc, 4 KiB qd 32, one I/O core (core 0) and
# the pool's metadata core (core 1).
#
# overwrite and mapped randread: the volume and a raw 2800 MiB RAM disk in
# one process (configs/bench-thin-vs-raw.json), taking 0.1 s turns
# (--alternate) for T seconds each per round; each round reports the
# median over its turns of thin IOPS / raw IOPS in the same turn. This
# machine's speed drifts by tens of percent within seconds, and runs in
# separate processes, seconds apart, cannot resolve 5%.
# empty: randwrite into the empty volume; seqblk: 64 KiB writes, one
# provision each; cow: randwrite to the origin right after a snapshot of the
# prefilled volume (every first touch of a 64 KiB block copies it); flush:
# FLUSH latency under randwrite. Usage: bench/thin.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
T=${2:-2}
cargo build --release -q
B=target/release/ferrothin
iops() { grep -E "^\s+$1 +:" | head -1 | awk -F: '{print $2}' | awk '{print $2}'; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A R
for r in $(seq "$ROUNDS"); do
  R[empty]+="$($B bench --json configs/bench-thin.json -m 0x3 -q 32 -o 4096 -w randwrite -t "$T" 2>/dev/null | iops thin0) "
  R[seqblk]+="$($B bench --json configs/bench-thin.json -m 0x3 -q 32 -o 65536 -w write -t "$T" 2>/dev/null | iops thin0) "
  for w in randwrite randread; do
    out=$($B bench --json configs/bench-thin-vs-raw.json -m 0x3 -T Raw0 -T thin0 -q 32 -o 4096 -w $w \
      -t "$T" --prefill --alternate 0.1 2>/dev/null)
    R[$w]+="$(echo "$out" | iops thin0) "
    R[raw$w]+="$(echo "$out" | iops Raw0) "
    R[pair$w]+="$(echo "$out" | grep -E "thin0 +: median" | awk '{print $4}') "
  done
done
for k in empty seqblk randwrite rawrandwrite pairrandwrite randread rawrandread pairrandread; do
  m=$(echo "${R[$k]}" | tr ' ' '\n' | grep . | median)
  printf '%-14s median %12s   rounds: %s\n' "$k" "$m" "${R[$k]}"
done
echo "(randwrite is the overwrite of provisioned blocks; pair* are each round's median turn ratio, thin/raw)"
# Copy on write: 0.2 s of randwrite to the origin right after a snapshot
# of the prefilled volume (short: within ~0.4 s every block has been
# copied); copies counted by the pool.
for r in $(seq "$ROUNDS"); do
  $B bench --json configs/bench-thin-cow.json -m 0x3 -q 32 -o 4096 -w randwrite -t 0.2 --prefill \
    --after-prefill configs/bench-thin-snap.json 2>&1 | grep -E "^\s+thin0 |thin pool pool0" | tr -s ' ' | tr '\n' ' ' |
    awk '{for (i=1;i<=NF;i++) if ($i=="copied,") c=$(i-1); printf "cow: %.0f IOPS, %.0f copies/s\n", $4, c/0.2}'
done
# FLUSH latency under the 4 KiB randwrite load: every 1000th I/O of the job
# is a FLUSH. Into an empty volume (flushes commit new mappings), then over
# provisioned blocks (a flush is the data bdev's).
for r in $(seq "$ROUNDS"); do
  for pre in "" --prefill; do
    $B bench --json configs/bench-thin.json -m 0x3 -q 32 -o 4096 -w randwrite -t "$T" $pre --flush-every 1000 2>&1 |
      grep -E "flush \(us\)" | sed "s/^/flush ${pre:-empty}: /"
  done
done
