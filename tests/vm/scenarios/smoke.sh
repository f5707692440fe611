# The lab itself: ferrothin starts in the guest, a thin volume on RAM bdevs
# is exported, the kernel's NBD client attaches it, what is written through
# /dev/nbd0 is what the daemon maps and what reads back, partial blocks
# included, and a name the server does not export is refused.
. "$LAB_REPO/tests/vm/lib.sh"

ft_start
rpc bdev_malloc_create name=Meta num_blocks=2048 block_size=4096 >/dev/null
rpc bdev_malloc_create name=Data num_blocks=32768 block_size=4096 >/dev/null
rpc bdev_thin_pool_create name=pool metadata_bdev=Meta data_bdev=Data >/dev/null
rpc bdev_thin_create pool=pool name=vol size_in_mib=64 >/dev/null
port=$(ft_export vol)
lab_step "exported vol on 127.0.0.1:$port"

if nbd-client 127.0.0.1 "$port" /dev/nbd1 -N nosuch -b 4096 >/dev/null 2>&1; then
  nbd-client -d /dev/nbd1 >/dev/null 2>&1
  lab_fail "nbd-client attached an export that does not exist"
fi

nbd_attach "$port" vol /dev/nbd0
lab_eq "size of /dev/nbd0" $((64 << 20)) "$(blockdev --getsize64 /dev/nbd0)"

# 1 MiB at 0 (16 whole blocks), 4 KiB at 1 MiB + 68 KiB (part of one block),
# 100 KiB at 40 MiB - 12 KiB (across a block boundary).
random_file "$LAB_SCRATCH/a" $((1 << 20))
random_file "$LAB_SCRATCH/b" 4096
random_file "$LAB_SCRATCH/c" $((100 << 10))
pwrite /dev/nbd0 0 "$LAB_SCRATCH/a"
pwrite /dev/nbd0 $(((1 << 20) + (68 << 10))) "$LAB_SCRATCH/b"
pwrite /dev/nbd0 $(((40 << 20) - (12 << 10))) "$LAB_SCRATCH/c"
lab_step "written"

# The same image built in a file.
img=$LAB_SCRATCH/expected.img
truncate -s 64M "$img"
dd if="$LAB_SCRATCH/a" of="$img" bs=1024 seek=0 conv=notrunc status=none
dd if="$LAB_SCRATCH/b" of="$img" bs=1024 seek=$((1024 + 68)) conv=notrunc status=none
dd if="$LAB_SCRATCH/c" of="$img" bs=1024 seek=$((40 * 1024 - 12)) conv=notrunc status=none

echo 3 >/proc/sys/vm/drop_caches
lab_eq "volume contents" "$(dev_sum "$img")" "$(dev_sum /dev/nbd0)"
# 16 + 1 + 3 blocks of 64 KiB.
lab_eq "mapped blocks" 20 "$(rpc bdev_thin_get_volumes name=vol --get 0.mapped_blocks)"

nbd_detach /dev/nbd0
ft_stop
lab_step "smoke passed"
