#!/usr/bin/env bash
# Coverage-guided fuzzing of the metadata readers (cargo-fuzz, libFuzzer)
# for SECONDS, from the seed corpus; prints executions and findings. Needs
# cargo-fuzz (`cargo install cargo-fuzz`); runs on stable through
# RUSTC_BOOTSTRAP, without a sanitizer (a panic is the finding we want).
#
#   bench/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
command -v cargo-fuzz >/dev/null || { echo "install cargo-fuzz first: cargo install cargo-fuzz" >&2; exit 1; }
CORPUS=$(mktemp -d /var/tmp/ferrothin-fuzz.XXXXXX)
trap 'rm -rf "$CORPUS"' EXIT
cargo run -q --release -p metadata --example fuzz_images -- --write-corpus "$CORPUS"
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run -s none open_and_check "$CORPUS" -- \
  -max_total_time="$SECS" -max_len=400000 -print_final_stats=1 2>&1 \
  | grep -E 'stat::number_of_executed_units|stat::new_units_added|stat::peak_rss|panicked|Test unit written|SUMMARY' || true
ls artifacts/open_and_check 2>/dev/null | sed 's/^/finding: /' || true
