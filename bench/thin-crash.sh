#!/usr/bin/env bash
# Runs the thin pool crash test for many seeds (release build) and prints
# how many passed. Usage: bench/thin-crash.sh [SEEDS] [FIRST]
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${1:-10000}
FIRST=${2:-0}
start=$(date +%s)
THIN_CRASH_SEEDS=$SEEDS THIN_CRASH_FIRST=$FIRST \
  cargo test --release -q -p thin --test thin_crash -- --nocapture 2>&1 | grep -E "thin crash:|panicked|seed"
echo "elapsed: $(( $(date +%s) - start )) s"
