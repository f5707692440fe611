//! The crash workload of `thin_util::crash` on a simulated reactor set:
//! both cores on this thread, virtual time, the order of every turn chosen
//! by the seed. So a seed fixes the interleaving as well as the workload
//! and the power cut, and a failure replays exactly:
//! `THIN_SIM_FIRST=N THIN_SIM_SEEDS=1 THIN_CRASH_TRACE=1`.
//!
//! - `a_seed_replays_its_trace`: the same seed, run twice, writes the same
//!   trace (operations, what each cache held at the cut, checksums of what
//!   reads back after the reopen, virtual time and steps).
//! - `simulated_power_cuts_keep_every_flushed_write`: `THIN_SIM_SEEDS`
//!   seeds (CI: 1,000; bench/thin-sim.sh runs 100,000), and how many cuts
//!   caught the metadata cache holding writes (inside a commit).

mod thin_util;

use reactor::SimSet;
use thin_util::crash::{crash_seed, Trace};

/// Enough steps for any seed's workload; a run that needs more has hung.
const MAX_STEPS: u64 = 50_000_000;

/// Runs `seed` on a fresh two-core simulated set; returns its trace.
fn sim_seed(seed: u64, debian_check: bool) -> Trace {
    let t = Trace::new(std::env::var("THIN_CRASH_TRACE").is_ok(), debian_check);
    let set = SimSet::new(&[0, 1], seed)
        .expect("simulated set")
        .follow(bdev::sim_take_core_state, bdev::sim_put_core_state)
        .follow(thin::sim_take_core_state, thin::sim_put_core_state);
    let t2 = t.clone();
    set.block_on(0, MAX_STEPS, move || crash_seed(seed, t2))
        .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    t.line(format!(
        "virtual time {} ticks, {} steps",
        set.now(),
        set.steps()
    ));
    t
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_seed_replays_its_trace() {
    for seed in 0..20 {
        let a = sim_seed(seed, false).text();
        let b = sim_seed(seed, false).text();
        assert_eq!(a, b, "seed {seed} did not replay");
    }
}

/// Seeds that found bugs, kept whatever THIN_SIM_SEEDS says: 515 lost a
/// flushed write when a FLUSH during a commit's play answered early; 3695
/// and 54708 (found in a 100,000-seed run) lost one when a failed commit's
/// superblock had landed and the pool, believing it had not, zeroed one
/// of that commit's new blocks for another provision; 7720 caught the
/// test itself letting the abandoned pool's I/O land after the cut.
#[test]
fn seeds_that_found_bugs_pass() {
    for seed in [515, 3695, 7720, 54708] {
        sim_seed(seed, true);
    }
}

#[test]
fn simulated_power_cuts_keep_every_flushed_write() {
    let (first, seeds) = (env("THIN_SIM_FIRST", 0), env("THIN_SIM_SEEDS", 1000));
    let mut in_commit = 0;
    for seed in first..first + seeds {
        // Debian's thin_check on every 10th seed; ours on every one.
        let t = sim_seed(seed, seed % 10 == 0);
        if t.held_at_cut("metadata") > 0 {
            in_commit += 1;
        }
    }
    eprintln!(
        "thin sim: {seeds} seeds from {first} passed; {in_commit} cut with metadata writes held"
    );
    if seeds >= 100 {
        assert!(
            in_commit > 0,
            "no cut landed inside a commit's metadata writes: the test does not test that"
        );
    }
}
