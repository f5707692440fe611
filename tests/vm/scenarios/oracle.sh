# dm-thin as an oracle: seeded random operation sequences run on the
# kernel's dm-thin and on ferrothin, then device contents, used blocks,
# thin_ls counts and canonical thin_dumps compared (tests/vm/oracle.py).
# LAB_ORACLE_SEEDS (default 1-20) picks the seeds, LAB_ORACLE_OPS the
# operations per seed (default 24).
. "$LAB_REPO/tests/vm/lib.sh"

# The pools' files on ext4, not tmpfs (see fs-on-tmpfs).
files=$LAB_SCRATCH/files
lab_ext4_dir "$files" 800
ft_start
python3 "$LAB_REPO/tests/vm/oracle.py" --sock "$FT_SOCK" --dir "$files" \
  --seeds "${LAB_ORACLE_SEEDS:-1-20}" --ops "${LAB_ORACLE_OPS:-24}" --no-space ${LAB_ORACLE_PROFILE:+--profile}
ft_stop
