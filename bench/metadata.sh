#!/usr/bin/env bash
# Metadata tools against Debian's thin-provisioning-tools on the same input,
# in one run: restore and check of an XML with 4 devices x 250K random
# single mappings (1M mappings), ROUNDS times each, medians printed; then
# the blocks each restore used. Then the runtime-API benchmark.
#
#   bench/metadata.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
BIN=target/release/ferrothin
command -v thin_restore >/dev/null || { echo "needs thin-provisioning-tools" >&2; exit 1; }
cargo build --release -q
cargo build --release -q -p metadata --example md_bench
D=$(mktemp -d /var/tmp/ferrothin-md.XXXXXX)
trap 'rm -rf "$D"' EXIT

python3 - "$D/in.xml" <<'PY'
import random, sys
random.seed(42)
devs, per = 4, 250_000
data = list(range(devs * per)); random.shuffle(data)
with open(sys.argv[1], "w") as f:
    f.write('<superblock uuid="" time="0" transaction="1" flags="0" version="2" data_block_size="128" nr_data_blocks="%d">\n' % (devs * per))
    for d in range(devs):
        keys = sorted(random.sample(range(10_000_000), per))
        f.write('  <device dev_id="%d" mapped_blocks="%d" transaction="0" creation_time="0" snap_time="0">\n' % (d + 1, per))
        for i, k in enumerate(keys):
            f.write('    <single_mapping origin_block="%d" data_block="%d" time="0"/>\n' % (k, data[d * per + i]))
        f.write('  </device>\n')
    f.write('</superblock>\n')
PY
timeit() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for r in $(seq "$ROUNDS"); do
  truncate -s 0 "$D/t.img" "$D/o.img"; truncate -s 256M "$D/t.img" "$D/o.img"
  timeit thin_restore -i "$D/in.xml" -o "$D/t.img" >> "$D/tr"
  timeit "$BIN" restore -q -i "$D/in.xml" -o "$D/o.img" >> "$D/or"
  timeit thin_check "$D/t.img" >> "$D/tc"
  timeit "$BIN" check "$D/o.img" >> "$D/oc"
done
thin_check "$D/o.img" >/dev/null 2>&1 || { echo "thin_check rejects our restore" >&2; exit 1; }
printf '%-28s %10s %10s %8s\n' "1M mappings (4 x 250K)" "0.9.0 (s)" "ours (s)" "ratio"
for p in "restore:tr:or" "check:tc:oc"; do
  IFS=: read -r name t o <<< "$p"
  a=$(median < "$D/$t"); b=$(median < "$D/$o")
  printf '%-28s %10.3f %10.3f %8.2f\n' "$name" "$a" "$b" "$(echo "$b / $a" | bc -l)"
done
used() { "$BIN" check "$1" | awk -F= '/METADATA_FREE_BLOCKS/ {print 65536 - $2}'; }
echo "metadata blocks used: thin_restore $(used "$D/t.img"), ours $(used "$D/o.img")"
echo
target/release/examples/md_bench 1000000
