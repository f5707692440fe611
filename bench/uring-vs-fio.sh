#!/usr/bin/env bash
# uring bdev vs fio's io_uring engine, O_DIRECT, same file, same depth, in
# one run: the two tools alternate ROUNDS times per workload and the medians
# and their ratio are printed. Needs fio (Debian package) and a release build.
#
#   bench/uring-vs-fio.sh [DIR] [SECONDS] [ROUNDS] [DEPTH]
#
# DIR must be on a disk filesystem (O_DIRECT); default: a temp dir under /var/tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-$(mktemp -d /var/tmp/ferrothin-bench.XXXXXX)}
SECS=${2:-10}
ROUNDS=${3:-3}
QD=${4:-32}
FILE=$DIR/uring-bench.img
SIZE_MB=1024
BIN=target/release/ferrothin

command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release
trap 'rm -f "$FILE" "$DIR/cfg.json"' EXIT

# Allocate every block so reads hit real extents.
fio --name=fill --filename="$FILE" --size=${SIZE_MB}M --rw=write --bs=1M --direct=1 \
    --ioengine=io_uring --iodepth=8 --output=/dev/null
cat > "$DIR/cfg.json" <<JSON
{"subsystems":[{"subsystem":"bdev","config":[
  {"method":"bdev_uring_create","params":{"name":"U0","filename":"$FILE","block_size":4096}}]}]}
JSON

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

for w in randread randwrite; do
  : > "$DIR/fio.$w"; : > "$DIR/ours.$w"
  for r in $(seq "$ROUNDS"); do
    fio --name=j --filename="$FILE" --size=${SIZE_MB}M --rw=$w --bs=4k --direct=1 \
        --ioengine=io_uring --iodepth="$QD" --runtime="$SECS" --time_based \
        --output-format=json 2>/dev/null \
      | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]; print(j['read' if '$w'=='randread' else 'write']['iops'])" \
      >> "$DIR/fio.$w"
    "$BIN" bench --json "$DIR/cfg.json" -T U0 -q "$QD" -o 4k -w $w -t "$SECS" --output json 2>/dev/null \
      | python3 -c "import json,sys; print(json.load(sys.stdin)['results'][0]['iops'])" >> "$DIR/ours.$w"
  done
  f=$(median < "$DIR/fio.$w"); o=$(median < "$DIR/ours.$w")
  printf '%-10s qd %-3s fio io_uring median %10.0f IOPS  ferrothin uring median %10.0f IOPS  ratio %.3f\n' \
    "$w" "$QD" "$f" "$o" "$(echo "$o / $f" | bc -l)"
  printf '           fio runs: %s\n           ours:     %s\n' "$(tr '\n' ' ' < "$DIR/fio.$w")" "$(tr '\n' ' ' < "$DIR/ours.$w")"
  rm -f "$DIR/fio.$w" "$DIR/ours.$w"
done
