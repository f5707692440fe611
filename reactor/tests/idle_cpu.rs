//! An idle reactor pair must park, not spin: its own process (one test per
//! binary) so no other test's CPU time is counted.

mod cpu_util;

use std::time::Duration;

use cpu_util::process_cpu;
use reactor::{ReactorOptions, ReactorSet};

#[test]
fn an_idle_two_core_process_uses_under_a_tenth_of_a_second_in_five() {
    let set = ReactorSet::start(&[0, 1], ReactorOptions::default()).unwrap();
    // Give both reactors a little work first, as a daemon would have at start.
    for core in [0, 1] {
        set.block_on(core, || async {
            reactor::sleep(Duration::from_millis(5)).await
        })
        .unwrap();
    }
    let before = process_cpu();
    std::thread::sleep(Duration::from_secs(5));
    let used = process_cpu() - before;
    let parks: u64 = set.stats().iter().map(|s| s.parks).sum();
    set.stop();
    eprintln!("idle 2-core reactor set: {used:?} CPU in 5 s, {parks} parks");
    assert!(
        used < Duration::from_millis(100),
        "idle process used {used:?} of CPU in 5 s"
    );
    assert!(parks >= 2, "reactors never parked");
}
