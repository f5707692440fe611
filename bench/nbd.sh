#!/usr/bin/env bash
# NBD export vs qemu-nbd, both driven by fio's nbd engine (libnbd), 4 KiB
# random reads and writes at qd 32. ferrothin serves a thin volume on
# malloc bdevs (configs/nbd-bench.json: -m 0x3, I/O on core 0, the pool's
# metadata core 1); qemu-nbd serves a raw file on tmpfs (/dev/shm). Both
# are filled first, so reads hit data and writes overwrite. Rounds
# alternate the two servers; medians and their ratio are printed.
# Usage: bench/nbd.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
T=${2:-10}
FT_PORT=10901
Q_PORT=10902
cargo build --release -q
B=target/release/ferrothin
SOCK=$(mktemp -u /tmp/ferrothin-nbd-bench.XXXXXX.sock)
IMG=$(mktemp /dev/shm/qemu-nbd-bench.XXXXXX.img)
truncate -s 512M "$IMG"
$B tgt -m 0x3 --json configs/nbd-bench.json -r "$SOCK" 2>/dev/null &
FT=$!
qemu-nbd -f raw -x disk -p $Q_PORT -b 127.0.0.1 -t "$IMG" &
QN=$!
trap 'kill $FT $QN 2>/dev/null; wait 2>/dev/null; rm -f "$IMG"' EXIT
# The RPC socket appears once the config (1 GiB of malloc faulted in) is up.
for _ in $(seq 300); do [ -S "$SOCK" ] && break; sleep 0.1; done
sleep 0.5
FT_URI=nbd://127.0.0.1:$FT_PORT/thin0
Q_URI=nbd://127.0.0.1:$Q_PORT/disk
for u in $FT_URI $Q_URI; do
  fio --name=fill --ioengine=nbd --uri="$u" --rw=write --bs=1m --iodepth=4 --size=512m >/dev/null
done
iops() {
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth=32 --size=512m \
    --time_based --runtime="$T" --output-format=json |
    python3 -c "import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index('{'):])['jobs'][0]; print(round(j['read']['iops'] + j['write']['iops']))"
}
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A R
for r in $(seq "$ROUNDS"); do
  for w in randread randwrite; do
    R[ft_$w]+="$(iops $FT_URI $w) "
    R[qemu_$w]+="$(iops $Q_URI $w) "
  done
done
for w in randread randwrite; do
  f=$(echo "${R[ft_$w]}" | median)
  q=$(echo "${R[qemu_$w]}" | median)
  printf '%-9s ferrothin median %8d (runs %s) qemu-nbd median %8d (runs %s) ratio %s\n' \
    "$w" "$f" "${R[ft_$w]}" "$q" "${R[qemu_$w]}" "$(echo "$f / $q" | bc -l | cut -c1-5)"
done
