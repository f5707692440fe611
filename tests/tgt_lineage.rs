//! Snapshot lineage after deletes (issue 25, point 11): deleting the
//! middle of a chain re-parents its child to the deleted device's origin,
//! in bdev_thin_get_volumes and in save_config.

mod tgt_util;

use serde_json::{json, Value};
use tgt_util::Tgt;

#[test]
fn deleting_a_middle_snapshot_reparents_its_child() {
    let t = Tgt::start("lineage", &["--empty", "-m", "0x3"]);
    t.malloc_pool("pool", 4096, json!({}));
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "vol", "size_in_mib": 8, "dev_id": 0}),
    );
    t.ok(
        "bdev_thin_snapshot",
        json!({"origin": "vol", "name": "s1", "dev_id": 1}),
    );
    t.ok(
        "bdev_thin_snapshot",
        json!({"origin": "s1", "name": "s2", "dev_id": 2}),
    );
    let s2 = &t.ok("bdev_thin_get_volumes", json!({"name": "s2"}))[0];
    assert_eq!(
        (&s2["origin"], &s2["origin_dev_id"]),
        (&json!("s1"), &json!(1))
    );

    t.ok("bdev_thin_delete", json!({"name": "s1"}));
    let s2 = &t.ok("bdev_thin_get_volumes", json!({"name": "s2"}))[0];
    assert_eq!(
        (&s2["origin"], &s2["origin_dev_id"]),
        (&json!("vol"), &json!(0)),
        "{s2}"
    );
    let saved = t.ok("save_config", Value::Null);
    let activations: Vec<&Value> = saved["subsystems"][0]["config"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["method"] == "bdev_thin_activate")
        .map(|c| &c["params"])
        .collect();
    let s2 = activations.iter().find(|p| p["name"] == "s2").unwrap();
    assert_eq!(s2["origin_dev_id"], 0, "{saved}");
    assert!(
        activations.iter().all(|p| p["origin_dev_id"] != 1),
        "a saved origin names the deleted device: {saved}"
    );
    t.stop();
}
