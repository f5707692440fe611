//! Start-up configs as an operator meets them (issue 25): a config SPDK
//! saved loads (its start-up options first, SPDK's own tuning skipped with
//! a warning); one broken entry does not keep the rest down, and says what
//! broke and what to run next; --json-strict stops instead.

mod tgt_util;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tgt_util::{nbd::Client, scratch, Tgt};

fn bdev_names(t: &Tgt) -> Vec<String> {
    t.ok("bdev_get_bdevs", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

/// tests/configs/spdk_saved.json with its file in `dir`.
fn spdk_saved(dir: &Path) -> PathBuf {
    std::fs::File::create(dir.join("aio0.img"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/spdk_saved.json");
    let text = std::fs::read_to_string(src)
        .unwrap()
        .replace("${DIR}", dir.to_str().unwrap());
    let p = dir.join("saved.json");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_config_saved_by_spdk_loads_with_its_startup_options_first() {
    let dir = scratch("spdk-saved");
    let cfg = spdk_saved(&dir);
    let t = Tgt::start_in(
        dir,
        &["--json", cfg.to_str().unwrap(), "--json-ignore-init-errors"],
    );
    assert_eq!(bdev_names(&t), ["Malloc0", "aio0"]);
    let log = t.log();
    assert!(!log.contains("Method may only be called"), "{log}");
    assert!(!log.contains("config entry failed"), "{log}");
    let warned = log
        .lines()
        .find(|l| l.contains("ignoring SPDK settings this target has no use for"))
        .unwrap_or_else(|| panic!("no warning naming the skipped options:\n{log}"));
    for m in [
        "iobuf_set_options",
        "sock_impl_set_options (x2)",
        "sock_set_default_impl",
        "accel_set_options",
        "bdev_nvme_set_hotplug",
        "bdev_raid_set_options",
        "framework_set_scheduler",
    ] {
        assert!(warned.contains(m), "{m} not named: {warned}");
    }
    // bdev_set_options is ours: it ran, in the first pass. So did
    // bdev_nvme_set_options (the NVMe bdev's), naming the SPDK options it
    // has no use for.
    assert!(!warned.contains("bdev_set_options,"), "{warned}");
    assert!(!warned.contains("bdev_nvme_set_options"), "{warned}");
    assert!(
        log.contains(
            "bdev_nvme_set_options: ignoring options this module has no use for: action_on_timeout"
        ),
        "{log}"
    );
    t.stop();
}

#[test]
fn with_wait_for_rpc_only_the_startup_pass_runs_before_framework_start_init() {
    let dir = scratch("spdk-saved-wait");
    let cfg = spdk_saved(&dir);
    let t = Tgt::start_in(dir, &["--json", cfg.to_str().unwrap(), "--wait-for-rpc"]);
    // Still STARTUP: the runtime entries wait.
    assert_eq!(t.rpc("bdev_get_bdevs", Value::Null).unwrap_err().0, -1);
    t.ok("framework_start_init", Value::Null);
    assert_eq!(bdev_names(&t), ["Malloc0", "aio0"]);
    t.stop();
}

/// A file that holds something other than ferrothin metadata.
fn garbage_file(p: &Path, len: usize) {
    let bytes: Vec<u8> = (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
        .collect();
    std::fs::write(p, bytes).unwrap();
}

/// The config: a file-backed pool0 with vol0 exported; a pool on
/// malloc bdevs (empty after a restart) whose volume cannot activate; a
/// pool on a file of garbage; and an export of a volume that is missing.
fn broken_config(dir: &Path) -> PathBuf {
    std::fs::File::create(dir.join("pool0.img"))
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    garbage_file(&dir.join("bad.img"), 8 << 20);
    let d = dir.to_str().unwrap();
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_uring_create", "params": {"name": "Disk0", "filename": format!("{d}/pool0.img")}},
            {"method": "bdev_thin_pool_create", "params": {"name": "pool0", "metadata_bdev": "Disk0"}},
            {"method": "bdev_thin_create", "params": {"pool": "pool0", "name": "vol0", "dev_id": 0,
                "size_in_mib": 16, "open_existing": true}},
            {"method": "bdev_malloc_create", "params": {"name": "M1", "num_blocks": 4096, "block_size": 4096}},
            {"method": "bdev_thin_pool_create", "params": {"name": "pool1", "metadata_bdev": "M1"}},
            {"method": "bdev_thin_activate", "params": {"pool": "pool1", "name": "v1", "dev_id": 0,
                "size_in_mib": 8}},
            {"method": "bdev_uring_create", "params": {"name": "Bad0", "filename": format!("{d}/bad.img")}},
            {"method": "bdev_thin_pool_create", "params": {"name": "pool2", "metadata_bdev": "Bad0"}},
            {"method": "bdev_wait_for_examine"}
        ]},
        {"subsystem": "nbd", "config": [
            {"method": "nbd_start_disk", "params": {"bdev_name": "v1", "nbd_device": "127.0.0.1:0"}},
            {"method": "nbd_start_disk", "params": {"bdev_name": "vol0", "nbd_device": "127.0.0.1:0"}}
        ]}
    ]});
    let p = dir.join("broken.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    p
}

#[test]
fn one_broken_entry_does_not_keep_the_rest_down() {
    let dir = scratch("broken");
    let cfg = broken_config(&dir);
    let bad = dir.join("bad.img");
    let t = Tgt::start_in(dir, &["--json", cfg.to_str().unwrap()]);
    // Everything that could come up did: pool0, vol0 and its export.
    let disks = t.ok("nbd_get_disks", Value::Null);
    assert_eq!(disks.as_array().unwrap().len(), 1, "{disks}");
    assert_eq!(disks[0]["bdev_name"], "vol0");
    let mut c = Client::connect(disks[0]["nbd_device"].as_str().unwrap(), "vol0").unwrap();
    assert_eq!(c.write(0, &[7u8; 4096]).unwrap(), 0);
    drop(c);

    // The pool that did not open is there, as failed, with why.
    let pools = t.ok("bdev_thin_pool_get_pools", Value::Null);
    let modes: Vec<(&str, &str)> = pools
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap(), p["mode"].as_str().unwrap()))
        .collect();
    assert_eq!(
        modes,
        [("pool0", "write"), ("pool1", "write"), ("pool2", "failed")],
        "{pools}"
    );
    let failed = &t.ok("bdev_thin_pool_get_pools", json!({"name": "pool2"}))[0];
    assert_eq!(failed["metadata_bdev"], "Bad0");
    assert!(!failed["error"].as_str().unwrap().is_empty(), "{failed}");

    // Each failure is logged with its method, what it names, the cause
    // and the next command; the banner (just after the socket opens)
    // lists them again.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !t.log().contains("config entries failed") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = t.log();
    let line = |needle: &str| {
        log.lines()
            .find(|l| l.contains("config entry failed") && l.contains(needle))
            .unwrap_or_else(|| panic!("no failure line for {needle}:\n{log}"))
            .to_string()
    };
    let v1 = line("bdev_thin_activate v1 in pool pool1");
    assert!(v1.contains("thin device 0 not found"), "{v1}");
    assert!(v1.contains("bdev_thin_get_volumes -p pool1"), "{v1}");
    let p2 = line("bdev_thin_pool_create pool2");
    assert!(
        p2.contains(&format!("next: ferrothin check {}", bad.display())),
        "{p2}"
    );
    let ex = line("nbd_start_disk v1");
    assert!(ex.contains("next:"), "{ex}");
    assert!(log.contains("3 config entries failed"), "{log}");

    // A failed pool can be forgotten.
    t.ok("bdev_thin_pool_delete", json!({"name": "pool2"}));
    let pools = t.ok("bdev_thin_pool_get_pools", Value::Null);
    assert_eq!(pools.as_array().unwrap().len(), 2, "{pools}");
    t.stop();
}

#[test]
fn json_strict_stops_at_the_first_broken_entry() {
    let dir = scratch("broken-strict");
    let cfg = broken_config(&dir);
    let (st, log) = tgt_util::tgt_must_exit(
        &dir,
        &["--json", cfg.to_str().unwrap(), "--json-strict"],
        Duration::from_secs(60),
    );
    assert!(!st.success(), "{st}: {log}");
    assert!(
        log.contains("config entry bdev_thin_activate v1 in pool pool1")
            && log.contains("--json-strict stops at the first failure"),
        "{log}"
    );
    // Nothing after it ran.
    assert!(!log.contains("pool2"), "{log}");
}

/// spdk_tgt's `-c` takes SPDK's JSON: ours tells it from YAML by the
/// file's name or its first character, and loads it as --json would.
#[test]
fn dash_c_with_an_spdk_json_config_loads_it() {
    let dir = scratch("dash-c-json");
    let cfg = spdk_saved(&dir);
    let t = Tgt::start_in(dir.clone(), &["-c", cfg.to_str().unwrap()]);
    assert_eq!(bdev_names(&t), ["Malloc0", "aio0"]);
    assert!(
        t.log()
            .contains("an SPDK JSON config (as spdk_tgt's -c takes)"),
        "{}",
        t.log()
    );
    t.stop();
    // No .json in the name: told by the text.
    let bare = dir.join("saved-config");
    std::fs::copy(&cfg, &bare).unwrap();
    let t = Tgt::start_in(dir, &["-c", bare.to_str().unwrap()]);
    assert_eq!(bdev_names(&t), ["Malloc0", "aio0"]);
    t.stop();
}
