#!/usr/bin/env bash
# Instructions, loads and stores per I/O on the I/O core, thin volume
# against a raw bdev, counted by callgrind (valgrind): exact and
# repeatable where this machine's timings move by percents. Null bdevs
# (configs/bench-thin-vs-null.json), 4 KiB randwrite qd 32 over
# provisioned blocks; counting starts after the prefill, for 2 s of
# callgrind time, and is divided by the bench job's completions. Per
# function: self cost (inlined callees included). Usage:
# bench/thin-instructions.sh [BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-}
if [ -z "$B" ]; then
  cargo build --release -q
  B=target/release/ferrothin
fi
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)"; exit 1; }
for T in Raw0 thin0; do
  d=$(mktemp -d)
  valgrind --tool=callgrind --fair-sched=yes --separate-threads=yes --compress-strings=no \
    --compress-pos=no --dump-instr=yes --cache-sim=yes --callgrind-out-file="$d/out" \
    "$B" bench --json configs/bench-thin-vs-null.json -m 0x3 -T $T -q 32 -o 4096 -w randwrite \
    -t 4 --prefill >"$d/log" 2>&1 &
  vg=$!
  until grep -q "Running I/O" "$d/log" 2>/dev/null; do sleep 0.5; done
  sleep 1
  callgrind_control -z "$vg" >/dev/null 2>&1
  sleep 2
  callgrind_control -d "$vg" >/dev/null 2>&1
  wait "$vg" || true
  # The I/O core's thread is the one whose dump holds the bench job.
  f=$(grep -l "IoDone>::io_done" "$d"/out.1-* | head -1)
  python3 - "$f" "$T" <<'PY'
import collections, sys
path, target = sys.argv[1], sys.argv[2]
cur = None; callee = ''; pending = False; events = []
own = collections.defaultdict(lambda: [0] * 9); ios = 0
for line in open(path):
    if line.startswith('events:'):
        events = line.split()[1:]
    elif line.startswith('fn='):
        cur = line[3:].strip()
    elif line.startswith('cfn='):
        callee = line[4:].strip()
    elif line.startswith('calls='):
        pending = True
        if 'Job as bdev::io::IoDone>::io_done' in callee:
            ios += int(line[6:].split()[0])
    elif line.startswith('0x'):
        if pending:  # the inclusive cost of a call: not this function's own
            pending = False
            continue
        for i, v in enumerate(line.split()[2:]):
            own[cur][i] += int(v)
col = {e: i for i, e in enumerate(events)}
total = {e: sum(v[col[e]] for v in own.values()) / ios for e in ('Ir', 'Dr', 'Dw')}
print(f"{target}: {ios} I/Os; per I/O: {total['Ir']:.1f} instructions, "
      f"{total['Dr']:.1f} loads, {total['Dw']:.1f} stores")
for name, v in sorted(own.items(), key=lambda kv: -kv[1][0]):
    if v[0] / ios >= 2:
        print(f"  {v[col['Ir']]/ios:7.1f} Ir {v[col['Dr']]/ios:6.1f} Dr {v[col['Dw']]/ios:6.1f} Dw  {name[:90]}")
PY
  rm -rf "$d"
done
