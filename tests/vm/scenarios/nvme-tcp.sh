# A thin volume exported over NVMe/TCP, driven by the kernel's NVMe/TCP
# host (nvme-tcp, nvme-cli) in the guest:
#  1. discovery lists the subsystem on its port;
#  2. connected three ways (no digests; header and data digests; two I/O
#     queues), nvme list, id-ctrl and id-ns show the volume's size, serial
#     and NQN, and (thin volumes) the thin fields; data written reads back
#     under each;
#  3. fio's crc32c verify over four jobs at depth 16, and a second pass
#     that only reads and verifies;
#  4. nvme flush; blkdiscard of a range (reads back as dlfeat promises;
#     the target's used space falls);
#  5. ext4 mounted -o discard: files, fstrim gives the space back, fsck
#     clean;
#  6. the volume grown by RPC: the host sees the new size by itself (the
#     namespace-attribute-changed event);
#  7. the same volume through NBD at the same time: what one path writes,
#     the other reads, and both read the whole device alike;
#  8. nvme disconnect removes controller and namespace;
#  9. connected again, a pattern written and flushed, the target killed
#     with SIGKILL while other writes run, restarted from a JSON config:
#     the host reconnects by itself and the flushed pattern reads back.
#
# LAB_NVME_TARGET picks the target: `ferrothin` (default), or `spdk` for
# SPDK's own nvmf_tgt (LAB_SPDK_DIR, default /work/shared/peers/spdk) on
# a thin lvol in an lvstore on an aio file: the reference the scenario was
# validated against. Only the target's setup differs (the tgt_* functions
# below); every check runs against both.
. "$LAB_REPO/tests/vm/lib.sh"

TARGET=${LAB_NVME_TARGET:-ferrothin}
SPDK_DIR=${LAB_SPDK_DIR:-/work/shared/peers/spdk}
NQN=nqn.2016-06.io.ferrothin:lab-vol
SN=FTLAB0001
PORT=4420
VOL_MIB=128
GROWN_MIB=160
MiB=$((1 << 20))

files=$LAB_SCRATCH/files
lab_ext4_dir "$files" 600
backing=$files/pool.img
truncate -s 512M "$backing"

# --- the target: everything that differs between ferrothin and SPDK -------

# THIN: the namespace must show itself thin in id-ns (nsfeat, nuse,
# dlfeat). SPDK's nvmf_tgt does not, even for a thin lvol: nsfeat bit 0
# clear, nuse = nsze, dlfeat 0.
# NBD_TOO: the exported volume can be exported over NBD as well. SPDK's
# NVMe-oF target claims a namespace's bdev for exclusive write, and its
# nbd_start_disk is then refused.
case $TARGET in
ferrothin) VOL_BDEV=vol THIN=1 NBD_TOO=1 ;;
# SPDK's thin volumes; its lvol bdevs are named LVSTORE/LVOL.
spdk) VOL_BDEV=lvs/vol THIN=0 NBD_TOO=0 ;;
*) lab_fail "LAB_NVME_TARGET=$TARGET: expected ferrothin or spdk" ;;
esac

# tgt_start [ARGS...]: the target daemon, on $FT_SOCK.
tgt_start() {
  case $TARGET in
  ferrothin) ft_start "$@" ;;
  # No hugepages in the guest; one core, so the host side keeps the other.
  # The core lock files would go to /var/tmp, the host's read-only share.
  spdk) lab_daemon nvmf_tgt "$SPDK_DIR/nvmf_tgt" --no-huge -s 1024 -m 0x1 \
    --disable-cpumask-locks "$@" ;;
  esac
}

# tgt_volume: the volume on $backing, $VOL_MIB, unprovisioned. Allocation
# units are 64 KiB on both sides so tgt_used counts alike.
tgt_volume() {
  case $TARGET in
  ferrothin)
    rpc bdev_uring_create name=Disk filename="$backing" >/dev/null
    rpc bdev_thin_pool_create name=pool metadata_bdev=Disk block_size=65536 >/dev/null
    rpc bdev_thin_create pool=pool name=vol size_in_mib=$VOL_MIB dev_id=1 >/dev/null
    ;;
  spdk)
    rpc bdev_aio_create name=Disk filename="$backing" block_size=4096 >/dev/null
    rpc bdev_lvol_create_lvstore bdev_name=Disk lvs_name=lvs cluster_sz=65536 >/dev/null
    rpc bdev_lvol_create lvs_name=lvs lvol_name=vol size_in_mib=$VOL_MIB thin_provision=true >/dev/null
    ;;
  esac
}

# tgt_used: 64 KiB units the target has allocated in its pool or lvstore.
tgt_used() {
  case $TARGET in
  ferrothin) pool_used pool ;;
  spdk)
    local total free
    total=$(rpc bdev_lvol_get_lvstores lvs_name=lvs --get 0.total_data_clusters)
    free=$(rpc bdev_lvol_get_lvstores lvs_name=lvs --get 0.free_clusters)
    echo $((total - free))
    ;;
  esac
}

# tgt_grow MiB: the volume grows while exported.
tgt_grow() {
  case $TARGET in
  ferrothin) rpc bdev_thin_resize name=vol size_in_mib="$1" >/dev/null ;;
  spdk) rpc bdev_lvol_resize name=lvs/vol size_in_mib="$1" >/dev/null ;;
  esac
}

# tgt_nbd DEV: the volume at the kernel's NBD device DEV, through
# ferrothin's NBD server and the kernel's client.
tgt_nbd() {
  local port
  port=$(ft_export vol)
  nbd_attach "$port" vol "$1"
}

# The export, as RPC calls (the first start) and as the same calls in a
# JSON config (the restart); SPDK's method and parameter names. The
# namespace's UUID and NGUID are given, as save_config writes them: a host
# that reconnects to a namespace whose identifiers changed drops it
# ("identifiers changed for nsid 1"), and a volume's bdev need not keep
# its UUID across a restart.
listen_address='{"trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "'$PORT'"}'
NS_UUID=$(cat /proc/sys/kernel/random/uuid)
NS_NGUID=$(tr -d - <<<"$NS_UUID" | tr a-f A-F)
namespace='{"bdev_name": "'$VOL_BDEV'", "nsid": 1, "uuid": "'$NS_UUID'", "nguid": "'$NS_NGUID'"}'
tgt_export() {
  rpc nvmf_create_transport trtype=TCP >/dev/null
  rpc nvmf_create_subsystem nqn=$NQN allow_any_host=true serial_number=$SN >/dev/null
  rpc nvmf_subsystem_add_ns nqn=$NQN "namespace=$namespace" >/dev/null
  rpc nvmf_subsystem_add_listener nqn=$NQN "listen_address=$listen_address" >/dev/null
}

# tgt_config FILE: a config that reopens the volume (grown to $GROWN_MIB)
# and exports it again.
tgt_config() {
  local bdevs
  case $TARGET in
  ferrothin) bdevs='
    {"method": "bdev_uring_create", "params": {"name": "Disk", "filename": "'$backing'"}},
    {"method": "bdev_thin_pool_create", "params": {"name": "pool", "metadata_bdev": "Disk", "block_size": 65536}},
    {"method": "bdev_thin_create", "params": {"pool": "pool", "name": "vol", "dev_id": 1,
                                              "size_in_mib": '$GROWN_MIB', "open_existing": true}}' ;;
  # The lvstore and its lvols are found on the file when it is examined.
  spdk) bdevs='
    {"method": "bdev_aio_create", "params": {"name": "Disk", "filename": "'$backing'", "block_size": 4096}},
    {"method": "bdev_wait_for_examine"}' ;;
  esac
  cat >"$1" <<EOF
{"subsystems": [
  {"subsystem": "bdev", "config": [$bdevs
  ]},
  {"subsystem": "nvmf", "config": [
    {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
    {"method": "nvmf_create_subsystem", "params": {"nqn": "$NQN", "allow_any_host": true, "serial_number": "$SN"}},
    {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$NQN", "namespace": $namespace}},
    {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$NQN", "listen_address": $listen_address}}
  ]}
]}
EOF
}

# --- the kernel's NVMe/TCP host -------------------------------------------

# A host identity of the scenario's own, not whatever /etc/nvme holds on
# the machine that shares its root with the guest.
HOSTID=$(cat /proc/sys/kernel/random/uuid)
HOST=(--hostnqn="nqn.2014-08.org.nvmexpress:uuid:$HOSTID" --hostid="$HOSTID")

# ctrl_of_nqn: the controller (nvme0, ...) connected to $NQN, if any.
ctrl_of_nqn() {
  local c
  for c in /sys/class/nvme/nvme*; do
    [ -e "$c/subsysnqn" ] || continue
    [ "$(cat "$c/subsysnqn")" = "$NQN" ] && [ "$(cat "$c/transport")" = tcp ] && echo "${c##*/}"
  done
  return 0
}

# ns_of_ctrl CTRL: namespace 1's block device. With native multipath (as
# Debian builds it) the controller holds the hidden path nvmeScCn1 and the
# device to use is the subsystem's head, nvmeSn1.
ns_of_ctrl() {
  local p
  for p in /sys/class/nvme/"$1"/nvme*n1; do
    [ -e "$p" ] || continue
    p=${p##*/}
    [[ $p =~ ^nvme([0-9]+)c[0-9]+n1$ ]] && p=nvme${BASH_REMATCH[1]}n1
    [ -b "/dev/$p" ] && echo "$p"
  done
  return 0
}

has_ctrl() { [ -n "$(ctrl_of_nqn)" ]; }
no_ctrl() { [ -z "$(ctrl_of_nqn)" ]; }
has_ns() { [ -n "$(ns_of_ctrl "$1")" ]; }

# nvme_up [CONNECT ARGS...]: connects to $NQN and waits for the namespace;
# sets CTRL and NS. Disconnected at exit.
nvme_up() {
  nvme connect -t tcp -a 127.0.0.1 -s $PORT -n $NQN "${HOST[@]}" "$@" >/dev/null
  lab_defer "nvme disconnect -n $NQN"
  lab_retry 30 has_ctrl || lab_fail "no controller for $NQN after nvme connect"
  CTRL=$(ctrl_of_nqn)
  lab_retry 30 has_ns "$CTRL" || lab_fail "$CTRL: no namespace 1"
  NS=$(ns_of_ctrl "$CTRL")
  lab_step "connected ($*): $CTRL, /dev/$NS"
}

nvme_down() {
  nvme disconnect -n $NQN >/dev/null
  lab_retry 30 no_ctrl || lab_fail "$CTRL still there after nvme disconnect"
  lab_retry 30 test ! -e "/dev/$NS" || lab_fail "/dev/$NS still there after nvme disconnect"
}

# fields JSON FILTER VAR...: the values of FILTER's array into VARs; strings
# lose the blanks nvme-cli pads them with. One jq per document: each
# program started in the guest costs a round trip to the host per file.
fields() {
  local json=$1 filter=$2 line
  shift 2
  line=$(jq -r "[$filter | if type == \"string\" then sub(\" +\$\"; \"\") else . end] | @tsv" <<<"$json")
  IFS=$'\t' read -r "$@" <<<"$line"
}

# check_identity BYTES: what nvme list, id-ctrl and id-ns say about the
# connected volume, expected to be BYTES long in blocks of $BS. Sets NUSE,
# NSFEAT and DLFEAT.
check_identity() {
  local bytes=$1 blocks=$(($1 / BS)) subnqn sn nn nsze ncap ds nguid size serial
  fields "$(nvme id-ctrl "/dev/$CTRL" -o json)" '.subnqn, .sn, .nn' subnqn sn nn
  lab_eq "id-ctrl subnqn" "$NQN" "$subnqn"
  lab_eq "id-ctrl sn" "$SN" "$sn"
  [ "$nn" -ge 1 ] || lab_fail "id-ctrl nn: $nn"

  fields "$(nvme id-ns "/dev/$NS" -o json)" \
    '.nsze, .ncap, .nuse, .nsfeat, .dlfeat, .lbafs[.flbas % 16].ds, .nguid' \
    nsze ncap NUSE NSFEAT DLFEAT ds nguid
  lab_eq "id-ns nguid" "${NS_NGUID,,}" "${nguid,,}"
  lab_eq "id-ns block size (2^ds)" "$BS" $((1 << ds))
  lab_eq "id-ns nsze" "$blocks" "$nsze"
  lab_eq "id-ns ncap" "$blocks" "$ncap"
  [ "$NUSE" -le "$blocks" ] || lab_fail "id-ns nuse $NUSE above nsze $blocks"
  if [ "$THIN" = 1 ]; then
    lab_eq "id-ns nsfeat bit 0 (thin provisioning)" 1 $((NSFEAT & 1))
    lab_eq "id-ns dlfeat bits 2:0 (deallocated blocks read as zeroes)" 1 $((DLFEAT & 7))
  fi

  fields "$(nvme list -o json)" \
    "(.Devices[] | select(.DevicePath == \"/dev/$NS\") | .PhysicalSize, .SerialNumber)" size serial
  lab_eq "nvme list PhysicalSize of /dev/$NS" "$bytes" "$size"
  lab_eq "nvme list SerialNumber of /dev/$NS" "$SN" "$serial"
  lab_eq "size of /dev/$NS" "$bytes" "$(blockdev --getsize64 "/dev/$NS")"
}

# same_at DEV OFFSET FILE: DEV holds FILE at OFFSET (direct reads).
same_at() {
  local got
  got=$(dd if="$1" bs=1M skip="$2" count=$(($(stat -c %s "$3") / MiB)) \
    iflag=skip_bytes,direct status=none | md5sum | cut -d' ' -f1)
  lab_eq "$1 at $2" "$(dev_sum "$3")" "$got"
}

# dev_sum_direct DEV: whole-device checksum, bypassing the page cache.
dev_sum_direct() { dd if="$1" bs=1M iflag=direct status=none | md5sum | cut -d' ' -f1; }

# --- setup ----------------------------------------------------------------

tgt_start
if [ "$TARGET" = ferrothin ]; then
  methods=$(rpc rpc_get_methods)
  grep -q '"nvmf_create_subsystem"' <<<"$methods" ||
    lab_fail "this ferrothin has no nvmf_* methods (its NVMe/TCP target is not in this build)"
fi
tgt_volume
BS=$(rpc bdev_get_bdevs name="$VOL_BDEV" --get 0.block_size)
lab_eq "volume blocks" $((VOL_MIB * MiB / BS)) "$(rpc bdev_get_bdevs name="$VOL_BDEV" --get 0.num_blocks)"
tgt_export
subsystems=$(rpc nvmf_get_subsystems)
ns_bdev=$(jq -r --arg n $NQN '.[] | select(.nqn == $n) | .namespaces[0].bdev_name' <<<"$subsystems")
# SPDK names an lvol's namespace by the bdev's UUID: compare what both
# names resolve to.
lab_eq "namespace of $NQN in nvmf_get_subsystems" "$(rpc bdev_get_bdevs name="$VOL_BDEV" --get 0.name)" \
  "$(rpc bdev_get_bdevs name="$ns_bdev" --get 0.name)"
lab_step "exported $VOL_BDEV as $NQN on 127.0.0.1:$PORT (thin: $THIN)"

modprobe nvme-tcp

# --- 1. discovery ---------------------------------------------------------

disc=$(nvme discover -t tcp -a 127.0.0.1 -s $PORT "${HOST[@]}" -o json)
fields "$disc" "(.records[] | select(.subnqn == \"$NQN\") | .trtype, .traddr, .trsvcid)" trtype traddr trsvcid
[ -n "$trtype" ] || lab_fail "discovery does not list $NQN: $disc"
lab_eq "discovery trtype" tcp "$trtype"
lab_eq "discovery traddr" 127.0.0.1 "$traddr"
lab_eq "discovery trsvcid" $PORT "$trsvcid"
lab_step "discovery lists $NQN"

# --- 2. three ways to connect ---------------------------------------------

# Each connection writes its own MiB (a distinct offset) and reads it back;
# the last one reads all three.
declare -A written
connect_case() {
  local name=$1 offset=$2
  shift 2
  nvme_up "$@"
  check_identity $((VOL_MIB * MiB))
  random_file "$LAB_SCRATCH/$name" $MiB
  pwrite "/dev/$NS" "$offset" "$LAB_SCRATCH/$name"
  written[$name]=$offset
  local n
  for n in "${!written[@]}"; do same_at "/dev/$NS" "${written[$n]}" "$LAB_SCRATCH/$n"; done
  lab_step "$name: identity and data as expected (nuse $NUSE, nsfeat $NSFEAT, dlfeat $DLFEAT)"
}

connect_case plain $((4 * MiB))
nuse_first=$NUSE
nvme_down
# The kernel refuses to go on when the target does not agree to a digest
# it asked for, so a connection that works here has both.
connect_case digests $((20 * MiB)) -g -G
nvme_down
connect_case queues $((36 * MiB)) -i 2
# Admin queue + two I/O queues: the target granted both.
lab_eq "queues of $CTRL" 3 "$(cat /sys/class/nvme/$CTRL/queue_count)"
if [ "$THIN" = 1 ]; then
  [ "$NUSE" -gt "$nuse_first" ] || lab_fail "nuse did not grow with 2 MiB written: $nuse_first, then $NUSE"
fi

# --- 3. fio ---------------------------------------------------------------

# Four jobs, each its own 8 MiB (jobs that shared blocks would overwrite
# each other's verify headers), sizes from one block to 128 KiB so writes
# both fit in a command capsule and need the target to ask for the data.
# The second pass replays the same offsets and only reads and verifies:
# what the first wrote is still there, read on a fresh start.
fio_job=(--name=verify --filename="/dev/$NS" --ioengine=libaio --direct=1
  --rw=randwrite --bsrange=4k-128k --iodepth=16 --numjobs=4 --size=8m
  --offset=64m --offset_increment=8m --verify=crc32c --verify_fatal=1
  --verify_state_save=0 --group_reporting)
fio "${fio_job[@]}" --output="$LAB_SCRATCH/fio-write.txt" ||
  { cat "$LAB_SCRATCH/fio-write.txt"; lab_fail "fio randwrite with verify"; }
fio "${fio_job[@]}" --verify_only --output="$LAB_SCRATCH/fio-read.txt" ||
  { cat "$LAB_SCRATCH/fio-read.txt"; lab_fail "fio verify-only pass"; }
grep -E "^ +(write|read):|err=" "$LAB_SCRATCH/fio-write.txt" "$LAB_SCRATCH/fio-read.txt" || true
grep -q "err= 0" "$LAB_SCRATCH/fio-read.txt" || lab_fail "fio verify-only pass reported errors"
check_identity $((VOL_MIB * MiB))
if [ "$THIN" = 1 ]; then
  [ "$NUSE" -ge $((nuse_first + 32 * MiB / BS)) ] ||
    lab_fail "nuse $NUSE after fio wrote 32 MiB (was $nuse_first)"
fi
lab_step "fio verified 32 MiB in 4 jobs (nuse now $NUSE)"

# --- 4. flush, discard ----------------------------------------------------

nvme flush "/dev/$NS" >/dev/null || lab_fail "nvme flush /dev/$NS"
random_file "$LAB_SCRATCH/d" $((4 * MiB))
pwrite "/dev/$NS" $((8 * MiB)) "$LAB_SCRATCH/d"
used=$(tgt_used)
blkdiscard -o $((9 * MiB)) -l $((2 * MiB)) "/dev/$NS"
# The expected contents: a deallocated range reads as zeroes when dlfeat
# says so; otherwise only the rest of the range is known.
dd if=/dev/zero of="$LAB_SCRATCH/d" bs=1M seek=1 count=2 conv=notrunc status=none
if [ $((DLFEAT & 7)) = 1 ]; then
  same_at "/dev/$NS" $((8 * MiB)) "$LAB_SCRATCH/d"
else
  head -c $MiB "$LAB_SCRATCH/d" >"$LAB_SCRATCH/d0"
  same_at "/dev/$NS" $((8 * MiB)) "$LAB_SCRATCH/d0"
fi
after=$(tgt_used)
# 2 MiB is 32 units of 64 KiB.
[ "$after" -le $((used - 32)) ] || lab_fail "blkdiscard of 2 MiB: the target used $used units before, $after after"
lab_step "flush; blkdiscard gave back $((used - after)) units"

# --- 5. ext4 --------------------------------------------------------------

mnt=$LAB_SCRATCH/mnt
mkdir -p "$LAB_SCRATCH/exp"
mkfs.ext4 -q -F -N 4096 -J size=4 -E lazy_itable_init=0,lazy_journal_init=0 "/dev/$NS"
lab_mount "/dev/$NS" "$mnt" discard
for i in 1 2 3 4 5 6; do
  random_file "$LAB_SCRATCH/exp/f$i" $((i * 700 * 1024 + 123))
  cp "$LAB_SCRATCH/exp/f$i" "$mnt/"
done
sync
used=$(tgt_used)
rm "$mnt"/f[3-6] "$LAB_SCRATCH"/exp/f[3-6]
fstrim "$mnt"
sync
# f3-f6 are about 12.6 MiB, some 200 units; at least half must come back.
until=$(($(date +%s) + 30))
while :; do
  after=$(tgt_used)
  [ "$after" -le $((used - 100)) ] && break
  [ "$(date +%s)" -lt "$until" ] || lab_fail "fstrim: the target used $used units before, $after after"
  sleep 1
done
lab_step "fstrim gave back $((used - after)) units"
umount "$mnt"
e2fsck -fn "/dev/$NS" >"$LAB_SCRATCH/fsck.log" 2>&1 || { cat "$LAB_SCRATCH/fsck.log"; lab_fail "e2fsck found problems"; }
lab_mount "/dev/$NS" "$mnt" ro
for i in 1 2; do cmp "$LAB_SCRATCH/exp/f$i" "$mnt/f$i" || lab_fail "f$i differs after remount"; done
[ ! -e "$mnt/f3" ] || lab_fail "f3 is back after remount"
umount "$mnt"
lab_step "ext4: fsck clean, files as written"

# --- 6. grow --------------------------------------------------------------

grown=$((GROWN_MIB * MiB))
tgt_grow $GROWN_MIB
# Nothing on the host asks: only the target's event makes the kernel look.
lab_retry 20 file_is "/sys/block/$NS/size" $((grown / 512)) ||
  lab_fail "/sys/block/$NS/size is $(cat /sys/block/$NS/size) sectors 20 s after growing to $grown bytes"
check_identity $grown
lab_step "the host sees $GROWN_MIB MiB"

# --- 7. NBD and NVMe at once ----------------------------------------------

if [ "$NBD_TOO" = 1 ]; then
  tgt_nbd /dev/nbd0
  lab_eq "size of /dev/nbd0" $grown "$(blockdev --getsize64 /dev/nbd0)"
  random_file "$LAB_SCRATCH/via-nvme" $((4 * MiB))
  random_file "$LAB_SCRATCH/via-nbd" $((4 * MiB))
  # Near the end: blocks that exist only since the volume grew.
  pwrite "/dev/$NS" $((grown - 8 * MiB)) "$LAB_SCRATCH/via-nvme"
  pwrite /dev/nbd0 $((grown - 4 * MiB)) "$LAB_SCRATCH/via-nbd"
  same_at /dev/nbd0 $((grown - 8 * MiB)) "$LAB_SCRATCH/via-nvme"
  same_at "/dev/$NS" $((grown - 4 * MiB)) "$LAB_SCRATCH/via-nbd"
  dev_sum_direct "/dev/$NS" >"$LAB_SCRATCH/sum-nvme" &
  reader=$!
  sum_nbd=$(dev_sum_direct /dev/nbd0)
  wait $reader
  lab_eq "whole volume through NBD and NVMe/TCP" "$sum_nbd" "$(cat "$LAB_SCRATCH/sum-nvme")"
  nbd_detach /dev/nbd0
  lab_step "NBD and NVMe/TCP read the same bytes"
else
  lab_step "NBD beside NVMe/TCP: not run against $TARGET (see NBD_TOO)"
fi

# --- 8. disconnect --------------------------------------------------------

nvme_down
lab_step "disconnected"

# --- 9. SIGKILL during writes, restart from a config ----------------------

config=$LAB_SCRATCH/restart.json
tgt_config "$config"
# Reconnect attempts every second, for up to two minutes.
nvme_up --reconnect-delay=1 --ctrl-loss-tmo=120
random_file "$LAB_SCRATCH/flushed" $((8 * MiB))
dd if="$LAB_SCRATCH/flushed" of="/dev/$NS" bs=1M oflag=direct conv=notrunc status=none
nvme flush "/dev/$NS" >/dev/null || lab_fail "nvme flush before the kill"
# Writes elsewhere, still running when the target dies.
fio --name=busy --filename="/dev/$NS" --ioengine=libaio --direct=1 --rw=randwrite \
  --bs=64k --iodepth=16 --offset=64m --size=64m --time_based --runtime=600 \
  --output="$LAB_SCRATCH/fio-busy.txt" >/dev/null 2>&1 &
writer=$!
lab_defer "kill -9 $writer"
sleep 3
kill -0 $writer 2>/dev/null || lab_fail "the writer ended before the kill: $(cat "$LAB_SCRATCH/fio-busy.txt")"
kill -9 "$FT_PID"
wait "$FT_PID" 2>/dev/null || true
lab_step "killed the target during writes"
tgt_start --json "$config"
lab_retry 60 file_is "/sys/class/nvme/$CTRL/state" live ||
  lab_fail "$CTRL is $(cat /sys/class/nvme/$CTRL/state) 60 s after the restart"
lab_step "the host reconnected"
kill -9 $writer
{ wait $writer; } 2>/dev/null || true
same_at "/dev/$NS" 0 "$LAB_SCRATCH/flushed"
check_identity $grown
lab_step "what the flush covered reads back"
nvme_down
ft_stop
lab_step "nvme-tcp passed against $TARGET"
