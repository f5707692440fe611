//! thin: dm-thin's thin pools and thin volumes as a bdev module.
//!
//! A pool claims a metadata bdev and a data bdev (or one bdev split into a
//! metadata region and a data region) and keeps dm-thin v2 metadata on it
//! through the `metadata` crate. Each thin volume is a bdev.
//!
//! Roles (see docs/architecture.md):
//! - I/O cores run volume channels ([`volume`]): a read or write of a
//!   mapped, unshared block is a lock-free table lookup, a remap and one
//!   submit on the same core.
//! - One metadata core per pool ([`meta`]) owns the metadata: it
//!   provisions, copies on write, discards, commits (data flush first,
//!   superblock last), switches modes and runs control operations.
//! - [`image`] bridges the synchronous metadata library and bdev I/O.
//!
//! Control functions here are async and run on any reactor; they hop to
//! the pool's metadata core and back. [`rpc`] serves them as JSON-RPC.

mod barrier;
mod block_size;
mod epoch;
mod image;
mod meta;
pub mod options;
mod origin;
pub mod rpc;
mod shared;
mod sync;
mod table;
mod volume;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

pub use meta::DeviceInfo;
pub use metadata::thin::delta::DeltaKind;
pub use options::{DiscardMode, PoolMode, PoolOptions};
pub use shared::{events_since, PoolEvent, PoolStats};

use crate::modules::base::Base;
use crate::{Bdev, BdevError, BdevEvent, BdevProps, IoChannel};
use shared::{PoolShared, VolumeShared};
use volume::Volume;
pub(crate) use volume::{put_channels, take_channels};

/// Errors of thin pool and volume management.
#[derive(Debug, thiserror::Error)]
pub enum ThinError {
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("the pool is in {0} mode")]
    Mode(&'static str),
    #[error(
        "the pool is out of metadata space: grow its metadata bdev, then bdev_thin_pool_resize"
    )]
    NoMetadataSpace,
    #[error("I/O error: {0}")]
    Io(String),
    #[error("metadata: {0}")]
    Metadata(#[from] metadata::MetadataError),
    #[error(transparent)]
    Bdev(#[from] BdevError),
    #[error(transparent)]
    Reactor(#[from] reactor::ReactorError),
}

impl ThinError {
    /// The positive errno an SPDK method would answer with.
    pub fn errno(&self) -> i32 {
        match self {
            ThinError::Exists(_) => libc::EEXIST,
            ThinError::NotFound(_) => libc::ENODEV,
            ThinError::Invalid(_) => libc::EINVAL,
            ThinError::Busy(_) => libc::EBUSY,
            ThinError::Mode(_) => libc::EPERM,
            ThinError::NoMetadataSpace => libc::ENOSPC,
            ThinError::Io(_) | ThinError::Metadata(_) => libc::EIO,
            ThinError::Bdev(e) => e.errno(),
            ThinError::Reactor(_) => libc::EINVAL,
        }
    }
}

/// A pool as the rest of the process holds it.
pub struct PoolHandle {
    pub(crate) shared: Arc<PoolShared>,
    bases: Arc<Bases>,
    pub metadata_bdev: String,
    pub data_bdev: Option<String>,
}

struct Bases {
    meta: Base,
    data: Option<Base>,
}

impl Bases {
    fn data(&self) -> &Base {
        self.data.as_ref().unwrap_or(&self.meta)
    }
}

impl PoolHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }
    pub fn options(&self) -> &PoolOptions {
        &self.shared.opts
    }
    pub fn mode(&self) -> PoolMode {
        self.shared.mode()
    }
    pub fn metadata_core(&self) -> u32 {
        self.shared.meta_core
    }
    pub(crate) fn data_channel(&self) -> Result<IoChannel, BdevError> {
        self.bases.data().channel()
    }

    /// Runs `f` with this pool's metadata state, on its metadata core.
    async fn on_meta<T, Fut>(
        &self,
        f: impl FnOnce(std::rc::Rc<meta::MetaCore>) -> Fut + Send + 'static,
    ) -> Result<T, ThinError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, ThinError>> + 'static,
    {
        let key = meta::key(&self.shared);
        let name = self.shared.name.clone();
        reactor::call_on(self.shared.meta_core, move || async move {
            match meta::lookup(key) {
                Some(core) => f(core).await,
                None => Err(ThinError::NotFound(format!("pool {name}"))),
            }
        })
        .await?
    }
}

static POOLS: Mutex<BTreeMap<String, Arc<PoolHandle>>> = Mutex::new(BTreeMap::new());

fn pools() -> MutexGuard<'static, BTreeMap<String, Arc<PoolHandle>>> {
    POOLS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pool named `name`.
pub fn pool(name: &str) -> Result<Arc<PoolHandle>, ThinError> {
    pools()
        .get(name)
        .cloned()
        .ok_or_else(|| ThinError::NotFound(format!("pool {name}")))
}

/// Every pool, by name.
pub fn pool_list() -> Vec<Arc<PoolHandle>> {
    pools().values().cloned().collect()
}

/// Creates (formats or opens) pool `name` on `metadata_bdev`, with data on
/// `data_bdev` or, when that is None, on the rest of `metadata_bdev`.
pub async fn create_pool(
    name: &str,
    metadata_bdev: &str,
    data_bdev: Option<&str>,
    opts: PoolOptions,
) -> Result<Arc<PoolHandle>, ThinError> {
    opts.check()?;
    if name.is_empty() || name.contains('/') {
        return Err(ThinError::Invalid(format!("invalid pool name {name:?}")));
    }
    if pools().contains_key(name) {
        return Err(ThinError::Exists(format!("pool {name}")));
    }
    let cores = reactor::cores();
    let meta_core = match opts.metadata_core {
        Some(c) if cores.contains(&c) => c,
        Some(c) => {
            return Err(ThinError::Invalid(format!(
                "metadata_core {c} is not a reactor"
            )))
        }
        None => *cores.last().ok_or(reactor::ReactorError::NotOnReactor)?,
    };
    let data_bdev = data_bdev.filter(|d| *d != metadata_bdev);
    // Resizes of the bdevs reach the pool through this slot once it exists.
    let slot: Arc<Mutex<Option<Arc<PoolHandle>>>> = Arc::new(Mutex::new(None));
    let on_event = |slot: Arc<Mutex<Option<Arc<PoolHandle>>>>| -> crate::EventFn {
        Box::new(move |e| {
            if let BdevEvent::Resize(_) = e {
                let p = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(p) = p {
                    let r = reactor::spawn_on(p.shared.meta_core, move || async move {
                        if let Err(e) = resize_pool_inner(&p).await {
                            tracing::warn!(pool = %p.shared.name, error = %e, "pool resize on bdev resize failed");
                        }
                    });
                    if r.is_err() {
                        tracing::warn!(
                            "thin: bdev resized off the reactors; run bdev_thin_pool_resize"
                        );
                    }
                }
            }
        })
    };
    let (meta, _) = Base::claim_with_events(metadata_bdev, "thin", Some(on_event(slot.clone())))?;
    let data = match data_bdev {
        Some(d) => match Base::claim_with_events(d, "thin", Some(on_event(slot.clone()))) {
            Ok((b, _)) => Some(b),
            Err(e) => {
                meta.release();
                return Err(e.into());
            }
        },
        None => None,
    };
    let bases = Arc::new(Bases { meta, data });
    let b2 = bases.clone();
    let (n, o) = (name.to_string(), opts.clone());
    let opened = reactor::call_on(meta_core, move || async move {
        let meta_ch = b2.meta.channel()?;
        let data_ch = b2.data().channel()?;
        let core = meta::open(meta::OpenArgs {
            name: n,
            opts: o,
            meta_core,
            meta_ch,
            data_ch,
            one_device: b2.data.is_none(),
        })
        .await?;
        Ok::<_, ThinError>(core.shared.clone())
    })
    .await;
    let shared = match opened.map_err(ThinError::from).and_then(|r| r) {
        Ok(s) => s,
        Err(e) => {
            bases.meta.release();
            if let Some(d) = &bases.data {
                d.release();
            }
            return Err(e);
        }
    };
    let handle = Arc::new(PoolHandle {
        shared,
        bases,
        metadata_bdev: metadata_bdev.to_string(),
        data_bdev: data_bdev.map(str::to_string),
    });
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle.clone());
    pools().insert(name.to_string(), handle.clone());
    Ok(handle)
}

/// Grows the pool to what its bdevs now hold.
async fn resize_pool_inner(p: &Arc<PoolHandle>) -> Result<(), ThinError> {
    let data = p.bases.data().channel()?.bdev().clone();
    let meta_bdev = p.bases.meta.channel()?.bdev().clone();
    let shared = p.shared.clone();
    let one_device = p.bases.data.is_none();
    p.on_meta(move |core| async move {
        // One resize at a time: a call that finds the work done by one
        // running (a bdev resize event's) answers after that one landed.
        let _one = core.resize_lock.lock().await;
        let bs = shared.opts.block_size;
        let data_bytes = data
            .size_bytes()
            .saturating_sub(shared.data_offset * data.block_size() as u64);
        // Metadata first: a pool out of metadata space cannot grow its
        // data area until it has room again.
        if !one_device {
            core.grow_metadata(meta_bdev.size_bytes() / metadata::BLOCK_SIZE as u64)
                .await?;
        }
        core.grow_data(data_bytes / bs).await?;
        core.refresh_stats();
        Ok(())
    })
    .await
}

/// Picks up a larger data or metadata bdev (also done on their resize
/// events). Shrinking is refused.
pub async fn resize_pool(name: &str) -> Result<(), ThinError> {
    resize_pool_inner(&pool(name)?).await
}

/// Commits, deactivates every volume and releases the bdevs. The on-disk
/// pool stays; `create_pool` on the same bdevs opens it again.
pub async fn delete_pool(name: &str) -> Result<(), ThinError> {
    let p = pool(name)?;
    for v in volume_bdevs(Some(name)) {
        if let Some(c) = v.claimed_by() {
            return Err(ThinError::Busy(format!(
                "volume {} is claimed by {c}",
                v.name()
            )));
        }
    }
    for v in volume_bdevs(Some(name)) {
        deactivate(v.name(), true).await?;
    }
    p.on_meta(|core| async move { core.close().await }).await?;
    pools().remove(name);
    p.bases.meta.release();
    if let Some(d) = &p.bases.data {
        d.release();
    }
    Ok(())
}

/// Drops pool `name` without a final commit, as a crash would (crash
/// tests): its metadata core stops answering and fails what is in flight.
#[doc(hidden)]
pub async fn abandon_pool(name: &str) -> Result<(), ThinError> {
    let p = pool(name)?;
    for v in volume_bdevs(Some(name)) {
        crate::unregister(v.name())?;
    }
    p.on_meta(|core| async move {
        core.abandon();
        Ok(())
    })
    .await?;
    pools().remove(name);
    p.bases.meta.release();
    if let Some(d) = &p.bases.data {
        d.release();
    }
    Ok(())
}

/// Commits every pool (a clean shutdown).
pub async fn commit_all() -> Result<(), ThinError> {
    for p in pool_list() {
        p.on_meta(|core| async move {
            if core.shared.mode().metadata_writable() {
                core.commit_now()
                    .await
                    .map_err(|s| ThinError::Io(format!("commit failed: {s:?}")))?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

fn as_volume(b: &Bdev) -> Option<&Volume> {
    (b.module() as &dyn std::any::Any).downcast_ref::<Volume>()
}

/// The registered volume bdevs (of one pool, or all).
fn volume_bdevs(pool: Option<&str>) -> Vec<Arc<Bdev>> {
    crate::list()
        .into_iter()
        .filter(|b| as_volume(b).is_some_and(|v| pool.is_none_or(|p| v.pool.shared.name == p)))
        .collect()
}

/// A volume bdev with its shared state and its pool.
type VolumeRef = (Arc<Bdev>, Arc<VolumeShared>, Arc<PoolHandle>);

fn volume_of(name: &str) -> Result<VolumeRef, ThinError> {
    let b = crate::lookup(name).ok_or_else(|| ThinError::NotFound(format!("bdev {name}")))?;
    let v =
        as_volume(&b).ok_or_else(|| ThinError::Invalid(format!("{name} is not a thin volume")))?;
    let (vol, pool) = (v.vol.clone(), v.pool.clone());
    Ok((b, vol, pool))
}

fn check_volume_size(p: &PoolHandle, size_bytes: u64) -> Result<u64, ThinError> {
    let bs = p.data_channel()?.bdev().block_size() as u64;
    if size_bytes == 0 || !size_bytes.is_multiple_of(bs) {
        return Err(ThinError::Invalid(format!(
            "size {size_bytes} must be a positive multiple of {bs}"
        )));
    }
    if size_bytes.div_ceil(p.shared.opts.block_size) > table::MAX_VBLOCKS {
        return Err(ThinError::Invalid(format!(
            "size {size_bytes} is too large"
        )));
    }
    Ok(size_bytes / bs)
}

fn register_volume(
    p: &Arc<PoolHandle>,
    vol: Arc<VolumeShared>,
    name: &str,
    num_blocks: u64,
) -> Result<Arc<Bdev>, BdevError> {
    let bs = p.data_channel()?.bdev().block_size();
    let mut props = BdevProps::new(name, "Thin Volume", bs, num_blocks);
    props.optimal_io_boundary = p.shared.block_blocks as u32;
    // dm-thin's discard granularity: only whole data blocks are unmapped.
    props.unmap_granularity = p.shared.block_blocks as u32;
    let bdev = Bdev::new(
        props,
        Volume {
            vol,
            pool: p.clone(),
        },
    )?;
    crate::register(bdev.clone())?;
    Ok(bdev)
}

/// Creates thin device `dev_id` (or the lowest free id) in `pool` and
/// exposes it as bdev `name` of `size_bytes`.
pub async fn create_volume(
    pool_name: &str,
    name: &str,
    size_bytes: u64,
    dev_id: Option<u32>,
) -> Result<Arc<Bdev>, ThinError> {
    bring_up(pool_name, name, size_bytes, None, Device::New(dev_id)).await
}

/// Opens `name` as an external origin for pool `p`.
fn open_origin(
    p: &PoolHandle,
    name: Option<&str>,
) -> Result<Option<Arc<origin::ExternalOrigin>>, ThinError> {
    let Some(n) = name else { return Ok(None) };
    if n == p.metadata_bdev || p.data_bdev.as_deref() == Some(n) {
        return Err(ThinError::Invalid(format!(
            "{n} is one of the pool's own bdevs"
        )));
    }
    let bs = p.data_channel()?.bdev().block_size();
    Ok(Some(origin::ExternalOrigin::open(
        n,
        bs,
        p.shared.block_blocks,
    )?))
}

/// A pool, a volume size in blocks and an opened origin.
type VolumePrep = (Arc<PoolHandle>, u64, Option<Arc<origin::ExternalOrigin>>);

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
    if crate::lookup(name).is_some() {
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
    let (p, blocks, origin) = volume_prep(pool_name, name, size_bytes, external_origin)?;
    let shared = p.shared.clone();
    let vol = p
        .on_meta(move |core| async move {
            // A new id stays held until the device is active (and so
            // cannot be deleted or picked by another call).
            let (id, _held) = match dev {
                Device::New(want) => {
                    let held = core.pick_dev_id(want)?;
                    core.create_thin(held.id).await?;
                    (held.id, Some(held))
                }
                Device::Existing(id) => (id, None),
            };
            let vol = Arc::new(VolumeShared::new(shared, id, origin));
            core.activate(vol.clone())?;
            Ok(vol)
        })
        .await?;
    finish_register(&p, vol, name, blocks, matches!(dev, Device::New(_))).await
}

/// Registers the bdev of a just-activated volume; undoes the activation
/// (and the creation, when `created`) if that fails.
async fn finish_register(
    p: &Arc<PoolHandle>,
    vol: Arc<VolumeShared>,
    name: &str,
    blocks: u64,
    created: bool,
) -> Result<Arc<Bdev>, ThinError> {
    match register_volume(p, vol.clone(), name, blocks) {
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

/// Exposes existing thin device `dev_id` as bdev `name` of `size_bytes`.
pub async fn activate(
    pool_name: &str,
    name: &str,
    dev_id: u32,
    size_bytes: u64,
) -> Result<Arc<Bdev>, ThinError> {
    bring_up(pool_name, name, size_bytes, None, Device::Existing(dev_id)).await
}

/// Removes volume bdev `name`; its thin device stays in the pool. Refused
/// (EBUSY) while the bdev is open, unless `force`: then its users get a
/// remove event and their I/O fails from now on.
pub async fn deactivate(name: &str, force: bool) -> Result<(), ThinError> {
    let (_, vol, p) = volume_of(name)?;
    unregister_volume(name, force)?;
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

fn unregister_volume(name: &str, force: bool) -> Result<(), ThinError> {
    let r = if force {
        crate::unregister(name)
    } else {
        crate::registry::unregister_unused(name)
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
    dev_id: Option<u32>,
) -> Result<Arc<Bdev>, ThinError> {
    let (ob, ovol, p) = volume_of(origin)?;
    if crate::lookup(name).is_some() {
        return Err(ThinError::Exists(format!("bdev {name}")));
    }
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
    p.shared.set_origin(vol.dev_id, Some(odev));
    finish_register(&p, vol, name, ob.num_blocks(), true).await
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
    unregister_volume(name, force)?;
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
        if let Err(e2) = reinstate(&p, vol, name, b.num_blocks()) {
            tracing::error!(volume = name, error = %e2, "could not re-register a volume after a failed delete");
        }
        return Err(e);
    }
    p.shared.set_origin(dev, None);
    Ok(())
}

/// Registers `vol` again as bdev `name` after a delete that failed past
/// its unregistration.
fn reinstate(
    p: &Arc<PoolHandle>,
    vol: Arc<VolumeShared>,
    name: &str,
    blocks: u64,
) -> Result<(), BdevError> {
    register_volume(p, vol, name, blocks).map(|_| ())
}

/// Deletes inactive thin device `dev_id` of `pool_name` (one no bdev
/// stands for, as after a restart that did not activate it).
pub async fn delete_device(pool_name: &str, dev_id: u32) -> Result<(), ThinError> {
    let p = pool(pool_name)?;
    p.on_meta(move |core| async move { core.delete(dev_id).await })
        .await?;
    p.shared.set_origin(dev_id, None);
    Ok(())
}

/// Grows volume `name` to `size_bytes`.
pub async fn resize_volume(name: &str, size_bytes: u64) -> Result<(), ThinError> {
    let (b, _, p) = volume_of(name)?;
    let blocks = check_volume_size(&p, size_bytes)?;
    if blocks < b.num_blocks() {
        return Err(ThinError::Invalid(format!(
            "{name} cannot shrink from {} to {size_bytes} bytes",
            b.size_bytes()
        )));
    }
    b.notify_resize(blocks)?;
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

/// Pool `p` as `bdev_thin_pool_get_pools` shows it, with its block counts
/// read on the metadata core now: the published ones are refreshed only at
/// commits and control operations, and dm-thin's status counts a block
/// from the write that allocated it.
pub async fn pool_info_now(p: &PoolHandle) -> PoolInfo {
    // A pool whose metadata core cannot answer shows what it last published.
    let _ = p
        .on_meta(|core| async move {
            core.refresh_stats();
            Ok(())
        })
        .await;
    pool_info(p)
}

/// A pool as `bdev_thin_pool_get_pools` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PoolInfo {
    pub name: String,
    pub mode: &'static str,
    pub needs_check: bool,
    pub metadata_bdev: String,
    pub data_bdev: Option<String>,
    pub metadata_core: u32,
    pub error_if_no_space: bool,
    pub used_data_blocks: u64,
    pub used_metadata_blocks: u64,
    #[serde(flatten)]
    pub stats: PoolStats,
    pub options: PoolOptions,
}

pub fn pool_info(p: &PoolHandle) -> PoolInfo {
    let stats = p.shared.stats();
    PoolInfo {
        name: p.shared.name.clone(),
        mode: p.shared.mode().name(),
        needs_check: p
            .shared
            .needs_check
            .load(std::sync::atomic::Ordering::Acquire),
        metadata_bdev: p.metadata_bdev.clone(),
        data_bdev: p.data_bdev.clone(),
        metadata_core: p.shared.meta_core,
        error_if_no_space: p
            .shared
            .error_if_no_space
            .load(std::sync::atomic::Ordering::Acquire),
        used_data_blocks: stats.data_blocks.saturating_sub(stats.free_data_blocks),
        used_metadata_blocks: stats
            .metadata_blocks
            .saturating_sub(stats.free_metadata_blocks),
        stats,
        options: p.shared.opts.clone(),
    }
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
    pub origin_dev_id: Option<u32>,
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
        .map(|d| {
            let b = active.get(&d.dev_id);
            VolumeInfo {
                name: b.map(|b| b.name().to_string()),
                pool: pool_name.to_string(),
                size: b.map(|b| b.size_bytes()),
                table_bytes: b
                    .and_then(|b| as_volume(b))
                    .map(|v| v.vol.table.memory_bytes()),
                origin: b
                    .and_then(|b| as_volume(b))
                    .and_then(|v| v.vol.origin.as_ref().map(|o| o.name.clone()))
                    .or_else(|| {
                        p.shared.origin_of(d.dev_id).map(|o| match active.get(&o) {
                            Some(ob) => ob.name().to_string(),
                            None => format!("dev {o}"),
                        })
                    }),
                origin_dev_id: p.shared.origin_of(d.dev_id),
                device: d,
            }
        })
        .collect())
}
