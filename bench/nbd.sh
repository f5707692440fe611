#!/usr/bin/env bash
# NBD export vs qemu-nbd, both driven by fio's nbd engine (libnbd), 4 KiB
# random reads and writes at qd 32. ferrothin serves a thin volume on
# malloc bdevs (configs/nbd-bench.json: -m 0x3, I/O on core 0, the pool's
# metadata core 1); qemu-nbd serves a raw file on tmpfs (/dev/shm). Both
# are filled first, so reads hit data and writes overwrite. Rounds
# alternate the servers; medians and their ratio are printed.
#
# With binaries after the first two arguments (say the build before a
# change and the one after), each runs as its own daemon on its own port
# and every round runs them all, in an order that rotates from round to
# round; each gets its median and its ratio to qemu-nbd, and each after
# the first its ratio to the first, per round, as a median.
# Usage: bench/nbd.sh [ROUNDS] [SECONDS] [BIN...]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
T=${2:-10}
shift $(($# < 2 ? $# : 2))
if [ $# -eq 0 ]; then
  cargo build --release -q
  set -- target/release/ferrothin
fi
BINS=("$@")
N=${#BINS[@]}
Q_PORT=10902
TMP=$(mktemp -d /tmp/ferrothin-nbd-bench.XXXXXX)
IMG=$(mktemp /dev/shm/qemu-nbd-bench.XXXXXX.img)
truncate -s 512M "$IMG"
PIDS=()
trap 'kill ${PIDS[@]} 2>/dev/null; wait 2>/dev/null; rm -rf "$IMG" "$TMP"' EXIT
# Daemon i listens on 10901 + 2i (10902 is qemu-nbd's).
port() { echo $((10901 + 2 * $1)); }
for i in $(seq 0 $((N - 1))); do
  sed "s/127.0.0.1:10901/127.0.0.1:$(port "$i")/" configs/nbd-bench.json >"$TMP/cfg$i.json"
  "${BINS[$i]}" tgt -m 0x3 --json "$TMP/cfg$i.json" -r "$TMP/rpc$i.sock" 2>/dev/null &
  PIDS+=($!)
done
qemu-nbd -f raw -x disk -p $Q_PORT -b 127.0.0.1 -t "$IMG" &
PIDS+=($!)
# The RPC socket appears once the config (1 GiB of malloc faulted in) is up.
for i in $(seq 0 $((N - 1))); do
  for _ in $(seq 300); do [ -S "$TMP/rpc$i.sock" ] && break; sleep 0.1; done
done
sleep 0.5
uri() { echo "nbd://127.0.0.1:$(port "$1")/thin0"; }
Q_URI=nbd://127.0.0.1:$Q_PORT/disk
for u in $(for i in $(seq 0 $((N - 1))); do uri "$i"; done) $Q_URI; do
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
    for k in $(seq 0 $((N - 1))); do
      i=$(((k + r - 1) % N))
      R[ft${i}_$w]+="$(iops "$(uri "$i")" $w) "
    done
    R[qemu_$w]+="$(iops $Q_URI $w) "
  done
done
for w in randread randwrite; do
  q=$(echo "${R[qemu_$w]}" | median)
  for i in $(seq 0 $((N - 1))); do
    f=$(echo "${R[ft${i}_$w]}" | median)
    name=ferrothin
    [ "$N" -gt 1 ] && name="${BINS[$i]}"
    printf '%-9s %s median %8d (runs %s) qemu-nbd median %8d (runs %s) ratio %s\n' \
      "$w" "$name" "$f" "${R[ft${i}_$w]}" "$q" "${R[qemu_$w]}" "$(echo "$f / $q" | bc -l | cut -c1-5)"
    if [ "$i" -gt 0 ]; then
      paired=$(paste -d/ <(echo "${R[ft${i}_$w]}" | tr ' ' '\n' | grep .) \
        <(echo "${R[ft0_$w]}" | tr ' ' '\n' | grep .) | bc -l | tr '\n' ' ' | median)
      printf '%-9s %s / %s, per round, median %s\n' "$w" "${BINS[$i]}" "${BINS[0]}" "$(echo "$paired" | cut -c1-5)"
    fi
  done
done
