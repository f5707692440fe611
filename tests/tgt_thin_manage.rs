//! Pool and volume management a dm-thin or LVM user expects (issue 26),
//! through the daemon: sizes in any unit.

mod tgt_util;

use serde_json::json;
use tgt_util::{nbd::Client, Tgt};

fn daemon(name: &str) -> Tgt {
    let t = Tgt::start(name, &["--empty", "-m", "0x3"]);
    t.malloc_pool("pool", 4096, json!({}));
    t
}

fn size_of(t: &Tgt, bdev: &str) -> u64 {
    let b = t.ok("bdev_get_bdevs", json!({"name": bdev}));
    b[0]["num_blocks"].as_u64().unwrap() * b[0]["block_size"].as_u64().unwrap()
}

/// Sizes in MiB, bytes (whole 512-byte sectors) or blocks, at create and
/// resize; a volume whose size ends inside a data block uses that last
/// partial block.
#[test]
fn sizes_in_any_unit() {
    let t = daemon("units");
    // 1 MiB + 8 KiB: the volume's last 64 KiB data block is partly used.
    let odd = (1 << 20) + 8192;
    t.spdk_ok(&[
        "bdev_thin_create",
        "pool",
        "bytes",
        "--size-bytes",
        &odd.to_string(),
    ]);
    assert_eq!(size_of(&t, "bytes"), odd);
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "blocks", "num_blocks": 100}),
    );
    assert_eq!(size_of(&t, "blocks"), 100 * 4096);
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "mib", "size_in_mib": 2}),
    );
    assert_eq!(size_of(&t, "mib"), 2 << 20);

    let addr = t.export("bytes", None, None);
    let mut c = Client::connect(&addr, "bytes").unwrap();
    let tail: Vec<u8> = (0..4096u32).map(|i| (i % 249) as u8 + 1).collect();
    assert_eq!(c.write(odd - 4096, &tail).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    assert_eq!(c.read(odd - 8192, 8192).unwrap()[4096..], tail[..]);
    assert!(c.read(odd - 8192, 4096).unwrap().iter().all(|&b| b == 0));
    drop(c);

    // Resize by bytes and by blocks.
    t.spdk_ok(&[
        "bdev_thin_resize",
        "bytes",
        "--size-bytes",
        &(3 << 20).to_string(),
    ]);
    assert_eq!(size_of(&t, "bytes"), 3 << 20);
    t.ok(
        "bdev_thin_resize",
        json!({"name": "blocks", "num_blocks": 300}),
    );
    assert_eq!(size_of(&t, "blocks"), 300 * 4096);

    // Bad sizes are refused with what to give.
    for (params, want) in [
        (
            json!({"pool": "pool", "name": "x", "size_bytes": 1000}),
            "not a positive number of whole 512-byte sectors",
        ),
        (
            json!({"pool": "pool", "name": "x", "size_bytes": 4096, "size_in_mib": 1}),
            "give the size once",
        ),
        (
            json!({"pool": "pool", "name": "x", "size_bytes": 512}),
            "must be a positive multiple of 4096",
        ),
        (
            json!({"pool": "pool", "name": "x"}),
            "missing field `size_in_mib` (or size_bytes, or num_blocks)",
        ),
    ] {
        let (_, msg) = t.rpc("bdev_thin_create", params.clone()).unwrap_err();
        assert!(msg.contains(want), "{params}: {msg}");
    }
    let (_, msg) = t
        .rpc("bdev_thin_resize", json!({"name": "blocks"}))
        .unwrap_err();
    assert!(msg.contains("give the size"), "{msg}");
    assert!(t.rpc("bdev_get_bdevs", json!({"name": "x"})).is_err());
    t.stop();
}
