//! The modules' RPC methods: SPDK's error shapes for bad input, and no
//! panic for any input.

use std::sync::OnceLock;

use bdev::rpc::{RpcRegistry, RpcResult, INTERNAL_ERROR, INVALID_PARAMS, METHOD_NOT_FOUND};
use serde_json::{json, Value};

/// The registry and one idle reactor to run its methods on, as the daemon
/// does (its app core); kept for the whole test binary.
fn rig() -> &'static (RpcRegistry, reactor::ReactorSet) {
    static RIG: OnceLock<(RpcRegistry, reactor::ReactorSet)> = OnceLock::new();
    RIG.get_or_init(|| {
        let set = reactor::ReactorSet::start(&[0], reactor::ReactorOptions::default())
            .expect("a reactor");
        (RpcRegistry::with_modules(), set)
    })
}

fn call(method: &str, params: Option<Value>) -> RpcResult {
    let (registry, set) = rig();
    registry.call_blocking(set, 0, method, params, true)
}

fn name(p: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{p}_rpc{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn code(r: Result<Value, bdev::rpc::RpcError>) -> i32 {
    r.expect_err("expected an error").code
}

#[test]
fn create_delete_and_errors_follow_spdk() {
    let m = name("m");
    let r = call(
        "bdev_malloc_create",
        Some(json!({"name": m, "num_blocks": 16, "block_size": 512})),
    );
    assert_eq!(r.unwrap(), json!(m));
    let dup = call(
        "bdev_malloc_create",
        Some(json!({"name": m, "num_blocks": 16, "block_size": 512})),
    );
    assert_eq!(code(dup), -libc::EEXIST);
    assert_eq!(
        code(call(
            "bdev_malloc_create",
            Some(json!({"name": name("m"), "block_size": 512}))
        )),
        INTERNAL_ERROR
    );
    assert_eq!(
        code(call(
            "bdev_malloc_create",
            Some(json!({"name": name("m"), "num_blocks": 1, "block_size": 512, "bogus": 1}))
        )),
        INTERNAL_ERROR
    );
    assert_eq!(
        code(call(
            "bdev_malloc_create",
            Some(json!({"num_blocks": "x", "block_size": 512}))
        )),
        INTERNAL_ERROR
    );
    assert_eq!(
        code(call("bdev_malloc_create", Some(json!([1, 2])))),
        INTERNAL_ERROR
    );
    assert_eq!(
        code(call(
            "bdev_malloc_create",
            Some(json!({"name": name("m"), "num_blocks": 1, "block_size": 1000}))
        )),
        -libc::EINVAL
    );
    assert_eq!(
        code(call(
            "bdev_malloc_create",
            Some(json!({"name": name("m"), "num_blocks": 1u64 << 50, "block_size": 4096}))
        )),
        -libc::EINVAL,
        "larger than RAM"
    );
    assert_eq!(
        code(call("bdev_null_delete", Some(json!({"name": m})))),
        -libc::ENODEV,
        "wrong module"
    );
    assert_eq!(code(call("no_such_method", None)), METHOD_NOT_FOUND);

    // A claimed bdev cannot be deleted; its claimer can, then it can.
    assert_eq!(
        call("bdev_error_create", Some(json!({"base_name": m}))).unwrap(),
        json!(true)
    );
    assert_eq!(
        code(call("bdev_malloc_delete", Some(json!({"name": m})))),
        -libc::EPERM
    );
    assert_eq!(
        code(call("bdev_error_create", Some(json!({"base_name": m})))),
        -libc::EPERM,
        "already claimed"
    );
    let ee = format!("EE_{m}");
    for (p, want) in [
        (
            json!({"name": ee, "io_type": "sideways", "error_type": "failure"}),
            -libc::EINVAL,
        ),
        (
            json!({"name": ee, "io_type": "read", "error_type": "melt"}),
            -libc::EINVAL,
        ),
        (
            json!({"name": ee, "io_type": "read", "error_type": "corrupt_data"}),
            -libc::EINVAL,
        ),
        (
            json!({"name": ee, "io_type": "read", "error_type": "failure", "probability": 2.0}),
            -libc::EINVAL,
        ),
        (
            json!({"name": m, "io_type": "read", "error_type": "failure"}),
            -libc::ENODEV,
        ),
        (json!({"name": ee, "io_type": "read"}), INVALID_PARAMS),
    ] {
        assert_eq!(
            code(call("bdev_error_inject_error", Some(p.clone()))),
            want,
            "{p}"
        );
    }
    let ok = json!({"name": ee, "io_type": "all", "error_type": "failure", "num": 3});
    assert_eq!(
        call("bdev_error_inject_error", Some(ok)).unwrap(),
        json!(true)
    );
    assert_eq!(
        call(
            "bdev_error_inject_error",
            Some(json!({"name": ee, "io_type": "clear", "error_type": "failure"}))
        )
        .unwrap(),
        json!(true)
    );
    assert_eq!(
        call("bdev_error_delete", Some(json!({"name": ee}))).unwrap(),
        json!(true)
    );
    assert_eq!(
        call("bdev_malloc_delete", Some(json!({"name": m}))).unwrap(),
        json!(true)
    );
    assert_eq!(
        code(call("bdev_malloc_delete", Some(json!({"name": m})))),
        -libc::ENODEV
    );
}

#[test]
fn null_resize_grows_only() {
    let n = name("n");
    call(
        "bdev_null_create",
        Some(json!({"name": n, "num_blocks": 256, "block_size": 4096})),
    )
    .unwrap();
    assert_eq!(
        code(call(
            "bdev_null_resize",
            Some(json!({"name": n, "new_size": 0}))
        )),
        -libc::EINVAL
    );
    call("bdev_null_resize", Some(json!({"name": n, "new_size": 2}))).unwrap();
    assert_eq!(bdev::lookup(&n).unwrap().num_blocks(), 512);
    assert_eq!(
        code(call(
            "bdev_null_resize",
            Some(json!({"name": "nope", "new_size": 2}))
        )),
        -libc::ENODEV
    );
}

#[test]
fn delay_and_uring_errors() {
    let m = name("m");
    call(
        "bdev_malloc_create",
        Some(json!({"name": m, "num_blocks": 16, "block_size": 512})),
    )
    .unwrap();
    let d = name("d");
    let bad = json!({"name": d, "base_bdev_name": m, "avg_read_latency": 10, "p99_read_latency": 5,
                     "avg_write_latency": 1, "p99_write_latency": 1});
    assert_eq!(code(call("bdev_delay_create", Some(bad))), -libc::EINVAL);
    let good = json!({"name": d, "base_bdev_name": m, "avg_read_latency": 1, "p99_read_latency": 5,
                      "avg_write_latency": 1, "p99_write_latency": 1});
    assert_eq!(call("bdev_delay_create", Some(good)).unwrap(), json!(d));
    let upd = |n: &str, t: &str, v: u64| {
        call(
            "bdev_delay_update_latency",
            Some(json!({"delay_bdev_name": n, "latency_type": t, "latency_us": v})),
        )
    };
    assert_eq!(code(upd("missing", "avg_read", 1)), INVALID_PARAMS);
    assert_eq!(code(upd(&m, "avg_read", 1)), -32600);
    assert_eq!(code(upd(&d, "sideways", 1)), INVALID_PARAMS);
    assert_eq!(upd(&d, "p99_write", 9).unwrap(), json!(true));
    let missing = json!({"name": name("u"), "filename": "/nonexistent/ferrothin/disk"});
    assert_eq!(code(call("bdev_uring_create", Some(missing))), -32603);
}

/// Values that break naive decoders.
fn garbage() -> Vec<Value> {
    vec![
        Value::Null,
        json!(0),
        json!(-1),
        json!(1e308),
        json!("name"),
        json!([]),
        json!([{}]),
        json!({}),
        json!({"name": ""}),
        json!({"name": "x/y", "num_blocks": 1, "block_size": 512}),
        json!({"name": "ok", "num_blocks": -5, "block_size": 512}),
        json!({"name": "ok", "num_blocks": 1, "block_size": 0}),
        json!({"name": "ok", "num_blocks": 0, "block_size": 512}),
        json!({"name": "ok", "num_blocks": u64::MAX, "block_size": 4096}),
        json!({"name": "ok", "num_blocks": 1, "block_size": u32::MAX}),
        json!({"base_name": "", "base_bdev_name": "", "filename": ""}),
        json!({"name": "\u{0}", "filename": "/dev/null", "block_size": 512}),
        json!({"name": 5, "uuid": "not-a-uuid"}),
        json!({"name": "ok", "num_blocks": 1, "block_size": 512, "uuid": "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"}),
        json!({"name": "ok", "new_size": u64::MAX}),
        json!({"delay_bdev_name": "", "latency_type": "", "latency_us": -1}),
    ]
}

#[test]
fn no_method_panics_on_garbage() {
    for method in rig().0.methods().iter().map(|m| m.name) {
        for g in garbage() {
            let r = std::panic::catch_unwind(|| call(method, Some(g.clone())));
            assert!(r.is_ok(), "{method} panicked on {g}");
        }
        assert!(
            std::panic::catch_unwind(|| call(method, None)).is_ok(),
            "{method} panicked on no params"
        );
    }
}
