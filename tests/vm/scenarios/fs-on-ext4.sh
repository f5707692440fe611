# ext4 and xfs on a thin volume through the kernel's NBD client, the pool
# file on an ext4 filesystem (a loop-mounted image in the guest's tmpfs):
# see fs_case.sh for the steps.
. "$LAB_REPO/tests/vm/lib.sh"
. "$LAB_REPO/tests/vm/fs_case.sh"

lab_ext4_dir "$LAB_SCRATCH/backing" 1200

lab_case ext4-on-ext4 fs_case ext4 "$LAB_SCRATCH/backing"
lab_case xfs-on-ext4 fs_case xfs "$LAB_SCRATCH/backing"
lab_cases_done
