# A pool ferrothin made is one the kernel's dm-thin activates: ferrothin
# writes four devices (two volumes, a snapshot, a snapshot of the
# snapshot; whole blocks, partial blocks, across block boundaries, copy on
# write after each snapshot, a discard) in the two-device layout, stops
# cleanly; Debian's thin_check accepts the metadata; dm-thin activates the
# pool on loop devices of the same files, and every device reads back what
# ferrothin read through NBD; dm-thin's used data blocks and thin_ls's
# mapped blocks per device are ferrothin's.
. "$LAB_REPO/tests/vm/lib.sh"

# On ext4, not tmpfs: what this checks is the format, whatever the files
# sit on.
files=$LAB_SCRATCH/files
lab_ext4_dir "$files" 600
meta=$files/meta.img
data=$files/data.img
truncate -s 16M "$meta"
truncate -s 256M "$data"

ft_start
rpc bdev_uring_create name=Meta filename="$meta" >/dev/null
rpc bdev_uring_create name=Data filename="$data" >/dev/null
rpc bdev_thin_pool_create name=pool metadata_bdev=Meta data_bdev=Data block_size=65536 >/dev/null
rpc bdev_thin_create pool=pool name=t0 size_in_mib=16 dev_id=0 >/dev/null
rpc bdev_thin_create pool=pool name=t1 size_in_mib=12 dev_id=1 >/dev/null
p0=$(ft_export t0)
p1=$(ft_export t1)
nbd_attach "$p0" t0 /dev/nbd0
nbd_attach "$p1" t1 /dev/nbd1

w() { # w DEV OFFSET BYTES: random data there
  random_file "$LAB_SCRATCH/w" "$3"
  pwrite "$1" "$2" "$LAB_SCRATCH/w"
}
K=1024
M=$((1024 * 1024))
w /dev/nbd0 0 $M                              # 16 whole blocks
w /dev/nbd0 $((200 * K)) $((4 * K))           # part of one block
w /dev/nbd0 $((10 * M - 32 * K)) $((192 * K)) # across blocks, partial at both ends
w /dev/nbd0 $((16 * M - 64 * K)) $((64 * K))  # the last block
w /dev/nbd1 $((4 * K)) $((4 * K))
w /dev/nbd1 $((8 * M)) $((2 * M))
w /dev/nbd1 $((11 * M + 60 * K)) $((4 * K))
# Unmap two whole blocks in the middle of the 2 MiB.
blkdiscard -o $((9 * M)) -l $((128 * K)) /dev/nbd1
lab_step "written t0, t1"

rpc bdev_thin_snapshot origin=t0 name=s2 dev_id=2 >/dev/null
w /dev/nbd0 $((4 * K)) $((8 * K))   # copy on write of a shared block, partially
w /dev/nbd0 $((12 * M)) $M          # new blocks
p2=$(ft_export s2)
nbd_attach "$p2" s2 /dev/nbd2
w /dev/nbd2 $((512 * K)) $((4 * K)) # the snapshot is writable
rpc bdev_thin_snapshot origin=s2 name=s3 dev_id=3 >/dev/null
w /dev/nbd2 $((600 * K)) $((64 * K))
p3=$(ft_export s3)
nbd_attach "$p3" s3 /dev/nbd3
lab_step "snapshots s2 (of t0) and s3 (of s2) taken and written"

echo 3 >/proc/sys/vm/drop_caches
declare -A sum size
for i in 0 1 2 3; do
  sum[$i]=$(dev_sum /dev/nbd$i)
  size[$i]=$(blockdev --getsize64 /dev/nbd$i)
done
ft_used=$(pool_used pool)
declare -A mapped
i=0
for n in t0 t1 s2 s3; do
  mapped[$i]=$(rpc bdev_thin_get_volumes name=$n --get 0.mapped_blocks)
  i=$((i + 1))
done
for i in 0 1 2 3; do nbd_detach /dev/nbd$i; done
ft_stop
lab_step "ferrothin: used data blocks $ft_used, mapped ${mapped[*]}"

quiet thin_check "$meta" || lab_fail "thin_check refuses ferrothin's metadata"
# thin_ls: DEV MAPPED_BLOCKS
thin_ls --no-headers -o DEV,MAPPED_BLOCKS "$meta" >"$LAB_SCRATCH/ls"
for i in 0 1 2 3; do
  lab_eq "thin_ls mapped blocks of dev $i" "${mapped[$i]}" \
    "$(awk -v d="$i" '$1 == d { print $2 }' "$LAB_SCRATCH/ls")"
done

dm_pool pool "$meta" "$data" 128
lab_eq "dm-thin's used data blocks" "$ft_used" "$(dm_used pool)"
for i in 0 1 2 3; do
  dm_thin "thin$i" pool "$i" "${size[$i]}"
  lab_eq "dev $i read by dm-thin" "${sum[$i]}" "$(dev_sum /dev/mapper/thin$i)"
done
lab_step "dm-thin reads every device as ferrothin wrote it"
for i in 0 1 2 3; do dmsetup remove "thin$i"; done
dmsetup remove pool
quiet thin_check "$meta" || lab_fail "thin_check after dm-thin used the pool"
