#!/usr/bin/env bash
# The NVMe bdev's host side (`ferrothin bench` on a namespace it attaches
# with bdev_nvme_attach_controller) beside SPDK's host (spdk_nvme_perf),
# over loopback, 4 KiB random reads and writes at qd 32, one I/O queue:
# each host against each target, SPDK's nvmf_tgt and ferrothin's own
# NVMe/TCP target, both exporting a 256 MiB malloc bdev, so the hosts are
# compared on the same target.
#
# Targets on core 0 (-m 0x1; ferrothin with --busy-poll, as nvmf_tgt
# polls), hosts on core 1 (perf -c 0x2, ferrothin bench -m 0x2, both
# polling). Both targets run from the start; each run resumes the one it
# measures and stops the other (SIGSTOP). Rounds alternate the order of
# the hosts. A polling host spends its whole core, so its CPU per I/O is
# 1 / IOPS of one core: the IOPS say it.
#
# Printed: each run's IOPS; per workload, target and host the median
# IOPS, and per workload and target the ratio of ferrothin's median to
# perf's and the median over rounds of the per-round ratio.
#
# Usage: bench/nvme-host-vs-spdk.sh [ROUNDS] [SECONDS]
# Env: FERROTHIN_BIN (default: a release build of this tree),
#      FERROTHIN_SPDK_PEERS (default: shared/peers/spdk beside the
#      repository or one of its parents).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
T=${2:-5}

if [ -n "${FERROTHIN_SPDK_PEERS:-}" ]; then
  PEERS=$FERROTHIN_SPDK_PEERS
else
  PEERS=
  d=$(pwd)
  while [ "$d" != / ]; do
    d=$(dirname "$d")
    if [ -d "$d/shared/peers/spdk" ]; then
      PEERS=$d/shared/peers/spdk
      break
    fi
  done
fi
for p in nvmf_tgt spdk_nvme_perf; do
  [ -x "$PEERS/$p" ] || {
    echo "SPDK's $p not found in '${PEERS}' (FERROTHIN_SPDK_PEERS=DIR)" >&2
    exit 1
  }
done
[ -n "${FERROTHIN_BIN:-}" ] || nice cargo build --release -q --bin ferrothin
FT_BIN=$(realpath "${FERROTHIN_BIN:-target/release/ferrothin}")

TMP=$(mktemp -d /tmp/ferrothin-nvme-host-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rpc() {
  local sock=$1
  shift
  spdk-rpc -s "$sock" "$@" >/dev/null
}
wait_sock() {
  for _ in $(seq 600); do
    [ -S "$1" ] && spdk-rpc -s "$1" -t 5 spdk_get_version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no RPC socket $1" >&2
  exit 1
}
NQN=nqn.2016-06.io.ferrothin.bench:host
declare -A PID PORT
start_target() { # NAME PROGRAM...
  local name=$1 sock=$TMP/$1.sock
  shift
  PORT[$name]=$(free_port)
  "$@" -r "$sock" >"$TMP/$name.log" 2>&1 &
  PID[$name]=$!
  PIDS+=($!)
  wait_sock "$sock"
  rpc "$sock" nvmf_create_transport -t TCP
  rpc "$sock" bdev_malloc_create -b Malloc0 256 4096
  rpc "$sock" nvmf_create_subsystem $NQN -a -s BENCH0001
  rpc "$sock" nvmf_subsystem_add_ns $NQN Malloc0
  rpc "$sock" nvmf_subsystem_add_listener $NQN -t tcp -a 127.0.0.1 -s "${PORT[$name]}"
}
start_target spdk "$PEERS/nvmf_tgt" --no-huge -s 1024 -m 0x1 --disable-cpumask-locks --num-trace-entries 0
start_target ft "$FT_BIN" tgt --empty -m 0x1 --busy-poll
TARGETS=(spdk ft)
only() { # resume target $1, stop the others
  local t
  for t in "${TARGETS[@]}"; do
    if [ "$t" = "$1" ]; then kill -CONT "${PID[$t]}"; else kill -STOP "${PID[$t]}"; fi
  done
  sleep 0.2
}

# host_run HOST TARGET WORKLOAD: prints the IOPS.
host_run() {
  local host=$1 tgt=$2 w=$3
  case $host in
    perf)
      "$PEERS/spdk_nvme_perf" --no-huge -s 512 -c 0x2 -q 32 -o 4096 -w "$w" -t "$T" \
        -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:${PORT[$tgt]} subnqn:$NQN" \
        >"$TMP/out" 2>&1 || { cat "$TMP/out" >&2; exit 1; }
      awk '/^Total/ { sub(/^[^:]*:/, ""); printf "%d", $1 }' "$TMP/out"
      ;;
    ferrothin)
      cat >"$TMP/cfg.json" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_nvme_attach_controller", "params": {"name": "B", "trtype": "tcp",
   "traddr": "127.0.0.1", "trsvcid": "${PORT[$tgt]}", "subnqn": "$NQN"}}]}]}
EOF
      "$FT_BIN" bench --json "$TMP/cfg.json" -T Bn1 -m 0x2 -q 32 -o 4096 -w "$w" -t "$T" \
        --output json >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/out" "$TMP/err" >&2; exit 1; }
      python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(int(sum(j["iops"] for j in r["results"])))' "$TMP/out"
      ;;
  esac
}

echo "# 4 KiB, qd 32, one queue, ${T} s a run; targets on core 0, hosts on core 1; $(date -u +%FT%TZ); load $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A IOPS
HOSTS=(perf ferrothin)
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 0 ]; then order=(ferrothin perf); else order=(perf ferrothin); fi
  for w in randread randwrite; do
    for tgt in "${TARGETS[@]}"; do
      only "$tgt"
      for h in "${order[@]}"; do
        v=$(host_run "$h" "$tgt" "$w")
        IOPS[$w,$tgt,$h]+="$v "
        echo "round $r $w target $tgt host $h: $v IOPS"
      done
    done
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
printf '%-10s %-7s %12s %12s %7s %7s\n' workload target "perf IOPS" "ft IOPS" ratio paired
for w in randread randwrite; do
  for tgt in "${TARGETS[@]}"; do
    p=$(echo "${IOPS[$w,$tgt,perf]}" | median)
    f=$(echo "${IOPS[$w,$tgt,ferrothin]}" | median)
    paired=$(paste -d/ <(echo "${IOPS[$w,$tgt,ferrothin]}" | tr ' ' '\n' | grep .) \
      <(echo "${IOPS[$w,$tgt,perf]}" | tr ' ' '\n' | grep .) | bc -l | median)
    printf '%-10s %-7s %12d %12d %7.3f %7.3f\n' "$w" "$tgt" "$p" "$f" "$(echo "$f / $p" | bc -l)" "$paired"
  done
done
echo "# ratio: ferrothin bench's median IOPS over spdk_nvme_perf's on the same target; paired: median over rounds of the same ratio within a round"
