//! The daemon's JSON-RPC, driven by SPDK's own client (spdk-rpc) and by
//! raw bytes: every method family, SPDK's error shapes, and a daemon that
//! carries on after bad input.

mod tgt_util;

use serde_json::{json, Value};
use tgt_util::Tgt;

/// A delta's ranges that differ.
fn differing(d: &Value) -> Vec<&Value> {
    d.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] != "same")
        .collect()
}

fn parse(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn spdk_rpc_drives_framework_and_bdev_methods() {
    let t = Tgt::start("framework", &["--empty", "-m", "0x3"]);
    let v = parse(&t.spdk_ok(&["spdk_get_version"]));
    assert!(v["version"].as_str().unwrap().starts_with("ferrothin v"));
    assert!(v["fields"]["major"].is_u64());
    let methods = parse(&t.spdk_ok(&["rpc_get_methods"]));
    for m in [
        "bdev_thin_pool_create",
        "nbd_start_disk",
        "notify_get_notifications",
    ] {
        assert!(methods.as_array().unwrap().iter().any(|x| x == m), "{m}");
    }
    let current = parse(&t.spdk_ok(&["rpc_get_methods", "--current"]));
    assert!(!current
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "framework_start_init"));
    let r = parse(&t.spdk_ok(&["framework_get_reactors"]));
    assert_eq!(r["reactors"].as_array().unwrap().len(), 2);
    let subs = parse(&t.spdk_ok(&["framework_get_subsystems"]));
    assert_eq!(subs[0]["subsystem"], "bdev");
    assert_eq!(subs[1]["depends_on"], json!(["bdev"]));
    t.spdk_ok(&["framework_wait_init"]);

    // Each module's create, query and delete.
    let img = t.dir.join("f.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let img = img.to_str().unwrap();
    assert_eq!(
        t.spdk_ok(&["bdev_malloc_create", "-b", "M0", "16", "512"])
            .trim(),
        "M0"
    );
    assert_eq!(
        t.spdk_ok(&["bdev_null_create", "N0", "16", "4096"]).trim(),
        "N0"
    );
    t.spdk_ok(&["bdev_null_resize", "N0", "32"]);
    t.spdk_ok(&["bdev_uring_create", img, "U0"]);
    t.spdk_ok(&["bdev_error_create", "M0"]);
    t.spdk_ok(&[
        "bdev_error_inject_error",
        "EE_M0",
        "read",
        "failure",
        "-n",
        "1",
    ]);
    t.spdk_ok(&["bdev_malloc_create", "-b", "M1", "16", "512"]);
    t.spdk_ok(&[
        "bdev_delay_create",
        "-b",
        "M1",
        "-d",
        "D1",
        "-r",
        "10",
        "-t",
        "20",
        "-w",
        "10",
        "-n",
        "20",
    ]);
    t.spdk_ok(&["bdev_wait_for_examine"]);
    let all = parse(&t.spdk_ok(&["bdev_get_bdevs"]));
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["M0", "N0", "U0", "EE_M0", "M1", "D1"]);
    let n0 = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", "N0"]));
    assert_eq!(n0[0]["num_blocks"], 32 * 256);
    assert_eq!(n0[0]["supported_io_types"].as_object().unwrap().len(), 22);
    let keys: Vec<&String> = n0[0].as_object().unwrap().keys().collect();
    assert_eq!(keys[..3], ["name", "aliases", "product_name"]);
    let m0 = parse(&t.spdk_ok(&["bdev_get_bdevs", "-b", "M0"]));
    assert_eq!(
        (m0[0]["claimed"].as_bool(), m0[0]["claim_type"].as_str()),
        (Some(true), Some("exclusive_write"))
    );
    let st = parse(&t.spdk_ok(&["bdev_get_iostat", "--names", "U0"]));
    assert_eq!(st["bdevs"][0]["name"], "U0");
    assert!(st["tick_rate"].as_u64().unwrap() > 0);
    let types = parse(&t.spdk_ok(&["notify_get_types"]));
    assert!(types
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "bdev_register"));
    let notes = parse(&t.spdk_ok(&["notify_get_notifications", "-i", "0", "-n", "100"]));
    assert!(notes
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["type"] == "bdev_resize" && n["ctx"] == "N0"));

    // aio is served by the uring module.
    let img2 = t.dir.join("g.img");
    std::fs::File::create(&img2)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    t.spdk_ok(&["bdev_aio_create", img2.to_str().unwrap(), "A0", "4096"]);
    t.spdk_ok(&["bdev_aio_delete", "A0"]);
    for del in [
        &["bdev_delay_delete", "D1"][..],
        &["bdev_malloc_delete", "M1"],
        &["bdev_error_delete", "EE_M0"],
        &["bdev_malloc_delete", "M0"],
        &["bdev_null_delete", "N0"],
        &["bdev_uring_delete", "U0"],
    ] {
        t.spdk_ok(del);
    }
    assert_eq!(parse(&t.spdk_ok(&["bdev_get_bdevs"])), json!([]));
    t.stop();
}

#[test]
fn thin_and_nbd_methods_through_the_plugin() {
    let t = Tgt::start("thin", &["--empty", "-m", "0x3"]);
    t.spdk_ok(&["bdev_malloc_create", "-b", "Meta", "8", "4096"]);
    t.spdk_ok(&["bdev_malloc_create", "-b", "Data", "64", "4096"]);
    let p = t.spdk_ok(&[
        "bdev_thin_pool_create",
        "pool0",
        "Meta",
        "-d",
        "Data",
        "--metadata-core",
        "1",
        "--commit-period-ms",
        "200",
        "--low-water-mark-blocks",
        "10",
        "--discard",
        "passdown",
    ]);
    assert_eq!(p.trim(), "pool0");
    assert_eq!(
        t.spdk_ok(&["bdev_thin_create", "pool0", "v0", "32", "-i", "5"])
            .trim(),
        "v0"
    );
    let addr = t.spdk_ok(&["nbd_export_start", "v0", "127.0.0.1:0", "-e", "volume"]);
    let addr = addr.trim();
    let mut c = tgt_util::nbd::Client::connect(addr, "volume").unwrap();
    assert_eq!(c.write(0, &[7u8; 65536]).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    let root = t.spdk_ok(&["bdev_thin_pool_reserve_metadata_snap", "pool0"]);
    assert!(root.trim().parse::<u64>().is_ok_and(|r| r > 0), "{root}");
    assert_eq!(c.write(131072, &[8u8; 4096]).unwrap(), 0);
    assert_eq!(c.flush().unwrap(), 0);
    let d = parse(&t.spdk_ok(&["bdev_thin_delta", "v0", "metadata_snap"]));
    let changed = differing(&d);
    assert_eq!(
        changed,
        [&json!({"kind": "right_only", "begin": 2, "length": 1})],
        "{d}"
    );
    t.spdk_ok(&["bdev_thin_pool_release_metadata_snap", "pool0"]);
    assert_eq!(t.spdk_ok(&["bdev_thin_snapshot", "v0", "s0"]).trim(), "s0");
    assert_eq!(c.write(0, &[9u8; 4096]).unwrap(), 0);
    let d = parse(&t.spdk_ok(&["bdev_thin_delta", "s0", "v0"]));
    let changed = differing(&d);
    assert_eq!(changed.len(), 1, "{d}");
    assert_eq!(
        (changed[0]["kind"].as_str(), changed[0]["begin"].as_u64()),
        (Some("different"), Some(0)),
        "{d}"
    );
    t.spdk_ok(&["bdev_thin_resize", "v0", "48"]);
    let vols = parse(&t.spdk_ok(&["bdev_thin_get_volumes", "-p", "pool0"]));
    let v0 = vols
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "v0")
        .unwrap();
    assert_eq!(
        (v0["dev_id"].as_u64(), v0["size"].as_u64()),
        (Some(5), Some(48 << 20))
    );
    assert!(v0["shared_blocks"].as_u64().unwrap() >= 1, "{v0}");
    let s0 = vols
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "s0")
        .unwrap();
    assert_eq!(
        (s0["origin"].as_str(), s0["origin_dev_id"].as_u64()),
        (Some("v0"), Some(5)),
        "{s0}"
    );
    assert!(v0["origin"].is_null());
    t.spdk_ok(&["bdev_thin_pool_set_transaction_id", "pool0", "0", "42"]);
    let pools = parse(&t.spdk_ok(&["bdev_thin_pool_get_pools", "-n", "pool0"]));
    assert_eq!(
        (
            pools[0]["transaction_id"].as_u64(),
            pools[0]["mode"].as_str()
        ),
        (Some(42), Some("write"))
    );
    // Data used: the 64 KiB block written, the one after the metadata
    // snapshot, and the copy made after the snapshot of v0.
    assert_eq!(pools[0]["used_data_blocks"], 3, "{pools}");
    assert!(pools[0]["used_metadata_blocks"].as_u64().unwrap() > 0);
    assert!(pools[0]["options"]["commit_period_ms"] == 200);
    t.spdk_ok(&["bdev_thin_pool_resize", "pool0"]);

    let list = parse(&t.spdk_ok(&["nbd_export_list"]));
    assert_eq!(
        list,
        json!([{"nbd_device": addr, "bdev_name": "v0", "export_name": "volume"}])
    );
    drop(c);
    t.spdk_ok(&["nbd_export_stop", addr, "-e", "volume"]);
    assert_eq!(parse(&t.spdk_ok(&["nbd_get_disks"])), json!([]));
    // SPDK's own nbd commands work with an address for nbd_device.
    let a2 = t.spdk_ok(&["nbd_start_disk", "s0", "127.0.0.1:0"]);
    t.spdk_ok(&["nbd_stop_disk", a2.trim()]);
    t.spdk_ok(&["bdev_thin_delete", "s0"]);
    t.spdk_ok(&["bdev_thin_pool_delete", "pool0"]);
    assert_eq!(parse(&t.spdk_ok(&["bdev_thin_pool_get_pools"])), json!([]));
    t.stop();
}

/// SPDK's error object for each kind of bad input; the daemon carries on.
#[test]
fn bad_requests_get_spdk_errors_and_the_daemon_carries_on() {
    let t = Tgt::start("errors", &["--empty"]);
    let code = |m: &str, p: Value| t.rpc(m, p).expect_err(m).0;
    assert_eq!(code("no_such_method", Value::Null), -32601);
    // Wrong type, missing, unknown parameters: the module's decode error.
    assert_eq!(
        code(
            "bdev_malloc_create",
            json!({"num_blocks": "x", "block_size": 512})
        ),
        -32603
    );
    assert_eq!(
        code("bdev_malloc_create", json!({"block_size": 512})),
        -32603
    );
    assert_eq!(code("bdev_thin_create", json!({"pool": "p"})), -32603);
    assert_eq!(code("nbd_start_disk", json!({"bdev": "x"})), -32603);
    assert_eq!(code("spdk_get_version", json!({})), -32602);
    assert_eq!(
        code("framework_get_config", json!({"name": "nope"})),
        -32602
    );
    assert_eq!(code("framework_start_init", Value::Null), -1);
    t.ok(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 2048, "block_size": 4096}),
    );
    assert_eq!(
        code(
            "bdev_malloc_create",
            json!({"name": "M0", "num_blocks": 8, "block_size": 512})
        ),
        -17
    );
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "p0", "metadata_bdev": "M0"}),
    );
    // Deleting a claimed bdev, and exporting one.
    assert_eq!(code("bdev_malloc_delete", json!({"name": "M0"})), -1);
    // bdev_get_bdevs waits for a bdev with a timeout, then gives up (-110).
    let started = std::time::Instant::now();
    assert_eq!(
        code("bdev_get_bdevs", json!({"name": "late", "timeout": 300})),
        -110
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let waiter = {
        let sock = t.sock.clone();
        std::thread::spawn(move || {
            let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
            use std::io::{Read, Write};
            s.write_all(
                br#"{"method":"bdev_get_bdevs","id":1,"params":{"name":"late","timeout":20000}}"#,
            )
            .unwrap();
            let mut buf = vec![0u8; 65536];
            let n = s.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    t.ok(
        "bdev_null_create",
        json!({"name": "late", "num_blocks": 8, "block_size": 512}),
    );
    let got = waiter.join().unwrap();
    assert!(got.contains("\"name\":\"late\""), "{got}");
    assert_eq!(
        code(
            "nbd_start_disk",
            json!({"bdev_name": "M0", "nbd_device": "127.0.0.1:0"})
        ),
        -1
    );
    assert_eq!(
        code(
            "nbd_start_disk",
            json!({"bdev_name": "nope", "nbd_device": "127.0.0.1:0"})
        ),
        -19
    );
    assert_eq!(
        code(
            "nbd_start_disk",
            json!({"bdev_name": "M0", "nbd_device": "/dev/nbd0"})
        ),
        -22
    );
    assert_eq!(
        code(
            "bdev_thin_create",
            json!({"pool": "nope", "name": "v", "size_in_mib": 1})
        ),
        -19
    );

    // Raw: batch, notification, invalid request, then malformed JSON.
    let b = t.raw(
        br#"[{"jsonrpc":"2.0","method":"spdk_get_version","id":"a"},
                       {"jsonrpc":"2.0","method":"spdk_get_version"},
                       {"jsonrpc":"2.0","method":7,"id":3}]"#,
    );
    let b = b.as_array().unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0]["id"], "a");
    assert_eq!(b[1]["error"]["code"], -32600);
    assert_eq!(t.raw(b"[]")["error"]["code"], -32600);
    assert_eq!(
        t.raw(b"{\"method\": \"x\", \"id\": 1, \"params\": 3}")["error"]["code"],
        -32600
    );
    assert_eq!(t.raw(b"{\"method\" \"x\"}")["error"]["code"], -32700);
    // Split across writes, several in one write.
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&t.sock).unwrap();
        s.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"spdk_get")
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.write_all(b"_version\",\"id\":1}{\"method\":\"bdev_get_bdevs\",\"id\":2}")
            .unwrap();
        let mut got = String::new();
        let mut buf = [0u8; 65536];
        while got.matches('\n').count() < 2 {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        assert!(
            got.starts_with("{\"jsonrpc\":\"2.0\",\"id\":1,\"result\""),
            "{got}"
        );
    }
    // Still here.
    t.ok("spdk_get_version", Value::Null);
    t.stop();
}

#[test]
fn wait_for_rpc_holds_the_config_until_start_init() {
    let dir = tgt_util::scratch("wait");
    let cfg = tgt_util::json_config(
        &dir,
        json!([{"method": "bdev_set_options", "params": {"bdev_io_pool_size": 1024}},
               {"method": "bdev_malloc_create", "params": {"name": "M0", "num_blocks": 64, "block_size": 512}}]),
    );
    let t = Tgt::start_in(dir, &["--json", cfg.to_str().unwrap(), "--wait-for-rpc"]);
    assert_eq!(t.rpc("bdev_get_bdevs", Value::Null).unwrap_err().0, -1);
    let current = t.ok("rpc_get_methods", json!({"current": true}));
    assert!(current
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "framework_start_init"));
    t.ok("framework_start_init", Value::Null);
    assert_eq!(t.ok("bdev_get_bdevs", Value::Null)[0]["name"], "M0");
    assert_eq!(
        t.rpc("framework_start_init", Value::Null).unwrap_err().0,
        -1
    );
    t.stop();
}

/// Pool events reach notify_get_notifications and bdev_thin_pool_get_events.
#[test]
fn pool_events_are_notifications() {
    let t = Tgt::start("events", &["--empty", "-m", "0x3"]);
    // 1024 data blocks of 64 KiB, low water at 1020 free: the fifth
    // provisioned block crosses it.
    t.malloc_pool("p", 16384, json!({"low_water_mark_blocks": 1020}));
    t.ok(
        "bdev_thin_create",
        json!({"pool": "p", "name": "v", "size_in_mib": 16}),
    );
    let addr = t.export("v", None, None);
    let mut c = tgt_util::nbd::Client::connect(&addr, "v").unwrap();
    let before = parse(&t.spdk_ok(&["bdev_thin_pool_get_events"]));
    assert!(
        !before
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "data_low_water"),
        "{before}"
    );
    for i in 0..6u64 {
        assert_eq!(c.write(i << 16, &[1u8; 4096]).unwrap(), 0);
    }
    assert_eq!(c.flush().unwrap(), 0);
    let events = parse(&t.spdk_ok(&["bdev_thin_pool_get_events", "-i", "0"]));
    let low: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "data_low_water")
        .collect();
    assert_eq!(low.len(), 1, "{events}");
    assert_eq!(low[0]["pool"], "p");
    assert!(low[0]["free_blocks"].as_u64().unwrap() <= 1020);
    let notes = parse(&t.spdk_ok(&["notify_get_notifications"]));
    assert!(
        notes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "thin_pool_data_low_water" && n["ctx"] == "p"),
        "{notes}"
    );
    let types = parse(&t.spdk_ok(&["notify_get_types"]));
    assert!(types
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x == "thin_pool_mode_change"));
    t.stop();
}

/// Every method the daemon lists, given garbage params: an error object or
/// a result, never a dropped connection; the daemon answers afterwards.
#[test]
fn garbage_params_over_every_method_get_answers() {
    let t = Tgt::start("garbage", &["--empty"]);
    t.ok(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 256, "block_size": 4096}),
    );
    let methods = t.ok("rpc_get_methods", Value::Null);
    let garbage = [
        json!([1, 2]),
        json!({"bogus": [1]}),
        json!({"name": {"x": 1}, "bdev_name": 7, "pool": [], "nbd_device": 3}),
        json!({"name": "M0", "size_in_mib": -1, "num_blocks": "x", "sig_name": "SIGNOPE"}),
    ];
    let mut n = 0;
    for m in methods.as_array().unwrap() {
        let m = m.as_str().unwrap();
        for g in &garbage {
            let req = json!({"jsonrpc": "2.0", "method": m, "id": 1, "params": g});
            let v = t.raw(serde_json::to_vec(&req).unwrap().as_slice());
            assert!(
                v.get("error").is_some() || v.get("result").is_some(),
                "{m} {g}: {v}"
            );
            n += 1;
        }
    }
    assert!(n > 150, "{n} calls");
    t.ok("spdk_get_version", Value::Null);
    assert_eq!(
        t.ok("bdev_get_bdevs", json!({"name": "M0"}))[0]["name"],
        "M0"
    );
    t.stop();
}

/// The server closes a connection once it is done with it, as SPDK's does:
/// after answering a client that shut its writing side (`socat`, `nc -N`,
/// a shell's `printf ... | socat - UNIX-CONNECT:SOCK` wait for that), and
/// after answering a parse error.
#[test]
fn the_server_closes_after_a_half_close_and_after_a_parse_error() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    let t = Tgt::start("close", &["--empty"]);
    let read_to_eof = |s: &mut UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .map(|_| String::from_utf8_lossy(&got).into_owned())
    };

    let mut s = UnixStream::connect(&t.sock).unwrap();
    s.write_all(br#"{"jsonrpc":"2.0","method":"spdk_get_version","id":1}"#)
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = read_to_eof(&mut s).expect("EOF after the answer, within 10 s");
    assert!(got.contains("\"id\":1,\"result\""), "{got}");

    let mut s = UnixStream::connect(&t.sock).unwrap();
    s.write_all(b"{\"method\" \"x\"} ").unwrap();
    let got = read_to_eof(&mut s).expect("EOF after a parse error, within 10 s");
    assert!(got.contains("-32700"), "{got}");

    // Still serving others.
    t.ok("spdk_get_version", Value::Null);
    t.stop();
}

/// A request larger than SPDK's 256 KiB receive buffer ends its
/// connection: the client sees EOF, not a wait for the next client.
#[test]
fn an_oversized_request_ends_its_connection_with_eof() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    let t = Tgt::start("oversized", &["--empty"]);
    let mut s = UnixStream::connect(&t.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Valid JSON so far, never complete, past the limit.
    let mut big = b"{\"method\": \"spdk_get_version\", \"params\": [".to_vec();
    while big.len() < (300 << 10) {
        big.extend_from_slice(b"1, ");
    }
    // The server may close while this is still being written.
    let _ = s.write_all(&big);
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got)),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    t.ok("spdk_get_version", Value::Null);
    t.stop();
}

/// Repeated keys are refused as SPDK's strict decoder refuses them.
#[test]
fn duplicate_keys_are_refused() {
    let t = Tgt::start("dupkeys", &["--empty"]);
    let v = t.raw(
        br#"{"jsonrpc": "2.0", "id": 5, "method": "bdev_malloc_create",
            "params": {"name": "M", "num_blocks": 64, "block_size": 512, "num_blocks": 128}}"#,
    );
    assert_eq!(v["id"], 5, "{v}");
    assert_eq!(v["error"]["code"], -32602, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("duplicate key \"num_blocks\""),
        "{v}"
    );
    // Nothing was made.
    assert_eq!(t.ok("bdev_get_bdevs", Value::Null), json!([]));
    let v = t.raw(br#"{"jsonrpc": "2.0", "id": 6, "method": "spdk_get_version", "method": "x"}"#);
    assert_eq!(v["error"]["code"], -32600, "{v}");
    t.stop();
}
