//! The bdev layer's own RPC methods: `bdev_get_bdevs` and
//! `bdev_get_iostat`, in SPDK's shapes (member order included, since some
//! scripts compare text).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::rpc::{method, RpcError, RpcMethod, RpcResult};
use crate::{Bdev, IoType};

pub(crate) fn methods() -> Vec<RpcMethod> {
    vec![
        method("bdev_get_bdevs").app_core_async(get_bdevs),
        method("bdev_get_iostat").app_core(get_iostat),
    ]
}

/// SPDK's 22 I/O type keys, in its order; we answer for the six we have.
const SPDK_IO_TYPES: [&str; 22] = [
    "read",
    "write",
    "unmap",
    "flush",
    "reset",
    "nvme_admin",
    "nvme_io",
    "nvme_io_md",
    "write_zeroes",
    "zcopy",
    "get_zone_info",
    "zone_management",
    "zone_append",
    "compare",
    "compare_and_write",
    "abort",
    "seek_hole",
    "seek_data",
    "copy",
    "nvme_iov_md",
    "nvme_nssr",
    "write_uncorrectable",
];

fn not_found() -> RpcError {
    RpcError::new(-libc::ENODEV, "No such device")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetBdevs {
    name: Option<String>,
    /// Milliseconds to wait for `name` to appear.
    #[serde(default)]
    timeout: u64,
}

/// With a name and a timeout, waits for the bdev to appear, as SPDK's
/// does: -110 when it does not in time. The wait sleeps on the reactor's
/// timer, so the app core keeps serving.
async fn get_bdevs(p: GetBdevs) -> RpcResult {
    if let (Some(name), true) = (&p.name, p.timeout > 0) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(p.timeout);
        while crate::lookup(name).is_none() {
            if std::time::Instant::now() >= deadline {
                return Err(RpcError::new(-libc::ETIMEDOUT, "Connection timed out"));
            }
            reactor::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let bdevs = match p.name {
        Some(n) => vec![crate::lookup(&n).ok_or_else(not_found)?],
        None => crate::list(),
    };
    Ok(Value::Array(bdevs.iter().map(|b| describe(b)).collect()))
}

/// One bdev as `bdev_get_bdevs` shows it.
pub fn describe(b: &Bdev) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(b.name()));
    let uuid = b.uuid().to_string();
    let mut aliases: Vec<String> = b.aliases().to_vec();
    if b.name() != uuid && !aliases.contains(&uuid) {
        aliases.push(uuid.clone());
    }
    o.insert("aliases".into(), json!(aliases));
    o.insert("product_name".into(), json!(b.product_name()));
    o.insert("block_size".into(), json!(b.block_size()));
    o.insert("num_blocks".into(), json!(b.num_blocks()));
    for k in [
        "preferred_write_alignment",
        "preferred_write_granularity",
        "optimal_write_size",
    ] {
        o.insert(k.into(), json!(0));
    }
    // In blocks, as the rest of the geometry; aligned to the granularity.
    for k in ["preferred_unmap_alignment", "preferred_unmap_granularity"] {
        o.insert(k.into(), json!(b.unmap_granularity()));
    }
    o.insert("uuid".into(), json!(uuid));
    o.insert(
        "assigned_rate_limits".into(),
        json!({"rw_ios_per_sec": 0, "rw_mbytes_per_sec": 0,
               "r_mbytes_per_sec": 0, "w_mbytes_per_sec": 0}),
    );
    let claimed = b.claimed_by();
    o.insert("claimed".into(), json!(claimed.is_some()));
    if claimed.is_some() {
        o.insert("claim_type".into(), json!("exclusive_write"));
    }
    o.insert("zoned".into(), json!(false));
    let mut io = Map::new();
    for k in SPDK_IO_TYPES {
        let ours = IoType::ALL.iter().find(|t| t.name() == k);
        io.insert(
            k.into(),
            json!(ours.is_some_and(|t| b.io_type_supported(*t))),
        );
    }
    o.insert("supported_io_types".into(), Value::Object(io));
    let mut ds = Map::new();
    if let Some((k, v)) = b.driver_specific() {
        ds.insert(k.into(), v);
    }
    o.insert("driver_specific".into(), Value::Object(ds));
    Value::Object(o)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetIostat {
    name: Option<String>,
    names: Option<Vec<String>>,
    #[serde(default)]
    per_channel: bool,
    #[serde(default)]
    #[allow(dead_code)]
    reset_mode: Option<String>,
}

fn get_iostat(p: GetIostat) -> RpcResult {
    if p.per_channel {
        return Err(RpcError::new(
            -libc::EOPNOTSUPP,
            "Operation not supported: per-channel statistics",
        ));
    }
    let names: Option<Vec<String>> = match (p.name, p.names) {
        (Some(n), _) => Some(vec![n]),
        (None, n) => n,
    };
    let bdevs = match names {
        Some(ns) => ns
            .iter()
            .map(|n| crate::lookup(n).ok_or_else(not_found))
            .collect::<Result<Vec<_>, _>>()?,
        None => crate::list(),
    };
    let stats: Vec<Value> = bdevs.iter().map(|b| iostat(b)).collect();
    Ok(json!({
        "tick_rate": reactor::ticks_hz(),
        "ticks": reactor::ticks(),
        "bdevs": stats,
    }))
}

fn iostat(b: &Bdev) -> Value {
    let s = b.iostat();
    let mut o = Map::new();
    o.insert("name".into(), json!(b.name()));
    let r = s.get(IoType::Read);
    let w = s.get(IoType::Write);
    let u = s.get(IoType::Unmap);
    for (k, v) in [
        ("bytes_read", r.bytes),
        ("num_read_ops", r.ops),
        ("bytes_written", w.bytes),
        ("num_write_ops", w.ops),
        ("bytes_unmapped", u.bytes),
        ("num_unmap_ops", u.ops),
        ("bytes_copied", 0),
        ("num_copy_ops", 0),
    ] {
        o.insert(k.into(), json!(v));
    }
    for (name, t) in [("read", r), ("write", w), ("unmap", u)] {
        o.insert(format!("{name}_latency_ticks"), json!(t.latency_ticks));
        o.insert(
            format!("max_{name}_latency_ticks"),
            json!(t.max_latency_ticks),
        );
        o.insert(
            format!("min_{name}_latency_ticks"),
            json!(t.min_latency_ticks),
        );
    }
    for k in [
        "copy_latency_ticks",
        "max_copy_latency_ticks",
        "min_copy_latency_ticks",
    ] {
        o.insert(k.into(), json!(0));
    }
    let failed: u64 = IoType::ALL.iter().map(|t| s.get(*t).errors).sum();
    let errors = if failed > 0 {
        json!({ "failed": failed })
    } else {
        json!({})
    };
    o.insert("io_error".into(), errors);
    Value::Object(o)
}
