#!/usr/bin/env bash
# fio with the ferrothin engine beside `ferrothin bench` and SPDK's bdevperf
# on the same bdevs, 4 KiB, iodepth 32, one job on cpu 0; fio's null
# engine gives fio's own per-I/O cost; a thin volume's overwrite through
# fio beside raw malloc through fio and SPDK's bdevperf on a thin lvol.
# Each case ROUNDS times, the tools alternating within a round; medians
# printed, every run listed.
# Release build.
#
#   bench/fio-vs-bench.sh [SECONDS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
ROUNDS=${2:-5}
BIN=target/release/ferrothin
ENGINE=$PWD/target/release/libferrothin_fio.so
[ -x "$BIN" ] && [ -f "$ENGINE" ] || cargo build --release -p ferrothin -p ferrothin-fio
BDEVPERF=${BDEVPERF:-../shared/peers/spdk/bdevperf}
[ -x "$BDEVPERF" ] || BDEVPERF=/work/shared/peers/spdk/bdevperf

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
RAW=$PWD/configs/fio/malloc.json
THIN=$PWD/configs/fio/thin.json

# fio with our engine: a prefill job (RAM disks fault their pages in on
# first touch; a thin volume provisions), then the timed job. Prints the
# timed job's IOPS.
fio_engine() { # config bdev rw prefill_mib
  local cfg=$1 bdev=$2 rw=$3 fill=$4
  {
    printf '[global]\nioengine=external:%s\nspdk_json_conf=%s\nthread=1\n' "$ENGINE" "$cfg"
    printf 'filename=%s\ndirect=1\nbs=4k\niodepth=32\ncpus_allowed=0\n' "$bdev"
    if [ "$fill" -gt 0 ]; then
      printf '[fill]\nrw=write\nbs=1m\nsize=%sm\n' "$fill"
    fi
    printf '[timed]\nstonewall\nrw=%s\nsize=%sm\nnorandommap=1\ntime_based=1\nruntime=%s\n' \
      "$rw" "$(( fill > 0 ? fill : 1024 ))" "$SECS"
  } >"$tmp/job.fio"
  (cd "$tmp" && fio --output-format=json job.fio) 2>"$tmp/fio.err" |
    python3 -c "import json,sys
r=json.load(sys.stdin); j=[j for j in r['jobs'] if j['jobname']=='timed'][0]
print(round(j['read']['iops']+j['write']['iops']))"
}

# fio's null engine: fio's own cost per I/O, nothing below it.
fio_null() { # rw
  (cd "$tmp" && fio --output-format=json --name=timed --ioengine=null --thread=1 \
    --size=1g --bs=4k --iodepth=32 --rw="$1" --norandommap=1 --time_based=1 \
    --runtime="$SECS" --cpus_allowed=0) 2>"$tmp/fio.err" |
    python3 -c "import json,sys
j=json.load(sys.stdin)['jobs'][0]; print(round(j['read']['iops']+j['write']['iops']))"
}

ft_bench() { # bdev rw [--prefill]
  "$BIN" bench --json "$RAW" -T "$1" -q 32 -o 4k -w "$2" ${3:-} -t "$SECS" -m 0x1 \
    --output json 2>/dev/null |
    python3 -c "import json,sys; print(round(json.load(sys.stdin)['results'][0]['iops']))"
}

bdevperf() { # bdev rw
  "$BDEVPERF" --no-huge -s 2048 -m 0x1 --json "$RAW" -T "$1" -q 32 -o 4096 -w "$2" \
    -t "$SECS" 2>&1 | awk '{gsub(/\r/, "")} $1 == "Total" && $2 == ":" {print int($3)}' | tail -1
}

# SPDK's nearest: bdevperf on a thin lvol, filled first, 4 KiB overwrites.
bdevperf_lvol() {
  python3 bench/bdevperf-lvol.py "$BDEVPERF" "$SECS"
}

CASES=(
  "null-randread|fio_engine $RAW Null0 randread 0|ft_bench Null0 randread|fio_null randread|bdevperf Null0 randread"
  "malloc-randwrite|fio_engine $RAW Malloc0 randwrite 1024|ft_bench Malloc0 randwrite --prefill|fio_null randwrite|bdevperf Malloc0 randwrite"
  "malloc-randread|fio_engine $RAW Malloc0 randread 1024|ft_bench Malloc0 randread --prefill|fio_null randread|bdevperf Malloc0 randread"
  "thin-overwrite|fio_engine $THIN thin0 randwrite 1024|fio_engine $RAW Malloc0 randwrite 1024|bdevperf_lvol"
)
for r in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    IFS='|' read -r name cmds <<<"$c"
    i=0
    IFS='|' read -ra parts <<<"$cmds"
    for cmd in "${parts[@]}"; do
      # shellcheck disable=SC2086
      v=$($cmd || echo 0)
      echo "${v:-0}" >>"$tmp/$name.$i"
      i=$((i + 1))
    done
  done
  echo "round $r done" >&2
done

median() { sort -g "$1" | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
runs() { tr '\n' ' ' <"$1"; }
printf '%-18s %12s %12s %7s %12s %12s\n' case "fio+engine" "bench" "ratio" "fio null" "bdevperf"
for c in "${CASES[@]:0:3}"; do
  name=${c%%|*}
  a=$(median "$tmp/$name.0"); b=$(median "$tmp/$name.1")
  n=$(median "$tmp/$name.2"); s=$(median "$tmp/$name.3")
  printf '%-18s %12s %12s %7.3f %12s %12s\n' "$name" "$a" "$b" "$(echo "$a / $b" | bc -l)" "$n" "$s"
done
a=$(median "$tmp/thin-overwrite.0"); b=$(median "$tmp/thin-overwrite.1")
l=$(median "$tmp/thin-overwrite.2")
printf '%-18s %12s %12s %7.3f %12s  (thin volume vs raw malloc, both through fio; bdevperf on a thin lvol)\n' \
  thin-overwrite "$a" "$b" "$(echo "$a / $b" | bc -l)" "$l"
echo "all runs:"
for f in "$tmp"/*.[0-9]; do printf '  %s: %s\n' "$(basename "$f")" "$(runs "$f")"; done
