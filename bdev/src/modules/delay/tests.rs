use std::time::Instant;

use super::*;
use crate::modules::malloc;
use crate::test_util::{check_integrity, on_reactor, unique};
use crate::{open, IoBuf};

fn stack(lat: [u64; 4]) -> String {
    let base = malloc::create(malloc::MallocOptions {
        name: unique("base"),
        block_size: 512,
        num_blocks: 64,
        uuid: None,
        optimal_io_boundary: 0,
    })
    .unwrap();
    let d = create(DelayOptions {
        name: unique("delay"),
        base_bdev_name: base.name().into(),
        latency_us: lat,
        uuid: None,
    })
    .unwrap();
    d.name().to_string()
}

#[test]
fn adds_the_configured_latency_per_direction() {
    let name = stack([2000, 2000, 6000, 6000]);
    let (r, w) = on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        let t = Instant::now();
        ch.read(0, 1).await.unwrap();
        let r = t.elapsed();
        let t = Instant::now();
        ch.write(0, IoBuf::zeroed(512)).await.unwrap();
        (r, t.elapsed())
    });
    // Lower bounds only: a delay can never come back early.
    assert!(r.as_micros() >= 2000, "{r:?}");
    assert!(w.as_micros() >= 6000, "{w:?}");
}

#[test]
fn passes_data_through_and_updates_latency_live() {
    let name = stack([0, 0, 0, 0]);
    let n = name.clone();
    on_reactor(move || async move {
        let ch = open(&n, true, None).unwrap().io_channel().unwrap();
        check_integrity(&ch, 5, 200, true).await;
    });
    assert!(
        update_latency(&name, LatencyKind::AvgRead, 10).is_err(),
        "p99 would be below avg"
    );
    update_latency(&name, LatencyKind::P99Read, 3000).unwrap();
    update_latency(&name, LatencyKind::AvgRead, 3000).unwrap();
    let r = on_reactor(move || async move {
        let ch = open(&name, true, None).unwrap().io_channel().unwrap();
        let t = Instant::now();
        ch.read(0, 1).await.unwrap();
        t.elapsed()
    });
    assert!(r.as_micros() >= 3000, "{r:?}");
}

#[test]
fn bad_options_are_refused() {
    let base = unique("nobase");
    let r = create(DelayOptions {
        name: unique("d"),
        base_bdev_name: base,
        latency_us: [1, 1, 1, 1],
        uuid: None,
    });
    assert!(matches!(r, Err(BdevError::NotFound(_))));
    let name = stack([0, 0, 0, 0]);
    let base = crate::lookup(&name).unwrap();
    let _ = base;
    let r = create(DelayOptions {
        name: unique("d"),
        base_bdev_name: "x".into(),
        latency_us: [5, 1, 1, 1],
        uuid: None,
    });
    assert!(matches!(r, Err(BdevError::Invalid(_))));
}
