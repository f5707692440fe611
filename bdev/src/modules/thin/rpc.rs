//! JSON-RPC methods of thin pools and volumes (SPDK's error shape: the
//! negative errno and its text). They are async: each hops to the pool's
//! metadata core and back, so they run on a reactor.

use serde::Deserialize;
use serde_json::{json, Value};

use super::{DeltaBase, Device, DiscardMode, PoolOptions, ThinError};
use crate::rpc::{decode, RpcError, RpcResult};

impl From<ThinError> for RpcError {
    fn from(e: ThinError) -> Self {
        RpcError::new(-e.errno(), e.to_string())
    }
}

/// The methods served here.
pub const METHODS: &[&str] = &[
    "bdev_thin_pool_create",
    "bdev_thin_pool_delete",
    "bdev_thin_pool_get_pools",
    "bdev_thin_pool_resize",
    "bdev_thin_pool_set_transaction_id",
    "bdev_thin_pool_reserve_metadata_snap",
    "bdev_thin_pool_release_metadata_snap",
    "bdev_thin_pool_get_events",
    "bdev_thin_create",
    "bdev_thin_activate",
    "bdev_thin_snapshot",
    "bdev_thin_delete",
    "bdev_thin_deactivate",
    "bdev_thin_resize",
    "bdev_thin_get_volumes",
    "bdev_thin_delta",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolCreate {
    name: String,
    metadata_bdev: String,
    data_bdev: Option<String>,
    block_size: Option<u64>,
    zero_new_blocks: Option<bool>,
    discard: Option<DiscardMode>,
    error_if_no_space: Option<bool>,
    no_space_timeout_s: Option<u64>,
    low_water_mark_blocks: Option<u64>,
    commit_period_ms: Option<u64>,
    metadata_core: Option<u32>,
    read_only: Option<bool>,
    metadata_size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Name {
    name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OptPool {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Events {
    #[serde(default)]
    id: u64,
    max: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTid {
    name: String,
    current: u64,
    new: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    pool: String,
    name: String,
    size_in_mib: u64,
    dev_id: Option<u32>,
    external_origin: Option<String>,
    /// bdev_thin_create: if device `dev_id` already exists, activate it
    /// instead of failing (configs that run at every start use this).
    #[serde(default)]
    open_existing: bool,
    /// bdev_thin_activate: the device this one is a snapshot of (kept in
    /// saved configs; dm-thin's metadata does not record it).
    origin_dev_id: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    origin: String,
    name: String,
    dev_id: Option<u32>,
}

/// bdev_thin_delete and bdev_thin_deactivate: a volume by bdev name, or
/// (delete only) an inactive device by pool and id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Remove {
    name: Option<String>,
    pool: Option<String>,
    dev_id: Option<u32>,
    /// Also when the volume is open: its exports are stopped first (by the
    /// daemon) and other users see it removed.
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    size_in_mib: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Volumes {
    pool: Option<String>,
    name: Option<String>,
    dev_id: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delta {
    name: String,
    base: String,
}

fn mib(n: u64) -> Result<u64, RpcError> {
    n.checked_mul(1 << 20)
        .filter(|&b| b > 0)
        .ok_or_else(|| RpcError::invalid_params("size_in_mib must be positive and fit 64 bits"))
}

/// Makes device `dev` of `p.pool` the bdev `p.name`.
async fn activate(p: &Create, dev: u32) -> RpcResult {
    let size = mib(p.size_in_mib)?;
    let origin = p.external_origin.as_deref();
    let b = super::bring_up(&p.pool, &p.name, size, origin, Device::Existing(dev)).await?;
    if p.origin_dev_id.is_some() {
        super::pool(&p.pool)?
            .shared
            .set_origin(dev, p.origin_dev_id);
    }
    Ok(json!(b.name()))
}

/// Runs thin method `method`; None when it is not one of ours.
pub async fn call(method: &str, params: Option<Value>) -> Option<RpcResult> {
    if !METHODS.contains(&method) {
        return None;
    }
    Some(run(method, params).await)
}

async fn run(method: &str, params: Option<Value>) -> RpcResult {
    match method {
        "bdev_thin_pool_create" => {
            let p: PoolCreate = decode(params)?;
            let d = PoolOptions::default();
            let opts = PoolOptions {
                block_size: p.block_size.unwrap_or(d.block_size),
                zero_new_blocks: p.zero_new_blocks.unwrap_or(d.zero_new_blocks),
                discard: p.discard.unwrap_or(d.discard),
                error_if_no_space: p.error_if_no_space.unwrap_or(d.error_if_no_space),
                no_space_timeout_s: p.no_space_timeout_s.unwrap_or(d.no_space_timeout_s),
                low_water_mark_blocks: p.low_water_mark_blocks.unwrap_or(0),
                commit_period_ms: p.commit_period_ms.unwrap_or(d.commit_period_ms),
                metadata_core: p.metadata_core,
                read_only: p.read_only.unwrap_or(false),
                metadata_size: p.metadata_size,
            };
            super::create_pool(&p.name, &p.metadata_bdev, p.data_bdev.as_deref(), opts).await?;
            Ok(json!(p.name))
        }
        "bdev_thin_pool_delete" => {
            let p: Name = decode(params)?;
            super::delete_pool(&p.name).await?;
            Ok(json!(true))
        }
        "bdev_thin_pool_get_pools" => {
            let p: OptPool = decode(params)?;
            let pools = match &p.name {
                Some(n) => vec![super::pool(n)?],
                None => super::pool_list(),
            };
            let mut out = Vec::with_capacity(pools.len());
            for p in &pools {
                out.push(super::pool_info_now(p).await);
            }
            Ok(json!(out))
        }
        "bdev_thin_pool_resize" => {
            let p: Name = decode(params)?;
            super::resize_pool(&p.name).await?;
            Ok(json!(true))
        }
        "bdev_thin_pool_get_events" => {
            let p: Events = decode(params)?;
            let max = p
                .max
                .map_or(usize::MAX, |m| m.min(usize::MAX as u64) as usize);
            let events: Vec<Value> = super::events_since(p.id, max)
                .into_iter()
                .map(|(id, e)| {
                    let mut v = json!(e);
                    v["id"] = json!(id);
                    v
                })
                .collect();
            Ok(Value::Array(events))
        }
        "bdev_thin_pool_set_transaction_id" => {
            let p: SetTid = decode(params)?;
            super::set_transaction_id(&p.name, p.current, p.new).await?;
            Ok(json!(true))
        }
        "bdev_thin_pool_reserve_metadata_snap" => {
            let p: Name = decode(params)?;
            Ok(json!(super::reserve_metadata_snap(&p.name).await?))
        }
        "bdev_thin_pool_release_metadata_snap" => {
            let p: Name = decode(params)?;
            super::release_metadata_snap(&p.name).await?;
            Ok(json!(true))
        }
        "bdev_thin_create" => {
            let p: Create = decode(params)?;
            if let (true, Some(dev)) = (p.open_existing, p.dev_id) {
                let exists = super::volumes(&p.pool)
                    .await?
                    .iter()
                    .any(|v| v.device.dev_id == dev);
                if exists {
                    return activate(&p, dev).await;
                }
            }
            let size = mib(p.size_in_mib)?;
            let origin = p.external_origin.as_deref();
            let b = super::bring_up(&p.pool, &p.name, size, origin, Device::New(p.dev_id)).await?;
            Ok(json!(b.name()))
        }
        "bdev_thin_activate" => {
            let p: Create = decode(params)?;
            let dev = p
                .dev_id
                .ok_or_else(|| RpcError::invalid_params("dev_id is required"))?;
            activate(&p, dev).await
        }
        "bdev_thin_snapshot" => {
            let p: Snapshot = decode(params)?;
            let b = super::snapshot(&p.origin, &p.name, p.dev_id).await?;
            Ok(json!(b.name()))
        }
        "bdev_thin_delete" => {
            let p: Remove = decode(params)?;
            match (&p.name, &p.pool, p.dev_id) {
                (Some(n), None, None) => super::delete_volume(n, p.force).await?,
                (None, Some(pool), Some(id)) => super::delete_device(pool, id).await?,
                _ => {
                    return Err(RpcError::invalid_params(
                        "give name (a volume), or pool and dev_id (an inactive device)",
                    ))
                }
            }
            Ok(json!(true))
        }
        "bdev_thin_deactivate" => {
            let p: Remove = decode(params)?;
            let (Some(n), None, None) = (&p.name, &p.pool, p.dev_id) else {
                return Err(RpcError::invalid_params("name (a volume) is required"));
            };
            super::deactivate(n, p.force).await?;
            Ok(json!(true))
        }
        "bdev_thin_resize" => {
            let p: Resize = decode(params)?;
            super::resize_volume(&p.name, mib(p.size_in_mib)?).await?;
            Ok(json!(true))
        }
        "bdev_thin_get_volumes" => {
            let p: Volumes = decode(params)?;
            let pools = match &p.pool {
                Some(n) => vec![super::pool(n)?],
                None => super::pool_list(),
            };
            let mut out = Vec::new();
            for pool in pools {
                for v in super::volumes(pool.name()).await? {
                    let named = p.name.is_none() || v.name == p.name;
                    if named && p.dev_id.is_none_or(|id| id == v.device.dev_id) {
                        out.push(v);
                    }
                }
            }
            if (p.name.is_some() || p.dev_id.is_some()) && out.is_empty() {
                let what = match (&p.name, p.dev_id) {
                    (Some(n), _) => format!("volume {n}"),
                    (None, Some(id)) => format!("thin device {id}"),
                    _ => unreachable!("one of them is set"),
                };
                return Err(ThinError::NotFound(what).into());
            }
            Ok(json!(out))
        }
        "bdev_thin_delta" => {
            let p: Delta = decode(params)?;
            let base = if p.base == "metadata_snap" {
                DeltaBase::MetadataSnap
            } else {
                DeltaBase::Volume(p.base)
            };
            let runs = super::delta(&p.name, base).await?;
            Ok(json!(runs
                .into_iter()
                .map(|(k, begin, len)| json!({"kind": k.name(), "begin": begin, "length": len}))
                .collect::<Vec<_>>()))
        }
        _ => Err(RpcError::new(
            crate::rpc::METHOD_NOT_FOUND,
            "Method not found",
        )),
    }
}

/// The `bdev_thin_pool_create` call that reopens `p` (save_config). The
/// pool's state is on disk; only how to open it goes in the config.
pub fn pool_config_entry(p: &super::PoolHandle) -> Value {
    let o = p.options();
    let mut params = serde_json::Map::new();
    params.insert("name".into(), json!(p.name()));
    params.insert("metadata_bdev".into(), json!(p.metadata_bdev));
    if let Some(d) = &p.data_bdev {
        params.insert("data_bdev".into(), json!(d));
    }
    params.insert("block_size".into(), json!(o.block_size));
    params.insert("zero_new_blocks".into(), json!(o.zero_new_blocks));
    params.insert("discard".into(), json!(o.discard));
    params.insert("error_if_no_space".into(), json!(o.error_if_no_space));
    params.insert("no_space_timeout_s".into(), json!(o.no_space_timeout_s));
    params.insert(
        "low_water_mark_blocks".into(),
        json!(o.low_water_mark_blocks),
    );
    params.insert("commit_period_ms".into(), json!(o.commit_period_ms));
    if let Some(c) = o.metadata_core {
        params.insert("metadata_core".into(), json!(c));
    }
    params.insert("read_only".into(), json!(o.read_only));
    if let Some(s) = o.metadata_size {
        params.insert("metadata_size".into(), json!(s));
    }
    json!({"method": "bdev_thin_pool_create", "params": params})
}
