# A filesystem on a thin volume through the kernel's NBD client; sourced
# by the fs-* scenarios, which say where the pool file lives.
#
# fs_case FSTYPE POOLDIR: with ferrothin's pool file in POOLDIR,
#  1. mkfs FSTYPE on a 512 MiB thin volume at /dev/nbd0, mount -o discard;
#  2. write set A; fsfreeze, bdev_thin_snapshot, thaw;
#  3. change A (overwrite one file, delete one) and write set B;
#  4. the snapshot, exported and attached read-only at /dev/nbd1, mounts
#     read-only and holds A as it was at the snapshot, and no B;
#  5. delete B, fstrim: the pool's used data blocks fall (B's blocks were
#     the volume's own);
#  6. delete the snapshot, then most of A, fstrim: they fall again;
#  7. unmount, fsck finds nothing, mount again: every file is as expected.
# Expected contents are kept in a tree on the guest's tmpfs that gets the
# same changes; files are compared by MD5.

# tree_sums DIR: "md5  ./path" for every file under DIR, sorted.
tree_sums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0r md5sum); }

# same_tree WHAT EXPECTED_DIR ACTUAL_DIR
same_tree() {
  local want got
  want=$(tree_sums "$2")
  got=$(tree_sums "$3")
  if [ "$want" != "$got" ]; then
    diff <(echo "$want") <(echo "$got") >&2 || true
    lab_fail "$1: files differ (< expected, > found)"
  fi
}

# blocks_of BYTES: 64 KiB data blocks
blocks_of() { echo $((($1 + 65535) / 65536)); }

# wait_used_at_most POOL LIMIT WHAT: pool_used falls to LIMIT or below
# within 30 s (discards are passed down as the filesystem sends them).
wait_used_at_most() {
  local used until=$(($(date +%s) + 30))
  while :; do
    used=$(pool_used "$1")
    [ "$used" -le "$2" ] && break
    [ "$(date +%s)" -lt "$until" ] || lab_fail "$3: pool uses $used data blocks, expected at most $2"
    sleep 1
  done
  lab_step "$3: pool uses $used data blocks (at most $2)"
}

fs_case() {
  local fs=$1 pooldir=$2
  local d=$LAB_SCRATCH/$fs
  local exp=$d/expected mnt=$d/mnt smnt=$d/snapmnt
  mkdir -p "$d" "$exp/a" "$exp/b"
  FT_DIR=$d/ft
  local img=$pooldir/pool-$fs.img
  rm -f "$img"
  truncate -s 1G "$img"
  lab_defer "rm -f $img"

  # The data: A is 14 files, 4 KiB to 1 MiB plus one of 2 MiB (some sizes
  # not a multiple of 4 KiB); B is 4 files of 1 MiB.
  local i size a_bytes=0 b_bytes=0
  for i in $(seq 1 14); do
    size=$(((i * i * 1777) % (1 << 20) + 4096))
    random_file "$exp/a/f$i" "$size"
    a_bytes=$((a_bytes + size))
  done
  random_file "$exp/a/big" $((2 << 20))
  a_bytes=$((a_bytes + (2 << 20)))
  for i in 1 2 3 4; do
    random_file "$exp/b/g$i" $((1 << 20))
    b_bytes=$((b_bytes + (1 << 20)))
  done

  ft_start
  rpc bdev_uring_create name=Disk filename="$img" >/dev/null
  rpc bdev_thin_pool_create name=pool metadata_bdev=Disk >/dev/null
  rpc bdev_thin_create pool=pool name=vol size_in_mib=512 dev_id=1 >/dev/null
  local port
  port=$(ft_export vol)
  nbd_attach "$port" vol /dev/nbd0

  case $fs in
  # No lazy inode table init: the kernel would write the tables while the
  # test counts blocks. 4096 inodes and a 4 MiB journal keep mkfs short.
  ext4) mkfs.ext4 -q -F -N 4096 -J size=4 -E lazy_itable_init=0,lazy_journal_init=0 /dev/nbd0 ;;
  xfs) mkfs.xfs -q -f /dev/nbd0 ;;
  esac
  lab_step "mkfs.$fs done; pool uses $(pool_used pool) data blocks"
  lab_mount /dev/nbd0 "$mnt" discard
  mkdir "$mnt/a"
  cp -a "$exp/a/." "$mnt/a/"
  sync

  # The snapshot, the filesystem frozen meanwhile.
  fsfreeze -f "$mnt"
  lab_defer "fsfreeze -u $mnt"
  rpc bdev_thin_snapshot origin=vol name=snap >/dev/null
  fsfreeze -u "$mnt"
  lab_step "snapshot taken"
  cp -a "$exp" "$d/at-snapshot"
  rm -rf "$d/at-snapshot/b"

  # Changes after it.
  random_file "$d/new" 8192
  dd if="$d/new" of="$mnt/a/f2" conv=notrunc status=none
  dd if="$d/new" of="$exp/a/f2" conv=notrunc status=none
  rm "$mnt/a/f3" "$exp/a/f3"
  mkdir "$mnt/b"
  cp -a "$exp/b/." "$mnt/b/"
  sync
  same_tree "live volume" "$exp" "$mnt"

  # The snapshot holds A as it was.
  local sport
  sport=$(ft_export snap)
  nbd_attach "$sport" snap /dev/nbd1 -readonly
  case $fs in
  ext4) lab_mount /dev/nbd1 "$smnt" ro ;;
  xfs) lab_mount /dev/nbd1 "$smnt" ro,norecovery,nouuid ;;
  esac
  same_tree "snapshot" "$d/at-snapshot" "$smnt"
  umount "$smnt"
  nbd_detach /dev/nbd1
  rpc nbd_stop_disk nbd_device="127.0.0.1:$sport" export_name=snap >/dev/null
  lab_step "snapshot matches the moment it was taken"

  # Deleting B returns its blocks: nothing else refers to them.
  local used
  used=$(pool_used pool)
  rm -rf "$mnt/b" "$exp/b"
  fstrim "$mnt"
  sync
  wait_used_at_most pool $((used - $(blocks_of "$b_bytes") / 2)) "B deleted"

  # With the snapshot gone, A's blocks are the volume's own too.
  rpc bdev_thin_delete name=snap >/dev/null
  used=$(pool_used pool)
  rm -f "$mnt/a/big" "$exp/a/big" "$mnt"/a/f1? "$exp"/a/f1?
  fstrim "$mnt"
  sync
  wait_used_at_most pool $((used - $(blocks_of $((2 << 20))) / 2)) "snapshot and most of A deleted"
  same_tree "live volume" "$exp" "$mnt"

  # Clean on disk, and the same mounted again.
  umount "$mnt"
  case $fs in
  ext4) e2fsck -fn /dev/nbd0 ;;
  xfs) xfs_repair -n /dev/nbd0 ;;
  esac >"$d/fsck.log" 2>&1 || { cat "$d/fsck.log"; lab_fail "fsck.$fs found problems"; }
  lab_step "fsck clean"
  lab_mount /dev/nbd0 "$mnt" discard
  same_tree "after remount" "$exp" "$mnt"
  umount "$mnt"
  nbd_detach /dev/nbd0
  ft_stop
}
