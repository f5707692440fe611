#!/bin/bash
# The kernel lab's guest side: run.py boots the kernel with this as its
# script. It prepares the guest (loopback up, a tmpfs for sockets and
# scratch, the modules), runs each scenario in its own shell with a timeout,
# cleans up after each, and leaves in OUT (shared read-write with the host):
#   results       one line per scenario: NAME STATUS SECONDS
#   dmesg.txt     the kernel log at the end
#   dmesg-NAME    the kernel log lines printed while scenario NAME ran
# Exit status: 0 when every scenario passed.
#
# Usage (inside the guest): guest.sh OUT   (OUT/env.sh says what to run)

set -u
OUT=$1
# shellcheck source=/dev/null
set -a
. "$OUT/env.sh"
set +a
export LAB_OUT="$OUT"

echo "lab: kernel $(uname -r), $(nproc) cpus, $(($(sed -n 's/MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) / 1024)) MiB"
ip link set lo up
# Unix sockets cannot live on the 9p host share, and it is read-only: all
# scratch goes to a tmpfs of the guest's own.
mkdir -p /run/lab
mount -t tmpfs -o "size=${LAB_TMPFS_MB}m" lab /run/lab
for m in loop "nbd max_part=0" dm-thin-pool; do
  if ! modprobe $m; then
    echo "lab: modprobe $m failed" >&2
    dmesg >"$OUT/dmesg.txt"
    exit 1
  fi
done

# Whatever a scenario left behind (its own trap should have undone it).
sweep() {
  local d p
  # Daemons the scenario started (lib.sh notes each pid there).
  for p in $(cat "$scratch/.pids" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  # NVMe-oF controllers: their target is gone, and they would retry it.
  ls /sys/class/nvme 2>/dev/null | grep -q . && nvme disconnect-all >/dev/null 2>&1
  for d in /sys/block/nbd*; do
    d=/dev/${d##*/}
    [ "$(cat "/sys/block/${d##*/}/size")" != 0 ] && nbd-client -d "$d" >/dev/null 2>&1
  done
  grep -o " /run/lab/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
  dmsetup remove_all --force >/dev/null 2>&1
  losetup -D 2>/dev/null
}

# One RPC client for the whole boot (lib.sh's rpc): starting Python costs
# seconds here.
export LAB_RPC_REQ=/run/lab/rpc.req LAB_RPC_RESP=/run/lab/rpc.resp
mkfifo "$LAB_RPC_REQ" "$LAB_RPC_RESP"
python3 "$LAB_REPO/tests/vm/labrpc.py" --serve "$LAB_RPC_REQ" "$LAB_RPC_RESP" &
rpc_server=$!

# The kernel log reaches the host even if the guest never finishes.
(while sleep 5; do dmesg >"$OUT/dmesg.txt.new" && mv "$OUT/dmesg.txt.new" "$OUT/dmesg.txt"; done) &
copier=$!

failed=0
for name in $LAB_SCENARIOS; do
  script=$LAB_REPO/tests/vm/scenarios/$name.sh
  [ -f "$name" ] && script=$name && name=$(basename "$name" .sh)
  scratch=/run/lab/$name
  mkdir -p "$scratch"
  before=$(dmesg | wc -l)
  start=$(date +%s)
  echo "=== $name"
  LAB_SCRATCH=$scratch timeout -k 10 "$LAB_SCENARIO_TIMEOUT" bash "$script" </dev/null 2>&1
  rc=$?
  secs=$(($(date +%s) - start))
  [ "$rc" = 124 ] && echo "lab: $name timed out after ${LAB_SCENARIO_TIMEOUT}s"
  dmesg | tail -n +$((before + 1)) >"$OUT/dmesg-$name"
  sweep
  rm -rf "$scratch"
  if [ "$rc" = 0 ]; then
    echo "=== $name: pass (${secs}s)"
    echo "$name pass $secs" >>"$OUT/results"
  else
    echo "=== $name: FAIL, status $rc (${secs}s)"
    echo "$name fail $secs" >>"$OUT/results"
    failed=1
  fi
done
kill $copier $rpc_server 2>/dev/null
wait $copier $rpc_server 2>/dev/null
dmesg >"$OUT/dmesg.txt"
exit $failed
