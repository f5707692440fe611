#!/usr/bin/env bash
# ferrothin's NVMe/TCP target beside SPDK's nvmf_tgt, both driven by SPDK's
# spdk_nvme_perf over loopback: 4 KiB random reads and writes at qd 32.
#
#   plain   (default) nvmf_tgt exporting a malloc bdev, against ferrothin
#           exporting (a) a malloc bdev and (b) a thin volume on malloc;
#           every target on core 0 (-m 0x1), perf on core 1 (-c 0x2).
#   digest  the same with header and data digests (perf -H -I).
#   scale   ferrothin on 2 cores (-m 0x3) against ferrothin on 1, malloc
#           and thin, perf with 2 queues; perf then shares core 1 with
#           the 2-core target's second reactor (said in the output).
#           SCALE_TARGET=spdk measures nvmf_tgt the same way instead.
#
# Every namespace is 256 MiB, written once (64 KiB sequential writes)
# before the first round, so reads find data and writes overwrite. The
# targets all run from the start; each run resumes the one it measures
# and stops the others (SIGSTOP), so an idle target spinning on core 0
# takes nothing from the measured one. Rounds rotate the order of the
# targets. Printed: each run's IOPS and the target's CPU per I/O (user +
# system time of the whole target process from /proc/PID/stat over the
# run, divided by the run's I/Os: a polling target spins, so this is its
# core's time per I/O, not the work an I/O needs); then per workload and
# target the median IOPS, the median CPU per I/O, the ratio of the median
# to the first target's median, and the median over rounds of the ratio
# to the first target in the same round.
#
# Usage: bench/nvmf-vs-spdk.sh [ROUNDS] [SECONDS] [plain|digest|scale]
# Env: FERROTHIN_BIN (default: a release build of this tree),
#      FERROTHIN_SPDK_PEERS (default: the shared/peers/spdk found beside
#      the repository or one of its parents, as the tests find it),
#      FERROTHIN_ARGS (extra `ferrothin tgt` flags; default --busy-poll,
#      since nvmf_tgt polls too; none in scale mode, where a reactor
#      shares perf's core and parks when idle), SKIP_FERROTHIN=1 (the nvmf_tgt half
#      alone, to check the script before ferrothin's target exists).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
T=${2:-5}
MODE=${3:-plain}
case $MODE in plain | digest | scale) ;; *)
  echo "mode: plain, digest or scale" >&2
  exit 2
  ;;
esac

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
  if [ ! -x "$PEERS/$p" ]; then
    echo "SPDK's $p not found in '${PEERS}' (shared/peers/spdk beside the repository, or FERROTHIN_SPDK_PEERS=DIR)" >&2
    exit 1
  fi
done
SKIP_FT=${SKIP_FERROTHIN:-0}
SCALE_TARGET=${SCALE_TARGET:-ferrothin}
NEED_FT=1
if [ "$SKIP_FT" = 1 ] || { [ "$MODE" = scale ] && [ "$SCALE_TARGET" = spdk ]; }; then
  NEED_FT=0
fi
if [ "$NEED_FT" = 1 ] && [ -z "${FERROTHIN_BIN:-}" ]; then
  nice cargo build --release -q
fi
FT_BIN=$(realpath "${FERROTHIN_BIN:-target/release/ferrothin}")
# Polling like nvmf_tgt, except where a reactor shares perf's core: a
# spinning reactor there would take half of perf's time slices.
if [ "$MODE" = scale ]; then
  read -r -a FT_ARGS <<<"${FERROTHIN_ARGS:-}"
else
  read -r -a FT_ARGS <<<"${FERROTHIN_ARGS:---busy-poll}"
fi

TMP=$(mktemp -d /tmp/ferrothin-nvmf-bench.XXXXXX)
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
MIB=256
NQN_MALLOC=nqn.2016-06.io.ferrothin.bench:malloc
NQN_THIN=nqn.2016-06.io.ferrothin.bench:thin

# rpc SOCK ARGS...: SPDK's client, with our plugin (harmless to nvmf_tgt).
rpc() {
  local sock=$1
  shift
  PYTHONPATH=src/rpc spdk-rpc -s "$sock" --plugin ferrothin_plugin "$@" >/dev/null
}
wait_sock() {
  for _ in $(seq 600); do
    [ -S "$1" ] && spdk-rpc -s "$1" -t 5 spdk_get_version >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "no RPC socket $1" >&2
  exit 1
}
# export SOCK PORT NQN BDEV SERIAL: a subsystem with one namespace.
export_bdev() {
  rpc "$1" nvmf_create_subsystem "$3" -a -s "$5" -d "bench $4"
  rpc "$1" nvmf_subsystem_add_ns "$3" "$4"
  rpc "$1" nvmf_subsystem_add_listener "$3" -t tcp -a 127.0.0.1 -s "$2"
}

# Targets: name -> pid, port. Cases: label -> "name nqn".
declare -A PID PORT
CASES=()
declare -A CASE
start_spdk() { # NAME MASK
  local sock=$TMP/$1.sock port
  port=$(free_port)
  "$PEERS/nvmf_tgt" --no-huge -s 1024 -m "$2" -r "$sock" \
    --disable-cpumask-locks --num-trace-entries 0 >"$TMP/$1.log" 2>&1 &
  PID[$1]=$!
  PIDS+=($!)
  PORT[$1]=$port
  wait_sock "$sock"
  rpc "$sock" nvmf_create_transport -t TCP
  rpc "$sock" bdev_malloc_create -b Malloc0 $MIB 4096
  export_bdev "$sock" "$port" $NQN_MALLOC Malloc0 SPDK0001
  CASES+=("$1-malloc")
  CASE[$1-malloc]="$1 $NQN_MALLOC"
}
start_ft() { # NAME MASK
  local sock=$TMP/$1.sock port
  port=$(free_port)
  "$FT_BIN" tgt --empty -m "$2" -r "$sock" "${FT_ARGS[@]}" >"$TMP/$1.log" 2>&1 &
  PID[$1]=$!
  PIDS+=($!)
  PORT[$1]=$port
  wait_sock "$sock"
  if ! PYTHONPATH=src/rpc spdk-rpc -s "$sock" nvmf_create_transport -t TCP >"$TMP/$1.rpc" 2>&1; then
    echo "ferrothin ($FT_BIN) refused nvmf_create_transport:" >&2
    cat "$TMP/$1.rpc" >&2
    exit 1
  fi
  rpc "$sock" bdev_malloc_create -b Malloc0 $MIB 4096
  rpc "$sock" bdev_malloc_create -b Meta 16 4096
  rpc "$sock" bdev_malloc_create -b Data $((2 * MIB)) 4096
  # No zeroing of new blocks: the prefill writes every block anyway.
  rpc "$sock" bdev_thin_pool_create pool0 Meta -d Data -z false
  rpc "$sock" bdev_thin_create pool0 thin0 $MIB
  export_bdev "$sock" "$port" $NQN_MALLOC Malloc0 FT0001
  export_bdev "$sock" "$port" $NQN_THIN thin0 FT0002
  CASES+=("$1-malloc" "$1-thin")
  CASE[$1-malloc]="$1 $NQN_MALLOC"
  CASE[$1-thin]="$1 $NQN_THIN"
}

PERF_CORE=0x2
QUEUES=1
DIGEST=()
NOTE=""
case $MODE in
  plain | digest)
    start_spdk spdk 0x1
    [ "$NEED_FT" = 1 ] && start_ft ft 0x1
    if [ "$MODE" = digest ]; then
      DIGEST=(-H -I)
      NOTE="header and data digests on (perf -H -I)"
    fi
    ;;
  scale)
    QUEUES=2
    if [ "$SCALE_TARGET" = spdk ]; then
      start_spdk spdk1 0x1
      start_spdk spdk2 0x3
    else
      start_ft ft1 0x1
      start_ft ft2 0x3
    fi
    NOTE="2 I/O queues per namespace; the 2-core target's second reactor shares core 1 with perf, so its figures include that contention (nvmf_tgt's reactors never park: on a shared core they take half of perf's time)"
    ;;
esac

# perf_run NAME NQN WORKLOAD SECONDS [ARGS...]: perf's output in $TMP/perf.out.
perf_run() {
  local name=$1 nqn=$2 w=$3 t=$4
  shift 4
  if ! "$PEERS/spdk_nvme_perf" --no-huge -s 512 -c $PERF_CORE -o 4096 -w "$w" -t "$t" \
    -r "trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:${PORT[$name]} subnqn:$nqn" \
    "$@" >"$TMP/perf.out" 2>&1 || grep -qi "error\|fail" "$TMP/perf.out"; then
    echo "spdk_nvme_perf against $name $nqn ($w) failed:" >&2
    cat "$TMP/perf.out" >&2
    exit 1
  fi
}
# Only `name` runs; the other targets are stopped.
only() {
  local t
  for t in "${!PID[@]}"; do
    if [ "$t" = "$1" ]; then kill -CONT "${PID[$t]}"; else kill -STOP "${PID[$t]}"; fi
  done
}
cpu_ticks() { # utime + stime of the whole process (fields 14, 15)
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}
HZ=$(getconf CLK_TCK)

echo "# $0 $ROUNDS $T $MODE ($(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD))"
echo "# $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); Linux $(uname -r); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# perf: 4 KiB, qd 32, ${T} s a run, core 1 (-c $PERF_CORE), $QUEUES queue(s)${NOTE:+; $NOTE}"
for n in "${!PID[@]}"; do
  echo "# $n: pid ${PID[$n]} port ${PORT[$n]} ($(tr '\0' ' ' <"/proc/${PID[$n]}/cmdline" | sed "s|$TMP/||g"))"
done

echo "# prefill: every namespace written once, 64 KiB sequential writes"
for c in "${CASES[@]}"; do
  read -r name nqn <<<"${CASE[$c]}"
  only "$name"
  perf_run "$name" "$nqn" write 600 -q 8 -o 65536 -d $((MIB * 16))
done

# The thin volumes must now be fully mapped, or reads would measure holes.
for c in "${CASES[@]}"; do
  [ "${c%-thin}" = "$c" ] && continue
  read -r name _ <<<"${CASE[$c]}"
  kill -CONT "${PID[$name]}"
  PYTHONPATH=src/rpc spdk-rpc -s "$TMP/$name.sock" --plugin ferrothin_plugin \
    bdev_thin_pool_get_pools -n pool0 |
    python3 -c "import json,sys; p=json.load(sys.stdin)[0]; print('# $name pool0 after the prefill:', {k: v for k, v in p.items() if 'block' in k})"
done

declare -A IOPS CPU
for r in $(seq "$ROUNDS"); do
  for w in randread randwrite; do
    line="round $r $w:"
    ncases=${#CASES[@]}
    for k in $(seq 0 $((ncases - 1))); do
      c=${CASES[$(((k + r - 1) % ncases))]}
      read -r name nqn <<<"${CASE[$c]}"
      only "$name"
      before=$(cpu_ticks "${PID[$name]}")
      perf_run "$name" "$nqn" $w "$T" -q 32 -P $QUEUES "${DIGEST[@]}"
      after=$(cpu_ticks "${PID[$name]}")
      iops=$(awk '/^Total/ { sub(/^[^:]*:/, ""); printf "%d", $1 }' "$TMP/perf.out")
      # CPU ns per I/O: ticks over the run / I/Os in it.
      ns=$(echo "($after - $before) * 1000000000 / $HZ / ($iops * $T)" | bc)
      IOPS[$c,$w]+="$iops "
      CPU[$c,$w]+="$ns "
      line+=" $c $iops (${ns} ns/io)"
    done
    echo "$line"
  done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
printf '%-10s %-12s %12s %10s %6s %7s  %s\n' workload target "median IOPS" "CPU ns/io" ratio paired "runs (rounds in order)"
for w in randread randwrite; do
  first=$(echo "${IOPS[${CASES[0]},$w]}" | median)
  for c in "${CASES[@]}"; do
    m=$(echo "${IOPS[$c,$w]}" | median)
    paired=$(paste -d/ <(echo "${IOPS[$c,$w]}" | tr ' ' '\n' | grep .) \
      <(echo "${IOPS[${CASES[0]},$w]}" | tr ' ' '\n' | grep .) | bc -l | median)
    printf '%-10s %-12s %12d %10d %6.3f %7.3f  %s\n' $w "$c" "$m" "$(echo "${CPU[$c,$w]}" | median)" \
      "$(echo "$m / $first" | bc -l)" "$paired" "${IOPS[$c,$w]}"
  done
done
echo "# ratio: the target's median IOPS over ${CASES[0]}'s; paired: the median over rounds of"
echo "# the target's IOPS over ${CASES[0]}'s in the same round (steadier when the load moves)"
