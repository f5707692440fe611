//! Start-up configs as an operator meets them (issue 25): a config SPDK
//! saved loads (its start-up options first, SPDK's own tuning skipped with
//! a warning).

mod tgt_util;

use std::path::{Path, PathBuf};

use serde_json::Value;
use tgt_util::{scratch, Tgt};

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
        "bdev_nvme_set_options",
        "bdev_nvme_set_hotplug",
        "bdev_raid_set_options",
        "framework_set_scheduler",
    ] {
        assert!(warned.contains(m), "{m} not named: {warned}");
    }
    // bdev_set_options is ours: it ran, in the first pass.
    assert!(!warned.contains("bdev_set_options,"), "{warned}");
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
