//! JSON-RPC methods of thin pools and volumes (SPDK's error shape: the
//! negative errno and its text). They are async: each hops to the pool's
//! metadata core and back, so they run on a reactor.

use metadata::thin::DevId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{DeltaBase, Device, PoolOptions, ThinError};
use bdev::rpc::{method, RpcError, RpcMethod, RpcResult};

impl From<ThinError> for RpcError {
    fn from(e: ThinError) -> Self {
        RpcError::new(-e.errno(), e.to_string())
    }
}

/// The methods served here, each awaited on the app core (a pool's work
/// hops to its metadata core and back).
pub(crate) fn methods() -> Vec<RpcMethod> {
    vec![
        method("bdev_thin_pool_create").app_core_async(pool_create),
        method("bdev_thin_pool_delete").app_core_async(pool_delete),
        method("bdev_thin_pool_get_pools").app_core_async(pool_get_pools),
        method("bdev_thin_pool_resize").app_core_async(pool_resize),
        method("bdev_thin_pool_set_options").app_core_async(pool_set_options),
        method("bdev_thin_pool_suspend").app_core_async(pool_suspend),
        method("bdev_thin_pool_resume").app_core_async(pool_resume),
        method("bdev_thin_suspend").app_core_async(volume_suspend),
        method("bdev_thin_set_read_only").app_core_async(set_read_only_rpc),
        method("bdev_thin_resume").app_core_async(volume_resume),
        method("bdev_thin_pool_set_transaction_id").app_core_async(pool_set_transaction_id),
        method("bdev_thin_pool_reserve_metadata_snap").app_core_async(pool_reserve_metadata_snap),
        method("bdev_thin_pool_release_metadata_snap").app_core_async(pool_release_metadata_snap),
        method("bdev_thin_pool_get_events").app_core(pool_get_events),
        method("bdev_thin_create").app_core_async(create),
        method("bdev_thin_activate").app_core_async(activate_rpc),
        method("bdev_thin_snapshot").app_core_async(snapshot),
        method("bdev_thin_delete").app_core_async(delete),
        method("bdev_thin_deactivate").app_core_async(deactivate),
        method("bdev_thin_resize").app_core_async(resize),
        method("bdev_thin_get_volumes").app_core_async(get_volumes),
        method("bdev_thin_delta").app_core_async(delta),
    ]
}

/// bdev_thin_pool_create's params: where the pool lives, and its options,
/// decoded once into [`PoolOptions`] (which refuses unknown keys).
struct PoolCreate {
    name: String,
    metadata_bdev: String,
    data_bdev: Option<String>,
    options: PoolOptions,
}

/// The keys that say where a pool lives; everything else is an option.
const POOL_PLACE: [&str; 3] = ["name", "metadata_bdev", "data_bdev"];

impl<'de> Deserialize<'de> for PoolCreate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut m = serde_json::Map::<String, Value>::deserialize(d)?;
        // A null is a parameter not given (as SPDK's decoders take it).
        m.retain(|_, v| !v.is_null());
        let mut take = |k: &str| m.remove(k);
        let text = |k: &'static str, v: Option<Value>| -> Result<Option<String>, D::Error> {
            v.map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!(
                    "{k}: expected a string, got {other}"
                ))),
            })
            .transpose()
        };
        let name = text("name", take("name"))?.ok_or_else(|| D::Error::missing_field("name"))?;
        let metadata_bdev = text("metadata_bdev", take("metadata_bdev"))?
            .ok_or_else(|| D::Error::missing_field("metadata_bdev"))?;
        let data_bdev = text("data_bdev", take("data_bdev"))?;
        let options = PoolOptions::deserialize(Value::Object(m)).map_err(D::Error::custom)?;
        Ok(PoolCreate {
            name,
            metadata_bdev,
            data_bdev,
            options,
        })
    }
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
    /// The size, one of three ways (required to create; to activate, the
    /// size the device last had in this process by default).
    size_in_mib: Option<u64>,
    /// Whole 512-byte sectors, as dm-thin takes sizes.
    size_bytes: Option<u64>,
    /// In the volume's (the data bdev's) blocks.
    num_blocks: Option<u64>,
    dev_id: Option<DevId>,
    external_origin: Option<String>,
    /// bdev_thin_create: if device `dev_id` already exists, activate it
    /// instead of failing (configs that run at every start use this).
    #[serde(default)]
    open_existing: bool,
    /// bdev_thin_activate: the device this one is a snapshot of (kept in
    /// saved configs; dm-thin's metadata does not record it).
    origin_dev_id: Option<DevId>,
    /// bdev_thin_activate: allow a size that hides mapped blocks.
    #[serde(default)]
    force: bool,
    /// The volume refuses writes, unmaps and write-zeroes.
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OneSnapshot {
    origin: String,
    name: String,
    dev_id: Option<DevId>,
    /// The snapshot refuses writes (a backup copy).
    #[serde(default)]
    read_only: bool,
}

/// bdev_thin_snapshot: one snapshot, or several taken at one instant
/// (`snapshots`: their origins are suspended together, then each is
/// taken, then all resume).
#[derive(Deserialize)]
#[serde(untagged)]
enum Snapshot {
    One(OneSnapshot),
    Many {
        snapshots: Vec<OneSnapshot>,
        timeout_ms: Option<u64>,
    },
}

/// bdev_thin_delete and bdev_thin_deactivate: a volume by bdev name, or
/// (delete only) an inactive device by pool and id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Remove {
    name: Option<String>,
    pool: Option<String>,
    dev_id: Option<DevId>,
    /// Also when the volume is open: its exports are stopped first (by the
    /// daemon) and other users see it removed.
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    name: String,
    size_in_mib: Option<u64>,
    size_bytes: Option<u64>,
    num_blocks: Option<u64>,
    /// Shrink even while the volume is open for writing.
    #[serde(default)]
    force: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Volumes {
    pool: Option<String>,
    name: Option<String>,
    dev_id: Option<DevId>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Delta {
    name: String,
    base: String,
}

/// The size in bytes given as `size_in_mib`, `size_bytes` or `num_blocks`
/// (of `block_size()` bytes), if one is; more than one is refused.
fn size_given(
    size_in_mib: Option<u64>,
    size_bytes: Option<u64>,
    num_blocks: Option<u64>,
    block_size: impl FnOnce() -> Result<u64, RpcError>,
) -> Result<Option<u64>, RpcError> {
    match (size_in_mib, size_bytes, num_blocks) {
        (None, None, None) => Ok(None),
        (Some(m), None, None) => mib(m).map(Some),
        (None, Some(b), None) => {
            if b == 0 || !b.is_multiple_of(512) {
                return Err(RpcError::invalid_params(format!(
                    "size_bytes {b} is not a positive number of whole 512-byte sectors"
                )));
            }
            Ok(Some(b))
        }
        (None, None, Some(n)) => n
            .checked_mul(block_size()?)
            .filter(|&b| b > 0)
            .map(Some)
            .ok_or_else(|| RpcError::invalid_params("num_blocks must be positive and fit 64 bits")),
        _ => Err(RpcError::invalid_params(
            "give the size once: size_in_mib, size_bytes or num_blocks",
        )),
    }
}

/// The block size of pool `pool`'s volumes (its data bdev's).
fn pool_block_size(pool: &str) -> Result<u64, RpcError> {
    Ok(u64::from(
        super::pool(pool)?.data_channel()?.bdev().block_size(),
    ))
}

fn mib(n: u64) -> Result<u64, RpcError> {
    n.checked_mul(1 << 20)
        .filter(|&b| b > 0)
        .ok_or_else(|| RpcError::invalid_params("size_in_mib must be positive and fit 64 bits"))
}

/// Makes device `dev` of `p.pool` the bdev `p.name`.
/// The size to activate device `dev` at: the one given, else the one it
/// last had here; dm-thin's metadata keeps none, so with neither the
/// caller is told how far its data reaches.
async fn activation_size(p: &Create, dev: DevId) -> Result<u64, RpcError> {
    if let Some(given) = size_given(p.size_in_mib, p.size_bytes, p.num_blocks, || {
        pool_block_size(&p.pool)
    })? {
        return Ok(given);
    }
    if let Some(bytes) = super::pool(&p.pool)?.shared.recorded_size(dev) {
        return Ok(bytes);
    }
    let extent = super::mapped_extent(&p.pool, dev).await?;
    Err(RpcError::from(ThinError::Invalid(format!(
        "size_in_mib is required: thin device {dev} has not been active in this daemon and \
         the pool's metadata keeps no sizes (its data reaches {} MiB)",
        extent.div_ceil(1 << 20)
    ))))
}

async fn activate(p: &Create, dev: DevId) -> RpcResult {
    let size = activation_size(p, dev).await?;
    if !p.force {
        super::check_activation_size(&p.pool, dev, size).await?;
    }
    let origin = p.external_origin.as_deref();
    let b = super::bring_up(&p.pool, &p.name, size, origin, Device::Existing(dev)).await?;
    if p.read_only {
        super::set_read_only(b.name(), true).await?;
    }
    if p.origin_dev_id.is_some() {
        super::pool(&p.pool)?
            .shared
            .record_lineage(dev, p.origin_dev_id);
    }
    Ok(json!(b.name()))
}

async fn pool_create(p: PoolCreate) -> RpcResult {
    let data = p.data_bdev.as_deref();
    match super::create_pool(&p.name, &p.metadata_bdev, data, p.options).await {
        Ok(_) => {
            super::failed::forget(&p.name);
            Ok(json!(p.name))
        }
        // A taken name belongs to a live pool: nothing to remember. Any
        // other failure (a bad option included) leaves the pool the caller
        // asked for down, which is what get_pools should show.
        Err(e @ ThinError::Exists(_)) => Err(e.into()),
        Err(e) => {
            let e = RpcError::from(e);
            super::failed::record(&p.name, &p.metadata_bdev, data, e.message.clone());
            Err(e)
        }
    }
}

async fn pool_delete(p: Name) -> RpcResult {
    if super::failed::forget(&p.name) {
        return Ok(json!(true));
    }
    super::delete_pool(&p.name).await?;
    Ok(json!(true))
}

/// Live pools, then those that failed to open (mode "failed", with why).
async fn pool_get_pools(p: OptPool) -> RpcResult {
    if let Some(f) = p.name.as_deref().and_then(super::failed_pool) {
        return Ok(json!([f]));
    }
    let pools = match &p.name {
        Some(n) => vec![super::pool(n)?],
        None => super::pool_list(),
    };
    let mut out = Vec::with_capacity(pools.len());
    for p in &pools {
        out.push(json!(super::pool_info_now(p).await));
    }
    if p.name.is_none() {
        out.extend(super::failed_pools().into_iter().map(|f| json!(f)));
    }
    Ok(json!(out))
}

/// The suspend calls: a pool or volume by name, and how long to wait for
/// its in-flight I/O.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Suspend {
    name: String,
    timeout_ms: Option<u64>,
}

impl Suspend {
    fn timeout(&self) -> std::time::Duration {
        self.timeout_ms
            .map_or(super::SUSPEND_TIMEOUT, std::time::Duration::from_millis)
    }
}

async fn pool_suspend(p: Suspend) -> RpcResult {
    super::suspend_pool(&p.name, p.timeout()).await?;
    Ok(json!(true))
}

async fn pool_resume(p: Name) -> RpcResult {
    super::resume_pool(&p.name).await?;
    Ok(json!(true))
}

async fn volume_suspend(p: Suspend) -> RpcResult {
    super::suspend_volume(&p.name, p.timeout()).await?;
    Ok(json!(true))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetReadOnly {
    name: String,
    /// false makes it writable again.
    #[serde(default = "yes")]
    read_only: bool,
}

fn yes() -> bool {
    true
}

async fn set_read_only_rpc(p: SetReadOnly) -> RpcResult {
    super::set_read_only(&p.name, p.read_only).await?;
    Ok(json!(true))
}

async fn volume_resume(p: Name) -> RpcResult {
    super::resume_volume(&p.name).await?;
    Ok(json!(true))
}

/// bdev_thin_pool_set_options: `name` and the options to change.
async fn pool_set_options(mut p: serde_json::Map<String, Value>) -> RpcResult {
    let name = match p.remove("name") {
        Some(Value::String(n)) => n,
        _ => return Err(RpcError::invalid_params("name (the pool) is required")),
    };
    p.retain(|_, v| !v.is_null());
    if p.is_empty() {
        return Err(RpcError::invalid_params("no option to change"));
    }
    let now = super::live_options::set_pool_options(&name, p).await?;
    Ok(json!(now))
}

async fn pool_resize(p: Name) -> RpcResult {
    super::resize_pool(&p.name).await?;
    Ok(json!(true))
}

fn pool_get_events(p: Events) -> RpcResult {
    let max = p
        .max
        .map_or(usize::MAX, |m| m.min(usize::MAX as u64) as usize);
    let events: Vec<Value> = super::events_since(p.id, max)
        .into_iter()
        .map(|(id, event)| {
            let mut v = json!(event);
            v["id"] = json!(id);
            v
        })
        .collect();
    Ok(Value::Array(events))
}

async fn pool_set_transaction_id(p: SetTid) -> RpcResult {
    super::set_transaction_id(&p.name, p.current, p.new).await?;
    Ok(json!(true))
}

async fn pool_reserve_metadata_snap(p: Name) -> RpcResult {
    Ok(json!(super::reserve_metadata_snap(&p.name).await?))
}

async fn pool_release_metadata_snap(p: Name) -> RpcResult {
    super::release_metadata_snap(&p.name).await?;
    Ok(json!(true))
}

async fn create(p: Create) -> RpcResult {
    if let (true, Some(dev)) = (p.open_existing, p.dev_id) {
        let exists = super::volumes(&p.pool)
            .await?
            .iter()
            .any(|v| v.device.dev_id == dev);
        if exists {
            return activate(&p, dev).await;
        }
    }
    let size = size_given(p.size_in_mib, p.size_bytes, p.num_blocks, || {
        pool_block_size(&p.pool)
    })?
    // As the decoder answers a missing field (SPDK's code for it).
    .ok_or_else(|| {
        RpcError::new(
            bdev::rpc::INTERNAL_ERROR,
            "spdk_json_decode_object failed: missing field `size_in_mib` \
             (or size_bytes, or num_blocks)",
        )
    })?;
    let origin = p.external_origin.as_deref();
    let b = super::bring_up(&p.pool, &p.name, size, origin, Device::New(p.dev_id)).await?;
    if p.read_only {
        super::set_read_only(b.name(), true).await?;
    }
    super::overprovision::warn_if_overprovisioned(&p.pool).await;
    Ok(json!(b.name()))
}

async fn activate_rpc(p: Create) -> RpcResult {
    let dev = p
        .dev_id
        .ok_or_else(|| RpcError::invalid_params("dev_id is required"))?;
    activate(&p, dev).await
}

async fn snapshot(p: Snapshot) -> RpcResult {
    match p {
        Snapshot::One(p) => {
            let b = super::snapshot(&p.origin, &p.name, p.dev_id).await?;
            if p.read_only {
                super::set_read_only(b.name(), true).await?;
            }
            Ok(json!(b.name()))
        }
        Snapshot::Many {
            snapshots,
            timeout_ms,
        } => {
            if snapshots.is_empty() {
                return Err(RpcError::invalid_params("snapshots is empty"));
            }
            let read_only: Vec<String> = snapshots
                .iter()
                .filter(|s| s.read_only)
                .map(|s| s.name.clone())
                .collect();
            let list: Vec<_> = snapshots
                .into_iter()
                .map(|s| (s.origin, s.name, s.dev_id))
                .collect();
            let timeout =
                timeout_ms.map_or(super::SUSPEND_TIMEOUT, std::time::Duration::from_millis);
            let names = super::snapshot_many(&list, timeout).await?;
            for n in &read_only {
                super::set_read_only(n, true).await?;
            }
            Ok(json!(names))
        }
    }
}

async fn delete(p: Remove) -> RpcResult {
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

async fn deactivate(p: Remove) -> RpcResult {
    let (Some(n), None, None) = (&p.name, &p.pool, p.dev_id) else {
        return Err(RpcError::invalid_params("name (a volume) is required"));
    };
    super::deactivate(n, p.force).await?;
    Ok(json!(true))
}

async fn resize(p: Resize) -> RpcResult {
    let size = size_given(p.size_in_mib, p.size_bytes, p.num_blocks, || {
        bdev::lookup(&p.name)
            .map(|b| u64::from(b.block_size()))
            .ok_or_else(|| RpcError::from(ThinError::NotFound(format!("volume {}", p.name))))
    })?
    .ok_or_else(|| {
        RpcError::invalid_params("give the size: size_in_mib, size_bytes or num_blocks")
    })?;
    super::resize_volume(&p.name, size, p.force).await?;
    if let Some(pool) = super::volume_pool(&p.name) {
        super::overprovision::warn_if_overprovisioned(&pool).await;
    }
    Ok(json!(true))
}

async fn get_volumes(p: Volumes) -> RpcResult {
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
    if out.is_empty() {
        let what = match (&p.name, p.dev_id) {
            (Some(n), _) => Some(format!("volume {n}")),
            (None, Some(id)) => Some(format!("thin device {id}")),
            (None, None) => None,
        };
        if let Some(what) = what {
            return Err(ThinError::NotFound(what).into());
        }
    }
    Ok(json!(out))
}

async fn delta(p: Delta) -> RpcResult {
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

/// The `bdev_thin_pool_create` call that reopens `p` (save_config): where
/// it lives, then its options serialized from [`PoolOptions`] (unset
/// optional ones left out). The pool's state is on disk; only how to open
/// it goes in the config.
pub fn pool_config_entry(p: &super::PoolHandle) -> Value {
    let mut params = serde_json::Map::new();
    params.insert(POOL_PLACE[0].into(), json!(p.name()));
    params.insert(POOL_PLACE[1].into(), json!(p.metadata_bdev));
    if let Some(data_bdev) = &p.data_bdev {
        params.insert(POOL_PLACE[2].into(), json!(data_bdev));
    }
    if let Value::Object(options) = json!(p.options()) {
        params.extend(options.into_iter().filter(|(_, v)| !v.is_null()));
    }
    json!({"method": "bdev_thin_pool_create", "params": params})
}
