//! SIGKILL while an lvstore is created: after a restart it is there
//! (and thin_check accepts its pool) or not there (and can be created).
//! SIGKILL while lvols are created, snapshotted, renamed and deleted:
//! after each restart (only the base bdev configured) the lvstore opens,
//! each operation either happened or did not (the lvol set is the one
//! before or the one after it, and the pool holds no thin device the lvol
//! table does not name), the data written before is intact, and Debian's
//! thin_check and `ferrothin check` accept the pool.

mod tgt_util;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tgt_util::Tgt;

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(5))
        .collect()
}

fn tools_accept(img: &Path) {
    // A killed daemon's io_uring workers may hold the file's lock a moment
    // longer than the process lives.
    for _ in 0..100 {
        let o = Command::new(env!("CARGO_BIN_EXE_ferrothin"))
            .args(["check", img.to_str().unwrap()])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&o.stderr).contains("is in use") {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (tool, args) in [
        ("thin_check", vec![img.to_str().unwrap()]),
        (
            env!("CARGO_BIN_EXE_ferrothin"),
            vec!["check", img.to_str().unwrap()],
        ),
    ] {
        let o = Command::new(tool)
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e} (ci/setup installs thin-provisioning-tools)"));
        assert!(
            o.status.success(),
            "{tool} rejects the pool: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// Waits for examine to bring the lvstore and all its lvols up; their
/// names.
fn loaded(t: &Tgt) -> BTreeSet<String> {
    t.ok("bdev_wait_for_examine", Value::Null);
    for _ in 0..500 {
        let stores = t.ok("bdev_lvol_get_lvstores", Value::Null);
        if stores.as_array().is_some_and(|a| a.len() == 1) {
            let lvols = t.ok("bdev_lvol_get_lvols", Value::Null);
            let a = lvols.as_array().unwrap();
            if a.iter().all(|l| l["is_degraded"] == false) {
                // Every thin device of the pool is an lvol or the table's.
                let pool = stores[0]["thin_pool"].as_str().unwrap();
                let devs = t.ok("bdev_thin_get_volumes", json!({"pool": pool}));
                assert_eq!(
                    devs.as_array().unwrap().len(),
                    a.len() + 1,
                    "devices the lvol table does not name: {devs}"
                );
                return a
                    .iter()
                    .map(|l| l["name"].as_str().unwrap().to_string())
                    .collect();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the lvstore did not come back:\n{}", t.log());
}

#[test]
fn sigkill_during_lvol_operations_leaves_each_done_or_not() {
    let dir = tgt_util::scratch("lvol-crash");
    let img = dir.join("base.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let cfg = tgt_util::json_config(
        &dir,
        json!([{"method": "bdev_uring_create",
                "params": {"name": "Base0", "filename": img.to_str().unwrap(), "block_size": 512}}]),
    );
    let args = ["-m", "0x3", "--json", cfg.to_str().unwrap()];
    let t = Tgt::start_in(dir.clone(), &args);
    t.spdk_ok(&["bdev_lvol_create_lvstore", "Base0", "lvs0", "-c", "1048576"]);
    // How long an operation takes here sets when the kills land.
    let began = std::time::Instant::now();
    t.ok(
        "bdev_lvol_create",
        json!({"lvs_name": "lvs0", "lvol_name": "lv0", "size_in_mib": 4, "thin_provision": true}),
    );
    let op = began.elapsed();
    let data = pattern(1 << 20);
    let addr = t.export("lvs0/lv0", Some("lv0"), None);
    let mut c = tgt_util::nbd::Client::connect(&addr, "lv0").unwrap();
    c.write(0, &data).unwrap();
    c.flush().unwrap();
    drop(c);
    t.stop();

    let mut possible = vec![BTreeSet::from(["lv0".to_string()])];
    let mut outcomes = [0usize; 2];
    // From early in the call to past its end: a quarter, a half and
    // twice an operation's time, for each of the four operations.
    let delays = [op / 4, op / 2, op * 2];
    for round in 0..12 {
        let t = Tgt::start_in(dir.clone(), &args);
        let names = loaded(&t);
        let at = possible
            .iter()
            .position(|p| *p == names)
            .unwrap_or_else(|| {
                panic!("round {round}: lvols {names:?}, expected one of {possible:?}")
            });
        if possible.len() == 2 {
            outcomes[at] += 1;
        }
        let made: Vec<&String> = names.iter().filter(|n| *n != "lv0").collect();
        let name = format!("x{round}");
        let (method, params, after) = match (round % 4, made.last()) {
            (0, _) | (_, None) => (
                "bdev_lvol_create",
                json!({"lvs_name": "lvs0", "lvol_name": name, "size_in_mib": 4, "thin_provision": true}),
                names.iter().cloned().chain([name.clone()]).collect(),
            ),
            (1, _) => (
                "bdev_lvol_snapshot",
                json!({"lvol_name": "lvs0/lv0", "snapshot_name": name}),
                names.iter().cloned().chain([name.clone()]).collect(),
            ),
            // A table-only change: the alias is the one before or after.
            (2, Some(last)) => {
                let last = last.to_string();
                (
                    "bdev_lvol_rename",
                    json!({"old_name": format!("lvs0/{last}"), "new_name": name}),
                    names
                        .iter()
                        .map(|n| if *n == last { name.clone() } else { n.clone() })
                        .collect(),
                )
            }
            (_, Some(last)) => {
                let last = last.to_string();
                (
                    "bdev_lvol_delete",
                    json!({"name": format!("lvs0/{last}")}),
                    names.iter().filter(|n| **n != last).cloned().collect(),
                )
            }
        };
        // A delete of a snapshot with several clones is refused, which
        // also counts as not done.
        // The call goes out raw (no client start-up to wait for), so the
        // kill lands while it runs; its answer, if any, is not needed.
        let mut s = UnixStream::connect(&t.sock).unwrap();
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        s.write_all(req.to_string().as_bytes()).unwrap();
        std::thread::sleep(delays[round / 4]);
        t.kill9();
        drop(s);
        tools_accept(&img);
        possible = vec![names, after];
    }
    let t = Tgt::start_in(dir.clone(), &args);
    let names = loaded(&t);
    assert!(possible.contains(&names), "{names:?} not in {possible:?}");
    let addr = t.export("lvs0/lv0", Some("lv0"), None);
    let mut c = tgt_util::nbd::Client::connect(&addr, "lv0").unwrap();
    assert!(c.read(0, 1 << 20).unwrap() == data, "lv0's data changed");
    drop(c);
    t.stop();
    tools_accept(&img);
    eprintln!(
        "an operation took {op:?}; interrupted: {} not done, {} done",
        outcomes[0], outcomes[1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigkill_during_lvstore_creation_leaves_it_made_or_not() {
    let dir = tgt_util::scratch("lvs-crash");
    let img = dir.join("base.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let cfg = tgt_util::json_config(
        &dir,
        json!([{"method": "bdev_uring_create",
                "params": {"name": "Base0", "filename": img.to_str().unwrap(), "block_size": 512}}]),
    );
    let args = ["-m", "0x3", "--json", cfg.to_str().unwrap()];
    let create = json!({"bdev_name": "Base0", "lvs_name": "lvs0", "cluster_sz": 1048576});
    // How long a creation takes here.
    let t = Tgt::start_in(dir.clone(), &args);
    let began = std::time::Instant::now();
    t.ok("bdev_lvol_create_lvstore", create.clone());
    let op = began.elapsed();
    t.ok("bdev_lvol_delete_lvstore", json!({"lvs_name": "lvs0"}));
    t.stop();
    let mut outcomes = [0usize; 2];
    for delay in [op / 8, op / 4, op / 2, op * 3 / 4, op, op * 2] {
        let t = Tgt::start_in(dir.clone(), &args);
        t.ok("bdev_wait_for_examine", Value::Null);
        let mut s = UnixStream::connect(&t.sock).unwrap();
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "bdev_lvol_create_lvstore",
                         "params": create});
        s.write_all(req.to_string().as_bytes()).unwrap();
        std::thread::sleep(delay);
        t.kill9();
        drop(s);
        let t = Tgt::start_in(dir.clone(), &args);
        t.ok("bdev_wait_for_examine", Value::Null);
        let stores = t.ok("bdev_lvol_get_lvstores", Value::Null);
        match stores.as_array().unwrap().len() {
            0 => {
                outcomes[0] += 1;
                // Not made: the base is free for a new one.
                t.ok("bdev_lvol_create_lvstore", create.clone());
            }
            1 => {
                outcomes[1] += 1;
                assert_eq!(stores[0]["name"], "lvs0");
                assert_eq!(t.ok("bdev_lvol_get_lvols", Value::Null), json!([]));
                t.stop();
                tools_accept(&img);
                let t = Tgt::start_in(dir.clone(), &args);
                t.ok("bdev_wait_for_examine", Value::Null);
                t.ok("bdev_lvol_get_lvstores", json!({"lvs_name": "lvs0"}));
                t.ok("bdev_lvol_delete_lvstore", json!({"lvs_name": "lvs0"}));
                t.stop();
                continue;
            }
            n => panic!("{n} lvstores"),
        }
        t.ok("bdev_lvol_delete_lvstore", json!({"lvs_name": "lvs0"}));
        t.stop();
    }
    eprintln!(
        "an lvstore creation took {op:?}; interrupted: {} not made, {} made",
        outcomes[0], outcomes[1]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
