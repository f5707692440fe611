//! Volumes that do not vanish (issue 25, point 5): the embedded default
//! brings back the volumes made at run time, the banner names devices no
//! bdev stands for, and activation refuses a size that hides data.

mod tgt_util;

use serde_json::{json, Value};
use tgt_util::{nbd::Client, Tgt};

fn active(t: &Tgt) -> Vec<(String, u64, u64, Value)> {
    t.ok("bdev_thin_get_volumes", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| !v["name"].is_null())
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["dev_id"].as_u64().unwrap(),
                v["size"].as_u64().unwrap(),
                v["origin_dev_id"].clone(),
            )
        })
        .collect()
}

#[test]
fn the_embedded_default_brings_back_its_volumes() {
    let dir = tgt_util::scratch("remember");
    let data = dir.join("data");
    let args = tgt_util::default_args(&data, true);
    let t = Tgt::start_in(dir, &args);
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool0", "name": "vol1", "size_in_mib": 16}),
    );
    let addr = t.export("vol1", None, None);
    let mut c = Client::connect(&addr, "vol1").unwrap();
    assert_eq!(c.write(4 << 20, &[3u8; 4096]).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    drop(c);
    t.ok(
        "bdev_thin_snapshot",
        json!({"origin": "vol1", "name": "snap1"}),
    );
    let before = active(&t);
    assert_eq!(before.len(), 3, "{before:?}");
    let dir = t.dir.clone();
    t.stop();

    let t = Tgt::start_in(dir, &args);
    assert_eq!(active(&t), before);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !t.log().contains("pool pool0 on Disk0") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!t.log().contains("inactive devices"), "{}", t.log());

    // Deactivated on purpose: stays inactive, and the banner says so.
    t.ok("bdev_thin_deactivate", json!({"name": "snap1"}));
    let dir = t.dir.clone();
    t.stop();
    let t = Tgt::start_in(dir, &args);
    assert_eq!(active(&t).len(), 2);
    // The banner follows the socket's opening by a moment.
    let want = "inactive devices in pool0: dev 2 (bdev_thin_activate brings one back)";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !t.log().contains(want) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(t.log().contains(want), "{}", t.log());

    // snap1 has data at 4 MiB: a 1 MiB activation would hide it.
    let (code, msg) = t
        .rpc(
            "bdev_thin_activate",
            json!({"pool": "pool0", "name": "snap1", "dev_id": 2, "size_in_mib": 1}),
        )
        .unwrap_err();
    assert_eq!(code, -22);
    assert!(
        msg.contains("thin device 2 has data up to byte 4259840 (5 MiB): activating it at 1048576 bytes would hide that data; give size_in_mib 5 or more, or force"),
        "{msg}"
    );
    t.ok(
        "bdev_thin_activate",
        json!({"pool": "pool0", "name": "snap1", "dev_id": 2, "size_in_mib": 16,
               "origin_dev_id": 1}),
    );
    t.ok("bdev_thin_deactivate", json!({"name": "snap1"}));
    t.ok(
        "bdev_thin_activate",
        json!({"pool": "pool0", "name": "snap1", "dev_id": 2, "size_in_mib": 1, "force": true}),
    );
    // A forced activation under a taken name fails and leaves the bdev
    // that has the name, and its exports, alone.
    t.ok("bdev_thin_deactivate", json!({"name": "snap1"}));
    let (code, _) = t
        .rpc(
            "bdev_thin_activate",
            json!({"pool": "pool0", "name": "vol0", "dev_id": 2, "size_in_mib": 16, "force": true}),
        )
        .unwrap_err();
    assert_eq!(code, -17);
    let disks = t.ok("nbd_get_disks", Value::Null);
    assert_eq!(disks[0]["bdev_name"], "vol0", "{disks}");
    t.stop();
}

/// With --wait-for-rpc the remembered volumes come back once
/// framework_start_init has applied the default config.
#[test]
fn remembered_volumes_come_back_after_framework_start_init() {
    let dir = tgt_util::scratch("remember-wait");
    let data = dir.join("data");
    let args = tgt_util::default_args(&data, true);
    let t = Tgt::start_in(dir, &args);
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool0", "name": "vol1", "size_in_mib": 4}),
    );
    let dir = t.dir.clone();
    t.stop();
    let mut waiting = args.to_vec();
    waiting.push("--wait-for-rpc");
    let t = Tgt::start_in(dir, &waiting);
    t.ok("framework_start_init", Value::Null);
    let names: Vec<String> = active(&t).into_iter().map(|v| v.0).collect();
    assert_eq!(names, ["vol0", "vol1"]);
    t.stop();
}

/// bdev_thin_activate without a size: the size the device last had here,
/// or, for one never active in this daemon, a refusal saying how far its
/// data reaches.
#[test]
fn activation_defaults_to_the_size_the_device_last_had() {
    let t = Tgt::start("activate-size", &["--empty", "-m", "0x3"]);
    let img = t.dir.join("pool.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let pool = [
        ("bdev_uring_create", json!({"name": "D", "filename": img})),
        (
            "bdev_thin_pool_create",
            json!({"name": "pool", "metadata_bdev": "D"}),
        ),
    ];
    for (m, p) in &pool {
        t.ok(m, p.clone());
    }
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "v", "size_in_mib": 12, "dev_id": 4}),
    );
    let addr = t.export("v", None, None);
    let mut c = Client::connect(&addr, "v").unwrap();
    assert_eq!(c.write(5 << 20, &[9u8; 4096]).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    drop(c);
    t.ok("bdev_thin_resize", json!({"name": "v", "size_in_mib": 14}));
    t.ok("bdev_thin_deactivate", json!({"name": "v", "force": true}));
    t.ok(
        "bdev_thin_activate",
        json!({"pool": "pool", "name": "v", "dev_id": 4}),
    );
    let v = &t.ok("bdev_thin_get_volumes", json!({"name": "v"}))[0];
    assert_eq!(v["size"], 14 << 20, "{v}");
    let dir = t.dir.clone();
    t.stop();

    let t = Tgt::start_in(dir, &["--empty", "-m", "0x3"]);
    for (m, p) in &pool {
        t.ok(m, p.clone());
    }
    let (code, msg) = t
        .rpc(
            "bdev_thin_activate",
            json!({"pool": "pool", "name": "v", "dev_id": 4}),
        )
        .unwrap_err();
    assert_eq!(code, -22);
    assert!(
        msg.contains("size_in_mib is required: thin device 4 has not been active in this daemon and the pool's metadata keeps no sizes (its data reaches 6 MiB)"),
        "{msg}"
    );
    t.stop();
}
