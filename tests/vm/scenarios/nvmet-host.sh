# ferrothin's NVMe bdev (its NVMe/TCP host) against the Linux kernel's
# NVMe/TCP target (nvmet + nvmet-tcp, configured through configfs; nothing
# of ours on the other side). Two namespaces on loop devices over files:
#  1. bdev_nvme_attach_controller (with the reconnect knobs) makes Kn1 and
#     Kn2 with the namespaces' sizes;
#  2. Kn2 through an NBD export with two connections (two reactors, two
#     I/O queues): fio's crc32c verify, 4 KiB to 256 KiB, two jobs; a
#     flushed pattern reads back; write zeroes reads back zeroes;
#     deallocate punches the backing file (its allocated bytes fall);
#  3. a thin pool with its metadata on Kn1 and its data on Kn2: patterns,
#     a snapshot, overwrites; the volume and the snapshot read back what
#     a model of the writes says;
#  4. the port unlinked in configfs while writes run (the kernel drops
#     the connections and refuses new ones): the controller reconnects
#     every second, the writes wait (a write sent during the outage is
#     still running after 3 s), the port linked again: every write ends
#     well and reads back;
#  5. the pool deleted (committed), the controller detached, the daemon
#     stopped cleanly; Debian's thin_check reads the metadata namespace's
#     file.
. "$LAB_REPO/tests/vm/lib.sh"

NQN=nqn.2026-12.io.ferrothin:nvmet-lab
PORT=4420
MiB=$((1 << 20))

modprobe nvmet
modprobe nvmet-tcp
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
CFG=/sys/kernel/config/nvmet
[ -d "$CFG" ] || lab_fail "no nvmet configfs at $CFG"

files=$LAB_SCRATCH/files
lab_ext4_dir "$files" 600
truncate -s 16M "$files/meta.img"
truncate -s 320M "$files/data.img"
meta_dev=$(losetup -f --show "$files/meta.img")
lab_defer "losetup -d $meta_dev"
data_dev=$(losetup -f --show "$files/data.img")
lab_defer "losetup -d $data_dev"

# --- the kernel's target ---------------------------------------------------

SUB=$CFG/subsystems/$NQN
P=$CFG/ports/1
mkdir "$SUB"
lab_defer "rmdir $SUB"
echo 1 >"$SUB/attr_allow_any_host"
nsid=1
for dev in "$meta_dev" "$data_dev"; do
  mkdir "$SUB/namespaces/$nsid"
  lab_defer "rmdir $SUB/namespaces/$nsid"
  echo "$dev" >"$SUB/namespaces/$nsid/device_path"
  echo 1 >"$SUB/namespaces/$nsid/enable"
  lab_defer "echo 0 >$SUB/namespaces/$nsid/enable"
  nsid=$((nsid + 1))
done
mkdir "$P"
lab_defer "rmdir $P"
echo tcp >"$P/addr_trtype"
echo ipv4 >"$P/addr_adrfam"
echo 127.0.0.1 >"$P/addr_traddr"
echo $PORT >"$P/addr_trsvcid"
port_link() { ln -s "$SUB" "$P/subsystems/$NQN"; }
port_unlink() { rm "$P/subsystems/$NQN"; }
port_link
lab_defer "rm -f $P/subsystems/$NQN"
lab_step "nvmet: $NQN on 127.0.0.1:$PORT ($meta_dev, $data_dev)"

# --- 1. attach ----------------------------------------------------------------

ft_start
bdevs=$(rpc bdev_nvme_attach_controller name=K trtype=tcp adrfam=ipv4 \
  traddr=127.0.0.1 trsvcid=\"$PORT\" subnqn=$NQN \
  ctrlr_loss_timeout_sec=-1 reconnect_delay_sec=1 fast_io_fail_timeout_sec=0)
lab_eq "bdevs" '["Kn1","Kn2"]' "$(echo "$bdevs" | jq -c .)"
lab_eq "Kn1 bytes" $((16 * MiB)) \
  $(($(rpc bdev_get_bdevs name=Kn1 --get 0.num_blocks) * $(rpc bdev_get_bdevs name=Kn1 --get 0.block_size)))
lab_eq "Kn2 bytes" $((320 * MiB)) \
  $(($(rpc bdev_get_bdevs name=Kn2 --get 0.num_blocks) * $(rpc bdev_get_bdevs name=Kn2 --get 0.block_size)))
state() { rpc bdev_nvme_get_controllers name=K --get 0.ctrlrs.0.state; }
is_enabled() { [ "$(state)" = enabled ]; }
not_enabled() { [ "$(state)" != enabled ]; }
lab_eq "state" enabled "$(state)"

# --- 2. data on Kn2 through NBD, two connections -------------------------------

port=$(ft_export Kn2)
nbd_attach "$port" Kn2 /dev/nbd0 -C 2
fio --name=verify --filename=/dev/nbd0 --direct=1 --ioengine=libaio \
  --rw=randwrite --bsrange=4k-256k --verify=crc32c --verify_fatal=1 \
  --numjobs=2 --iodepth=8 --size=24M --offset_increment=32M \
  --randrepeat=0 --verify_state_save=0 --group_reporting >"$LAB_SCRATCH/fio.txt" ||
  { cat "$LAB_SCRATCH/fio.txt"; lab_fail "fio verify on Kn2"; }
lab_step "fio crc32c verify passed on Kn2 (two jobs, 4 KiB-256 KiB)"
random_file "$LAB_SCRATCH/p1" $((8 * MiB))
pwrite /dev/nbd0 $((96 * MiB)) "$LAB_SCRATCH/p1"
lab_eq "pattern at 96 MiB" "$(dev_sum "$LAB_SCRATCH/p1")" \
  "$(dd if=/dev/nbd0 bs=1M skip=96 count=8 iflag=direct status=none | md5sum | cut -d' ' -f1)"
# Write zeroes over half of it.
blkdiscard -z -o $((96 * MiB)) -l $((4 * MiB)) /dev/nbd0
lab_eq "zeroed" "$(head -c $((4 * MiB)) /dev/zero | md5sum | cut -d' ' -f1)" \
  "$(dd if=/dev/nbd0 bs=1M skip=96 count=4 iflag=direct status=none | md5sum | cut -d' ' -f1)"
lab_eq "the rest of the pattern" "$(tail -c $((4 * MiB)) "$LAB_SCRATCH/p1" | md5sum | cut -d' ' -f1)" \
  "$(dd if=/dev/nbd0 bs=1M skip=100 count=4 iflag=direct status=none | md5sum | cut -d' ' -f1)"
# Deallocate: the loop device punches the file.
random_file "$LAB_SCRATCH/p2" $((16 * MiB))
pwrite /dev/nbd0 $((200 * MiB)) "$LAB_SCRATCH/p2"
sync
before=$(du -k "$files/data.img" | cut -f1)
blkdiscard -o $((200 * MiB)) -l $((16 * MiB)) /dev/nbd0
sync
after=$(du -k "$files/data.img" | cut -f1)
[ "$after" -lt "$before" ] || lab_fail "deallocate left data.img at $after KiB (was $before)"
lab_step "deallocate: data.img $before KiB -> $after KiB"
nbd_detach /dev/nbd0
rpc nbd_stop_disk nbd_device="127.0.0.1:$port" >/dev/null

# --- 3. a thin pool on both namespaces ------------------------------------------

rpc bdev_thin_pool_create name=pool metadata_bdev=Kn1 data_bdev=Kn2 block_size=65536 >/dev/null
rpc bdev_thin_create pool=pool name=v size_in_mib=128 >/dev/null
port=$(ft_export v)
nbd_attach "$port" v /dev/nbd1
sum_at() { dd if="$1" bs=1M skip="$2" count="$3" iflag=direct status=none | md5sum | cut -d' ' -f1; }
zero_sum() { head -c $(($1 * MiB)) /dev/zero | md5sum | cut -d' ' -f1; }
random_file "$LAB_SCRATCH/a" $((4 * MiB))
random_file "$LAB_SCRATCH/b" $((4 * MiB))
# The model: MiB offset -> file written there (4 MiB each).
declare -A model=()
for off in 0 12 40 100; do
  pwrite /dev/nbd1 $((off * MiB)) "$LAB_SCRATCH/a"
  model[$off]=a
done
rpc bdev_thin_snapshot origin=v name=snap >/dev/null
declare -A snap_model=()
for off in "${!model[@]}"; do snap_model[$off]=${model[$off]}; done
for off in 12 60; do
  pwrite /dev/nbd1 $((off * MiB)) "$LAB_SCRATCH/b"
  model[$off]=b
done
check_model() {
  local dev=$1 what=$2
  local -n m=$3
  local off
  for off in 0 12 20 40 60 64 68 80 100 124; do
    local want
    if [ -n "${m[$off]:-}" ]; then
      want=$(dev_sum "$LAB_SCRATCH/${m[$off]}")
    else
      want=$(zero_sum 4)
    fi
    lab_eq "$what at $off MiB" "$want" "$(sum_at "$dev" "$off" 4)"
  done
}
check_model /dev/nbd1 volume model
sport=$(ft_export snap)
nbd_attach "$sport" snap /dev/nbd2 -readonly
check_model /dev/nbd2 snapshot snap_model
nbd_detach /dev/nbd2
rpc nbd_stop_disk nbd_device="127.0.0.1:$sport" >/dev/null
lab_step "the pool on Kn1 + Kn2 matches its model"

# --- 4. the port unlinked and linked again under writes ------------------------

random_file "$LAB_SCRATCH/c1" $((4 * MiB))
random_file "$LAB_SCRATCH/c2" $((4 * MiB))
cat "$LAB_SCRATCH/c1" "$LAB_SCRATCH/c2" >"$LAB_SCRATCH/c"
random_file "$LAB_SCRATCH/d" $((4 * MiB))
dd if="$LAB_SCRATCH/c" of=/dev/nbd1 bs=1M seek=64 oflag=direct conv=notrunc,fsync status=none &
w1=$!
sleep 0.3
port_unlink
lab_retry 30 not_enabled || lab_fail "the controller did not notice the port going"
lab_step "port unlinked: controller $(state)"
dd if="$LAB_SCRATCH/d" of=/dev/nbd1 bs=1M seek=80 oflag=direct conv=notrunc,fsync status=none &
w2=$!
sleep 3
kill -0 $w2 2>/dev/null || lab_fail "a write during the outage ended (it should wait)"
lab_eq "state while away" reconnect_is_delayed "$(state)"
port_link
wait $w1 || lab_fail "the write across the unlink failed"
wait $w2 || lab_fail "the write sent during the outage failed"
lab_retry 30 is_enabled || lab_fail "the controller did not come back"
lab_step "port linked again: the writes ended, controller $(state)"
lab_eq "write across the outage" "$(dev_sum "$LAB_SCRATCH/c")" "$(sum_at /dev/nbd1 64 8)"
lab_eq "write during the outage" "$(dev_sum "$LAB_SCRATCH/d")" "$(sum_at /dev/nbd1 80 4)"
model[64]=c1
model[68]=c2
model[80]=d
check_model /dev/nbd1 "volume after the outage" model

# --- 5. close everything; thin_check the metadata ------------------------------

nbd_detach /dev/nbd1
rpc nbd_stop_disk nbd_device="127.0.0.1:$port" >/dev/null
rpc bdev_thin_pool_delete name=pool >/dev/null
rpc bdev_nvme_detach_controller name=K >/dev/null
ft_stop
sync
thin_check "$files/meta.img" || lab_fail "thin_check of the metadata namespace"
lab_step "thin_check accepts the metadata namespace"
