#!/usr/bin/env bash
# An lvol script as one writes it for SPDK's spdk_tgt: a malloc base, an
# lvstore, a thin lvol, a snapshot, a clone, a resize, deletes, every lvol
# named by its alias. It runs unchanged against `ferrothin tgt`
# (tests/tgt_lvol_script.rs runs it against both).
#
#   RPC="spdk-rpc -s /var/tmp/spdk.sock" tests/lvol/spdk_lvol_example.sh
set -euo pipefail
rpc=${RPC:-spdk-rpc}

$rpc bdev_malloc_create -b Malloc0 64 512
lvs_uuid=$($rpc bdev_lvol_create_lvstore Malloc0 lvs0 -c 1048576)
test "$($rpc bdev_lvol_get_lvstores -l lvs0 | jq -r '.[0].uuid')" = "$lvs_uuid"

lv_uuid=$($rpc bdev_lvol_create -l lvs0 -t lv0 8)
test "$($rpc bdev_get_bdevs -b lvs0/lv0 | jq -r '.[0].name')" = "$lv_uuid"

$rpc bdev_lvol_snapshot lvs0/lv0 snap0
$rpc bdev_lvol_clone lvs0/snap0 clone0
test "$($rpc bdev_lvol_get_lvols -l lvs0 | jq -r '.[] | select(.name == "clone0") | .is_clone')" = true

# A snapshot is read-only: its resize is refused.
if $rpc bdev_lvol_resize lvs0/snap0 16 2>/dev/null; then
    echo "resizing a snapshot succeeded" >&2
    exit 1
fi
$rpc bdev_lvol_resize lvs0/clone0 16
test "$($rpc bdev_get_bdevs -b lvs0/clone0 | jq -r '.[0].num_blocks')" = 32768

$rpc bdev_lvol_rename lvs0/clone0 clone1
$rpc bdev_lvol_delete lvs0/clone1
# One clone (lv0) left: the snapshot can go, lv0 keeps its data.
$rpc bdev_lvol_delete lvs0/snap0
test "$($rpc bdev_lvol_get_lvols -l lvs0 | jq -r '.[] | select(.name == "lv0") | .is_clone')" = false
$rpc bdev_lvol_delete lvs0/lv0
$rpc bdev_lvol_delete_lvstore -l lvs0
$rpc bdev_malloc_delete Malloc0
echo "lvol example: ok"
