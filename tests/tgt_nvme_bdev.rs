//! The NVMe bdev (an NVMe/TCP host inside the daemon) against real
//! targets on 127.0.0.1: SPDK's nvmf_tgt (tests/tgt_util/spdk_peer.rs)
//! and ferrothin's own target in a second daemon. The host daemon
//! attaches with SPDK's method, exports the namespace bdevs over NBD, and
//! the tests move data through that export: patterns of many sizes and
//! offsets (within one capsule, over it, over MAXH2CDATA, over MDTS),
//! from two connections at once (two cores, two I/O queues), flush,
//! write zeroes and unmap, with digests off and on; a thin pool whose
//! metadata and data are two remote namespaces; a target killed under
//! I/O; with the reconnect knobs, nvmf_tgt killed and restarted under
//! load (I/O waits and completes), and a pool whose target stays away
//! past fast_io_fail_timeout_sec (errors, needs_check, a clean stop).

mod tgt_util;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tgt_util::nbd::Client;
use tgt_util::spdk_peer::NvmfTgt;
use tgt_util::Tgt;

/// NBD's TRIM and WRITE_ZEROES commands (proto.md).
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;

const NQN: &str = "nqn.2016-06.io.spdk:nvmebdev";

/// The host: a daemon with two reactors and nothing configured.
fn host(name: &str) -> Tgt {
    Tgt::start(name, &["--empty", "-m", "0x3"])
}

/// Stops the host daemon (which must exit 0 and close every module
/// cleanly: a controller left without its shutdown notification lingers
/// on the target until its keep-alive runs out) and checks nothing in it
/// panicked, even where the panic was caught and the daemon carried on.
fn stop_clean(h: Tgt) {
    let log = h.dir.join("tgt.log");
    h.stop();
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains("panicked"), "a panic in the daemon:\n{text}");
}

fn attach(h: &Tgt, name: &str, port: u16, nqn: &str, digests: bool) -> Vec<String> {
    let r = h.ok(
        "bdev_nvme_attach_controller",
        json!({"name": name, "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
               "trsvcid": port.to_string(), "subnqn": nqn,
               "hdgst": digests, "ddgst": digests}),
    );
    r.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn bdev(h: &Tgt, name: &str) -> Value {
    h.ok("bdev_get_bdevs", json!({"name": name}))[0].clone()
}

/// (offset, length) pairs within a region of `region` bytes: one block,
/// odd block counts, 132 KiB (over the 4 KiB capsule and SPDK's 128 KiB
/// MAXH2CDATA and MDTS), 1 MiB + 4 KiB (split into several commands), the
/// region's last block, and unaligned ranges (read-modify-write in NBD).
fn cases(region: u64) -> Vec<(u64, usize)> {
    vec![
        (0, 4096),
        (3 * 4096, 8192),
        (64 << 10, 33 * 4096),
        (1 << 20, (1 << 20) + 4096),
        (3 << 20, 5 * 4096),
        (region - 4096, 4096),
        ((5 << 20) + 512, 1000),
        ((6 << 20) + 4000, 300 << 10),
    ]
}

/// Writes every case at `base`, reads each back; then write zeroes and
/// unmap over some of them.
fn patterns_through(addr: &str, export: &str, base: u64, region: u64, seed: u64) {
    let mut c = Client::connect(addr, export).unwrap();
    for (i, (off, len)) in cases(region).into_iter().enumerate() {
        let data = pattern(len, seed + i as u64);
        assert_eq!(c.write(base + off, &data).unwrap(), 0, "write {off}+{len}");
        let back = c.read(base + off, len as u32).unwrap();
        assert!(back == data, "read back {off}+{len} differs");
    }
    assert_eq!(c.flush().unwrap(), 0);
    // Write zeroes over a written range (and beyond one command's 64 Ki
    // blocks it is not: the namespaces are small); then reads are zero.
    let (zoff, zlen) = (base + (1 << 20), 256 << 10);
    let (e, _) = c.request(CMD_WRITE_ZEROES, 0, zoff, zlen, &[]).unwrap();
    assert_eq!(e, 0, "write zeroes");
    assert!(c.read(zoff, zlen).unwrap().iter().all(|&b| b == 0));
    // Unmap: success is what NVMe promises (contents are the target's
    // business unless DLFEAT says more).
    let (e, _) = c.request(CMD_TRIM, 0, base, 64 << 10, &[]).unwrap();
    assert_eq!(e, 0, "unmap");
    // What the unmap did not touch is intact.
    let (off, len) = cases(region)[2];
    assert!(c.read(base + off, len as u32).unwrap() == pattern(len, seed + 2));
}

/// The data tests on bdev `name` (at least 16 MiB): two NBD connections
/// at once on two halves (the server puts them on two reactors, so two
/// I/O queue pairs run side by side).
fn exercise(h: &Tgt, name: &str, seed: u64) {
    let b = bdev(h, name);
    let size = b["num_blocks"].as_u64().unwrap() * b["block_size"].as_u64().unwrap();
    assert!(size >= 16 << 20);
    let addr = h.export(name, None, None);
    let half = size / 2;
    std::thread::scope(|s| {
        for k in 0..2u64 {
            let addr = &addr;
            s.spawn(move || patterns_through(addr, name, k * half, half, seed + 100 * k));
        }
    });
    h.ok("nbd_stop_disk", json!({"nbd_device": addr}));
}

/// ferrothin's own target (core 0) with subsystem NQN exporting the
/// named bdevs, which `setup` creates, on a free port, its transport
/// with `transport`'s options: the daemon and the port.
fn ft_target(
    name: &str,
    transport: Value,
    setup: impl FnOnce(&Tgt) -> Vec<&'static str>,
) -> (Tgt, u16) {
    let t = Tgt::start(name, &["--empty", "-m", "0x1"]);
    let bdevs = setup(&t);
    let mut tr = json!({"trtype": "TCP"});
    if let (Some(a), Some(b)) = (tr.as_object_mut(), transport.as_object()) {
        a.extend(b.clone());
    }
    t.ok("nvmf_create_transport", tr);
    t.ok(
        "nvmf_create_subsystem",
        json!({"nqn": NQN, "allow_any_host": true, "serial_number": "FT0001"}),
    );
    for b in bdevs {
        t.ok(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": b}}),
        );
    }
    t.ok(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "0"}}),
    );
    let subs = t.ok("nvmf_get_subsystems", json!({"nqn": NQN}));
    let port = subs[0]["listen_addresses"][0]["trsvcid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (t, port)
}

fn malloc(t: &Tgt, name: &str, blocks: u64) {
    t.ok(
        "bdev_malloc_create",
        json!({"name": name, "num_blocks": blocks, "block_size": 4096}),
    );
}

#[test]
fn spdk_nvmf_tgt_namespaces_move_data_with_digests_off_and_on() {
    let t = NvmfTgt::start("nvme-bdev-spdk");
    // Two namespaces of different block sizes in one subsystem.
    let port = t.malloc_subsystem(NQN, &[("M0", 32, 4096), ("M1", 32, 512)]);
    let h = host("nvme-bdev-spdk-host");
    for (i, digests) in [false, true].into_iter().enumerate() {
        let ctrl = format!("Nvme{i}");
        let names = attach(&h, &ctrl, port, NQN, digests);
        assert_eq!(names, vec![format!("{ctrl}n1"), format!("{ctrl}n2")]);
        let b = bdev(&h, &names[0]);
        assert_eq!(
            (b["block_size"].as_u64(), b["num_blocks"].as_u64()),
            (Some(4096), Some(8192))
        );
        assert_eq!(bdev(&h, &names[1])["block_size"], json!(512));
        assert_eq!(b["product_name"], json!("NVMe disk"));
        let io = &b["supported_io_types"];
        assert_eq!(
            (
                io["read"].clone(),
                io["write"].clone(),
                io["flush"].clone(),
                io["unmap"].clone(),
                io["write_zeroes"].clone()
            ),
            (
                json!(true),
                json!(true),
                json!(true),
                json!(true),
                json!(true)
            ),
        );
        let nv = &b["driver_specific"]["nvme"][0];
        assert_eq!(nv["trid"]["trtype"], json!("TCP"));
        assert_eq!(nv["trid"]["traddr"], json!("127.0.0.1"));
        assert_eq!(nv["trid"]["trsvcid"], json!(port.to_string()));
        assert_eq!(nv["trid"]["subnqn"], json!(NQN));
        assert_eq!(nv["ctrlr_data"]["serial_number"], json!("SPDK0001"));
        assert!(nv["ctrlr_data"]["cntlid"].as_u64().is_some());
        assert_eq!(
            nv["ctrlr_data"]["model_number"],
            json!("SPDK bdev Controller")
        );
        for n in &names {
            exercise(&h, n, 7 + i as u64);
        }
        // The target saw the deallocations.
        let st: Value = serde_json::from_str(&t.rpc(&["bdev_get_iostat"])).unwrap();
        let m0 = st["bdevs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == json!("M0"))
            .unwrap();
        assert!(m0["num_unmap_ops"].as_u64().unwrap() > 0, "{st}");
        let c = h.ok("bdev_nvme_get_controllers", json!({"name": ctrl}));
        assert_eq!(c[0]["ctrlrs"][0]["state"], json!("enabled"));
        assert_eq!(c[0]["ctrlrs"][0]["trid"]["subnqn"], json!(NQN));
        h.ok("bdev_nvme_detach_controller", json!({"name": ctrl}));
        assert!(h.rpc("bdev_get_bdevs", json!({"name": names[0]})).is_err());
    }
    assert_eq!(h.ok("bdev_nvme_get_controllers", json!({})), json!([]));
    stop_clean(h);
}

#[test]
fn ferrothins_own_target_namespaces_move_data_with_digests_off_and_on() {
    let (t, port) = ft_target("nvme-bdev-ft-target", json!({}), |t| {
        malloc(t, "M0", 8192);
        vec!["M0"]
    });
    let h = host("nvme-bdev-ft-host");
    for (i, digests) in [false, true].into_iter().enumerate() {
        let ctrl = format!("Ft{i}");
        let names = attach(&h, &ctrl, port, NQN, digests);
        assert_eq!(names, vec![format!("{ctrl}n1")]);
        assert_eq!(
            bdev(&h, &names[0])["driver_specific"]["nvme"][0]["ctrlr_data"]["serial_number"],
            json!("FT0001")
        );
        exercise(&h, &names[0], 50 + i as u64);
        h.ok("bdev_nvme_detach_controller", json!({"name": ctrl}));
    }
    stop_clean(h);
    t.stop();
}

#[test]
fn attach_errors_answer_and_leave_nothing_behind() {
    let h = host("nvme-bdev-errors");
    let port = tgt_util::spdk::free_port();
    // Nobody listens there.
    let e = h
        .rpc(
            "bdev_nvme_attach_controller",
            json!({"name": "N", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": port.to_string(), "subnqn": NQN}),
        )
        .unwrap_err();
    assert_eq!(e.0, -(libc::EIO as i64), "{e:?}");
    for (p, why) in [
        (
            json!({"name": "N", "trtype": "rdma", "traddr": "127.0.0.1", "trsvcid": "4420", "subnqn": NQN}),
            "rdma",
        ),
        (
            json!({"name": "N", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "x", "subnqn": NQN}),
            "port",
        ),
        (
            json!({"name": "N", "trtype": "tcp", "traddr": "::1", "adrfam": "ipv4", "trsvcid": "4420", "subnqn": NQN}),
            "family",
        ),
        (
            json!({"name": "N", "trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "4420", "subnqn": NQN, "reconnect_delay_sec": 5}),
            "timeouts",
        ),
    ] {
        let e = h.rpc("bdev_nvme_attach_controller", p).unwrap_err();
        assert_eq!(e.0, -(libc::EINVAL as i64), "{why}: {e:?}");
    }
    assert_eq!(h.ok("bdev_nvme_get_controllers", json!({})), json!([]));
    assert!(h
        .rpc("bdev_nvme_get_controllers", json!({"name": "N"}))
        .is_err());
    assert!(h
        .rpc("bdev_nvme_detach_controller", json!({"name": "N"}))
        .is_err());
    assert_eq!(h.ok("bdev_get_bdevs", json!({})), json!([]));
    stop_clean(h);
}

/// A thin pool on two remote namespaces (metadata and data), random
/// writes, a snapshot, more writes, everything read back against a
/// model; then the pool's metadata namespace is a file on ferrothin's
/// target, which Debian's thin_check reads once everything is closed.
#[test]
fn thin_pool_on_two_remote_namespaces_matches_its_model_and_thin_check() {
    let t = Tgt::start("nvme-bdev-pool-target", &["--empty", "-m", "0x1"]);
    let meta_img = t.dir.join("meta.img");
    std::fs::File::create(&meta_img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    t.ok(
        "bdev_uring_create",
        json!({"name": "MetaDisk", "filename": meta_img, "block_size": 4096}),
    );
    t.ok(
        "bdev_malloc_create",
        json!({"name": "DataDisk", "num_blocks": 16384, "block_size": 4096}),
    );
    t.ok("nvmf_create_transport", json!({"trtype": "TCP"}));
    t.ok(
        "nvmf_create_subsystem",
        json!({"nqn": NQN, "allow_any_host": true, "serial_number": "FT0002"}),
    );
    for b in ["MetaDisk", "DataDisk"] {
        t.ok(
            "nvmf_subsystem_add_ns",
            json!({"nqn": NQN, "namespace": {"bdev_name": b}}),
        );
    }
    t.ok(
        "nvmf_subsystem_add_listener",
        json!({"nqn": NQN, "listen_address": {"trtype": "tcp", "traddr": "127.0.0.1", "trsvcid": "0"}}),
    );
    let port: u16 = t.ok("nvmf_get_subsystems", json!({"nqn": NQN}))[0]["listen_addresses"][0]
        ["trsvcid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let h = host("nvme-bdev-pool-host");
    let names = attach(&h, "R", port, NQN, true);
    assert_eq!(names, vec!["Rn1", "Rn2"]);
    h.ok(
        "bdev_thin_pool_create",
        json!({"name": "pool", "metadata_bdev": "Rn1", "data_bdev": "Rn2",
               "block_size": 65536, "metadata_core": 1}),
    );
    h.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "v", "size_in_mib": 48}),
    );
    let addr = h.export("v", None, None);
    let mut c = Client::connect(&addr, "v").unwrap();
    // The model: 4 KiB block -> seed of its content.
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let blocks = (48u64 << 20) / 4096;
    let mut write_some = |c: &mut Client, model: &mut BTreeMap<u64, u64>, n: usize, salt: u64| {
        for i in 0..n {
            let blk = next() % (blocks - 8);
            let count = 1 + next() % 8;
            let mut buf = Vec::new();
            for k in 0..count {
                let seed = salt * 1_000_000 + (i as u64) * 16 + k;
                buf.extend_from_slice(&pattern(4096, seed));
                model.insert(blk + k, seed);
            }
            assert_eq!(c.write(blk * 4096, &buf).unwrap(), 0);
        }
    };
    write_some(&mut c, &mut model, 200, 1);
    assert_eq!(c.flush().unwrap(), 0);
    h.ok("bdev_thin_snapshot", json!({"origin": "v", "name": "snap"}));
    let snap_model = model.clone();
    write_some(&mut c, &mut model, 200, 2);
    assert_eq!(c.flush().unwrap(), 0);
    let check = |c: &mut Client, m: &BTreeMap<u64, u64>, what: &str| {
        // Every written block, and a sample of unwritten ones (zeros).
        for (&blk, &seed) in m {
            assert!(
                c.read(blk * 4096, 4096).unwrap() == pattern(4096, seed),
                "{what}: block {blk}"
            );
        }
        for blk in (0..blocks).step_by(97).filter(|b| !m.contains_key(b)) {
            assert!(
                c.read(blk * 4096, 4096).unwrap().iter().all(|&b| b == 0),
                "{what}: unwritten block {blk}"
            );
        }
    };
    check(&mut c, &model, "volume");
    h.export("snap", None, Some(&addr));
    let mut cs = Client::connect(&addr, "snap").unwrap();
    check(&mut cs, &snap_model, "snapshot");
    drop((c, cs));
    // Both exports share one listener: stopping it stops both.
    h.ok("nbd_stop_disk", json!({"nbd_device": addr}));
    // Closing the pool commits; then the namespaces can go.
    h.ok("bdev_thin_pool_delete", json!({"name": "pool"}));
    h.ok("bdev_nvme_detach_controller", json!({"name": "R"}));
    stop_clean(h);
    t.stop();
    let out = std::process::Command::new("thin_check")
        .arg(&meta_img)
        .output()
        .expect("thin_check (thin-provisioning-tools; ci/setup installs it)");
    assert!(
        out.status.success(),
        "thin_check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// nvmf_tgt killed while writes run: they come back as errors, nothing
/// hangs, the daemon answers RPCs, the controller detaches and the
/// daemon stops cleanly.
#[test]
fn target_killed_under_io_fails_io_and_detach_and_shutdown_work() {
    let mut t = NvmfTgt::start("nvme-bdev-kill");
    let port = t.malloc_subsystem(NQN, &[("M0", 32, 4096)]);
    let h = host("nvme-bdev-kill-host");
    attach(&h, "K", port, NQN, false);
    let addr = h.export("Kn1", None, None);
    let failed = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut c = Client::connect(&addr, "Kn1").unwrap();
            let start = Instant::now();
            let mut n = 0u64;
            // Until a write fails, bounded in time: a hang fails the test.
            while start.elapsed() < Duration::from_secs(60) {
                let off = (n % 512) * (64 << 10);
                match c.write(off, &pattern(64 << 10, n)) {
                    Ok(0) => n += 1,
                    Ok(_) | Err(_) => return Some(n),
                }
            }
            None
        });
        std::thread::sleep(Duration::from_millis(500));
        t.kill();
        writer.join().unwrap()
    });
    assert!(
        failed.is_some_and(|n| n > 0),
        "writes before and an error after the kill: {failed:?}"
    );
    // New I/O fails too, at once.
    let mut c = Client::connect(&addr, "Kn1").unwrap();
    let start = Instant::now();
    assert_ne!(c.write(0, &pattern(4096, 1)).unwrap(), 0);
    assert!(c.read(0, 4096).is_err());
    assert!(start.elapsed() < Duration::from_secs(10));
    drop(c);
    assert!(h.ok("bdev_get_bdevs", json!({"name": "Kn1"})).is_array());
    h.ok("nbd_stop_disk", json!({"nbd_device": addr}));
    h.ok("bdev_nvme_detach_controller", json!({"name": "K"}));
    assert_eq!(h.ok("bdev_nvme_get_controllers", json!({})), json!([]));
    stop_clean(h);
}

/// A short Keep Alive Timeout (bdev_nvme_set_options): an idle
/// controller outlives it and ferrothin's target's grace (2 s) twice
/// over, so keep-alives went out (without them the target tears the
/// controller down after 4 s and the I/O below fails).
#[test]
fn keep_alive_holds_an_idle_controller() {
    // KAS 10 (1 s granularity): the target enforces a 2 s KATO (plus
    // its 2 s grace) instead of rounding it up to its default 10 s.
    let (t, port) = ft_target("nvme-bdev-ka-target", json!({"kas": 10}), |t| {
        malloc(t, "M0", 4096);
        vec!["M0"]
    });
    let h = host("nvme-bdev-ka-host");
    h.ok(
        "bdev_nvme_set_options",
        json!({"keep_alive_timeout_ms": 2000}),
    );
    attach(&h, "K", port, NQN, false);
    // Options are fixed while a controller lives (SPDK: EPERM).
    let e = h
        .rpc(
            "bdev_nvme_set_options",
            json!({"keep_alive_timeout_ms": 3000}),
        )
        .unwrap_err();
    assert_eq!(e.0, -(libc::EPERM as i64));
    std::thread::sleep(Duration::from_secs(8));
    let addr = h.export("Kn1", None, None);
    let mut c = Client::connect(&addr, "Kn1").unwrap();
    assert_eq!(
        c.write(4096, &pattern(8192, 9)).unwrap(),
        0,
        "after 8 s idle"
    );
    assert!(c.read(4096, 8192).unwrap() == pattern(8192, 9));
    drop(c);
    h.ok("nbd_stop_disk", json!({"nbd_device": addr}));
    h.ok("bdev_nvme_detach_controller", json!({"name": "K"}));
    stop_clean(h);
    t.stop();
}

/// save_config writes the module's options, then one attach call per
/// controller, before the bdevs built on its namespaces; a restart with
/// it attaches again.
#[test]
fn save_config_reattaches_after_a_restart() {
    let t = NvmfTgt::start("nvme-bdev-save");
    let port = t.malloc_subsystem(NQN, &[("M0", 32, 4096)]);
    let h = host("nvme-bdev-save-host");
    h.ok(
        "bdev_nvme_set_options",
        json!({"keep_alive_timeout_ms": 2000}),
    );
    attach(&h, "S", port, NQN, true);
    h.ok(
        "bdev_delay_create",
        json!({"name": "D", "base_bdev_name": "Sn1", "avg_read_latency": 1,
               "p99_read_latency": 1, "avg_write_latency": 1, "p99_write_latency": 1}),
    );
    let cfg = h.ok("save_config", Value::Null);
    let calls: Vec<Value> = cfg["subsystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["subsystem"] == json!("bdev"))
        .unwrap()["config"]
        .as_array()
        .unwrap()
        .clone();
    let at = |m: &str| calls.iter().position(|c| c["method"] == json!(m));
    let attach_at = at("bdev_nvme_attach_controller").expect("an attach call");
    let options_at = at("bdev_nvme_set_options").expect("the options");
    assert!(options_at < attach_at);
    assert_eq!(
        calls[options_at]["params"]["keep_alive_timeout_ms"],
        json!(2000)
    );
    assert!(attach_at < at("bdev_delay_create").unwrap());
    let p = &calls[attach_at]["params"];
    assert_eq!(
        (
            p["name"].clone(),
            p["trtype"].clone(),
            p["traddr"].clone(),
            p["trsvcid"].clone(),
            p["subnqn"].clone(),
            p["hdgst"].clone()
        ),
        (
            json!("S"),
            json!("TCP"),
            json!("127.0.0.1"),
            json!(port.to_string()),
            json!(NQN),
            json!(true)
        )
    );
    let saved = h.dir.join("saved.json");
    std::fs::write(&saved, serde_json::to_string(&cfg).unwrap()).unwrap();
    stop_clean(h);
    let h2 = Tgt::start_in(
        tgt_util::scratch("nvme-bdev-save-again"),
        &["-m", "0x3", "--json", saved.to_str().unwrap()],
    );
    assert_eq!(bdev(&h2, "Sn1")["name"], json!("Sn1"));
    assert_eq!(bdev(&h2, "D")["name"], json!("D"));
    stop_clean(h2);
}

/// A thin pool whose metadata and data namespaces die with their target:
/// writes needing new blocks fail, a metadata change fails and puts the
/// pool out of write mode with needs_check, nothing hangs, and the
/// daemon still stops cleanly.
#[test]
fn a_pool_on_a_killed_target_fails_its_io_and_the_daemon_still_stops() {
    let mut t = NvmfTgt::start("nvme-bdev-pool-kill");
    let port = t.malloc_subsystem(NQN, &[("Meta", 16, 4096), ("Data", 64, 4096)]);
    let h = host("nvme-bdev-pool-kill-host");
    attach(&h, "P", port, NQN, false);
    h.ok(
        "bdev_thin_pool_create",
        json!({"name": "pool", "metadata_bdev": "Pn1", "data_bdev": "Pn2",
               "block_size": 65536, "metadata_core": 1}),
    );
    h.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "v", "size_in_mib": 32}),
    );
    let addr = h.export("v", None, None);
    let mut c = Client::connect(&addr, "v").unwrap();
    for i in 0..32u64 {
        assert_eq!(c.write(i * (1 << 20), &pattern(4096, i)).unwrap(), 0);
    }
    assert_eq!(c.flush().unwrap(), 0);
    t.kill();
    // New blocks need the data and metadata namespaces: they fail.
    let start = Instant::now();
    let mut failed = false;
    for i in 0..64u64 {
        let e = c
            .write(i * (1 << 19) + 4096, &pattern(4096, 100 + i))
            .unwrap();
        let f = c.flush().unwrap();
        if e != 0 || f != 0 {
            failed = true;
            break;
        }
    }
    assert!(
        failed,
        "writes and flushes kept succeeding on a dead target"
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    drop(c);
    h.ok("nbd_stop_disk", json!({"nbd_device": addr}));
    // Data errors leave the pool as it is (dm-thin's rule); a change of
    // its metadata commits, which fails on the dead metadata namespace:
    // the pool goes read-only with needs_check.
    assert_eq!(
        h.ok("bdev_thin_pool_get_pools", json!({}))[0]["mode"],
        json!("write")
    );
    assert!(h
        .rpc(
            "bdev_thin_create",
            json!({"pool": "pool", "name": "w", "size_in_mib": 8}),
        )
        .is_err());
    let pools = h.ok("bdev_thin_pool_get_pools", json!({}));
    assert_ne!(pools[0]["mode"], json!("write"), "{pools}");
    assert_eq!(pools[0]["needs_check"], json!(true), "{pools}");
    // The daemon stops with the pool on a dead device: no hang, no panic.
    let log = h.dir.join("tgt.log");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(h.pid() as i32, libc::SIGTERM) };
    let st = h.wait_exit(Duration::from_secs(30));
    assert!(
        st.is_some_and(|s| s.success()),
        "the daemon did not stop cleanly within 30 s: {st:?}"
    );
    let text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(!text.contains("panicked"), "a panic in the daemon:\n{text}");
}

/// `ferrothin bench --json` attaches a remote controller in-process and
/// runs bdevperf's verify workload on its namespace from two cores.
#[test]
fn the_bench_verifies_a_remote_namespace() {
    let t = NvmfTgt::start("nvme-bdev-bench");
    let port = t.malloc_subsystem(NQN, &[("M0", 32, 4096)]);
    let cfg = t.dir.join("bench.json");
    let calls = json!({"subsystems": [{"subsystem": "bdev", "config": [
        {"method": "bdev_nvme_attach_controller", "params": {
            "name": "B", "trtype": "tcp", "traddr": "127.0.0.1",
            "trsvcid": port.to_string(), "subnqn": NQN, "ddgst": true}}
    ]}]});
    std::fs::write(&cfg, calls.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .arg("bench")
        .arg("--json")
        .arg(&cfg)
        .args([
            "-T", "Bn1", "-m", "0x3", "-q", "16", "-o", "16k", "-w", "verify", "-t", "2", "--idle",
            "--output", "json",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    // bdevperf's perform_tests shape: every job finished, none failed or
    // miscompared.
    let report: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    let jobs = report["results"].as_array().unwrap();
    assert!(!jobs.is_empty(), "{text}");
    for j in jobs {
        assert_eq!(j["job"], json!("Bn1"), "{text}");
        assert_eq!(j["status"], json!("finished"), "{text}");
        assert_eq!(
            (j["io_failed"].as_u64(), j["miscompares"].as_u64()),
            (Some(0), Some(0)),
            "{text}"
        );
        assert!(j["iops"].as_f64().unwrap() > 0.0, "{text}");
    }
}

/// Attaches with extra parameters (the reconnect knobs): the bdev names.
fn attach_with(h: &Tgt, name: &str, port: u16, extra: Value) -> Vec<String> {
    let mut p = json!({"name": name, "trtype": "tcp", "adrfam": "ipv4", "traddr": "127.0.0.1",
                       "trsvcid": port.to_string(), "subnqn": NQN});
    if let (Some(a), Some(b)) = (p.as_object_mut(), extra.as_object()) {
        a.extend(b.clone());
    }
    let r = h.ok("bdev_nvme_attach_controller", p);
    r.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn ctrlr_state(h: &Tgt, name: &str) -> String {
    h.ok("bdev_nvme_get_controllers", json!({"name": name}))[0]["ctrlrs"][0]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wait_for_state(h: &Tgt, name: &str, ok: impl Fn(&str) -> bool, within: Duration) -> String {
    let start = Instant::now();
    loop {
        let s = ctrlr_state(h, name);
        if ok(&s) {
            return s;
        }
        assert!(start.elapsed() < within, "{name} stayed {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sets the flag when dropped (a test's writers stop even when it fails).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The namespace's UUID: the same after a restart, so the host knows it
/// for the same namespace.
const FILE_NS_UUID: &str = "5a1e0c0d-2b3c-4d5e-8f90-a1b2c3d4e5f6";

/// nvmf_tgt serving file `img` (its contents outlive the process, unlike
/// a malloc bdev's) as an aio bdev with a fixed UUID, on `port`.
fn spdk_file_target(name: &str, img: &Path, port: u16) -> NvmfTgt {
    let t = NvmfTgt::start(name);
    t.rpc(&["nvmf_create_transport", "-t", "TCP"]);
    // Straight JSON-RPC: the pip spdk-rpc sends a field ("nowait") this
    // nvmf_tgt's bdev_aio_create does not know.
    tgt_util::rpc_at(
        &t.sock,
        "bdev_aio_create",
        json!({"filename": img, "name": "A0", "block_size": 4096, "uuid": FILE_NS_UUID}),
    )
    .unwrap_or_else(|e| panic!("bdev_aio_create: {e:?}\n{}", t.log()));
    t.rpc(&["nvmf_create_subsystem", NQN, "-a", "-s", "SPDK0001"]);
    t.rpc(&["nvmf_subsystem_add_ns", NQN, "A0"]);
    t.rpc(&[
        "nvmf_subsystem_add_listener",
        NQN,
        "-t",
        "tcp",
        "-a",
        "127.0.0.1",
        "-s",
        &port.to_string(),
    ]);
    t
}

/// nvmf_tgt killed (SIGKILL) while two writers run, and started again on
/// the same port with the same file namespace: with the reconnect knobs
/// set, the writes in flight and those sent meanwhile wait (none fails,
/// none completes while the target is away), the controller shows
/// SPDK's reconnect states, comes back enabled, the writers go on, and
/// every acknowledged write (before, across and after the restart) reads
/// back.
#[test]
fn nvmf_tgt_killed_and_restarted_under_load_reconnects_and_held_io_completes() {
    let dir = tgt_util::scratch("nvme-bdev-restart-img");
    let img = dir.join("ns.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let port = tgt_util::spdk::free_port();
    let mut t = spdk_file_target("nvme-bdev-restart", &img, port);
    let first_dir = t.dir.clone();
    let h = host("nvme-bdev-restart-host");
    let names = attach_with(
        &h,
        "R",
        port,
        // Retry for ever, never fail the I/O: a loaded machine may take
        // a minute to start nvmf_tgt again.
        json!({"ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 0}),
    );
    assert_eq!(names, vec!["Rn1"]);
    let addr = h.export("Rn1", None, None);
    let stop = AtomicBool::new(false);
    let acked = AtomicU64::new(0);
    // (writer, offset) -> seed of the last acknowledged write there.
    let model: Mutex<BTreeMap<(u64, u64), u64>> = Mutex::new(BTreeMap::new());
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for k in 0..2u64 {
            let (addr, stop, acked, model, errors) = (&addr, &stop, &acked, &model, &errors);
            s.spawn(move || {
                let mut c = Client::connect(addr, "Rn1").unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let off = k * (16 << 20) + (n % 256) * (64 << 10);
                    let seed = k * 1_000_000 + n;
                    match c.write(off, &pattern(64 << 10, seed)) {
                        Ok(0) => {
                            model.lock().unwrap().insert((k, off), seed);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        other => {
                            errors.lock().unwrap().push(format!("write {n}: {other:?}"));
                            return;
                        }
                    }
                    n += 1;
                }
            });
        }
        // A failing assertion below stops the writers too.
        let _stop = StopOnDrop(&stop);
        let start = Instant::now();
        while acked.load(Ordering::SeqCst) < 20 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "writes before the kill: {:?}",
                errors.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t.kill();
        let st = wait_for_state(&h, "R", |s| s != "enabled", Duration::from_secs(10));
        assert!(st == "resetting" || st == "reconnect_is_delayed", "{st}");
        std::thread::sleep(Duration::from_millis(200));
        let before = acked.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2500));
        assert_eq!(
            acked.load(Ordering::SeqCst),
            before,
            "no write completes while the target is away"
        );
        assert!(
            errors.lock().unwrap().is_empty(),
            "{:?}",
            errors.lock().unwrap()
        );
        assert_eq!(ctrlr_state(&h, "R"), "reconnect_is_delayed");
        t = spdk_file_target("nvme-bdev-restart-again", &img, port);
        wait_for_state(&h, "R", |s| s == "enabled", Duration::from_secs(120));
        let start = Instant::now();
        while acked.load(Ordering::SeqCst) < before + 50 {
            assert!(
                start.elapsed() < Duration::from_secs(60) && errors.lock().unwrap().is_empty(),
                "writes resume after the restart: {:?}",
                errors.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    let mut c = Client::connect(&addr, "Rn1").unwrap();
    let model = model.into_inner().unwrap();
    assert!(model.len() > 10);
    for (&(_, off), &seed) in &model {
        assert!(
            c.read(off, 64 << 10).unwrap() == pattern(64 << 10, seed),
            "acknowledged write at {off} reads back"
        );
    }
    drop(c);
    h.ok("nbd_stop_disk", json!({"nbd_device": addr}));
    h.ok("bdev_nvme_detach_controller", json!({"name": "R"}));
    let scratch = [dir, h.dir.clone(), first_dir, t.dir.clone()];
    stop_clean(h);
    drop(t);
    for d in scratch {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A thin pool on a controller with the reconnect knobs (retry for ever,
/// fail I/O after 2 s) whose target goes away for good: writes wait,
/// then fail with errors instead of hanging, a metadata change puts the
/// pool in needs_check, the controller stays in reconnect, and the
/// daemon still stops cleanly and promptly.
#[test]
fn a_pool_whose_target_stays_away_past_fast_io_fail_errors_and_the_daemon_stops() {
    let mut t = NvmfTgt::start("nvme-bdev-pool-away");
    let target_dir = t.dir.clone();
    let port = t.malloc_subsystem(NQN, &[("Meta", 16, 4096), ("Data", 64, 4096)]);
    let h = host("nvme-bdev-pool-away-host");
    attach_with(
        &h,
        "P",
        port,
        json!({"ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1, "fast_io_fail_timeout_sec": 2}),
    );
    h.ok(
        "bdev_thin_pool_create",
        json!({"name": "pool", "metadata_bdev": "Pn1", "data_bdev": "Pn2",
               "block_size": 65536, "metadata_core": 1}),
    );
    h.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "v", "size_in_mib": 32}),
    );
    let addr = h.export("v", None, None);
    let mut c = Client::connect(&addr, "v").unwrap();
    for i in 0..32u64 {
        assert_eq!(c.write(i * (1 << 20), &pattern(4096, i)).unwrap(), 0);
    }
    assert_eq!(c.flush().unwrap(), 0);
    // Timed from before the kill: the host sees the loss during it
    // (reaping nvmf_tgt takes a while).
    let start = Instant::now();
    t.kill();
    let mut failed_after = None;
    for i in 0..64u64 {
        let e = c
            .write(i * (1 << 19) + 4096, &pattern(4096, 100 + i))
            .unwrap();
        let f = c.flush().unwrap();
        if e != 0 || f != 0 {
            failed_after = Some(start.elapsed());
            break;
        }
    }
    let failed_after = failed_after.expect("writes kept succeeding on a dead target");
    // Held first (the target may come back), failed after fast_io_fail.
    assert!(
        failed_after >= Duration::from_millis(1500) && failed_after < Duration::from_secs(30),
        "{failed_after:?}\n{}",
        h.log()
    );
    let st = ctrlr_state(&h, "P");
    assert!(st == "resetting" || st == "reconnect_is_delayed", "{st}");
    drop(c);
    h.ok("nbd_stop_disk", json!({"nbd_device": addr}));
    assert!(h
        .rpc(
            "bdev_thin_create",
            json!({"pool": "pool", "name": "w", "size_in_mib": 8}),
        )
        .is_err());
    let pools = h.ok("bdev_thin_pool_get_pools", json!({}));
    assert_ne!(pools[0]["mode"], json!("write"), "{pools}");
    assert_eq!(pools[0]["needs_check"], json!(true), "{pools}");
    // The controller retries for ever: shutdown must not wait for it.
    let log = h.dir.join("tgt.log");
    let start = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(h.pid() as i32, libc::SIGTERM) };
    let exit = h.wait_exit(Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "the daemon did not stop cleanly within 30 s: {exit:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("panicked"), "a panic in the daemon:\n{text}");
    drop(t);
    if let Some(d) = log.parent() {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_dir_all(target_dir);
}

/// Waits until `f` holds (polled), failing with `what` after 20 s.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(20), "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Namespace changes on ferrothin's own target reach the host through
/// Asynchronous Event Requests: a namespace that grows grows its bdev
/// (and the new blocks take data), a namespace added gets a bdev, a
/// namespace removed loses it.
#[test]
fn namespace_changes_on_the_target_reach_the_host_through_aer() {
    let (t, port) = ft_target("nvme-bdev-aer-target", json!({}), |t| {
        t.ok(
            "bdev_null_create",
            json!({"name": "N0", "num_blocks": 4096, "block_size": 4096}),
        );
        vec!["N0"]
    });
    let h = host("nvme-bdev-aer-host");
    assert_eq!(attach(&h, "A", port, NQN, false), vec!["An1"]);
    assert_eq!(bdev(&h, "An1")["num_blocks"], json!(4096));
    t.ok("bdev_null_resize", json!({"name": "N0", "new_size": 32}));
    eventually("the bdev grows with its namespace", || {
        bdev(&h, "An1")["num_blocks"] == json!(8192)
    });
    let addr = h.export("An1", None, None);
    let mut c = Client::connect(&addr, "An1").unwrap();
    assert_eq!(c.write(8191 * 4096, &pattern(4096, 3)).unwrap(), 0);
    drop(c);
    h.ok("nbd_stop_disk", json!({"nbd_device": addr}));
    t.ok(
        "bdev_null_create",
        json!({"name": "N1", "num_blocks": 2048, "block_size": 4096}),
    );
    t.ok(
        "nvmf_subsystem_add_ns",
        json!({"nqn": NQN, "namespace": {"bdev_name": "N1"}}),
    );
    eventually("a bdev for the namespace added", || {
        h.rpc("bdev_get_bdevs", json!({"name": "An2"})).is_ok()
    });
    assert_eq!(bdev(&h, "An2")["num_blocks"], json!(2048));
    t.ok("nvmf_subsystem_remove_ns", json!({"nqn": NQN, "nsid": 2}));
    eventually("the removed namespace's bdev goes", || {
        h.rpc("bdev_get_bdevs", json!({"name": "An2"})).is_err()
    });
    assert_eq!(ctrlr_state(&h, "A"), "enabled");
    // bdev_nvme_reset_controller: a new association; the grown namespace
    // is still the same bdev and I/O at its new end works (a null bdev
    // keeps no data, so only the outcome is checked).
    let cntlid =
        h.ok("bdev_nvme_get_controllers", json!({"name": "A"}))[0]["ctrlrs"][0]["cntlid"].clone();
    h.ok("bdev_nvme_reset_controller", json!({"name": "A"}));
    assert_eq!(ctrlr_state(&h, "A"), "enabled");
    assert_ne!(
        h.ok("bdev_nvme_get_controllers", json!({"name": "A"}))[0]["ctrlrs"][0]["cntlid"],
        cntlid,
        "a new controller after the reset"
    );
    let addr = h.export("An1", None, None);
    let mut c = Client::connect(&addr, "An1").unwrap();
    assert_eq!(c.write(8191 * 4096, &pattern(4096, 4)).unwrap(), 0);
    assert_eq!(c.read(8191 * 4096, 4096).unwrap().len(), 4096);
    drop(c);
    h.ok("nbd_stop_disk", json!({"nbd_device": addr}));
    h.ok("bdev_nvme_detach_controller", json!({"name": "A"}));
    let scratch = [h.dir.clone(), t.dir.clone()];
    stop_clean(h);
    t.stop();
    for d in scratch {
        let _ = std::fs::remove_dir_all(d);
    }
}
