# The userspace NVMe driver on QEMU's emulated NVMe controller behind an
# emulated IOMMU (intel-iommu): attach refused while the kernel's nvme
# driver has the controller (the error says how to hand it over), then
# bound to vfio-pci and attached by ferrothin (two namespaces: metadata
# and data of a thin pool); a pattern written through NBD reads back; a
# snapshot keeps the old data while the origin changes; after a flush the
# daemon is killed with SIGKILL, started again, attaches the controller
# the dead process left enabled, reopens the pool and every device reads
# as before; stopped cleanly (shutdown notification), the controller goes
# back to the kernel's nvme driver and Debian's thin_check accepts the
# metadata read through it. A third namespace on a read-only drive:
# writes to it fail with an I/O error, reads work, the daemon lives on.
#
# lab-image: nvme-meta.img 16
# lab-image: nvme-data.img 256
# lab-image: nvme-ro.img 8
# lab-kopt: intel_iommu=on iommu=pt
# lab-qemu: -machine q35,kernel-irqchip=split -device intel-iommu,intremap=on,caching-mode=on -device nvme,id=nvme0,serial=ftpcie0 -drive file=@OUT@/nvme-meta.img,if=none,id=nvm1,format=raw -device nvme-ns,drive=nvm1,bus=nvme0,nsid=1 -drive file=@OUT@/nvme-data.img,if=none,id=nvm2,format=raw -device nvme-ns,drive=nvm2,bus=nvme0,nsid=2 -drive file=@OUT@/nvme-ro.img,if=none,id=nvm3,format=raw,readonly=on -device nvme-ns,drive=nvm3,bus=nvme0,nsid=3
. "$LAB_REPO/tests/vm/lib.sh"

addr=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat "$d/class")" = 0x010802 ] && addr=${d##*/} && break
done
[ -n "$addr" ] || lab_fail "no NVMe controller in the guest (run.py adds one for this scenario)"
[ -e "/sys/bus/pci/devices/$addr/iommu_group" ] || lab_fail "$addr has no IOMMU group (intel_iommu=on?)"
modprobe vfio-pci || lab_fail "modprobe vfio-pci"
modprobe nvme || true

# bind_to DRIVER: hands the controller to DRIVER (driver_override, unbind,
# probe), as the attach error tells an operator to.
bind_to() {
  local dev=/sys/bus/pci/devices/$addr
  echo "$1" >"$dev/driver_override"
  [ -e "$dev/driver" ] && echo "$addr" >"$dev/driver/unbind"
  echo "$addr" >/sys/bus/pci/drivers_probe
  [ "$(basename "$(readlink "$dev/driver")")" = "$1" ] || lab_fail "$addr is not bound to $1"
}
# Whatever happens, the kernel gets its controller back at the end.
lab_defer "bind_to nvme"
lab_retry 30 test -e /dev/nvme0n1 || lab_fail "the kernel's nvme driver did not bring up $addr"
lab_step "NVMe controller $addr, IOMMU group $(basename "$(readlink /sys/bus/pci/devices/$addr/iommu_group)")"

ft_start
err=$(rpc_err bdev_nvme_attach_controller name=N trtype=PCIe traddr="$addr")
echo "$err" | grep -q "not vfio-pci" || lab_fail "attach while bound to nvme: $err"
echo "$err" | grep -q "driver_override" || lab_fail "the error does not say how to bind: $err"
lab_step "refused while the kernel has it: $(echo "$err" | grep -o 'is bound to [a-z-]*')"

bind_to vfio-pci
names=$(rpc bdev_nvme_attach_controller name=N trtype=PCIe traddr="$addr")
echo "$names" | grep -q Nn1 && echo "$names" | grep -q Nn2 || lab_fail "bdevs: $names"
lab_eq "Nn2 size" $((256 << 20)) "$(($(rpc bdev_get_bdevs name=Nn2 --get 0.num_blocks) * $(rpc bdev_get_bdevs name=Nn2 --get 0.block_size)))"
lab_eq "controller state" enabled "$(rpc bdev_nvme_get_controllers name=N --get 0.ctrlrs.0.state)"
lab_step "attached through VFIO: $(echo $names | tr -d '[]"\n ')"

# QEMU answers writes to the read-only drive's namespace with an error.
p3=$(ft_export Nn3)
nbd_attach "$p3" Nn3 /dev/nbd3
if dd if=/dev/zero of=/dev/nbd3 bs=4k count=1 oflag=direct status=none 2>"$LAB_SCRATCH/ro.txt"; then
  lab_fail "a write to the read-only namespace succeeded"
fi
dd if=/dev/nbd3 of=/dev/null bs=4k count=4 iflag=direct status=none || lab_fail "a read of the read-only namespace failed"
rpc spdk_get_version >/dev/null
lab_step "read-only namespace: write refused ($(head -c 80 "$LAB_SCRATCH/ro.txt")), reads work, the daemon lives"
nbd_detach /dev/nbd3
rpc_call nbd_stop_disk nbd_device=127.0.0.1:$p3

rpc bdev_thin_pool_create name=pool metadata_bdev=Nn1 data_bdev=Nn2 block_size=65536 >/dev/null
rpc bdev_thin_create pool=pool name=t0 size_in_mib=64 dev_id=0 >/dev/null
p0=$(ft_export t0)
nbd_attach "$p0" t0 /dev/nbd0

K=1024
M=$((1024 * 1024))
random_file "$LAB_SCRATCH/a" $((8 * M))
random_file "$LAB_SCRATCH/b" $((200 * K))
pwrite /dev/nbd0 0 "$LAB_SCRATCH/a"
pwrite /dev/nbd0 $((40 * M - 100 * K)) "$LAB_SCRATCH/b"
img=$LAB_SCRATCH/t0.img
truncate -s 64M "$img"
dd if="$LAB_SCRATCH/a" of="$img" conv=notrunc status=none
dd if="$LAB_SCRATCH/b" of="$img" bs=1K seek=$((40 * 1024 - 100)) conv=notrunc status=none
echo 3 >/proc/sys/vm/drop_caches
lab_eq "t0 pattern" "$(dev_sum "$img")" "$(dev_sum /dev/nbd0)"
lab_step "pattern written and read back through the driver"

rpc bdev_thin_snapshot origin=t0 name=s1 dev_id=1 >/dev/null
cp "$img" "$LAB_SCRATCH/s1.img"
random_file "$LAB_SCRATCH/c" $((1 * M))
pwrite /dev/nbd0 $((2 * M)) "$LAB_SCRATCH/c"
dd if="$LAB_SCRATCH/c" of="$img" bs=1M seek=2 conv=notrunc status=none
p1=$(ft_export s1)
nbd_attach "$p1" s1 /dev/nbd1
echo 3 >/proc/sys/vm/drop_caches
lab_eq "t0 after the snapshot" "$(dev_sum "$img")" "$(dev_sum /dev/nbd0)"
lab_eq "s1 as at the snapshot" "$(dev_sum "$LAB_SCRATCH/s1.img")" "$(dev_sum /dev/nbd1)"
lab_step "snapshot s1 keeps the old data, t0 has the new"

# Both reactors submitted to the controller (NBD on one, the pool's
# metadata core, with its metadata and zeroing I/O, on the other), each
# on its own queue pair.
qpairs=$(rpc bdev_nvme_get_controllers name=N --get 0.ctrlrs.0.io_qpairs)
[ "$qpairs" -ge 2 ] || lab_fail "one queue pair for two reactors: $qpairs"
lab_step "two reactors, $qpairs I/O queue pairs on the controller"

# pwrite flushed; the kill comes with the data on the namespace.
nbd_detach /dev/nbd1
nbd_detach /dev/nbd0
kill -9 "$FT_PID"
wait "$FT_PID" 2>/dev/null || true
lab_step "daemon killed with SIGKILL"

ft_start
rpc bdev_nvme_attach_controller name=N trtype=PCIe traddr="$addr" >/dev/null
rpc bdev_thin_pool_create name=pool metadata_bdev=Nn1 data_bdev=Nn2 block_size=65536 >/dev/null
rpc bdev_thin_activate pool=pool name=t0 dev_id=0 size_in_mib=64 >/dev/null
rpc bdev_thin_activate pool=pool name=s1 dev_id=1 size_in_mib=64 >/dev/null
p0=$(ft_export t0)
p1=$(ft_export s1)
nbd_attach "$p0" t0 /dev/nbd0
nbd_attach "$p1" s1 /dev/nbd1
lab_eq "t0 after the restart" "$(dev_sum "$img")" "$(dev_sum /dev/nbd0)"
lab_eq "s1 after the restart" "$(dev_sum "$LAB_SCRATCH/s1.img")" "$(dev_sum /dev/nbd1)"
lab_step "restarted over the controller the dead process left enabled: both devices intact"
nbd_detach /dev/nbd1
nbd_detach /dev/nbd0
ft_stop

bind_to nvme
lab_retry 30 test -e /dev/nvme0n1 || lab_fail "no /dev/nvme0n1 after rebinding to nvme"
cp "$(command -v thin_check)" "$LAB_SCRATCH/thin_check" 2>/dev/null || true
"$LAB_SCRATCH/thin_check" /dev/nvme0n1 >"$LAB_SCRATCH/tc.txt" 2>&1 ||
  lab_fail "thin_check of the metadata namespace: $(cat "$LAB_SCRATCH/tc.txt")"
lab_step "back on the kernel's nvme driver: thin_check accepts the metadata on /dev/nvme0n1"
