//! The pool registry and the pools' control API: create (format or open),
//! resize, delete, and the view `bdev_thin_pool_get_pools` shows. Every
//! call is async and may run on any reactor; what touches metadata hops to
//! the pool's metadata core and back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use bdev::modules::base::Base;
use bdev::{BdevError, BdevEvent, IoChannel};

use crate::control::{deactivate, volume_bdevs};
use crate::shared::PoolShared;
use crate::{meta, PoolMode, PoolOptions, PoolStats, ThinError};

/// A pool as the rest of the process holds it.
pub struct PoolHandle {
    pub(crate) shared: Arc<PoolShared>,
    bases: Arc<Bases>,
    pub metadata_bdev: String,
    pub data_bdev: Option<String>,
    /// The layer that owns this pool (lvol), if one does: it recreates
    /// the pool itself, so save_config leaves the pool and its volumes out.
    managed_by: std::sync::OnceLock<&'static str>,
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
    /// The options as they are now (some change while the pool runs).
    pub fn options(&self) -> PoolOptions {
        self.shared.options()
    }
    pub fn mode(&self) -> PoolMode {
        self.shared.mode()
    }
    pub fn metadata_core(&self) -> u32 {
        self.shared.meta_core
    }
    /// Hands the pool to `owner` (see `managed_by`); the first owner stays.
    pub fn set_managed_by(&self, owner: &'static str) {
        let _ = self.managed_by.set(owner);
    }
    pub fn managed_by(&self) -> Option<&'static str> {
        self.managed_by.get().copied()
    }
    pub(crate) fn data_channel(&self) -> Result<IoChannel, BdevError> {
        self.bases.data().channel()
    }

    /// Whether the data bdev takes unmaps (passdown has somewhere to go).
    pub(crate) fn data_supports_unmap(&self) -> bool {
        self.bases.data().supports(bdev::IoType::Unmap)
    }

    /// Runs `f` with this pool's metadata state, on its metadata core.
    pub(crate) async fn on_meta<T, Fut>(
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
    let data_bdev = data_bdev.filter(|data| *data != metadata_bdev);
    // Resizes of the bdevs reach the pool through this slot once it exists.
    let slot: Arc<Mutex<Option<Arc<PoolHandle>>>> = Arc::new(Mutex::new(None));
    let on_event = |slot: Arc<Mutex<Option<Arc<PoolHandle>>>>| -> bdev::EventFn {
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
        Some(data) => match Base::claim_with_events(data, "thin", Some(on_event(slot.clone()))) {
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
    let (pool_name, pool_opts) = (name.to_string(), opts.clone());
    let opened = reactor::call_on(meta_core, move || async move {
        let meta_ch = b2.meta.channel()?;
        let data_ch = b2.data().channel()?;
        let core = meta::open(meta::OpenArgs {
            name: pool_name,
            opts: pool_opts,
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
            if let Some(data) = &bases.data {
                data.release();
            }
            return Err(e);
        }
    };
    let handle = Arc::new(PoolHandle {
        shared,
        bases,
        metadata_bdev: metadata_bdev.to_string(),
        data_bdev: data_bdev.map(str::to_string),
        managed_by: std::sync::OnceLock::new(),
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
        let block_size = shared.opts.block_size;
        let data_bytes = data
            .size_bytes()
            .saturating_sub(shared.data_offset * data.block_size() as u64);
        // Metadata first: a pool out of metadata space cannot grow its
        // data area until it has room again.
        if !one_device {
            core.grow_metadata(meta_bdev.size_bytes() / metadata::BLOCK_SIZE as u64)
                .await?;
        }
        core.grow_data(data_bytes / block_size).await?;
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
    if let Some(data) = &p.bases.data {
        data.release();
    }
    Ok(())
}

/// Drops pool `name` without a final commit, as a crash would (crash
/// tests): its metadata core stops answering and fails what is in flight.
#[doc(hidden)]
pub async fn abandon_pool(name: &str) -> Result<(), ThinError> {
    let p = pool(name)?;
    for v in volume_bdevs(Some(name)) {
        bdev::unregister(v.name())?;
    }
    p.on_meta(|core| async move {
        core.abandon();
        Ok(())
    })
    .await?;
    pools().remove(name);
    p.bases.meta.release();
    if let Some(data) = &p.bases.data {
        data.release();
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
                    .map_err(|s| ThinError::Io(format!("commit failed: {s}")))?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
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
    /// Discards freeing pool blocks reach the data bdev: the discard
    /// option says passdown and the data bdev takes unmaps (a pool on a
    /// thin volume whose own pool ignores discards does not).
    pub discard_passdown: bool,
    /// Formatted (new and empty) when it was opened, rather than reopened.
    pub formatted: bool,
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
        discard_passdown: p.shared.discard() == crate::options::DiscardMode::Passdown
            && p.data_supports_unmap(),
        formatted: p
            .shared
            .formatted
            .load(std::sync::atomic::Ordering::Acquire),
        stats,
        options: p.shared.options(),
    }
}
