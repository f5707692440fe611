//! Configs: save_config then a restart with --json brings back the same
//! bdevs, pools, volumes, exports and data; spdk-rpc's load_config; our
//! YAML; the embedded default, created on first start and reopened after.

mod tgt_util;

use serde_json::{json, Value};
use tgt_util::{nbd::Client, Tgt};

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect()
}

fn block(seed: u8) -> Vec<u8> {
    (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn save_config_and_restart_with_json_restores_everything() {
    let t = Tgt::start("save", &["--empty", "-m", "0x3"]);
    let (meta, data) = (t.dir.join("meta.img"), t.dir.join("data.img"));
    for (p, mib) in [(&meta, 8u64), (&data, 128)] {
        std::fs::File::create(p)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
    }
    t.ok(
        "bdev_uring_create",
        json!({"name": "Meta", "filename": meta}),
    );
    t.ok(
        "bdev_aio_create",
        json!({"name": "Data", "filename": data, "block_size": 4096}),
    );
    t.ok(
        "bdev_malloc_create",
        json!({"name": "Scratch", "num_blocks": 256, "block_size": 512}),
    );
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "pool", "metadata_bdev": "Meta", "data_bdev": "Data",
               "block_size": 131072, "commit_period_ms": 300, "metadata_core": 1}),
    );
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "a", "size_in_mib": 32}),
    );
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "b", "size_in_mib": 16, "dev_id": 9}),
    );
    let addr = t.export("a", None, None);
    t.export("b", Some("bee"), Some(&addr));
    let mut c = Client::connect(&addr, "a").unwrap();
    assert_eq!(c.write(1 << 20, &block(1)).unwrap(), 0);
    let mut c2 = Client::connect(&addr, "bee").unwrap();
    assert_eq!(c2.write(0, &block(2)).unwrap(), 0);
    assert_eq!(c2.flush().unwrap(), 0);
    t.ok(
        "bdev_thin_snapshot",
        json!({"origin": "a", "name": "a_snap"}),
    );
    assert_eq!(c.write(1 << 20, &block(3)).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    drop((c, c2));

    // spdk-rpc's save_config (framework_get_subsystems + framework_get_config).
    let saved = t.spdk_ok(&["save_config"]);
    let cfg: Value = serde_json::from_str(&saved).unwrap();
    let bdev_methods: Vec<&str> = cfg["subsystems"][0]["config"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["method"].as_str().unwrap())
        .collect();
    assert_eq!(
        bdev_methods,
        // aio is served by the uring module and saved as what it is.
        [
            "bdev_uring_create",
            "bdev_uring_create",
            "bdev_malloc_create",
            "bdev_thin_pool_create",
            "bdev_thin_activate",
            "bdev_thin_activate",
            "bdev_thin_activate",
            "bdev_wait_for_examine"
        ]
    );
    let before_bdevs = names(&t.ok("bdev_get_bdevs", Value::Null));
    let before_vols = t.ok("bdev_thin_get_volumes", Value::Null);
    let before_disks = t.ok("nbd_get_disks", Value::Null);
    let dir = t.dir.clone();
    t.stop();

    let path = dir.join("saved.json");
    std::fs::write(&path, &saved).unwrap();
    let t = Tgt::start_in(dir, &["--json", path.to_str().unwrap(), "-m", "0x3"]);
    assert_eq!(names(&t.ok("bdev_get_bdevs", Value::Null)), before_bdevs);
    let vols = t.ok("bdev_thin_get_volumes", Value::Null);
    for (x, y) in vols
        .as_array()
        .unwrap()
        .iter()
        .zip(before_vols.as_array().unwrap())
    {
        for k in [
            "name",
            "dev_id",
            "size",
            "mapped_blocks",
            "shared_blocks",
            "creation_time",
        ] {
            assert_eq!(x[k], y[k], "{k}: {x} vs {y}");
        }
    }
    assert_eq!(t.ok("nbd_get_disks", Value::Null), before_disks);
    // The snapshot's lineage came back through the saved config.
    let snap = t.ok("bdev_thin_get_volumes", json!({"name": "a_snap"}));
    assert_eq!(snap[0]["origin"], "a", "{snap}");
    let pool = &t.ok("bdev_thin_pool_get_pools", Value::Null)[0];
    assert_eq!(
        (
            pool["options"]["block_size"].as_u64(),
            pool["needs_check"].as_bool()
        ),
        (Some(131072), Some(false))
    );
    let mut c = Client::connect(&addr, "a").unwrap();
    assert_eq!(c.read(1 << 20, 4096).unwrap(), block(3));
    let mut s = Client::connect(&addr, "a_snap").err();
    assert!(s.take().is_some(), "the snapshot was not exported");
    let snap = t.export("a_snap", None, None);
    assert_eq!(
        Client::connect(&snap, "a_snap")
            .unwrap()
            .read(1 << 20, 4096)
            .unwrap(),
        block(1)
    );
    assert_eq!(
        Client::connect(&addr, "bee")
            .unwrap()
            .read(0, 4096)
            .unwrap(),
        block(2)
    );
    t.stop();
}

#[test]
fn spdk_rpc_load_config_applies_a_saved_config_at_runtime() {
    let t = Tgt::start("load", &["--empty"]);
    let cfg = json!({"subsystems": [
        {"subsystem": "bdev", "config": [
            {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 4096, "block_size": 4096}},
            {"method": "bdev_thin_pool_create", "params": {"name": "p", "metadata_bdev": "M0"}},
            {"method": "bdev_thin_create", "params": {"pool": "p", "name": "v", "size_in_mib": 4, "dev_id": 1}},
            {"method": "bdev_wait_for_examine"}]},
        {"subsystem": "nbd", "config": [
            {"method": "nbd_start_disk", "params": {"bdev_name": "v", "nbd_device": "127.0.0.1:0"}}]}]});
    let path = t.dir.join("load.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let o = t.spdk_rpc(&["load_config", "-j", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(names(&t.ok("bdev_get_bdevs", Value::Null)), ["M0", "v"]);
    let disks = t.ok("nbd_get_disks", Value::Null);
    let addr = disks[0]["nbd_device"].as_str().unwrap();
    assert_eq!(Client::connect(addr, "v").unwrap().size, 4 << 20);
    // Our server-side load_config takes the same object.
    let again = t.rpc("load_config", cfg).unwrap_err();
    assert_eq!(again.0, -17, "{again:?}");
    t.stop();
}

#[test]
fn yaml_config_starts_and_restarts_the_same_volumes() {
    let dir = tgt_util::scratch("yaml");
    let path = tgt_util::pool_yaml(
        &dir,
        200,
        &[
            "{name: v0, dev_id: 0, size_mib: 16}",
            "{name: v1, dev_id: 7, size_mib: 8}",
        ],
        "v0",
    );
    let t = Tgt::start_in(dir, &["-c", path.to_str().unwrap()]);
    let addr = t.first_export();
    let mut c = Client::connect(&addr, "v0").unwrap();
    assert_eq!(c.write(4096, &block(7)).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    drop(c);
    let dir = t.dir.clone();
    t.stop();
    let t = Tgt::start_in(dir, &["-c", path.to_str().unwrap()]);
    let vols = t.ok("bdev_thin_get_volumes", Value::Null);
    let ids: Vec<u64> = vols
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["dev_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 7], "no new devices on the second start: {vols}");
    let addr = t.first_export();
    assert_eq!(
        Client::connect(&addr, "v0")
            .unwrap()
            .read(4096, 4096)
            .unwrap(),
        block(7)
    );
    t.stop();
    // A broken YAML config stops a strict start with a clear message (by
    // default the daemon comes up without the entry: tests/tgt_startup.rs).
    let bad = tgt_util::scratch("yaml-bad");
    let p = bad.join("bad.yaml");
    std::fs::write(&p, "pools:\n  - {name: p, metadata_bdev: nope}\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .args(["tgt", "--json-strict", "-r"])
        .arg(bad.join("s.sock"))
        .arg("-c")
        .arg(&p)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bdev_thin_pool_create") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn embedded_default_creates_then_reopens_its_pool() {
    let dir = tgt_util::scratch("default");
    let data = dir.join("data");
    let args = tgt_util::default_args(&data, true);
    let t = Tgt::start_in(dir, &args);
    assert!(data.join("pool0.img").exists());
    let disks = t.ok("nbd_get_disks", Value::Null);
    assert_eq!(disks[0]["bdev_name"], "vol0");
    let addr = disks[0]["nbd_device"].as_str().unwrap().to_string();
    let mut c = Client::connect(&addr, "vol0").unwrap();
    assert_eq!(c.size, 2 << 30);
    assert_eq!(c.write(0, &block(9)).unwrap(), 0);
    drop(c);
    let dir = t.dir.clone();
    t.stop();
    let t = Tgt::start_in(dir, &args);
    let addr = t.first_export();
    assert_eq!(
        Client::connect(&addr, "vol0")
            .unwrap()
            .read(0, 4096)
            .unwrap(),
        block(9)
    );
    assert_eq!(
        t.ok("bdev_thin_get_volumes", Value::Null)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // spdk_kill_instance (through spdk-rpc) shuts down as cleanly as a signal.
    t.spdk_ok(&["spdk_kill_instance", "SIGTERM"]);
    let st = t.wait_exit(std::time::Duration::from_secs(60));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
}

/// Two daemons on one --data-dir (issue 18 defect 4): the second stops at
/// start, naming the file in use, and the first and its pool go on.
#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let dir = tgt_util::scratch("owner");
    let data = dir.join("data");
    let args = tgt_util::default_args(&data, true);
    let t = Tgt::start_in(dir, &args);
    let addr = t.first_export();
    let mut c = Client::connect(&addr, "vol0").unwrap();
    assert_eq!(c.write(0, &block(3)).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);

    let other = tgt_util::scratch("owner2");
    let (st, log) = tgt_util::tgt_must_exit(&other, &args, std::time::Duration::from_secs(30));
    assert!(!st.success(), "{st}: {log}");
    let img = data.join("pool0.img");
    assert!(
        log.contains(&format!(
            "{} is in use by another bdev or process",
            img.display()
        )) && log.contains("bdev_uring_create"),
        "{log}"
    );

    // The first daemon did not notice.
    assert_eq!(c.read(0, 4096).unwrap(), block(3));
    assert_eq!(c.write(1 << 20, &block(4)).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    let pools = t.ok("bdev_thin_pool_get_pools", Value::Null);
    assert_eq!(pools[0]["mode"], "write", "{pools}");
    assert_eq!(pools[0]["needs_check"], false, "{pools}");
    drop(c);
    let dir = t.dir.clone();
    t.stop();
    // And its pool reopens as it left it; the lock went with the daemon.
    let t = Tgt::start_in(dir, &args);
    let mut c = Client::connect(&t.first_export(), "vol0").unwrap();
    assert_eq!(c.read(0, 4096).unwrap(), block(3));
    assert_eq!(c.read(1 << 20, 4096).unwrap(), block(4));
    drop(c);
    t.stop();
}

/// save_config for a state with every module (malloc, null, uring, error,
/// delay, two thin pools, volumes, a snapshot, an external origin, an
/// export) is exactly the checked-in golden file: reshaping how modules
/// and methods are registered must not change what users' saved configs
/// say. `FERROTHIN_BLESS=1` rewrites the golden file (with
/// `FERROTHIN_BIN` naming the binary that writes it, e.g. an older build).
#[test]
fn save_config_of_every_module_matches_the_golden_file() {
    let golden_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let dir = tgt_util::scratch("golden");
    std::fs::File::create(dir.join("u0.img"))
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let text = std::fs::read_to_string(golden_dir.join("every_module.json"))
        .unwrap()
        .replace("${DIR}", dir.to_str().unwrap());
    let cfg = dir.join("every_module.json");
    std::fs::write(&cfg, text).unwrap();
    let t = Tgt::start_with(
        std::env::var_os("FERROTHIN_BIN"),
        dir.clone(),
        &["--json", cfg.to_str().unwrap(), "-m", "0x3"],
    );
    t.ok(
        "bdev_thin_snapshot",
        json!({"origin": "v1", "name": "v1_snap", "dev_id": 3}),
    );
    t.export("v1", Some("one"), Some("127.0.0.1:0"));
    let saved = serde_json::to_string_pretty(&t.ok("save_config", Value::Null)).unwrap();
    // The exports' ports and the scratch directory differ from run to run.
    let port = t.first_export();
    let subs = t.ok("nvmf_get_subsystems", Value::Null);
    let nvmf_port = subs[1]["listen_addresses"][0]["trsvcid"]
        .as_str()
        .unwrap()
        .to_string();
    let saved = saved
        .replace(dir.to_str().unwrap(), "${DIR}")
        .replace(&port, "${NBD}")
        .replace(
            &format!("\"trsvcid\": \"{nvmf_port}\""),
            "\"trsvcid\": \"${NVMF}\"",
        )
        + "\n";
    let golden = golden_dir.join("every_module.saved.json");
    if std::env::var_os("FERROTHIN_BLESS").is_some() {
        std::fs::write(&golden, &saved).unwrap();
    }
    let want = std::fs::read_to_string(&golden).expect("the golden file");
    assert!(
        saved == want,
        "save_config changed:\n--- golden\n{want}\n--- now\n{saved}"
    );
}
