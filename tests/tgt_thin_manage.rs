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

fn pool_info(t: &Tgt, pool: &str) -> serde_json::Value {
    t.ok("bdev_thin_pool_get_pools", json!({"name": pool}))[0].clone()
}

/// bdev_thin_pool_set_options on a running pool, with a client connected
/// throughout: each change takes effect at once and save_config keeps it;
/// what is fixed, unknown or impossible is refused.
#[test]
fn options_change_on_a_running_pool() {
    let t = Tgt::start("live-options", &["--empty", "-m", "0x3"]);
    // 16 data blocks of 64 KiB, queueing when full, a long commit period.
    t.malloc_pool(
        "pool",
        256,
        json!({"commit_period_ms": 600_000, "no_space_timeout_s": 0}),
    );
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "vol", "size_in_mib": 4}),
    );
    let addr = t.export("vol", None, None);
    let mut c = Client::connect(&addr, "vol").unwrap();
    let block = 64 << 10;
    let data = vec![7u8; block as usize];
    for i in 0..4 {
        assert_eq!(c.write(i * block, &data).unwrap(), 0);
    }

    // The commit period: commits happen without a flush once it is short.
    let commits = pool_info(&t, "pool")["commits"].as_u64().unwrap();
    t.spdk_ok(&[
        "bdev_thin_pool_set_options",
        "pool",
        "--commit-period-ms",
        "50",
    ]);
    let t0 = std::time::Instant::now();
    while pool_info(&t, "pool")["commits"].as_u64().unwrap() == commits {
        assert!(t0.elapsed().as_secs() < 10, "no commit on the new period");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Discards: ignored, a trim frees nothing (and the client is told
    // nothing went wrong); passdown again, the same trim frees the block.
    let used = || pool_info(&t, "pool")["used_data_blocks"].as_u64().unwrap();
    t.ok(
        "bdev_thin_pool_set_options",
        json!({"name": "pool", "discard": "ignore"}),
    );
    let b = t.ok("bdev_get_bdevs", json!({"name": "vol"}));
    assert_eq!(b[0]["supported_io_types"]["unmap"], false, "{b}");
    assert_eq!(pool_info(&t, "pool")["discard_passdown"], false);
    let before = used();
    assert_eq!(
        c.request(tgt_util::nbd::CMD_TRIM, 0, 0, block as u32, &[])
            .unwrap()
            .0,
        0
    );
    assert_eq!(used(), before);
    t.ok(
        "bdev_thin_pool_set_options",
        json!({"name": "pool", "discard": "passdown"}),
    );
    assert_eq!(pool_info(&t, "pool")["discard_passdown"], true);
    assert_eq!(
        c.request(tgt_util::nbd::CMD_TRIM, 0, 0, block as u32, &[])
            .unwrap()
            .0,
        0
    );
    assert_eq!(used(), before - 1);

    // The low-water mark: raised above what is free, the event fires now.
    t.ok(
        "bdev_thin_pool_set_options",
        json!({"name": "pool", "low_water_mark_blocks": 14}),
    );
    let events = t.ok("bdev_thin_pool_get_events", json!({}));
    assert!(
        events.to_string().contains("\"data_low_water\""),
        "{events}"
    );

    // Out of space, queueing forever: a write waits; error_if_no_space
    // set now fails it at once.
    // Blocks 1-3 are mapped (0 was trimmed): 13 more fill the 16.
    for i in 4..17 {
        assert_eq!(c.write(i * block, &data).unwrap(), 0);
    }
    let cookie = c
        .send(tgt_util::nbd::CMD_WRITE, 0, 17 * block, block as u32, &data)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(pool_info(&t, "pool")["mode"], "out_of_data_space");
    t.ok(
        "bdev_thin_pool_set_options",
        json!({"name": "pool", "error_if_no_space": true}),
    );
    let (err, _) = c.recv(cookie, None).unwrap();
    assert_ne!(err, 0, "the queued write failed once told to");

    // Refused: what is fixed, what is unknown, a bad value, passdown to a
    // data bdev that takes no unmaps (a pool on a volume of a pool that
    // ignores discards).
    for (params, want) in [
        (
            json!({"name": "pool", "block_size": 131072}),
            "block_size cannot change on a running pool",
        ),
        (json!({"name": "pool", "bogus": 1}), "unknown field `bogus`"),
        (
            json!({"name": "pool", "commit_period_ms": 0}),
            "commit_period_ms must be at least 1",
        ),
        (json!({"name": "nope", "zero_new_blocks": false}), "nope"),
        (json!({"name": "pool"}), "no option to change"),
    ] {
        let (_, msg) = t
            .rpc("bdev_thin_pool_set_options", params.clone())
            .unwrap_err();
        assert!(msg.contains(want), "{params}: {msg}");
    }
    for (name, blocks) in [("M2", 2048), ("D2", 4096)] {
        t.ok(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": blocks, "block_size": 4096}),
        );
    }
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "base", "metadata_bdev": "M2", "data_bdev": "D2", "metadata_core": 1}),
    );
    t.ok(
        "bdev_thin_pool_set_options",
        json!({"name": "base", "discard": "ignore"}),
    );
    t.ok(
        "bdev_thin_create",
        json!({"pool": "base", "name": "lower", "size_in_mib": 8}),
    );
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "upper", "metadata_bdev": "lower", "discard": "nopassdown", "metadata_core": 1}),
    );
    assert_eq!(pool_info(&t, "upper")["discard_passdown"], false);
    let (_, msg) = t
        .rpc(
            "bdev_thin_pool_set_options",
            json!({"name": "upper", "discard": "passdown"}),
        )
        .unwrap_err();
    assert!(msg.contains("does not"), "{msg}");

    // What was changed is what a restart would be given.
    let saved = t.ok("save_config", json!(null)).to_string();
    assert!(
        saved.contains("\"error_if_no_space\":true") && saved.contains("\"commit_period_ms\":50"),
        "{saved}"
    );
    assert!(saved.contains("\"low_water_mark_blocks\":14"), "{saved}");
    drop(c);
    t.stop();
}

fn origin_pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 512) as u8).wrapping_mul(13) ^ (i as u8) | 1)
        .collect()
}

/// External origins whose size is not a multiple of the pool's block
/// size: the tail block reads the origin's bytes then zeros, a write into
/// it copies the part the origin has; the origin is claimed read-only
/// while in use (no writable export, no delete) and a writable one is
/// refused. Sizes as issue 26 names them: 16 MiB + 8 KiB with 64 KiB
/// blocks, and 376 KiB with 192 KiB blocks.
#[test]
fn external_origins_of_any_size() {
    let t = Tgt::start("origin-size", &["--empty", "-m", "0x3"]);
    for (pool, block, origin_bytes) in [
        ("p64", 65536u64, (16 << 20) + 8192),
        ("p192", 196608, 376 << 10),
    ] {
        let (meta, data, origin) = (format!("{pool}m"), format!("{pool}d"), format!("{pool}o"));
        for (name, blocks) in [
            (&meta, 2048u64),
            (&data, 8192),
            (&origin, origin_bytes / 4096),
        ] {
            t.ok(
                "bdev_malloc_create",
                json!({"name": name, "num_blocks": blocks, "block_size": 4096}),
            );
        }
        t.ok(
            "bdev_thin_pool_create",
            json!({"name": pool, "metadata_bdev": meta, "data_bdev": data,
                   "block_size": block, "metadata_core": 1}),
        );
        // Fill the origin through a writable export: while that lasts,
        // it cannot be an origin.
        let want = origin_pattern(origin_bytes as usize);
        let oaddr = t.export(&origin, None, None);
        let mut oc = Client::connect(&oaddr, &origin).unwrap();
        for (i, chunk) in want.chunks(1 << 20).enumerate() {
            assert_eq!(oc.write((i as u64) << 20, chunk).unwrap(), 0);
        }
        drop(oc);
        let vol = format!("{pool}v");
        let create =
            json!({"pool": pool, "name": vol, "size_in_mib": 20, "external_origin": origin});
        let (_, msg) = t.rpc("bdev_thin_create", create.clone()).unwrap_err();
        assert!(msg.contains("open for writing"), "{msg}");
        t.ok("nbd_stop_disk", json!({"nbd_device": oaddr}));
        t.ok("bdev_thin_create", create);
        // Claimed read-only: no writable export, no delete.
        let (_, msg) = t
            .rpc(
                "nbd_start_disk",
                json!({"bdev_name": origin, "nbd_device": "127.0.0.1:0"}),
            )
            .unwrap_err();
        assert!(msg.contains("claimed read-only"), "{msg}");
        assert!(t
            .rpc("bdev_malloc_delete", json!({"name": origin}))
            .is_err());

        let addr = t.export(&vol, None, None);
        let mut c = Client::connect(&addr, &vol).unwrap();
        let tail_block = origin_bytes / block * block;
        // Everything the origin has, then zeros to the end of its last
        // block and beyond.
        let span = (tail_block + block + 65536) as usize;
        let mut got = Vec::new();
        while got.len() < span {
            let n = (span - got.len()).min(1 << 20);
            got.extend(c.read(got.len() as u64, n as u32).unwrap());
        }
        assert!(
            got[..origin_bytes as usize] == want[..],
            "{pool}: the origin's bytes"
        );
        assert!(
            got[origin_bytes as usize..].iter().all(|&b| b == 0),
            "{pool}: zeros past the origin"
        );
        // A read straddling the origin's end, inside the tail block.
        let at = origin_bytes - 4096;
        let r = c.read(at, 12288).unwrap();
        assert_eq!(r[..4096], want[at as usize..]);
        assert!(r[4096..].iter().all(|&b| b == 0));
        // A partial write into the tail block: the copy keeps the origin's
        // head and zeros, with the write in place.
        let w = vec![0xEEu8; 4096];
        let wat = origin_bytes + 4096;
        assert_eq!(c.write(wat, &w).unwrap(), 0);
        assert_eq!(c.flush().unwrap(), 0);
        let blk = c.read(tail_block, block as u32).unwrap();
        let head = (origin_bytes - tail_block) as usize;
        assert_eq!(
            blk[..head],
            want[tail_block as usize..],
            "{pool}: head of the tail block"
        );
        let woff = (wat - tail_block) as usize;
        assert!(blk[head..woff].iter().all(|&b| b == 0));
        assert_eq!(blk[woff..woff + 4096], w[..]);
        assert!(blk[woff + 4096..].iter().all(|&b| b == 0));
        drop(c);
        t.ok("nbd_stop_disk", json!({"nbd_device": addr}));
        // Deleting the volume releases the claim.
        t.ok("bdev_thin_delete", json!({"name": vol}));
        t.ok("bdev_malloc_delete", json!({"name": origin}));
    }
    t.stop();
}

/// Shrinking cuts off the tail: its blocks go back to the pool, growing
/// back reads zeros there (a size inside a data block zeroes the rest of
/// that block); refused while exported for writing unless forced.
#[test]
fn shrink_frees_the_tail() {
    let t = daemon("shrink");
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "vol", "size_in_mib": 4}),
    );
    let addr = t.export("vol", None, None);
    let mut c = Client::connect(&addr, "vol").unwrap();
    let data = vec![0x5Au8; 1 << 20];
    for i in 0..4 {
        assert_eq!(c.write(i << 20, &data).unwrap(), 0);
    }
    assert_eq!(c.flush().unwrap(), 0);
    let used = || {
        t.ok("bdev_thin_pool_get_pools", json!({"name": "pool"}))[0]["used_data_blocks"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(used(), 64);

    // 1 MiB + 32 KiB: 16 whole blocks kept, the 17th half kept.
    let keep = (1 << 20) + (32 << 10);
    let (_, msg) = t
        .rpc(
            "bdev_thin_resize",
            json!({"name": "vol", "size_bytes": keep}),
        )
        .unwrap_err();
    assert!(msg.contains("open for writing"), "{msg}");
    assert_eq!(size_of(&t, "vol"), 4 << 20, "nothing changed");
    t.spdk_ok(&[
        "bdev_thin_resize",
        "vol",
        "--size-bytes",
        &keep.to_string(),
        "-f",
    ]);
    assert_eq!(size_of(&t, "vol"), keep);
    assert_eq!(used(), 17, "the cut-off blocks went back to the pool");
    // The connected client now meets the new end.
    assert_ne!(c.read(2 << 20, 4096).unwrap_or_default().len(), 4096);
    drop(c);
    t.ok("bdev_thin_resize", json!({"name": "vol", "size_in_mib": 4}));
    let mut c = Client::connect(&addr, "vol").unwrap();
    let back = c.read(1 << 20, 1 << 20).unwrap();
    assert!(back[..32 << 10].iter().all(|&b| b == 0x5A), "kept");
    assert!(
        back[32 << 10..].iter().all(|&b| b == 0),
        "zeros where the tail was"
    );
    assert!(c.read(3 << 20, 4096).unwrap().iter().all(|&b| b == 0));
    drop(c);
    t.stop();
}

/// Autoextend: a pool on a file grows under a writer that never sees an
/// error (writes that meet a full pool wait for the grow); the metadata
/// of a two-device pool grows by its own threshold; a bdev the daemon
/// cannot grow raises one event; new volumes are refused above the
/// metadata limit.
#[test]
fn autoextend_grows_a_file_backed_pool_under_a_writer() {
    let t = Tgt::start("autoextend", &["--empty", "-m", "0x3"]);
    let img = t.dir.join("pool.img");
    // 2 MiB of metadata and 64 data blocks of 64 KiB.
    std::fs::File::create(&img)
        .unwrap()
        .set_len(6 << 20)
        .unwrap();
    t.ok(
        "bdev_uring_create",
        json!({"name": "Disk0", "filename": img}),
    );
    t.spdk_ok(&[
        "bdev_thin_pool_create",
        "pool",
        "Disk0",
        "--autoextend-threshold",
        "70",
        "--autoextend-percent",
        "50",
    ]);
    let before = pool_info(&t, "pool")["data_blocks"].as_u64().unwrap();
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "vol", "size_in_mib": 64}),
    );
    let addr = t.export("vol", None, None);
    let mut c = Client::connect(&addr, "vol").unwrap();
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    for i in 0..40u64 {
        assert_eq!(c.write(i << 20, &chunk).unwrap(), 0, "write {i} MiB");
    }
    assert_eq!(c.flush().unwrap(), 0);
    for i in [0u64, 17, 39] {
        assert!(c.read(i << 20, 1 << 20).unwrap() == chunk);
    }
    drop(c);
    let info = pool_info(&t, "pool");
    let after = info["data_blocks"].as_u64().unwrap();
    assert!(before == 64 && after >= 640, "{before} -> {after}: {info}");
    assert!(std::fs::metadata(&img).unwrap().len() > 40 << 20);
    let events = t.ok("bdev_thin_pool_get_events", json!({})).to_string();
    assert!(
        events.contains("\"type\":\"auto_extended\"") && events.contains("\"what\":\"data\""),
        "{events}"
    );

    // A two-device pool: the metadata file grows by its own threshold.
    let (meta, data) = (t.dir.join("meta.img"), t.dir.join("data.img"));
    std::fs::File::create(&meta)
        .unwrap()
        .set_len(256 << 10)
        .unwrap();
    std::fs::File::create(&data)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    t.ok(
        "bdev_uring_create",
        json!({"name": "Meta1", "filename": meta}),
    );
    t.ok(
        "bdev_uring_create",
        json!({"name": "Data1", "filename": data}),
    );
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "two", "metadata_bdev": "Meta1", "data_bdev": "Data1",
               "metadata_autoextend_threshold": 30, "metadata_autoextend_percent": 100,
               "metadata_core": 1}),
    );
    let meta_before = pool_info(&t, "two")["metadata_blocks"].as_u64().unwrap();
    for i in 0..8 {
        t.ok(
            "bdev_thin_create",
            json!({"pool": "two", "name": format!("v{i}"), "size_in_mib": 1}),
        );
    }
    let t0 = std::time::Instant::now();
    while pool_info(&t, "two")["metadata_blocks"].as_u64().unwrap() == meta_before {
        assert!(
            t0.elapsed().as_secs() < 20,
            "metadata never grew: {}",
            pool_info(&t, "two")
        );
        t.ok("bdev_thin_create", json!({"pool": "two", "name": format!("w{}", t0.elapsed().as_micros()), "size_in_mib": 1}));
    }
    assert!(std::fs::metadata(&meta).unwrap().len() > 256 << 10);
    let events = t.ok("bdev_thin_pool_get_events", json!({})).to_string();
    assert!(events.contains("\"what\":\"metadata\""), "{events}");

    // Memory cannot be grown from here: one event asks for it.
    t.malloc_pool("mem", 256, json!({"autoextend_threshold": 50}));
    t.ok(
        "bdev_thin_create",
        json!({"pool": "mem", "name": "m", "size_in_mib": 2}),
    );
    let maddr = t.export("m", None, None);
    let mut c = Client::connect(&maddr, "m").unwrap();
    for i in 0..12u64 {
        assert_eq!(c.write(i << 16, &chunk[..65536]).unwrap(), 0);
    }
    drop(c);
    let events = t.ok("bdev_thin_pool_get_events", json!({})).to_string();
    assert_eq!(
        events.matches("\"type\":\"auto_extend_needed\"").count(),
        1,
        "{events}"
    );

    // Above the metadata limit, no new volume.
    t.ok(
        "bdev_thin_pool_set_options",
        json!({"name": "mem", "metadata_create_limit": 1}),
    );
    let (code, msg) = t
        .rpc(
            "bdev_thin_create",
            json!({"pool": "mem", "name": "x", "size_in_mib": 1}),
        )
        .unwrap_err();
    assert_eq!(code, -28, "{msg}");
    assert!(msg.contains("metadata_create_limit"), "{msg}");
    t.stop();
}

fn suspended(t: &Tgt, vol: &str) -> bool {
    t.ok("bdev_thin_get_volumes", json!({"name": vol}))[0]["suspended"] == true
}

/// Whether a reply is waiting on `c` within `ms` (peeked, not read).
fn replied_within(c: &mut Client, ms: u64) -> bool {
    c.s.set_read_timeout(Some(std::time::Duration::from_millis(ms)))
        .unwrap();
    let got = c.s.peek(&mut [0u8; 1]).is_ok_and(|n| n > 0);
    c.s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    got
}

/// Suspend holds I/O (reads and writes) and resume releases it with
/// nothing lost; suspends nest, a volume's and its pool's adding up; a
/// snapshot of a suspended volume works; several volumes snapshot at one
/// instant; a suspend that cannot drain times out and leaves nothing
/// held; deleting a suspended volume fails what it held.
#[test]
fn suspend_holds_io_and_resume_releases_it() {
    let t = daemon("suspend");
    for v in ["a", "b"] {
        t.ok(
            "bdev_thin_create",
            json!({"pool": "pool", "name": v, "size_in_mib": 4}),
        );
    }
    let addr = t.export("a", None, None);
    let mut c = Client::connect(&addr, "a").unwrap();
    let one = vec![1u8; 65536];
    assert_eq!(c.write(0, &one).unwrap(), 0);

    t.spdk_ok(&["bdev_thin_suspend", "a"]);
    assert!(suspended(&t, "a") && !suspended(&t, "b"));
    let two = vec![2u8; 65536];
    let w = c
        .send(tgt_util::nbd::CMD_WRITE, 0, 65536, 65536, &two)
        .unwrap();
    assert!(
        !replied_within(&mut c, 300),
        "a write went through a suspend"
    );
    // A snapshot of the suspended volume: it sees the write before the
    // suspend, not the held one.
    t.ok(
        "bdev_thin_snapshot",
        json!({"origin": "a", "name": "a-snap"}),
    );
    t.spdk_ok(&["bdev_thin_resume", "a"]);
    assert_eq!(c.recv(w, None).unwrap().0, 0, "the held write completed");
    assert!(!suspended(&t, "a"));
    let saddr = t.export("a-snap", None, None);
    let mut s = Client::connect(&saddr, "a-snap").unwrap();
    assert!(s.read(0, 65536).unwrap() == one);
    assert!(s.read(65536, 65536).unwrap().iter().all(|&b| b == 0));
    drop(s);
    assert!(c.read(65536, 65536).unwrap() == two);

    // Nesting: twice suspended needs two resumes; a pool's suspend holds
    // a volume resumed on its own.
    t.ok("bdev_thin_suspend", json!({"name": "a"}));
    t.ok("bdev_thin_pool_suspend", json!({"name": "pool"}));
    assert!(suspended(&t, "a") && suspended(&t, "b"));
    let r = c.send(tgt_util::nbd::CMD_READ, 0, 0, 4096, &[]).unwrap();
    assert!(!replied_within(&mut c, 300), "a read went through");
    t.ok("bdev_thin_resume", json!({"name": "a"}));
    assert!(suspended(&t, "a"), "the pool still holds it");
    assert!(!replied_within(&mut c, 200));
    t.ok("bdev_thin_pool_resume", json!({"name": "pool"}));
    let (err, data) = c.recv(r, Some(4096)).unwrap();
    assert_eq!((err, &data[..]), (0, &one[..4096]));
    let (_, msg) = t.rpc("bdev_thin_resume", json!({"name": "a"})).unwrap_err();
    assert!(msg.contains("not suspended"), "{msg}");
    let (_, msg) = t
        .rpc("bdev_thin_pool_resume", json!({"name": "pool"}))
        .unwrap_err();
    assert!(msg.contains("not suspended"), "{msg}");

    // Two volumes snapshotted at one instant.
    let names = t.ok(
        "bdev_thin_snapshot",
        json!({"snapshots": [{"origin": "a", "name": "a2"}, {"origin": "b", "name": "b2"}]}),
    );
    assert_eq!(names, json!(["a2", "b2"]));
    assert!(!suspended(&t, "a") && !suspended(&t, "b"));

    // Deleting a suspended volume fails what it held.
    t.ok("bdev_thin_suspend", json!({"name": "a"}));
    let w = c
        .send(tgt_util::nbd::CMD_WRITE, 0, 0, 4096, &two[..4096])
        .unwrap();
    assert!(!replied_within(&mut c, 200));
    t.ok("bdev_thin_delete", json!({"name": "a", "force": true}));
    // The export goes with the volume: the held write is answered with an
    // error or the connection ends; it never completes as written.
    if replied_within(&mut c, 5000) {
        assert!(
            c.recv(w, None).map_or(true, |(e, _)| e != 0),
            "the held write failed"
        );
    }
    drop(c);
    t.stop();
}

/// A suspend that cannot drain (a write waiting for space in a full pool
/// that queues forever) times out, leaves the volume unsuspended and the
/// write still waiting, not lost; freeing space lets it finish.
#[test]
fn a_suspend_that_cannot_drain_times_out() {
    let t = Tgt::start("suspend-timeout", &["--empty", "-m", "0x3"]);
    t.malloc_pool("pool", 64, json!({"no_space_timeout_s": 0}));
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "v", "size_in_mib": 1}),
    );
    let addr = t.export("v", None, None);
    let mut c = Client::connect(&addr, "v").unwrap();
    let block = vec![3u8; 65536];
    for i in 0..4u64 {
        assert_eq!(c.write(i * 65536, &block).unwrap(), 0);
    }
    let w = c
        .send(tgt_util::nbd::CMD_WRITE, 0, 4 * 65536, 65536, &block)
        .unwrap();
    assert!(!replied_within(&mut c, 300), "the pool is full");
    let (code, msg) = t
        .rpc("bdev_thin_suspend", json!({"name": "v", "timeout_ms": 300}))
        .unwrap_err();
    assert_eq!(code, -16, "{msg}");
    assert!(msg.contains("did not finish within"), "{msg}");
    assert!(!suspended(&t, "v"));
    // Space comes back: the queued write lands.
    let mut d = Client::connect(&addr, "v").unwrap();
    assert_eq!(
        d.request(tgt_util::nbd::CMD_TRIM, 0, 0, 65536, &[])
            .unwrap()
            .0,
        0
    );
    assert_eq!(d.flush().unwrap(), 0);
    assert_eq!(c.recv(w, None).unwrap().0, 0);
    drop((c, d));
    t.stop();
}

/// A suspend racing a failing metadata device: the commit at suspend
/// fails (the pool says so), the suspend still holds I/O, and on resume
/// the held write is answered as the pool's mode says, never left hanging.
#[test]
fn a_suspend_racing_a_failing_device() {
    let t = Tgt::start("suspend-fail", &["--empty", "-m", "0x3"]);
    for (name, blocks) in [("M", 2048u64), ("D", 4096)] {
        t.ok(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": blocks, "block_size": 4096}),
        );
    }
    t.ok("bdev_error_create", json!({"base_name": "M"}));
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "p", "metadata_bdev": "EE_M", "data_bdev": "D", "metadata_core": 1}),
    );
    t.ok(
        "bdev_thin_create",
        json!({"pool": "p", "name": "v", "size_in_mib": 4}),
    );
    let addr = t.export("v", None, None);
    let mut c = Client::connect(&addr, "v").unwrap();
    assert_eq!(c.write(0, &[9u8; 65536]).unwrap(), 0);
    t.ok(
        "bdev_error_inject_error",
        json!({"name": "EE_M", "io_type": "write", "error_type": "failure", "num": 100000}),
    );
    t.ok("bdev_thin_suspend", json!({"name": "v"}));
    let pools = t.ok("bdev_thin_pool_get_pools", json!({"name": "p"}));
    assert_eq!(pools[0]["needs_check"], true, "{pools}");
    let w = c
        .send(tgt_util::nbd::CMD_WRITE, 0, 1 << 20, 65536, &[7u8; 65536])
        .unwrap();
    assert!(!replied_within(&mut c, 300), "held while suspended");
    t.ok("bdev_thin_resume", json!({"name": "v"}));
    let (err, _) = c.recv(w, None).unwrap();
    assert_ne!(err, 0, "a write needing a block in a failed pool fails");
    let pools = t.ok("bdev_thin_pool_get_pools", json!({"name": "p"}));
    assert!(
        pools[0]["mode"] == "fail" || pools[0]["mode"] == "read_only",
        "{pools}"
    );
    drop(c);
    t.stop();
}
