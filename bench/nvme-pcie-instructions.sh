#!/usr/bin/env bash
# Instructions per I/O of the NVMe PCIe driver's submit and completion,
# counted by callgrind on the simulated controller in-process
# (bdev/examples/nvme_pcie_ops.rs): 4 KiB writes on one queue pair, in
# batches of 1 and of 32 commands per doorbell. Counted: `submit` (slot,
# 4 KiB copy into the slot's DMA buffer, entry, PRPs), `ring` (the tail
# doorbell) and `reap` (completions by phase tag, the head doorbell); the
# simulated controller's own work between them is not. A doorbell write
# is a call into the simulator (a mutex, about 120 instructions) where a
# device takes one store. Usage: bench/nvme-pcie-instructions.sh [IOS]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 1; }
cargo build --release -q -p bdev --example nvme_pcie_ops
B=target/release/examples/nvme_pcie_ops
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
printf '%-6s %10s %10s %10s %10s %10s\n' batch total submit "of it copy" ring reap
for batch in 1 32; do
  valgrind --tool=callgrind --callgrind-out-file="$d/out" \
    --toggle-collect='nvme_pcie_ops::submit' --toggle-collect='nvme_pcie_ops::ring' \
    --toggle-collect='nvme_pcie_ops::reap' "$B" "$N" "$batch" >/dev/null 2>&1
  callgrind_annotate --inclusive=yes "$d/out" >"$d/ann" 2>/dev/null
  total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}' "$d/ann")
  fn() { awk -v f="$1" '$0 ~ f {gsub(",", "", $1); print $1; exit}' "$d/ann"; }
  sub=$(fn 'nvme_pcie_ops.rs:nvme_pcie_ops::submit ')
  reap=$(fn 'nvme_pcie_ops.rs:nvme_pcie_ops::reap ')
  copy=$(fn '__memcpy|__memmove')
  awk -v b="$batch" -v n="$N" -v t="$total" -v s="$sub" -v c="${copy:-0}" -v r="$reap" \
    'BEGIN { printf "%-6s %10.1f %10.1f %10.1f %10.1f %10.1f\n", b, t/n, s/n, c/n, (t-s-r)/n, r/n }'
done
