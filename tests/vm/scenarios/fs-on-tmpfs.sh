# ext4 and xfs on a thin volume through the kernel's NBD client, the pool
# file on tmpfs (the guest's /run/lab): see fs_case.sh for the steps.
# tmpfs refuses FALLOC_FL_ZERO_RANGE, which ferrothin used to zero the rest
# of a new data block under a partial write.
. "$LAB_REPO/tests/vm/lib.sh"
. "$LAB_REPO/tests/vm/fs_case.sh"

mkdir -p "$LAB_SCRATCH/pool"
lab_case ext4-on-tmpfs fs_case ext4 "$LAB_SCRATCH/pool"
lab_case xfs-on-tmpfs fs_case xfs "$LAB_SCRATCH/pool"
lab_cases_done
