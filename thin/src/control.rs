//! The volumes' control API: create, activate, snapshot, deactivate,
//! delete, resize, the pool-wide calls that are dm-thin messages
//! (set_transaction_id, metadata snapshots) and delta. Async, any reactor;
//! each hops to the pool's metadata core, which commits before answering.

use metadata::thin::DevId;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use bdev::{Bdev, BdevError, BdevProps};
use serde_json::Value;

use crate::shared::VolumeShared;
use crate::volume::Volume;
use crate::{external_origin, pool, table, DeltaKind, DeviceInfo, PoolHandle, ThinError};

fn as_volume(b: &Bdev) -> Option<&Volume> {
    (b.module() as &dyn std::any::Any).downcast_ref::<Volume>()
}

/// The registered volume bdevs (of one pool, or all).
pub(crate) fn volume_bdevs(pool: Option<&str>) -> Vec<Arc<Bdev>> {
    bdev::list()
        .into_iter()
        .filter(|b| as_volume(b).is_some_and(|v| pool.is_none_or(|p| v.pool.shared.name == p)))
        .collect()
}

/// A volume bdev with its shared state and its pool.
type VolumeRef = (Arc<Bdev>, Arc<VolumeShared>, Arc<PoolHandle>);

pub(crate) fn volume_of(name: &str) -> Result<VolumeRef, ThinError> {
    let b = bdev::lookup(name).ok_or_else(|| ThinError::NotFound(format!("bdev {name}")))?;
    let v =
        as_volume(&b).ok_or_else(|| ThinError::Invalid(format!("{name} is not a thin volume")))?;
    let (vol, pool) = (v.vol.clone(), v.pool.clone());
    Ok((b, vol, pool))
}

/// The pool volume `name` is in, if it is a thin volume.
pub fn volume_pool(name: &str) -> Option<String> {
    volume_of(name).ok().map(|(_, _, p)| p.name().to_string())
}

fn check_volume_size(p: &PoolHandle, size_bytes: u64) -> Result<u64, ThinError> {
    let block_size = p.data_channel()?.bdev().block_size() as u64;
    if size_bytes == 0 || !size_bytes.is_multiple_of(block_size) {
        return Err(ThinError::Invalid(format!(
            "size {size_bytes} must be a positive multiple of {block_size}"
        )));
    }
    if size_bytes.div_ceil(p.shared.opts.block_size) > table::MAX_VBLOCKS {
        return Err(ThinError::Invalid(format!(
            "size {size_bytes} is too large"
        )));
    }
    Ok(size_bytes / block_size)
}

fn register_volume(
    p: &Arc<PoolHandle>,
    vol: Arc<VolumeShared>,
    name: &str,
    num_blocks: u64,
    spec: &VolumeSpec,
) -> Result<Arc<Bdev>, BdevError> {
    let block_size = p.data_channel()?.bdev().block_size();
    let product = spec.product_name.unwrap_or("Thin Volume");
    let mut props = BdevProps::new(name, product, block_size, num_blocks);
    props.optimal_io_boundary = p.shared.data_block_size as u32;
    // dm-thin's discard granularity: only whole data blocks are unmapped.
    props.unmap_granularity = p.shared.data_block_size as u32;
    props.uuid = spec.uuid;
    props.aliases = spec.aliases.clone();
    let bdev = Bdev::new(
        props,
        Volume {
            vol,
            pool: p.clone(),
            read_only: spec.read_only,
            driver_specific: spec.driver_specific.clone(),
        },
    )?;
    let dev = bdev_dev_id(&bdev);
    bdev::register(bdev.clone())?;
    if let Some(dev) = dev {
        p.shared
            .record_size(dev, num_blocks * u64::from(block_size));
    }
    Ok(bdev)
}

/// What a layer above shows as `driver_specific` in `bdev_get_bdevs` for
/// its volumes, in place of thin's (lvol: SPDK's `lvol` object).
pub type DriverSpecific = Arc<dyn Fn(&Bdev) -> Option<(&'static str, Value)> + Send + Sync>;

/// How a volume's bdev presents itself beyond its name, for layers that
/// give volumes their own identity (lvol: a UUID name, an `lvs/lvol`
/// alias, read-only snapshots). The default is a plain thin volume.
#[derive(Clone, Default)]
pub struct VolumeSpec {
    pub uuid: Option<bdev::Uuid>,
    pub aliases: Vec<String>,
    /// Writes, unmaps and write-zeroes are unsupported (the thin device
    /// itself stays writable in dm-thin's terms).
    pub read_only: bool,
    /// A new device gets every block of its size provisioned at creation
    /// (a thick volume: its writes never meet a full pool).
    pub thick: bool,
    /// What `bdev_get_bdevs` calls it (default "Thin Volume").
    pub product_name: Option<&'static str>,
    /// Its `driver_specific` (default: thin's pool, device and block size).
    pub driver_specific: Option<DriverSpecific>,
}

fn bdev_dev_id(b: &Arc<Bdev>) -> Option<DevId> {
    as_volume(b).map(|v| v.vol.dev_id)
}

/// Creates thin device `dev_id` (or the lowest free id) in `pool` and
/// exposes it as bdev `name` of `size_bytes`.
pub async fn create_volume(
    pool_name: &str,
    name: &str,
    size_bytes: u64,
    dev_id: Option<DevId>,
) -> Result<Arc<Bdev>, ThinError> {
    bring_up(pool_name, name, size_bytes, None, Device::New(dev_id)).await
}

/// Refuses a new device while the pool's metadata use is at or above its
/// metadata_create_limit: what metadata is left goes to existing data.
async fn metadata_room_for_new(p: &Arc<PoolHandle>) -> Result<(), ThinError> {
    let limit = p.options().metadata_create_limit;
    if limit == 0 {
        return Ok(());
    }
    let info = crate::pools::pool_info_now(p).await;
    let total = info.stats.metadata_blocks.max(1);
    let pct = (info.used_metadata_blocks * 100).div_ceil(total);
    if pct >= u64::from(limit) {
        return Err(ThinError::NoSpace(format!(
            "pool {}: metadata is {pct}% used, at or above its metadata_create_limit of \
             {limit}%; grow the metadata (bdev_thin_pool_resize) or raise the limit \
             (bdev_thin_pool_set_options)",
            p.shared.name
        )));
    }
    Ok(())
}

/// Opens `name` as an external origin for pool `p`.
fn open_origin(
    p: &PoolHandle,
    name: Option<&str>,
) -> Result<Option<Arc<external_origin::ExternalOrigin>>, ThinError> {
    let Some(n) = name else { return Ok(None) };
    if n == p.metadata_bdev || p.data_bdev.as_deref() == Some(n) {
        return Err(ThinError::Invalid(format!(
            "{n} is one of the pool's own bdevs"
        )));
    }
    let block_size = p.data_channel()?.bdev().block_size();
    Ok(Some(external_origin::ExternalOrigin::open(n, block_size)?))
}

/// A pool, a volume size in blocks and an opened origin.
type VolumePrep = (
    Arc<PoolHandle>,
    u64,
    Option<Arc<external_origin::ExternalOrigin>>,
);

/// The checks shared by creating and activating volume `name` of
/// `size_bytes` in `pool_name`: the pool, its size in blocks, the origin.
fn volume_prep(
    pool_name: &str,
    name: &str,
    size_bytes: u64,
    external_origin: Option<&str>,
) -> Result<VolumePrep, ThinError> {
    let p = pool(pool_name)?;
    let blocks = check_volume_size(&p, size_bytes)?;
    if bdev::lookup(name).is_some() {
        return Err(ThinError::Exists(format!("bdev {name}")));
    }
    let origin = open_origin(&p, external_origin)?;
    Ok((p, blocks, origin))
}

/// Which thin device a volume bdev stands for.
#[derive(Clone, Copy, Debug)]
pub enum Device {
    /// A new one (this id, or the lowest free).
    New(Option<u32>),
    Existing(u32),
}

/// Creates (for `Device::New`) and activates a device, then registers its
/// bdev `name` of `size_bytes`. With `external_origin`, unprovisioned
/// blocks come from that read-only bdev (a device created with one, and
/// its snapshots, must be activated with the same origin, or those blocks
/// read as zeros).
pub async fn bring_up(
    pool_name: &str,
    name: &str,
    size_bytes: u64,
    external_origin: Option<&str>,
    dev: Device,
) -> Result<Arc<Bdev>, ThinError> {
    let spec = VolumeSpec::default();
    bring_up_with(pool_name, name, &spec, size_bytes, external_origin, dev).await
}

/// `bring_up` with the bdev's identity and provisioning given by `spec`.
pub async fn bring_up_with(
    pool_name: &str,
    name: &str,
    spec: &VolumeSpec,
    size_bytes: u64,
    external_origin: Option<&str>,
    dev: Device,
) -> Result<Arc<Bdev>, ThinError> {
    let (p, blocks, origin) = volume_prep(pool_name, name, size_bytes, external_origin)?;
    if matches!(dev, Device::New(_)) {
        metadata_room_for_new(&p).await?;
    }
    let shared = p.shared.clone();
    let thick_blocks = spec
        .thick
        .then(|| size_bytes.div_ceil(p.shared.opts.block_size));
    let vol = p
        .on_meta(move |core| async move {
            // A new id stays held until the device is active (and so
            // cannot be deleted or picked by another call).
            let (id, _held) = match dev {
                Device::New(want) => {
                    let held = core.pick_dev_id(want)?;
                    match thick_blocks {
                        Some(n) => core.provision(held.id, n, true).await?,
                        None => core.create_thin(held.id).await?,
                    }
                    (held.id, Some(held))
                }
                Device::Existing(id) => (id, None),
            };
            let vol = Arc::new(VolumeShared::new(shared, id, origin));
            core.activate(vol.clone())?;
            Ok(vol)
        })
        .await?;
    finish_register(&p, vol, name, blocks, matches!(dev, Device::New(_)), spec).await
}

/// Registers the bdev of a just-activated volume; undoes the activation
/// (and the creation, when `created`) if that fails.
async fn finish_register(
    p: &Arc<PoolHandle>,
    vol: Arc<VolumeShared>,
    name: &str,
    blocks: u64,
    created: bool,
    spec: &VolumeSpec,
) -> Result<Arc<Bdev>, ThinError> {
    match register_volume(p, vol.clone(), name, blocks, spec) {
        Ok(b) => Ok(b),
        Err(e) => {
            let dev = vol.dev_id;
            let _ = p
                .on_meta(move |core| async move {
                    core.deactivate(dev);
                    if created {
                        core.delete(dev).await?;
                    }
                    Ok(())
                })
                .await;
            Err(e.into())
        }
    }
}

/// How far device `dev_id` of `pool_name` has data: the byte after its
/// highest mapped block (0 when it maps none).
pub async fn mapped_extent(pool_name: &str, dev_id: DevId) -> Result<u64, ThinError> {
    let p = pool(pool_name)?;
    let block = p.options().block_size;
    let highest = p
        .on_meta(move |core| async move {
            if !core.exists(dev_id) {
                return Err(ThinError::NotFound(format!("thin device {dev_id}")));
            }
            core.highest_mapped(dev_id)
        })
        .await?;
    Ok(highest.map_or(0, |h| (h + 1).saturating_mul(block)))
}

/// Refuses to activate device `dev_id` of `pool_name` at `size_bytes` when
/// that would hide blocks it has data in: a volume cut short reads as if
/// its end were gone, and a filesystem on it would see damage.
pub async fn check_activation_size(
    pool_name: &str,
    dev_id: DevId,
    size_bytes: u64,
) -> Result<(), ThinError> {
    let needed = mapped_extent(pool_name, dev_id).await?;
    if size_bytes < needed {
        return Err(ThinError::Invalid(format!(
            "thin device {dev_id} has data up to byte {needed} ({} MiB): activating it at \
             {size_bytes} bytes would hide that data; give size_in_mib {} or more, or force",
            needed.div_ceil(1 << 20),
            needed.div_ceil(1 << 20)
        )));
    }
    Ok(())
}

/// Exposes existing thin device `dev_id` as bdev `name` of `size_bytes`.
pub async fn activate(
    pool_name: &str,
    name: &str,
    dev_id: DevId,
    size_bytes: u64,
) -> Result<Arc<Bdev>, ThinError> {
    bring_up(pool_name, name, size_bytes, None, Device::Existing(dev_id)).await
}

/// Removes volume bdev `name`; its thin device stays in the pool. Refused
/// (EBUSY) while the bdev is open, unless `force`: then its users get a
/// remove event and their I/O fails from now on.
pub async fn deactivate(name: &str, force: bool) -> Result<(), ThinError> {
    let (_, vol, p) = volume_of(name)?;
    unregister_volume(name, &vol, force)?;
    let dev = vol.dev_id;
    p.on_meta(move |core| async move {
        if let Some(v) = core.deactivate(dev) {
            // Its blocks may be deleted next: nothing of it stays in flight.
            core.drain(&v).await;
        }
        Ok(())
    })
    .await
}

fn unregister_volume(name: &str, vol: &VolumeShared, force: bool) -> Result<(), ThinError> {
    let r = if force {
        // Its exports close once their commands are answered: what a
        // suspend holds is failed first.
        crate::meta::MetaCore::fail_held(vol);
        bdev::unregister(name)
    } else {
        bdev::unregister_unused(name)
    };
    match r {
        Ok(_) => Ok(()),
        Err(BdevError::Busy(n, why)) => Err(ThinError::Busy(format!(
            "volume {n} is {why}: stop its exports first, or pass force"
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Snapshot of volume `origin` as a new volume bdev `name` (same size).
pub async fn snapshot(
    origin: &str,
    name: &str,
    dev_id: Option<DevId>,
) -> Result<Arc<Bdev>, ThinError> {
    snapshot_with(origin, name, &VolumeSpec::default(), dev_id).await
}

/// `snapshot` with the new bdev's identity given by `spec` (`thick` is
/// ignored: a snapshot shares its origin's blocks).
pub async fn snapshot_with(
    origin: &str,
    name: &str,
    spec: &VolumeSpec,
    dev_id: Option<DevId>,
) -> Result<Arc<Bdev>, ThinError> {
    let (ob, ovol, p) = volume_of(origin)?;
    if bdev::lookup(name).is_some() {
        return Err(ThinError::Exists(format!("bdev {name}")));
    }
    metadata_room_for_new(&p).await?;
    // A snapshot reads its unprovisioned blocks from the same origin.
    let (shared, odev, ext) = (p.shared.clone(), ovol.dev_id, ovol.origin.clone());
    let vol = p
        .on_meta(move |core| async move {
            let held = core.pick_dev_id(dev_id)?;
            let vol = Arc::new(VolumeShared::new(shared, held.id, ext));
            core.snapshot(odev, held.id, Some(vol.clone())).await?;
            Ok(vol)
        })
        .await?;
    p.shared.record_lineage(vol.dev_id, Some(odev));
    finish_register(&p, vol, name, ob.num_blocks(), true, spec).await
}

/// Deletes volume `name`: its bdev and its thin device (irreversible).
/// Refused while the volume is open (an export, a module on it) unless
/// `force`, as dm-thin refuses to delete an active thin; a refused or
/// failed delete leaves the volume as it was.
pub async fn delete_volume(name: &str, force: bool) -> Result<(), ThinError> {
    let (b, vol, p) = volume_of(name)?;
    let dev = vol.dev_id;
    // What would refuse the delete is asked before the bdev goes.
    p.on_meta(move |core| async move {
        core.writable()?;
        if core.volume(dev).is_none() {
            return Err(ThinError::NotFound(format!(
                "thin device {dev} is not active"
            )));
        }
        Ok(())
    })
    .await?;
    unregister_volume(name, &vol, force)?;
    let v2 = vol.clone();
    let r = p
        .on_meta(move |core| async move {
            let Some(v) = core.deactivate(dev) else {
                return Err(ThinError::NotFound(format!(
                    "thin device {dev} is not active"
                )));
            };
            // In-flight fast-path I/O ends before the blocks can be freed;
            // provisions of it still on this core see it inactive and give
            // their blocks back (`MetaCore::write`).
            if !core.drain(&v).await {
                core.activate(v2)?;
                return Err(ThinError::Busy(format!(
                    "the I/O of thin device {dev} did not drain"
                )));
            }
            match core.delete(dev).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Put it back as it was, unless the device is gone.
                    if core.exists(dev) {
                        let _ = core.activate(v2);
                    }
                    Err(e)
                }
            }
        })
        .await;
    if let Err(e) = r {
        if let Err(e2) = reinstate(&p, vol, &b) {
            tracing::error!(volume = name, error = %e2, "could not re-register a volume after a failed delete");
        }
        return Err(e);
    }
    p.shared.forget_device(dev);
    Ok(())
}

/// Registers `vol` again as bdev `name` after a delete that failed past
/// its unregistration.
fn reinstate(p: &Arc<PoolHandle>, vol: Arc<VolumeShared>, old: &Bdev) -> Result<(), BdevError> {
    let spec = VolumeSpec {
        uuid: Some(old.uuid()),
        aliases: old.aliases(),
        read_only: as_volume(old).is_some_and(|v| v.read_only),
        thick: false,
        product_name: Some(old.product_name()),
        driver_specific: as_volume(old).and_then(|v| v.driver_specific.clone()),
    };
    register_volume(p, vol, old.name(), old.num_blocks(), &spec).map(|_| ())
}

/// Deletes inactive thin device `dev_id` of `pool_name` (one no bdev
/// stands for, as after a restart that did not activate it).
pub async fn delete_device(pool_name: &str, dev_id: DevId) -> Result<(), ThinError> {
    let p = pool(pool_name)?;
    p.on_meta(move |core| async move { core.delete(dev_id).await })
        .await?;
    p.shared.forget_device(dev_id);
    Ok(())
}

/// Re-parents volume `name` from `old` (a volume it was a snapshot of,
/// or None) to `new`, a volume of the same pool: its unwritten blocks
/// read `new`'s data from now on (lvol's set_parent).
pub async fn reparent_volume(name: &str, old: Option<&str>, new: &str) -> Result<(), ThinError> {
    let (b, vol, p) = volume_of(name)?;
    let same_pool = |n: &str| -> Result<DevId, ThinError> {
        let (_, v, vp) = volume_of(n)?;
        if !Arc::ptr_eq(&vp.shared, &p.shared) {
            return Err(ThinError::Invalid(format!("{n} is in another pool")));
        }
        Ok(v.dev_id)
    };
    let old = old.map(same_pool).transpose()?;
    let new = same_pool(new)?;
    let blocks = b.size_bytes().div_ceil(p.shared.opts.block_size);
    let dev = vol.dev_id;
    p.on_meta(move |core| async move { core.reparent(dev, old, new, blocks).await })
        .await
}

/// Maps every block of volume `name` that is not mapped yet to a new,
/// zeroed data block (lvol's inflate): its writes no longer need free
/// space, except to break sharing with a snapshot.
pub async fn provision_volume(name: &str) -> Result<(), ThinError> {
    let (b, vol, p) = volume_of(name)?;
    let blocks = b.size_bytes().div_ceil(p.shared.opts.block_size);
    let dev = vol.dev_id;
    p.on_meta(move |core| async move { core.provision(dev, blocks, false).await })
        .await
}

/// Grows volume `name` to `size_bytes`.
/// Grows or shrinks volume `name`. Shrinking cuts off the tail (its
/// blocks go back to the pool; growing back reads zeros there) and is
/// refused while the volume is open for writing unless `force`.
pub async fn resize_volume(name: &str, size_bytes: u64, force: bool) -> Result<(), ThinError> {
    let (b, vol, p) = volume_of(name)?;
    let blocks = check_volume_size(&p, size_bytes)?;
    let old = b.num_blocks();
    if blocks < old {
        b.shrink(blocks, force)?;
        p.on_meta(move |core| async move { core.shrink_tail(&vol, blocks, old).await })
            .await?;
    } else {
        b.notify_resize(blocks)?;
    }
    if let Some(dev) = bdev_dev_id(&b) {
        p.shared.record_size(dev, size_bytes);
    }
    Ok(())
}

pub async fn set_transaction_id(pool_name: &str, current: u64, new: u64) -> Result<(), ThinError> {
    pool(pool_name)?
        .on_meta(move |core| async move { core.set_transaction_id(current, new).await })
        .await
}

/// Takes the metadata snapshot; returns its block.
pub async fn reserve_metadata_snap(pool_name: &str) -> Result<u64, ThinError> {
    pool(pool_name)?
        .on_meta(|core| async move { core.reserve_metadata_snap().await })
        .await
}

pub async fn release_metadata_snap(pool_name: &str) -> Result<(), ThinError> {
    pool(pool_name)?
        .on_meta(|core| async move { core.release_metadata_snap().await })
        .await
}

/// What `base` is compared with in a delta.
#[derive(Clone, Debug)]
pub enum DeltaBase {
    Volume(String),
    MetadataSnap,
}

/// Changed ranges of volume `name` against `base`, in data blocks.
pub async fn delta(name: &str, base: DeltaBase) -> Result<Vec<(DeltaKind, u64, u64)>, ThinError> {
    let (_, vol, p) = volume_of(name)?;
    let base_dev = match base {
        DeltaBase::Volume(b) => {
            let (_, bv, bp) = volume_of(&b)?;
            if !Arc::ptr_eq(&bp.shared, &p.shared) {
                return Err(ThinError::Invalid(format!("{b} is in another pool")));
            }
            Some(bv.dev_id)
        }
        DeltaBase::MetadataSnap => None,
    };
    let dev = vol.dev_id;
    p.on_meta(move |core| async move { core.delta(dev, base_dev) })
        .await
}

/// A device as `bdev_thin_get_volumes` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeInfo {
    /// The bdev name; None for a device that is not active.
    pub name: Option<String>,
    pub pool: String,
    pub size: Option<u64>,
    #[serde(flatten)]
    pub device: DeviceInfo,
    /// Bytes of mapping table this volume holds in memory.
    pub table_bytes: Option<u64>,
    /// What the volume was made from: the external origin bdev of an
    /// active volume, else the bdev (or, when that is not active, "dev N")
    /// of the device it is a snapshot of, as far as this process or a
    /// saved config knows (dm-thin's metadata keeps no lineage).
    pub origin: Option<String>,
    pub origin_dev_id: Option<DevId>,
    /// Its I/O is held (bdev_thin_suspend or bdev_thin_pool_suspend).
    pub suspended: bool,
    /// It refuses writes (bdev_thin_set_read_only).
    pub read_only: bool,
}

/// Every device of `pool_name` (active or not).
pub async fn volumes(pool_name: &str) -> Result<Vec<VolumeInfo>, ThinError> {
    let p = pool(pool_name)?;
    let devs = p.on_meta(|core| async move { core.devices() }).await?;
    let active: BTreeMap<u32, Arc<Bdev>> = volume_bdevs(Some(pool_name))
        .into_iter()
        .filter_map(|b| {
            as_volume(&b)
                .map(|v| v.vol.dev_id)
                .map(|id| (id, b.clone()))
        })
        .collect();
    Ok(devs
        .into_iter()
        .map(|device| {
            let b = active.get(&device.dev_id);
            VolumeInfo {
                read_only: b
                    .and_then(|b| as_volume(b))
                    .is_some_and(|v| v.vol.is_read_only()),
                suspended: b
                    .and_then(|b| as_volume(b))
                    .is_some_and(|v| v.vol.is_suspended()),
                name: b.map(|b| b.name().to_string()),
                pool: pool_name.to_string(),
                size: b.map(|b| b.size_bytes()),
                table_bytes: b
                    .and_then(|b| as_volume(b))
                    .map(|v| v.vol.table.memory_bytes()),
                origin: b
                    .and_then(|b| as_volume(b))
                    .and_then(|v| v.vol.origin.as_ref().map(|origin| origin.name.clone()))
                    .or_else(|| {
                        p.shared
                            .origin_of(device.dev_id)
                            .map(|origin| match active.get(&origin) {
                                Some(ob) => ob.name().to_string(),
                                None => format!("dev {origin}"),
                            })
                    }),
                origin_dev_id: p.shared.origin_of(device.dev_id),
                device,
            }
        })
        .collect())
}
