# A pool the kernel's dm-thin made is one ferrothin opens: dm-thin on loop
# devices writes four devices (a thin device, a snapshot of it, a snapshot
# of that, another thin device; whole blocks, partial blocks, across block
# boundaries, copy on write, a discard), the pool is removed cleanly;
# ferrothin opens the same files (bdev_uring_create, bdev_thin_pool_create,
# bdev_thin_activate per device) and every device reads back through the
# kernel's NBD client as dm-thin read it, with dm-thin's used data blocks
# and mapped blocks per device; after ferrothin writes to it and stops,
# Debian's thin_check still accepts the metadata.
. "$LAB_REPO/tests/vm/lib.sh"

files=$LAB_SCRATCH/files
lab_ext4_dir "$files" 600
meta=$files/meta.img
data=$files/data.img
truncate -s 16M "$meta"
truncate -s 256M "$data"

K=1024
M=$((1024 * 1024))
size0=$((16 * M))
size3=$((12 * M))
dm_pool pool "$meta" "$data" 128
dmsetup message pool 0 "create_thin 0"
dm_thin thin0 pool 0 $size0

w() { # w DEV OFFSET BYTES: random data there
  random_file "$LAB_SCRATCH/w" "$3"
  pwrite "$1" "$2" "$LAB_SCRATCH/w"
}
w /dev/mapper/thin0 0 $M
w /dev/mapper/thin0 $((200 * K)) $((4 * K))
w /dev/mapper/thin0 $((10 * M - 32 * K)) $((192 * K))
w /dev/mapper/thin0 $((16 * M - 64 * K)) $((64 * K))

# Snapshots of active devices: suspend the origin first (dm-thin's rule).
dmsetup suspend thin0
dmsetup message pool 0 "create_snap 1 0"
dmsetup resume thin0
w /dev/mapper/thin0 $((4 * K)) $((8 * K))
w /dev/mapper/thin0 $((12 * M)) $M
dm_thin thin1 pool 1 $size0
w /dev/mapper/thin1 $((512 * K)) $((4 * K))
dmsetup suspend thin1
dmsetup message pool 0 "create_snap 2 1"
dmsetup resume thin1
w /dev/mapper/thin1 $((600 * K)) $((64 * K))
dm_thin thin2 pool 2 $size0

dmsetup message pool 0 "create_thin 3"
dm_thin thin3 pool 3 $size3
w /dev/mapper/thin3 $((4 * K)) $((4 * K))
w /dev/mapper/thin3 $((8 * M)) $((2 * M))
w /dev/mapper/thin3 $((11 * M + 60 * K)) $((4 * K))
blkdiscard -o $((9 * M)) -l $((128 * K)) /dev/mapper/thin3
lab_step "dm-thin wrote devices 0-3"

echo 3 >/proc/sys/vm/drop_caches
declare -A sum
for i in 0 1 2 3; do sum[$i]=$(dev_sum /dev/mapper/thin$i); done
# A commit, so the metadata on disk is what the devices show.
dmsetup message pool 0 "set_transaction_id 0 7"
kused=$(dm_used pool)
for i in 0 1 2 3; do dmsetup remove "thin$i"; done
dmsetup remove pool
quiet thin_check "$meta" || lab_fail "thin_check refuses dm-thin's metadata"
thin_ls --no-headers -o DEV,MAPPED_BLOCKS "$meta" >"$LAB_SCRATCH/ls"
lab_step "dm-thin: used data blocks $kused; pool removed"

ft_start
rpc bdev_uring_create name=Meta filename="$meta" >/dev/null
rpc bdev_uring_create name=Data filename="$data" >/dev/null
rpc bdev_thin_pool_create name=pool metadata_bdev=Meta data_bdev=Data block_size=65536 >/dev/null
lab_eq "transaction id" 7 "$(rpc bdev_thin_pool_get_pools name=pool --get 0.transaction_id)"
lab_eq "used data blocks" "$kused" "$(pool_used pool)"
for i in 0 1 2 3; do
  mib=16
  [ "$i" = 3 ] && mib=12
  rpc bdev_thin_activate pool=pool name=d$i dev_id=$i size_in_mib=$mib >/dev/null
  lab_eq "mapped blocks of dev $i" \
    "$(awk -v d="$i" '$1 == d { print $2 }' "$LAB_SCRATCH/ls")" \
    "$(rpc bdev_thin_get_volumes name=d$i --get 0.mapped_blocks)"
  port=$(ft_export d$i)
  nbd_attach "$port" d$i /dev/nbd$i
  lab_eq "dev $i read by ferrothin" "${sum[$i]}" "$(dev_sum /dev/nbd$i)"
done
lab_step "ferrothin reads every device as dm-thin wrote it"

# ferrothin writes to the pool (a new block in 0, copy on write in 1) and
# stops; the metadata stays valid for Debian's tools.
w /dev/nbd0 $((14 * M)) $((4 * K))
w /dev/nbd1 $((4 * K)) $((4 * K))
for i in 0 1 2 3; do nbd_detach /dev/nbd$i; done
ft_stop
quiet thin_check "$meta" || lab_fail "thin_check after ferrothin wrote to the pool"
