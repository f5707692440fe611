//! SPDK's lvol methods (bdev_lvol_*) on `ferrothin tgt`, driven with
//! spdk-rpc (SPDK's own command lines): results, SPDK's error codes and
//! texts (spdk-interfaces.md 2.4), data through NBD, and an lvstore found
//! again after a restart with only its base bdev configured.

mod tgt_util;

use serde_json::{json, Value};
use tgt_util::Tgt;

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A call that must fail: the error object spdk-rpc printed.
fn spdk_err(t: &Tgt, args: &[&str]) -> (i64, String) {
    let o = t.spdk_rpc(args);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "spdk-rpc {args:?} succeeded: {out}");
    let at = out
        .rfind("response:")
        .unwrap_or_else(|| panic!("no response in: {out}"));
    let body = &out[at + "response:".len()..];
    let v: Value = serde_json::Deserializer::from_str(body.trim_start())
        .into_iter()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("no error object in: {out}"));
    (
        v["code"].as_i64().unwrap(),
        v["message"].as_str().unwrap().to_string(),
    )
}

/// A call whose result is a string (spdk-rpc prints it bare).
fn spdk_str(t: &Tgt, args: &[&str]) -> Value {
    json!(t.spdk_ok(args).trim())
}

fn lvol<'a>(lvols: &'a Value, name: &str) -> &'a Value {
    lvols
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no lvol {name} in {lvols}"))
}

fn start(name: &str) -> Tgt {
    Tgt::start(name, &["--empty", "-m", "0x3"])
}

/// Stops `t` cleanly and removes its scratch directory.
fn finish(t: Tgt) {
    let dir = t.dir.clone();
    t.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn lvstore_methods_answer_as_spdk() {
    let t = start("lvs");
    t.spdk_ok(&["bdev_malloc_create", "-b", "Malloc0", "64", "512"]);
    t.spdk_ok(&["bdev_malloc_create", "-b", "Malloc1", "64", "512"]);
    let uuid = t.spdk_ok(&[
        "bdev_lvol_create_lvstore",
        "Malloc0",
        "lvs0",
        "-c",
        "1048576",
    ]);
    let uuid = json!(uuid.trim());
    let lvs = parse(&t.spdk_ok(&["bdev_lvol_get_lvstores", "-l", "lvs0"]));
    let e = &lvs[0];
    assert_eq!(e["uuid"], uuid);
    assert_eq!(e["name"], "lvs0");
    assert_eq!(e["base_bdev"], "Malloc0");
    assert_eq!(e["block_size"], 512);
    assert_eq!(e["cluster_size"], 1048576);
    let total = e["total_data_clusters"].as_u64().unwrap();
    assert!((50..64).contains(&total), "{e}");
    assert_eq!(e["free_clusters"], total);
    let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
    assert_eq!(
        keys[..8],
        [
            "uuid",
            "name",
            "base_bdev",
            "total_data_clusters",
            "free_clusters",
            "block_size",
            "cluster_size",
            "max_growable_size"
        ]
    );
    let by_uuid = parse(&t.spdk_ok(&["bdev_lvol_get_lvstores", "-u", uuid.as_str().unwrap()]));
    assert_eq!(by_uuid[0]["name"], "lvs0");

    // SPDK's errors: a taken name, a missing base, a cluster smaller than
    // a block, a claimed base, a bad lookup.
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_create_lvstore", "Malloc1", "lvs0"]),
        (-17, "File exists".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_create_lvstore", "nope", "lvsX"]),
        (-19, "No such device".into())
    );
    assert_eq!(
        spdk_err(
            &t,
            &["bdev_lvol_create_lvstore", "Malloc1", "lvsX", "-c", "256"]
        ),
        (-22, "Invalid argument".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_create_lvstore", "Malloc0", "lvsX"]),
        (-1, "Operation not permitted".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_get_lvstores", "-l", "nope"]),
        (-19, "No such device".into())
    );
    assert_eq!(
        spdk_err(
            &t,
            &[
                "bdev_lvol_get_lvstores",
                "-l",
                "lvs0",
                "-u",
                uuid.as_str().unwrap()
            ]
        ),
        (-22, "Invalid argument".into())
    );
    assert_eq!(
        t.rpc("bdev_lvol_get_lvstores", json!({"bogus": 1}))
            .unwrap_err()
            .0,
        -32603
    );

    // Rename: the store and every lvol alias.
    t.spdk_ok(&["bdev_lvol_create", "-l", "lvs0", "-t", "lv0", "4"]);
    t.spdk_ok(&["bdev_lvol_create_lvstore", "Malloc1", "lvs1"]);
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_rename_lvstore", "lvs0", "lvs1"]),
        (-32602, "File exists".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_rename_lvstore", "nope", "lvs9"]),
        (-2, "Lvol store nope not found".into())
    );
    t.spdk_ok(&["bdev_lvol_rename_lvstore", "lvs0", "lvsA"]);
    let b = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", "lvsA/lv0"]));
    assert_eq!(b[0]["aliases"], json!(["lvsA/lv0"]));
    assert_eq!(spdk_err(&t, &["bdev_get_bdevs", "-b", "lvs0/lv0"]).0, -19);
    t.spdk_ok(&["bdev_lvol_grow_lvstore", "-l", "lvsA"]);

    // Delete: the lvols go, and the base holds no lvstore any more.
    t.spdk_ok(&["bdev_lvol_delete_lvstore", "-l", "lvsA"]);
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_get_lvstores", "-l", "lvsA"]),
        (-19, "No such device".into())
    );
    assert_eq!(spdk_err(&t, &["bdev_get_bdevs", "-b", "lvsA/lv0"]).0, -19);
    t.spdk_ok(&["bdev_lvol_create_lvstore", "Malloc0", "lvsA"]);
    let lvols = parse(&t.spdk_ok(&["bdev_lvol_get_lvols", "-l", "lvsA"]));
    assert_eq!(lvols, json!([]));
    // A save_config holds no lvstore or lvol (they live on disk).
    let cfg = t
        .ok("framework_get_config", json!({"name": "bdev"}))
        .to_string();
    assert!(
        !cfg.contains("thin_pool") && !cfg.contains("bdev_thin_activate"),
        "{cfg}"
    );
    finish(t);
}

#[test]
fn lvol_methods_answer_as_spdk() {
    let t = start("lvols");
    t.spdk_ok(&["bdev_malloc_create", "-b", "Malloc0", "64", "512"]);
    t.spdk_ok(&[
        "bdev_lvol_create_lvstore",
        "Malloc0",
        "lvs0",
        "-c",
        "2097152",
    ]);
    let lv0 = spdk_str(&t, &["bdev_lvol_create", "-l", "lvs0", "-t", "lv0", "3"]);
    let lv0 = lv0.as_str().unwrap().to_string();
    // The bdev: named by its UUID, aliased lvs/lvol, rounded to clusters.
    let b = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", &lv0]));
    assert_eq!(b[0]["name"], lv0.as_str());
    assert_eq!(b[0]["uuid"], lv0.as_str());
    assert_eq!(b[0]["aliases"], json!(["lvs0/lv0"]));
    assert_eq!(b[0]["block_size"], 512);
    assert_eq!(b[0]["num_blocks"], 4 * 2048);
    let thick = spdk_str(&t, &["bdev_lvol_create", "-l", "lvs0", "thick", "2"]);
    let free = parse(&t.spdk_ok(&["bdev_lvol_get_lvstores"]))[0]["free_clusters"].clone();
    let total = parse(&t.spdk_ok(&["bdev_lvol_get_lvstores"]))[0]["total_data_clusters"].clone();
    assert_eq!(free.as_u64().unwrap() + 1, total.as_u64().unwrap());

    assert_eq!(
        spdk_err(&t, &["bdev_lvol_create", "-l", "lvs0", "-t", "lv0", "1"]),
        (-17, "File exists".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_create", "-l", "nope", "-t", "x", "1"]),
        (-19, "No such device".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_create", "-l", "lvs0", "big", "1000"]),
        (-32602, "No space left on device".into())
    );
    let long = "n".repeat(64);
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_create", "-l", "lvs0", "-t", &long, "1"]),
        (-22, "Invalid argument".into())
    );

    // Snapshot: read-only, the origin becomes its clone.
    let snap = spdk_str(&t, &["bdev_lvol_snapshot", "lvs0/lv0", "snap0"]);
    let lvols = parse(&t.spdk_ok(&["bdev_lvol_get_lvols", "-l", "lvs0"]));
    let s = lvol(&lvols, "snap0");
    assert_eq!(s["uuid"], snap);
    assert_eq!(s["alias"], "lvs0/snap0");
    assert_eq!(s["is_snapshot"], true);
    assert_eq!(s["is_clone"], false);
    let o = lvol(&lvols, "lv0");
    assert_eq!(
        (o["is_clone"].clone(), o["is_thin_provisioned"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(o["lvs"]["name"], "lvs0");
    let keys: Vec<&String> = o.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "alias",
            "uuid",
            "name",
            "is_thin_provisioned",
            "is_snapshot",
            "is_clone",
            "is_esnap_clone",
            "is_degraded",
            "num_allocated_clusters",
            "lvs"
        ]
    );
    assert_eq!(lvol(&lvols, "thick")["is_thin_provisioned"], false);
    assert_eq!(lvol(&lvols, "thick")["num_allocated_clusters"], 1);
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_snapshot", "lvs0/snap0", "snap1"]),
        (-32602, "Invalid argument".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_snapshot", "lvs0/lv0", "thick"]),
        (-32602, "File exists".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_snapshot", "lvs0/nope", "s"]),
        (-19, "No such device".into())
    );
    // A snapshot takes no writes and does not resize.
    let b = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", "lvs0/snap0"]));
    assert_eq!(b[0]["supported_io_types"]["write"], false);
    assert_eq!(b[0]["product_name"], "Logical Volume");
    let ds = &b[0]["driver_specific"]["lvol"];
    assert_eq!(ds["base_bdev"], "Malloc0");
    assert_eq!(
        (ds["snapshot"].clone(), ds["clones"].clone()),
        (json!(true), json!(["lv0"]))
    );
    let b = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", "lvs0/lv0"]));
    assert_eq!(b[0]["driver_specific"]["lvol"]["base_snapshot"], "snap0");
    assert_eq!(b[0]["supported_io_types"]["read"], true);
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_resize", "lvs0/snap0", "8"]),
        (-32602, "Operation not permitted".into())
    );

    // Clone: only of a read-only lvol.
    let c0 = spdk_str(&t, &["bdev_lvol_clone", "lvs0/snap0", "c0"]);
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_clone", "lvs0/lv0", "c1"]),
        (-32602, "Invalid argument".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_clone", "lvs0/snap0", "c0"]),
        (-32602, "File exists".into())
    );
    let lvols = parse(&t.spdk_ok(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "c0")["uuid"], c0);
    assert_eq!(lvol(&lvols, "c0")["is_clone"], true);

    // Two clones (lv0 and c0): the snapshot cannot go.
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_delete", "lvs0/snap0"]),
        (-32603, "Operation not permitted".into())
    );
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_delete", "lvs0/nope"]),
        (-19, "No such device".into())
    );

    // Rename: the alias changes, the name (UUID) does not.
    t.spdk_ok(&["bdev_lvol_rename", "lvs0/c0", "c0r"]);
    let b = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", "lvs0/c0r"]));
    assert_eq!(b[0]["name"], c0);
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_rename", "lvs0/c0r", "lv0"]),
        (-32602, "File exists".into())
    );

    // Resize rounds up to clusters; shrinking works while not open.
    t.spdk_ok(&["bdev_lvol_resize", "lvs0/lv0", "5"]);
    let b = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", "lvs0/lv0"]));
    assert_eq!(b[0]["num_blocks"], 6 * 2048);
    t.spdk_ok(&["bdev_lvol_resize", "lvs0/lv0", "2"]);
    let b = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", "lvs0/lv0"]));
    assert_eq!(b[0]["num_blocks"], 2 * 2048);
    t.spdk_ok(&["bdev_lvol_resize", "lvs0/lv0", "5"]);

    // set_read_only makes an lvol clonable and unwritable.
    t.spdk_ok(&["bdev_lvol_set_read_only", "lvs0/thick"]);
    let b = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", "lvs0/thick"]));
    assert_eq!(b[0]["supported_io_types"]["write"], false);
    assert_eq!(b[0]["name"], thick);
    t.spdk_ok(&["bdev_lvol_clone", "lvs0/thick", "tc"]);
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_resize", "lvs0/thick", "8"]),
        (-32602, "Operation not permitted".into())
    );

    // One clone left: the snapshot hands its place to it.
    t.spdk_ok(&["bdev_lvol_delete", "lvs0/c0r"]);
    t.spdk_ok(&["bdev_lvol_delete", "lvs0/snap0"]);
    let lvols = parse(&t.spdk_ok(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "lv0")["is_clone"], false);
    assert!(lvols
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["name"] != "snap0"));
    assert_eq!(
        spdk_err(&t, &["bdev_get_bdevs", "-b", snap.as_str().unwrap()]).0,
        -19
    );
    finish(t);
}

/// The pattern written at `seed`: bytes that differ per offset and seed.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn snapshot_and_clone_data_through_nbd() {
    let t = start("lvol-data");
    t.spdk_ok(&["bdev_malloc_create", "-b", "Malloc0", "64", "512"]);
    t.spdk_ok(&[
        "bdev_lvol_create_lvstore",
        "Malloc0",
        "lvs0",
        "-c",
        "1048576",
    ]);
    t.spdk_ok(&["bdev_lvol_create", "-l", "lvs0", "-t", "lv0", "4"]);
    const MB: usize = 1 << 20;
    let a = pattern(1, 2 * MB);
    let addr = t.export("lvs0/lv0", Some("lv0"), None);
    let mut lv = tgt_util::nbd::Client::connect(&addr, "lv0").unwrap();
    lv.write(0, &a).unwrap();
    lv.flush().unwrap();
    t.spdk_ok(&["bdev_lvol_snapshot", "lvs0/lv0", "snap"]);
    let b = pattern(2, 64 << 10);
    lv.write(4096, &b).unwrap();
    t.spdk_ok(&["bdev_lvol_clone", "lvs0/snap", "clone"]);
    let addr_c = t.export("lvs0/clone", Some("clone"), Some("127.0.0.1:0"));
    let mut cl = tgt_util::nbd::Client::connect(&addr_c, "clone").unwrap();
    let c = pattern(3, 128 << 10);
    cl.write((MB + 8192) as u64, &c).unwrap();
    let addr_s = t.export("lvs0/snap", Some("snap"), Some("127.0.0.1:0"));
    let mut sn = tgt_util::nbd::Client::connect(&addr_s, "snap").unwrap();

    let mut want_lv = a.clone();
    want_lv[4096..4096 + b.len()].copy_from_slice(&b);
    let mut want_clone = a.clone();
    want_clone[MB + 8192..MB + 8192 + c.len()].copy_from_slice(&c);
    assert!(
        sn.read(0, (2 * MB) as u32).unwrap() == a,
        "the snapshot changed"
    );
    assert!(
        lv.read(0, (2 * MB) as u32).unwrap() == want_lv,
        "the origin"
    );
    assert!(
        cl.read(0, (2 * MB) as u32).unwrap() == want_clone,
        "the clone"
    );
    // Past what was written: zeros everywhere.
    assert!(cl
        .read((3 * MB) as u64, 4096)
        .unwrap()
        .iter()
        .all(|&x| x == 0));
    // The clone owns only what it wrote (one cluster).
    let lvols = parse(&t.spdk_ok(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "clone")["num_allocated_clusters"], 1);
    assert_eq!(lvol(&lvols, "lv0")["num_allocated_clusters"], 1);
    assert_eq!(lvol(&lvols, "snap")["num_allocated_clusters"], 2);

    // Beyond SPDK, by the same names: the blocks that differ between the
    // snapshot and the clone (an incremental backup), and a snapshot of
    // the clone, whose clone can be snapshotted again.
    let d = t.ok(
        "bdev_thin_delta",
        json!({"name": "lvs0/clone", "base": "lvs0/snap"}),
    );
    let differ: Vec<&Value> = d
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] != "same")
        .collect();
    assert_eq!(differ.len(), 1, "{d}");
    assert_eq!(
        (differ[0]["begin"].clone(), differ[0]["length"].clone()),
        (json!(1), json!(1))
    );
    t.spdk_ok(&["bdev_lvol_snapshot", "lvs0/clone", "cs"]);
    t.spdk_ok(&["bdev_lvol_clone", "lvs0/cs", "cc"]);
    t.spdk_ok(&["bdev_lvol_snapshot", "lvs0/cc", "ccs"]);
    let addr_cc = t.export("lvs0/ccs", Some("ccs"), Some("127.0.0.1:0"));
    let mut ccs = tgt_util::nbd::Client::connect(&addr_cc, "ccs").unwrap();
    assert!(
        ccs.read(0, (2 * MB) as u32).unwrap() == want_clone,
        "a third-level snapshot"
    );
    drop(ccs);
    for n in ["ccs", "cc", "cs"] {
        t.spdk_ok(&["bdev_lvol_delete", &format!("lvs0/{n}")]);
    }

    // Inflate the clone: parentless and thick, its data unchanged; then
    // the snapshot (one clone left, lv0) can go and both keep their data.
    t.spdk_ok(&["bdev_lvol_inflate", "lvs0/clone"]);
    let lvols = parse(&t.spdk_ok(&["bdev_lvol_get_lvols"]));
    let c = lvol(&lvols, "clone");
    assert_eq!(c["is_clone"], false);
    assert_eq!(c["is_thin_provisioned"], false);
    assert_eq!(c["num_allocated_clusters"], 4);
    assert!(cl.read(0, (4 * MB) as u32).unwrap()[..2 * MB] == want_clone[..]);
    // Deleted while exported, as SPDK allows: its users see it removed.
    t.spdk_ok(&["bdev_lvol_delete", "lvs0/snap"]);
    assert!(t
        .rpc("bdev_get_bdevs", json!({"name": "lvs0/snap"}))
        .is_err());
    drop(sn);
    let all = cl.read(0, (4 * MB) as u32).unwrap();
    assert!(
        all[..2 * MB] == want_clone[..],
        "the clone lost data with its snapshot"
    );
    assert!(
        all[2 * MB..].iter().all(|&x| x == 0),
        "inflated blocks are not zero"
    );
    assert!(
        lv.read(0, (2 * MB) as u32).unwrap() == want_lv,
        "lv0 lost data"
    );
    // decouple_parent of an lvol without one: SPDK's EINVAL.
    assert_eq!(
        spdk_err(&t, &["bdev_lvol_decouple_parent", "lvs0/lv0"]),
        (-32602, "Invalid argument".into())
    );
    drop((lv, cl));
    finish(t);
}

#[test]
fn an_lvstore_comes_back_from_its_base_bdev_alone() {
    let dir = tgt_util::scratch("lvol-restart");
    let img = dir.join("base.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let ext = dir.join("ext.img");
    std::fs::File::create(&ext)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    // The esnap clone's bdev comes after the lvstore's: its clone is
    // degraded at load, then comes online when Ext0 appears (found by its
    // UUID, so the config gives it one, as SPDK configs do).
    let cfg = tgt_util::json_config(
        &dir,
        json!([{"method": "bdev_uring_create",
                "params": {"name": "Base0", "filename": img.to_str().unwrap(), "block_size": 512}},
               {"method": "bdev_uring_create",
                "params": {"name": "Ext0", "filename": ext.to_str().unwrap(), "block_size": 512,
                           "uuid": "5e7c0a1d-0000-4000-8000-00000000e0e0"}}]),
    );
    let args = ["-m", "0x3", "--json", cfg.to_str().unwrap()];
    let t = Tgt::start_in(dir.clone(), &args);
    let ext_data = pattern(9, 4 << 20);
    let addr = t.export("Ext0", Some("ext"), None);
    let mut c = tgt_util::nbd::Client::connect(&addr, "ext").unwrap();
    c.write(0, &ext_data).unwrap();
    c.flush().unwrap();
    drop(c);
    t.ok("nbd_stop_disk", json!({"nbd_device": addr}));
    let lvs = spdk_str(
        &t,
        &["bdev_lvol_create_lvstore", "Base0", "lvs0", "-c", "1048576"],
    );
    t.spdk_ok(&["bdev_lvol_clone_bdev", "Ext0", "lvs0", "e0"]);
    t.spdk_ok(&["bdev_lvol_create", "-l", "lvs0", "-t", "lv0", "4"]);
    let addr = t.export("lvs0/lv0", Some("lv0"), None);
    let mut c = tgt_util::nbd::Client::connect(&addr, "lv0").unwrap();
    let data = pattern(7, 1 << 20);
    c.write(0, &data).unwrap();
    c.flush().unwrap();
    drop(c);
    t.spdk_ok(&["bdev_lvol_snapshot", "lvs0/lv0", "snap"]);
    t.spdk_ok(&["bdev_lvol_clone", "lvs0/snap", "clone"]);
    t.spdk_ok(&["bdev_lvol_create", "-l", "lvs0", "thick", "2"]);
    t.spdk_ok(&["bdev_lvol_resize", "lvs0/lv0", "5"]);
    t.spdk_ok(&["bdev_lvol_rename", "lvs0/clone", "clone2"]);
    let before_lvols = parse(&t.spdk_ok(&["bdev_lvol_get_lvols"]));
    let before_bdevs = parse(&t.spdk_ok(&["bdev_get_bdevs"]));
    t.stop();

    let t = Tgt::start_in(dir.clone(), &args);
    // Examine runs when Base0 appears; bdev_wait_for_examine answers once
    // it has brought up every lvol (SPDK's flow after a start).
    t.spdk_ok(&["bdev_wait_for_examine"]);
    let lvols = parse(&t.spdk_ok(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvols, before_lvols, "{}", t.log());
    let after = parse(&t.spdk_ok(&["bdev_lvol_get_lvstores"]));
    assert_eq!(after[0]["uuid"], lvs);
    let after_bdevs = parse(&t.spdk_ok(&["bdev_get_bdevs"]));
    let lvols_only = |b: &&Value| b["name"] != "Base0" && b["name"] != "Ext0";
    for b in before_bdevs.as_array().unwrap().iter().filter(lvols_only) {
        let a = after_bdevs
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == b["name"])
            .unwrap_or_else(|| panic!("{} did not come back", b["name"]));
        for k in [
            "aliases",
            "uuid",
            "num_blocks",
            "block_size",
            "supported_io_types",
        ] {
            assert_eq!(a[k], b[k], "{k} of {}", b["name"]);
        }
    }
    let addr = t.export("lvs0/clone2", Some("c"), None);
    let mut c = tgt_util::nbd::Client::connect(&addr, "c").unwrap();
    assert!(c.read(0, 1 << 20).unwrap() == data, "the clone's data");
    drop(c);
    let addr = t.export("lvs0/e0", Some("e0"), Some("127.0.0.1:0"));
    let mut c = tgt_util::nbd::Client::connect(&addr, "e0").unwrap();
    assert!(
        c.read(0, 4 << 20).unwrap() == ext_data,
        "the esnap clone's data"
    );
    drop(c);
    t.stop();

    // Without Ext0 the esnap clone is listed degraded (no bdev); it comes
    // online when a bdev with its external snapshot's UUID is created.
    let only_base = tgt_util::json_config(
        &dir,
        json!([{"method": "bdev_uring_create",
                "params": {"name": "Base0", "filename": img.to_str().unwrap(), "block_size": 512}}]),
    );
    let t = Tgt::start_in(
        dir.clone(),
        &["-m", "0x3", "--json", only_base.to_str().unwrap()],
    );
    let degraded = |t: &Tgt| -> Vec<String> {
        t.ok("bdev_lvol_get_lvols", Value::Null)
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["is_degraded"] == true)
            .map(|l| l["name"].as_str().unwrap().to_string())
            .collect()
    };
    let wait_for = |t: &Tgt, want: &[&str]| {
        t.spdk_ok(&["bdev_wait_for_examine"]);
        let n = t
            .ok("bdev_lvol_get_lvols", Value::Null)
            .as_array()
            .map_or(0, |a| a.len());
        assert_eq!(n, 5);
        assert_eq!(degraded(t), want, "{}", t.log());
    };
    wait_for(&t, &["e0"]);
    assert_eq!(spdk_err(&t, &["bdev_get_bdevs", "-b", "lvs0/e0"]).0, -19);
    t.ok(
        "bdev_uring_create",
        json!({"name": "Ext0", "filename": ext.to_str().unwrap(), "block_size": 512,
               "uuid": "5e7c0a1d-0000-4000-8000-00000000e0e0"}),
    );
    wait_for(&t, &[]);
    t.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_lvstore_grows_with_its_base_bdev() {
    let t = start("lvol-grow");
    let img = t.dir.join("base.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    t.spdk_ok(&["bdev_uring_create", img.to_str().unwrap(), "Base0", "512"]);
    t.spdk_ok(&["bdev_lvol_create_lvstore", "Base0", "lvs0", "-c", "1048576"]);
    let clusters = |t: &Tgt| -> u64 {
        parse(&t.spdk_ok(&["bdev_lvol_get_lvstores", "-l", "lvs0"]))[0]["total_data_clusters"]
            .as_u64()
            .unwrap()
    };
    let before = clusters(&t);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    t.spdk_ok(&["bdev_uring_rescan", "Base0"]);
    t.spdk_ok(&["bdev_lvol_grow_lvstore", "-l", "lvs0"]);
    assert_eq!(clusters(&t), before + 32);
    // The new clusters are usable: a thick lvol that needs them fits.
    let size = (before + 8).to_string();
    t.spdk_ok(&["bdev_lvol_create", "-l", "lvs0", "big", &size]);
    finish(t);
}

/// bdev_lvol_set_parent: a thin lvol reads its unwritten clusters from
/// the snapshot; its writes there copy, never touching the snapshot, also
/// after a restart (dm-thin sees the shared blocks as shared on disk too).
#[test]
fn set_parent_shares_the_snapshot_and_writes_copy() {
    let dir = tgt_util::scratch("lvol-set-parent");
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
    const MB: usize = 1 << 20;
    let t = Tgt::start_in(dir.clone(), &args);
    t.spdk_ok(&["bdev_lvol_create_lvstore", "Base0", "lvs0", "-c", "1048576"]);
    t.spdk_ok(&["bdev_lvol_create", "-l", "lvs0", "-t", "x", "3"]);
    t.spdk_ok(&["bdev_lvol_create", "-l", "lvs0", "-t", "y", "3"]);
    let p1 = pattern(21, 3 * MB);
    let q = pattern(22, MB);
    let addr = t.export("lvs0/x", Some("x"), None);
    let mut x = tgt_util::nbd::Client::connect(&addr, "x").unwrap();
    x.write(0, &p1).unwrap();
    x.flush().unwrap();
    drop(x);
    // y owns cluster 2; clusters 0 and 1 will come from the snapshot.
    let addr = t.export("lvs0/y", Some("y"), Some("127.0.0.1:0"));
    let mut y = tgt_util::nbd::Client::connect(&addr, "y").unwrap();
    y.write(2 * MB as u64, &q).unwrap();
    y.flush().unwrap();
    t.spdk_ok(&["bdev_lvol_snapshot", "lvs0/x", "xs"]);
    t.spdk_ok(&["bdev_lvol_set_parent", "lvs0/y", "lvs0/xs"]);
    let lvols = parse(&t.spdk_ok(&["bdev_lvol_get_lvols"]));
    assert_eq!(lvol(&lvols, "y")["is_clone"], true);
    assert_eq!(lvol(&lvols, "y")["num_allocated_clusters"], 1);
    let mut want = p1[..2 * MB].to_vec();
    want.extend_from_slice(&q);
    assert!(
        y.read(0, (3 * MB) as u32).unwrap() == want,
        "the parent's clusters, its own"
    );
    // A write into cluster 0 copies it first.
    let w = pattern(23, 4096);
    y.write(8192, &w).unwrap();
    y.flush().unwrap();
    want[8192..8192 + 4096].copy_from_slice(&w);
    assert!(y.read(0, (3 * MB) as u32).unwrap() == want);
    let addr = t.export("lvs0/xs", Some("xs"), Some("127.0.0.1:0"));
    let mut xs = tgt_util::nbd::Client::connect(&addr, "xs").unwrap();
    assert!(
        xs.read(0, (3 * MB) as u32).unwrap() == p1,
        "the snapshot changed"
    );
    drop((y, xs));
    t.stop();

    // After a restart, cluster 1 is still shared, as the on-disk time
    // stamps say: a write into it copies too.
    let t = Tgt::start_in(dir.clone(), &args);
    t.spdk_ok(&["bdev_wait_for_examine"]);
    let addr = t.export("lvs0/y", Some("y"), None);
    let mut y = tgt_util::nbd::Client::connect(&addr, "y").unwrap();
    assert!(y.read(0, (3 * MB) as u32).unwrap() == want);
    let w2 = pattern(24, 4096);
    y.write(MB as u64 + 4096, &w2).unwrap();
    y.flush().unwrap();
    want[MB + 4096..MB + 8192].copy_from_slice(&w2);
    assert!(y.read(0, (3 * MB) as u32).unwrap() == want);
    let addr = t.export("lvs0/xs", Some("xs"), Some("127.0.0.1:0"));
    let mut xs = tgt_util::nbd::Client::connect(&addr, "xs").unwrap();
    assert!(
        xs.read(0, (3 * MB) as u32).unwrap() == p1,
        "the snapshot changed after a restart"
    );
    let addr = t.export("lvs0/x", Some("x"), Some("127.0.0.1:0"));
    let mut x = tgt_util::nbd::Client::connect(&addr, "x").unwrap();
    assert!(
        x.read(0, (3 * MB) as u32).unwrap() == p1,
        "the origin changed"
    );
    drop((y, xs, x));
    t.stop();
    let o = std::process::Command::new("thin_check")
        .arg(&img)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Beyond SPDK: the pool's mode and events in bdev_lvol_get_lvstores. A
/// thin lvol written past the lvstore's space fails the write (at once,
/// as SPDK's does) and the lvstore shows the pool out of data space.
#[test]
fn a_full_lvstore_shows_its_mode_and_events() {
    let t = start("lvol-full");
    t.spdk_ok(&["bdev_malloc_create", "-b", "Malloc0", "16", "512"]);
    t.spdk_ok(&[
        "bdev_lvol_create_lvstore",
        "Malloc0",
        "lvs0",
        "-c",
        "1048576",
    ]);
    let lvs = &parse(&t.spdk_ok(&["bdev_lvol_get_lvstores"]))[0];
    assert_eq!(lvs["mode"], "write");
    assert_eq!(lvs["needs_check"], false);
    assert_eq!(lvs["recent_events"], json!([]));
    let free = lvs["free_clusters"].as_u64().unwrap() as usize;
    t.spdk_ok(&["bdev_lvol_create", "-l", "lvs0", "-t", "lv0", "64"]);
    let addr = t.export("lvs0/lv0", Some("lv0"), None);
    let mut c = tgt_util::nbd::Client::connect(&addr, "lv0").unwrap();
    let chunk = pattern(5, 1 << 20);
    let mut failed_at = None;
    for i in 0..free + 2 {
        match c.write((i << 20) as u64, &chunk) {
            Ok(0) => {}
            _ => {
                failed_at = Some(i);
                break;
            }
        }
    }
    assert_eq!(
        failed_at,
        Some(free),
        "the write past the last free cluster fails"
    );
    drop(c);
    let lvs = &parse(&t.spdk_ok(&["bdev_lvol_get_lvstores"]))[0];
    assert_eq!(lvs["mode"], "out_of_data_space", "{lvs}");
    assert_eq!(lvs["free_clusters"], 0);
    let events = lvs["recent_events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "mode_changed" && e["mode"] == "out_of_data_space"),
        "{lvs}"
    );
    finish(t);
}
