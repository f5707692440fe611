#!/usr/bin/env bash
# The foundation's benchmark set on the embedded default config (512 MiB
# malloc, 1 GiB null), 1 core, busy mode, 4 KiB: each case ROUNDS times,
# interleaved, median printed. Release build.
#
#   bench/core.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-5}
BIN=target/release/ferrothin
[ -x "$BIN" ] || cargo build --release

CASES=(
  "malloc-randwrite-qd32|-T Malloc0 -q 32 -o 4k -w randwrite --prefill"
  "malloc-randread-qd32|-T Malloc0 -q 32 -o 4k -w randread --prefill"
  "null-randread-qd128|-T Null0 -q 128 -o 4k -w randread"
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    name=${c%%|*}; args=${c#*|}
    # shellcheck disable=SC2086
    "$BIN" bench $args -t "$SECS" -m 0x1 --output json 2>/dev/null \
      | python3 -c "import json,sys; r=json.load(sys.stdin)['results'][0]; print(r['iops'], r['p50_latency_us'], r['p99_latency_us'])" \
      >> "$tmp/$name"
  done
done
printf '%-22s %14s %10s %10s   %s\n' case "median IOPS" "p50 us" "p99 us" "all runs (IOPS)"
for c in "${CASES[@]}"; do
  name=${c%%|*}
  sort -g "$tmp/$name" | awk -v n="$name" '{i[NR]=$1; p50[NR]=$2; p99[NR]=$3; all=all sprintf("%.0f ", $1)}
    END {m=int((NR+1)/2); printf "%-22s %14.0f %10.2f %10.2f   %s\n", n, i[m], p50[m], p99[m], all}'
done
