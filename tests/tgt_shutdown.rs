//! A SIGTERM closes every stack cleanly: pass-through bdevs (delay,
//! error) go top down before the modules under them close, and module
//! fini runs in rounds, so an lvstore with a delay bdev on one of its
//! volumes still commits, a thin pool on a delay bdev still closes, and
//! so does a pool with another pool on one of its volumes.

mod tgt_util;

use serde_json::{json, Value};
use tgt_util::{nbd::Client, scratch, Tgt};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn delay(t: &Tgt, name: &str, base: &str) {
    t.ok(
        "bdev_delay_create",
        json!({"name": name, "base_bdev_name": base, "avg_read_latency": 1,
               "p99_read_latency": 1, "avg_write_latency": 1, "p99_write_latency": 1}),
    );
}

/// With an error bdev on a delay bdev on an lvol, a thin pool whose data
/// device is a delay bdev, and a pool on a delay bdev on that pool's
/// volume, every module closes cleanly at SIGTERM (before, the delay
/// bdev's claim on the lvol kept the lvstore's pool from closing, and a
/// pool with a pool on its volume stayed open), and what was written
/// through the stack is there after a restart.
#[test]
fn a_sigterm_closes_every_stack_of_pools_and_pass_through_bdevs() {
    let dir = scratch("shutdown-stacks");
    let file = dir.join("lvs.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let t = Tgt::start_in(dir.clone(), &["-m", "0x3"]);
    t.ok(
        "bdev_aio_create",
        json!({"name": "F", "filename": file.to_str().unwrap(), "block_size": 4096}),
    );
    t.ok(
        "bdev_lvol_create_lvstore",
        json!({"bdev_name": "F", "lvs_name": "ls"}),
    );
    t.ok(
        "bdev_lvol_create",
        json!({"lvs_name": "ls", "lvol_name": "v", "size_in_mib": 8}),
    );
    delay(&t, "D", "ls/v");
    t.ok("bdev_error_create", json!({"base_name": "D"}));
    // And a thin pool whose data device is a delay bdev.
    for (name, mib) in [("Meta", 8), ("Data", 32)] {
        t.ok(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": mib * 256, "block_size": 4096}),
        );
    }
    delay(&t, "DD", "Data");
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "pool", "metadata_bdev": "Meta", "data_bdev": "DD",
               "block_size": 65536, "metadata_core": 1}),
    );
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "tv", "size_in_mib": 4}),
    );
    // A pool on a delay bdev on another pool's volume: the upper pool
    // closes, then the delay bdev goes, then the lower pool closes.
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "lower", "size_in_mib": 8}),
    );
    delay(&t, "DL", "lower");
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "upper", "metadata_bdev": "DL", "discard": "nopassdown",
               "metadata_core": 1}),
    );
    let cfg = t.ok("save_config", Value::Null);
    let saved = dir.join("saved.json");
    std::fs::write(&saved, serde_json::to_string(&cfg).unwrap()).unwrap();

    let addr = t.export("EE_D", None, None);
    let mut c = Client::connect(&addr, "EE_D").unwrap();
    assert_eq!(c.write(1 << 20, &pattern(8192, 7)).unwrap(), 0);
    drop(c);
    // `stop` fails the test unless every module closed cleanly.
    t.stop();

    let t = Tgt::start_in(
        dir.clone(),
        &["-m", "0x3", "--json", saved.to_str().unwrap()],
    );
    let addr = t.export("ls/v", Some("v"), None);
    let mut c = Client::connect(&addr, "v").unwrap();
    assert!(
        c.read(1 << 20, 8192).unwrap() == pattern(8192, 7),
        "the unflushed write through the stack was committed at shutdown"
    );
    drop(c);
    t.stop();
}
