//! Crash tests on reactor threads: the workload of `thin_util::crash`
//! (power cuts with writes, flushes and snapshots in flight) on a real
//! two-core set, where timing varies from run to run. A failure prints
//! its seed; `THIN_CRASH_FIRST=N THIN_CRASH_SEEDS=1 THIN_CRASH_TRACE=1`
//! reruns it with its trace, and `thin_sim` runs the same workload on a
//! simulated set, where a seed also fixes the interleaving.
//!
//! `THIN_CRASH_SEEDS` sets the seed count (CI: 200; bench/thin-crash.sh
//! runs 10,000).

mod thin_util;

use thin_util::crash::{crash_seed, Trace};
use thin_util::*;

#[test]
fn power_cuts_keep_every_flushed_write_and_leak_nothing() {
    let seeds: u64 = std::env::var("THIN_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let first: u64 = std::env::var("THIN_CRASH_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    run(move || async move {
        for seed in first..first + seeds {
            let t = Trace::new(std::env::var("THIN_CRASH_TRACE").is_ok(), true);
            crash_seed(seed, t).await;
        }
        eprintln!("thin crash: {seeds} seeds from {first} passed");
    });
}
