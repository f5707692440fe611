//! Messages that say what is wrong and what to do (issue 25, point 7):
//! each asserts the text an operator now reads.

mod tgt_util;

use std::process::Command;

use serde_json::{json, Value};
use tgt_util::{scratch, Tgt};

/// `ferrothin ARGS` that must fail: its stderr.
fn fails(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_ferrothin"))
        .args(args)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn an_unknown_log_level_is_refused() {
    let err = fails(&[
        "--log-level",
        "bogus",
        "tgt",
        "--empty",
        "-r",
        "/nonexistent/s",
    ]);
    assert!(
        err.contains("--log-level bogus: not a level (off, error, warn, info, debug, trace)"),
        "{err}"
    );
}

#[test]
fn cores_the_machine_does_not_have_are_refused() {
    let dir = scratch("no-core");
    let sock = dir.join("s.sock");
    let err = fails(&[
        "tgt",
        "--empty",
        "-m",
        "[0,1000]",
        "-r",
        sock.to_str().unwrap(),
    ]);
    assert!(err.contains("-m [0,1000]: this machine has"), "{err}");
    assert!(err.contains("there is no core 1000"), "{err}");
}

#[test]
fn a_mistyped_yaml_module_names_the_known_ones() {
    let dir = scratch("urin");
    let cfg = dir.join("c.yaml");
    std::fs::write(
        &cfg,
        "bdevs:\n  - urin: {name: D, filename: /tmp/x.img, size_mib: 4}\n",
    )
    .unwrap();
    let sock = dir.join("s.sock");
    let err = fails(&[
        "tgt",
        "-c",
        cfg.to_str().unwrap(),
        "-r",
        sock.to_str().unwrap(),
    ]);
    assert!(
        err.contains("unknown bdev module urin; known: malloc, null, uring, aio, error, delay"),
        "{err}"
    );
}

#[test]
fn exporting_a_missing_bdev_names_it() {
    let t = Tgt::start("nbd-missing", &["--empty"]);
    let (code, msg) = t
        .rpc(
            "nbd_start_disk",
            json!({"bdev_name": "nope", "nbd_device": "127.0.0.1:0"}),
        )
        .unwrap_err();
    assert_eq!(code, -19);
    assert!(msg.contains("no bdev named \"nope\""), "{msg}");
    t.stop();
}

#[test]
fn a_pool_on_a_file_of_other_data_says_so_and_leaves_it_alone() {
    let t = Tgt::start("not-metadata", &["--empty"]);
    let img = t.dir.join("other.img");
    let junk: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 251) as u8 ^ 0x5a).collect();
    std::fs::write(&img, &junk).unwrap();
    t.ok(
        "bdev_uring_create",
        json!({"name": "Other", "filename": img}),
    );
    let (code, msg) = t
        .rpc(
            "bdev_thin_pool_create",
            json!({"name": "p", "metadata_bdev": "Other"}),
        )
        .unwrap_err();
    assert_eq!(code, -22, "{msg}");
    assert!(
        msg.contains("bdev Other holds data that is not ferrothin metadata"),
        "{msg}"
    );
    assert!(msg.contains("zero its first 4 KiB"), "{msg}");
    assert!(msg.contains("\"force_format\": true"), "{msg}");
    t.ok("bdev_uring_delete", json!({"name": "Other"}));
    assert_eq!(std::fs::read(&img).unwrap(), junk, "the file was written");
    assert_eq!(
        t.ok("bdev_thin_pool_get_pools", Value::Null)
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Asked to, it formats there, says so, and does not remember being
    // asked: a saved config would otherwise format at every start.
    t.ok(
        "bdev_uring_create",
        json!({"name": "Other", "filename": img}),
    );
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "p", "metadata_bdev": "Other", "force_format": true}),
    );
    assert!(
        t.log().contains(&format!(
            "formatting over bdev Other (file {}), which held other data",
            img.display()
        )),
        "{}",
        t.log()
    );
    let pools = t.ok("bdev_thin_pool_get_pools", json!({"name": "p"}));
    assert_eq!(pools[0]["formatted"], true, "{pools}");
    assert!(!pools.to_string().contains("force_format"), "{pools}");
    let saved = t.ok("save_config", Value::Null).to_string();
    assert!(saved.contains("bdev_thin_pool_create"), "{saved}");
    assert!(!saved.contains("force_format"), "{saved}");
    t.stop();
}

/// Point 8: a log written to a file has no colour codes; changes are
/// logged at info with their params and result, reads are not, and RPC
/// clients' connections are.
#[test]
fn the_log_tells_what_was_done_without_colour_codes() {
    let t = Tgt::start("audit", &["--empty"]);
    t.ok(
        "bdev_malloc_create",
        json!({"name": "M0", "num_blocks": 64, "block_size": 512}),
    );
    t.ok("bdev_get_bdevs", Value::Null);
    let _ = t.rpc("bdev_malloc_delete", json!({"name": "nope"}));
    // A disconnect is logged once the server sees the client's EOF,
    // which may be just after the client has its answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !t.log().contains(" disconnected") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = t.log();
    assert!(!log.contains('\x1b'), "colour codes in a file:\n{log}");
    assert!(
        log.contains(
            r#"rpc bdev_malloc_create {"name":"M0","num_blocks":64,"block_size":512}: ok "M0""#
        ),
        "{log}"
    );
    assert!(
        log.contains(r#"rpc bdev_malloc_delete {"name":"nope"}: error -19"#),
        "{log}"
    );
    assert!(!log.contains("rpc bdev_get_bdevs"), "{log}");
    assert!(
        log.contains("rpc: client pid ") && log.contains(" disconnected"),
        "{log}"
    );
    t.stop();
}

/// Point 10: a volume far larger than its pool is accepted (that is
/// thin provisioning) but no longer silently.
#[test]
fn an_overprovisioned_pool_is_warned_about() {
    let t = Tgt::start("overprov", &["--empty", "-m", "0x3"]);
    t.malloc_pool("pool", 4096, json!({}));
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "small", "size_in_mib": 8}),
    );
    assert!(!t.log().contains("overprovisioned"), "{}", t.log());
    t.ok(
        "bdev_thin_create",
        json!({"pool": "pool", "name": "big", "size_in_mib": 1024}),
    );
    let log = t.log();
    assert!(
        log.contains("pool pool is overprovisioned: its volumes add up to 1082130432 bytes, 64.50x its 16777216 bytes of data space"),
        "{log}"
    );
    // A pool meant to be overprovisioned says how far before it is told.
    for (name, blocks) in [("Meta2", 2048), ("Data2", 4096)] {
        t.ok(
            "bdev_malloc_create",
            json!({"name": name, "num_blocks": blocks, "block_size": 4096}),
        );
    }
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "lenient", "metadata_bdev": "Meta2", "data_bdev": "Data2",
               "overprovision_warning_ratio": 100.0}),
    );
    t.ok(
        "bdev_thin_create",
        json!({"pool": "lenient", "name": "big2", "size_in_mib": 1024}),
    );
    assert!(
        !t.log().contains("pool lenient is overprovisioned"),
        "{}",
        t.log()
    );
    t.ok(
        "bdev_thin_create",
        json!({"pool": "lenient", "name": "big3", "size_in_mib": 1024}),
    );
    assert!(
        t.log().contains("pool lenient is overprovisioned"),
        "{}",
        t.log()
    );
    let (code, msg) = t
        .rpc(
            "bdev_thin_pool_create",
            json!({"name": "bad", "metadata_bdev": "nope", "overprovision_warning_ratio": -1}),
        )
        .unwrap_err();
    assert_eq!(code, -22, "{msg}");
    assert!(
        msg.contains("overprovision_warning_ratio -1 must be 0"),
        "{msg}"
    );
    t.stop();
}

/// Point 7: a failed commit names the file behind the metadata bdev, not
/// only the bdev (here an error bdev stacked on a file), and the errno in
/// words.
#[test]
fn a_failed_commit_names_the_file_behind_the_metadata() {
    let t = Tgt::start("commit-file", &["--empty", "-m", "0x3"]);
    let img = t.dir.join("meta.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    t.ok(
        "bdev_malloc_create",
        json!({"name": "Data0", "num_blocks": 4096, "block_size": 4096}),
    );
    t.ok(
        "bdev_uring_create",
        json!({"name": "Meta0", "filename": img}),
    );
    t.ok("bdev_error_create", json!({"base_name": "Meta0"}));
    t.ok(
        "bdev_thin_pool_create",
        json!({"name": "p", "metadata_bdev": "EE_Meta0", "data_bdev": "Data0"}),
    );
    t.ok(
        "bdev_thin_create",
        json!({"pool": "p", "name": "v", "size_in_mib": 4}),
    );
    t.ok(
        "bdev_error_inject_error",
        json!({"name": "EE_Meta0", "io_type": "write", "error_type": "failure", "num": 1000}),
    );
    let addr = t.export("v", None, None);
    let mut c = tgt_util::nbd::Client::connect(&addr, "v").unwrap();
    assert_eq!(c.write(0, &[7; 4096]).unwrap(), 0);
    assert_ne!(c.flush().unwrap(), 0, "the commit cannot succeed");
    // Issue 26 item 8: the pool's status says so at once, not at some
    // later commit.
    let pools = t.ok("bdev_thin_pool_get_pools", json!({"name": "p"}));
    assert_eq!(pools[0]["needs_check"], true, "{pools}");
    assert_ne!(pools[0]["mode"], "write", "{pools}");
    drop(c);
    let want = format!(
        "writing metadata to bdev EE_Meta0 (over bdev Meta0 (file {})) failed: Input/output error",
        img.display()
    );
    let log = t.log();
    assert!(log.contains(&want), "{want}\n{log}");
    t.stop();
}
