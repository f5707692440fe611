#!/usr/bin/env bash
# The kernel lab's dm-thin oracle over many seeds (CI runs 1-20): each seed's
# random operations run on the kernel's dm-thin and on ferrothin in a guest,
# then contents, used blocks, thin_ls and canonical thin_dumps are compared
# (docs/kernel-lab.md). About 5-10 s a seed under software emulation: 500
# seeds take about an hour. Prints a line per seed and the count that differ.
# Usage: bench/oracle.sh [SEEDS] [OPS]   (SEEDS as 1-500 or 3,7,9-12)
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-1-500}
OPS=${2:-24}
cargo build -q --bin ferrothin
n=$(python3 -c "import sys; sys.path.insert(0, 'tests/vm'); import oracle; print(len(oracle.parse_seeds('$SEEDS')))")
# 30 s a seed of room, and the boot.
LAB_ORACLE_SEEDS=$SEEDS LAB_ORACLE_OPS=$OPS tests/vm/run.py \
  --scenario-timeout $((n * 30 + 120)) --timeout $((n * 30 + 600)) oracle
