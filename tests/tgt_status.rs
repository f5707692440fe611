//! `ferrothin status` (issue 25, point 10) on a pool with a snapshot
//! chain and an export: the lvs-like line, the tree, the exports, the
//! overprovisioning warning, in text and JSON.

mod tgt_util;

use std::process::Command;

use serde_json::{json, Value};
use tgt_util::{nbd::Client, Tgt};

fn status(t: &Tgt, extra: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .arg("status")
        .arg("-r")
        .arg(&t.sock)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "status {extra:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?}:\n{text}"))
}

#[test]
fn status_shows_the_pool_its_snapshot_chain_and_exports() {
    let t = Tgt::start("status", &["--empty", "-m", "0x3"]);
    // 16 MiB of data: 256 blocks of 64 KiB.
    t.malloc_pool("pool", 4096, json!({}));
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "vol", "size_in_mib": 8}),
    );
    let addr = t.export("vol", None, None);
    let mut c = Client::connect(&addr, "vol").unwrap();
    assert_eq!(c.write(0, &[1u8; 4096]).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    drop(c);
    t.ok(
        "bdev_thin_snapshot",
        json!({"origin": "vol", "name": "snap1"}),
    );
    t.ok(
        "bdev_thin_snapshot",
        json!({"origin": "snap1", "name": "snap2"}),
    );

    let text = status(&t, &[]);
    assert!(text.starts_with("POOL "), "{text}");
    let p = line(&text, "pool ");
    for want in ["write", "16.00MiB", "no", "unset", "24.00MiB"] {
        assert!(p.contains(want), "{want} not in {p:?}");
    }
    let vol = line(&text, "  vol dev 0 size 8.00MiB mapped 64.00KiB");
    assert!(vol.contains(&format!("exported nbd://{addr}/vol")), "{vol}");
    let s1 = line(&text, "    └─ snap1 dev 1 size 8.00MiB mapped 64.00KiB");
    assert!(s1.ends_with("origin vol"), "{s1}");
    let s2 = line(&text, "      └─ snap2 dev 2");
    assert!(s2.ends_with("origin snap1"), "{s2}");
    // 24 MiB of volumes in a 16 MiB pool.
    let w = line(
        &text,
        "  WARNING: 24.00MiB of volumes in a 16.00MiB pool (1.50x, over 1.00x)",
    );
    assert!(w.contains("grow it"), "{w}");
    let relaxed = status(&t, &["--overprovision-ratio", "2"]);
    assert!(!relaxed.contains("WARNING"), "{relaxed}");

    let j: Value = serde_json::from_str(&status(&t, &["--json"])).unwrap();
    let pool = &j[0];
    assert_eq!(pool["name"], "pool");
    assert_eq!(pool["mode"], "write");
    assert_eq!(pool["size"], 16 << 20);
    assert_eq!(pool["virtual_size"], 24 << 20);
    assert_eq!(pool["overprovisioned"], true);
    let vol = &pool["devices"][0];
    assert_eq!(vol["name"], "vol");
    assert_eq!(vol["exports"], json!([format!("nbd://{addr}/vol")]));
    assert_eq!(vol["mapped"], 65536);
    let snap2 = &vol["children"][0]["children"][0];
    assert_eq!(snap2["name"], "snap2");
    assert_eq!(snap2["origin"], "snap1");
    assert_eq!(pool["devices"].as_array().unwrap().len(), 1, "{j}");
    t.stop();
}

#[test]
fn status_without_a_daemon_says_where_it_looked() {
    let dir = tgt_util::scratch("status-none");
    let sock = dir.join("none.sock");
    let o = Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .args(["status", "-r"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("cannot reach the daemon at {}", sock.display())),
        "{err}"
    );
}
