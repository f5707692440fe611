# The kernel lab's helpers for scenarios, sourced inside the guest:
#
#   . "$LAB_REPO/tests/vm/lib.sh"
#
# guest.sh sets LAB_BIN (the ferrothin binary), LAB_REPO (the checkout),
# LAB_SCRATCH (an empty directory on the guest's tmpfs, this scenario's own)
# and LAB_OUT (the host directory shared read-write with the guest).
#
# Everything a helper starts or attaches is undone when the scenario's shell
# exits, however it exits (an EXIT trap runs the deferred commands, last
# first): daemons stopped, NBD devices detached, mounts unmounted, dm devices
# and loop devices removed.

set -euo pipefail

: "${LAB_BIN:?}" "${LAB_REPO:?}" "${LAB_SCRATCH:?}"
LAB_T0=$(date +%s)
LAB_RPC_PY="$LAB_REPO/tests/vm/labrpc.py"

# --- reporting ------------------------------------------------------------

lab_step() { echo "[+$(($(date +%s) - LAB_T0))s] $*"; }
lab_fail() {
  echo "FAIL: $*" >&2
  exit 1
}
# lab_eq WHAT EXPECTED ACTUAL
lab_eq() {
  [ "$2" = "$3" ] || lab_fail "$1: expected '$2', got '$3'"
}

# --- cleanup --------------------------------------------------------------

LAB_DEFERRED=()
# lab_defer CMD...: run CMD (one string, eval'd) when the scenario exits.
lab_defer() { LAB_DEFERRED+=("$*"); }
lab_cleanup() {
  local rc=$? i
  set +e
  # A failure shows what the daemon said.
  [ "$rc" != 0 ] && [ -n "${FT_DIR:-}" ] && ft_log_tail
  for ((i = ${#LAB_DEFERRED[@]} - 1; i >= 0; i--)); do
    eval "${LAB_DEFERRED[i]}" >/dev/null 2>&1
  done
  LAB_DEFERRED=()
  return $rc
}
trap lab_cleanup EXIT

# quiet CMD...: CMD's output only if it fails.
quiet() {
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  [ "$rc" = 0 ] || printf '%s\n' "$out" >&2
  return "$rc"
}

# lab_retry SECONDS CMD...: CMD until it succeeds, for at most SECONDS.
# CMD's words are expanded once, at the call: what must be looked at again
# on each try goes in a function (dev_up, file_is).
lab_retry() {
  local until=$(($(date +%s) + $1))
  shift
  until "$@"; do
    [ "$(date +%s)" -lt "$until" ] || return 1
    sleep 0.2
  done
}

# --- ferrothin ------------------------------------------------------------

# ft_start [TGT ARGS...]: starts `ferrothin tgt -m 0x3` with its RPC socket
# and log in $FT_DIR (default $LAB_SCRATCH/ft) and waits for the socket.
# It starts `--empty` unless ARGS name a config (`--json FILE`, `-c FILE`),
# which the daemon refuses alongside it. One daemon per scenario at a time;
# ft_stop ends it.
ft_start() {
  local empty=--empty a
  for a in "$@"; do
    case $a in --json | --json=* | -c | --config | --config=*) empty= ;; esac
  done
  lab_daemon ferrothin env NO_COLOR=1 "$LAB_BIN" --log-level info tgt $empty -m 0x3 "$@"
}

# lab_daemon WHAT CMD...: starts CMD with `-r $FT_SOCK` appended (SPDK's
# flag for the RPC socket, which ferrothin shares) and its output in
# $FT_DIR/tgt.log, and waits until the socket answers. Sets FT_PID; the
# daemon is killed at exit if still running. ft_start uses it; scenarios
# use it for SPDK's own daemons as peers.
lab_daemon() {
  local what=$1
  shift
  FT_WHAT=$what
  FT_DIR=${FT_DIR:-$LAB_SCRATCH/ft}
  mkdir -p "$FT_DIR"
  FT_SOCK=$FT_DIR/rpc.sock
  rm -f "$FT_SOCK" "$FT_SOCK.lock"
  "$@" -r "$FT_SOCK" >>"$FT_DIR/tgt.log" 2>&1 &
  FT_PID=$!
  echo "$FT_PID" >>"$LAB_SCRATCH/.pids"
  lab_defer "ft_kill $FT_PID"
  local until=$(($(date +%s) + 60))
  until [ -S "$FT_SOCK" ] && rpc_call spdk_get_version && [ "$RPC_STATUS" = 0 ]; do
    kill -0 "$FT_PID" 2>/dev/null || lab_fail "$what exited at start"
    [ "$(date +%s)" -lt "$until" ] || lab_fail "$what did not start"
    sleep 0.2
  done
  lab_step "$what up (pid $FT_PID)"
}

ft_kill() { kill -9 "$1" 2>/dev/null; wait "$1" 2>/dev/null; }

ft_log_tail() {
  echo "--- daemon log (last 40 lines) ---" >&2
  tail -n 40 "$FT_DIR/tgt.log" >&2 || true
}

# ft_stop: SIGTERM, as a user stops it; the exit status must be 0 (every
# pool committed).
ft_stop() {
  kill -TERM "$FT_PID"
  local rc=0
  wait "$FT_PID" || rc=$?
  [ "$rc" = 0 ] || lab_fail "$FT_WHAT stopped with status $rc"
  lab_step "$FT_WHAT stopped cleanly"
}

# rpc_call METHOD [NAME=VALUE...] [--get PATH]: one call on $FT_SOCK; sets
# RPC_STATUS (0: success) and RPC_OUT (what labrpc.py printed). Through the
# guest's labrpc server when guest.sh started one (LAB_RPC_REQ), otherwise
# by running labrpc.py.
rpc_call() {
  if [ -p "${LAB_RPC_REQ:-}" ]; then
    local IFS=$'\x1f' reply lk
    exec {lk}>"$LAB_RPC_REQ.lock"
    flock "$lk"
    printf '%s\n' "$FT_SOCK$IFS$*" >"$LAB_RPC_REQ"
    IFS= read -r -d '' reply <"$LAB_RPC_RESP" || true
    exec {lk}>&-
    RPC_STATUS=${reply%%$'\n'*}
    RPC_OUT=${reply#*$'\n'}
    RPC_OUT=${RPC_OUT%$'\n'}
  else
    RPC_STATUS=0
    RPC_OUT=$(python3 "$LAB_RPC_PY" "$FT_SOCK" "$@" 2>&1) || RPC_STATUS=$?
  fi
}

# rpc METHOD [NAME=VALUE...] [--get PATH]: one call; prints the result (see
# labrpc.py). A JSON-RPC error fails the scenario, with the daemon's log.
rpc() {
  rpc_call "$@"
  if [ "$RPC_STATUS" != 0 ]; then
    echo "$RPC_OUT" >&2
    lab_fail "rpc $*"
  fi
  printf '%s\n' "$RPC_OUT"
}

# rpc_err METHOD [NAME=VALUE...]: a call that must fail; prints its error.
rpc_err() {
  rpc_call "$@"
  [ "$RPC_STATUS" != 0 ] || lab_fail "rpc $* succeeded: $RPC_OUT"
  printf '%s\n' "$RPC_OUT"
}

# ft_export BDEV [EXPORT]: an NBD export on 127.0.0.1 (a port the daemon
# picks); prints the port.
ft_export() {
  local addr
  addr=$(rpc nbd_start_disk bdev_name="$1" nbd_device=127.0.0.1:0 export_name="${2:-$1}")
  echo "${addr##*:}"
}

# pool_used POOL: the pool's used data blocks.
pool_used() { rpc bdev_thin_pool_get_pools name="$1" --get 0.used_data_blocks; }

# --- the kernel's NBD client ----------------------------------------------

# dev_up DEV / dev_gone DEV: DEV has a size / has none (or is not there).
dev_size() { blockdev --getsize64 "$1" 2>/dev/null || echo 0; }
dev_up() { [ "$(dev_size "$1")" -gt 0 ]; }
dev_gone() { [ "$(dev_size "$1")" -eq 0 ]; }

# file_is FILE TEXT: FILE (a sysfs attribute) reads TEXT.
file_is() { [ "$(cat "$1" 2>/dev/null)" = "$2" ]; }

# nbd_attach PORT EXPORT DEV [-readonly]: nbd-client with 4 KiB blocks;
# waits until DEV shows its size. Detached at exit.
nbd_attach() {
  local port=$1 export=$2 dev=$3
  shift 3
  nbd-client 127.0.0.1 "$port" "$dev" -N "$export" -b 4096 "$@" >/dev/null
  lab_defer "nbd-client -d $dev"
  lab_retry 30 dev_up "$dev" ||
    lab_fail "$dev did not come up"
}

nbd_detach() {
  nbd-client -d "$1" >/dev/null
  lab_retry 30 dev_gone "$1" ||
    lab_fail "$1 did not detach"
}

# --- data -----------------------------------------------------------------

# dev_sum DEV: a checksum of a whole device (or file). MD5: twice as fast
# as SHA-256 under emulation, and only accidents are looked for.
dev_sum() { md5sum <"$1" | cut -d' ' -f1; }

# random_file FILE BYTES: random bytes (kept, to compare with later).
random_file() { head -c "$2" /dev/urandom >"$1"; }

# pwrite DEV OFFSET FILE: writes FILE at byte OFFSET with direct I/O (both
# multiples of 4 KiB), then flushes the device.
pwrite() {
  dd if="$3" of="$1" bs=1M seek="$2" oflag=seek_bytes,direct conv=notrunc,fsync status=none
}

# lab_mount DEV DIR [OPTS]: mount, unmounted at exit.
lab_mount() {
  mkdir -p "$2"
  mount ${3:+-o "$3"} "$1" "$2"
  lab_defer "umount -l $2"
}

# lab_case NAME FUNC [ARGS...]: runs FUNC in a subshell of its own (its own
# deferred cleanup, done when it ends), prints "case NAME: pass|FAIL" and
# carries on: a scenario runs every case, then lab_cases_done fails it if
# any case failed. (Called in a condition, a subshell would ignore set -e,
# so lab_case itself always succeeds.)
LAB_CASES_PASSED=()
LAB_CASES_FAILED=()
lab_case() {
  local name=$1 rc=0
  shift
  lab_step "case $name"
  set +e
  (
    set -e
    LAB_DEFERRED=()
    trap lab_cleanup EXIT
    "$@"
  )
  rc=$?
  set -e
  if [ "$rc" = 0 ]; then
    echo "case $name: pass"
    LAB_CASES_PASSED+=("$name")
  else
    echo "case $name: FAIL (status $rc)"
    LAB_CASES_FAILED+=("$name")
  fi
}

lab_cases_done() {
  echo "cases passed: ${LAB_CASES_PASSED[*]:-none}; failed: ${LAB_CASES_FAILED[*]:-none}"
  [ ${#LAB_CASES_FAILED[@]} = 0 ]
}

# lab_ext4_dir DIR MiB: DIR becomes an ext4 filesystem of MiB (a sparse
# image in $LAB_SCRATCH, loop-mounted), for files that must not be on
# tmpfs; unmounted at exit.
lab_ext4_dir() {
  local img=$LAB_SCRATCH/${1##*/}.ext4
  truncate -s "${2}M" "$img"
  mkfs.ext4 -q -F "$img"
  lab_mount "$img" "$1" loop
}

# --- dm-thin --------------------------------------------------------------

# dm_pool NAME META DATA BLOCK_SECTORS: losetup both files and create the
# thin-pool NAME on them (low water mark 16 blocks); removed at exit (and
# the loop devices detached).
dm_pool() {
  local name=$1 lmeta ldata sectors
  lmeta=$(losetup -f --show "$2")
  lab_defer "losetup -d $lmeta"
  ldata=$(losetup -f --show "$3")
  lab_defer "losetup -d $ldata"
  sectors=$(($(blockdev --getsize64 "$ldata") / 512))
  dmsetup create "$name" --table "0 $sectors thin-pool $lmeta $ldata $4 16"
  lab_defer "dmsetup remove $name"
}

# dm_thin NAME POOL DEV_ID SIZE_BYTES: activates a thin device as
# /dev/mapper/NAME; removed at exit.
dm_thin() {
  dmsetup create "$1" --table "0 $(($4 / 512)) thin /dev/mapper/$2 $3"
  lab_defer "dmsetup remove $1"
}

# dm_used POOL: the pool's used data blocks, as dm-thin reports them.
dm_used() {
  local st
  st=$(dmsetup status "$1")
  # 0 SECTORS thin-pool TRANSACTION META_USED/META_TOTAL DATA_USED/DATA_TOTAL ...
  st=$(echo "$st" | cut -d' ' -f6)
  echo "${st%/*}"
}
