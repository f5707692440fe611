//! Lvstores: a thin pool in the one-device layout on the base bdev, whose
//! side table holds the lvol table. Create, find again (examine), delete,
//! rename, grow, and the view bdev_lvol_get_lvstores shows.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bdev::{BdevError, Uuid};
use serde::Serialize;
use thin::{PoolHandle, PoolOptions, ThinError};

use crate::table::{valid_name, ClearMethod, LvolTable};
use crate::LvolError;

/// SPDK's default cluster size.
pub const DEFAULT_CLUSTER: u64 = 4 << 20;

/// One lvstore as this process holds it.
pub struct Lvstore {
    pub uuid: Uuid,
    pub pool: Arc<PoolHandle>,
    pub base_bdev: String,
    /// The committed table: changed only after its commit landed.
    table: Mutex<LvolTable>,
}

impl Lvstore {
    pub fn table(&self) -> LvolTable {
        self.lock_table().clone()
    }

    fn lock_table(&self) -> MutexGuard<'_, LvolTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> String {
        self.lock_table().lvs_name.clone()
    }

    pub fn cluster_size(&self) -> u64 {
        self.lock_table().cluster_size
    }

    /// Commits `next` alone (a rename, a flag, a size).
    pub(crate) async fn commit_table(&self, next: LvolTable) -> Result<(), LvolError> {
        self.pool.commit_side_table(self.fit(&next)?).await?;
        *self.lock_table() = next;
        Ok(())
    }

    fn fit(&self, t: &LvolTable) -> Result<Vec<u8>, LvolError> {
        let bytes = t.encode();
        if bytes.len() > self.pool.side_table_capacity() {
            // SPDK runs out of metadata pages; here the table's block is full.
            return Err(LvolError::Later(libc::ENOSPC));
        }
        Ok(bytes)
    }

    /// Runs `op`, a thin call that changes the pool's metadata, with
    /// `next` staged: its commit carries the table, so both land or
    /// neither does. If `op` fails after its change committed (a bdev
    /// that would not register, undone by a second change), the previous
    /// table is committed again.
    pub(crate) async fn with_table<T>(
        &self,
        next: LvolTable,
        op: impl Future<Output = Result<T, ThinError>>,
    ) -> Result<T, LvolError> {
        let bytes = self.fit(&next)?;
        let tid = self.pool.stage_side_table(bytes.clone()).await?;
        match op.await {
            Ok(v) => {
                if !self.pool.side_table_landed(tid).await? {
                    // The transaction id moved under us (someone set it):
                    // the change is in, so the table follows at once.
                    tracing::warn!(lvs = %self.name(), "lvol table committed after its change");
                    self.pool.commit_side_table(bytes).await?;
                }
                *self.lock_table() = next;
                Ok(v)
            }
            Err(e) => {
                if self.pool.side_table_landed(tid).await.unwrap_or(false) {
                    let old = self.table().encode();
                    if let Err(e2) = self.pool.commit_side_table(old).await {
                        tracing::error!(lvs = %self.name(), error = %e2,
                            "could not put the lvol table back after a failed operation");
                    }
                } else {
                    let _ = self.pool.unstage_side_table().await;
                }
                Err(e.into())
            }
        }
    }
}

static STORES: Mutex<Vec<Arc<Lvstore>>> = Mutex::new(Vec::new());

fn stores() -> MutexGuard<'static, Vec<Arc<Lvstore>>> {
    STORES.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn list() -> Vec<Arc<Lvstore>> {
    stores().clone()
}

pub fn by_name(name: &str) -> Option<Arc<Lvstore>> {
    stores().iter().find(|s| s.name() == name).cloned()
}

pub fn by_uuid(uuid: &str) -> Option<Arc<Lvstore>> {
    stores()
        .iter()
        .find(|s| s.uuid.to_string() == uuid)
        .cloned()
}

/// SPDK's lvstore lookup: exactly one of UUID and name, else EINVAL;
/// none found, ENODEV.
pub fn select(uuid: Option<&str>, name: Option<&str>) -> Result<Arc<Lvstore>, LvolError> {
    match (uuid, name) {
        (Some(u), None) => by_uuid(u).ok_or(LvolError::Now(libc::ENODEV)),
        (None, Some(n)) => by_name(n).ok_or(LvolError::Now(libc::ENODEV)),
        _ => Err(LvolError::Now(libc::EINVAL)),
    }
}

/// The pool behind lvstore `uuid` (stable across renames).
fn pool_name(uuid: Uuid) -> String {
    format!("lvs_{uuid}")
}

/// One lvol operation at a time, process-wide: each reads the table,
/// stages the next and commits it, and two interleaved would stage over
/// each other. They run on the app core; this waits there.
pub(crate) struct OpGuard;

static OP_BUSY: AtomicBool = AtomicBool::new(false);

pub(crate) async fn op_lock() -> OpGuard {
    while OP_BUSY.swap(true, Ordering::Acquire) {
        reactor::sleep(Duration::from_millis(1)).await;
    }
    OpGuard
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        OP_BUSY.store(false, Ordering::Release);
    }
}

fn pool_options(cluster: u64) -> PoolOptions {
    PoolOptions {
        block_size: cluster,
        // A full lvstore fails writes at once, as SPDK's does.
        error_if_no_space: true,
        ..PoolOptions::default()
    }
}

fn claimed_is_eperm(e: ThinError) -> LvolError {
    match e {
        ThinError::Bdev(BdevError::Claimed(..)) => LvolError::Now(libc::EPERM),
        e => LvolError::Thin(e),
    }
}

/// Blocks of the base bdev that hold the pool superblock.
fn head_blocks(block_size: u32) -> u64 {
    (metadata::BLOCK_SIZE as u64).div_ceil(block_size as u64)
}

/// Clears the base bdev per `clear` and zeroes its first 4 KiB, so that
/// nothing that was there (an old pool, an old lvstore) is opened.
async fn wipe(bdev_name: &str, clear: ClearMethod) -> Result<(), LvolError> {
    let desc = bdev::open(bdev_name, true, None).map_err(|e| match e {
        BdevError::Claimed(..) => LvolError::Now(libc::EPERM),
        e => LvolError::Thin(e.into()),
    })?;
    let ch = desc.io_channel().map_err(ThinError::from)?;
    let b = desc.bdev().clone();
    let io = |what: &str, s: bdev::IoStatus| LvolError::Thin(ThinError::Io(format!("{what}: {s}")));
    match clear {
        ClearMethod::Default | ClearMethod::Unmap if b.io_type_supported(bdev::IoType::Unmap) => ch
            .unmap(0, b.num_blocks())
            .await
            .map_err(|s| io("unmapping the base bdev", s))?,
        ClearMethod::WriteZeroes => ch
            .write_zeroes(0, b.num_blocks())
            .await
            .map_err(|s| io("zeroing the base bdev", s))?,
        _ => {}
    }
    let n = head_blocks(b.block_size()).min(b.num_blocks());
    let zero = bdev::IoBuf::zeroed((n * b.block_size() as u64) as usize);
    ch.write(0, zero)
        .await
        .map_err(|s| io("clearing the base bdev's first block", s))?;
    ch.make_durable()
        .await
        .map_err(|s| io("flushing the base bdev", s))?;
    Ok(())
}

/// bdev_lvol_create_lvstore.
pub async fn create(
    bdev_name: &str,
    lvs_name: &str,
    cluster_sz: Option<u32>,
    clear: ClearMethod,
) -> Result<Uuid, LvolError> {
    let _op = op_lock().await;
    if !valid_name(lvs_name) {
        return Err(LvolError::Now(libc::EINVAL));
    }
    let b = bdev::lookup(bdev_name).ok_or(LvolError::Now(libc::ENODEV))?;
    if by_name(lvs_name).is_some() {
        return Err(LvolError::Now(libc::EEXIST));
    }
    let cluster = cluster_sz.map_or(DEFAULT_CLUSTER, u64::from);
    // SPDK refuses a cluster smaller than the base's block; a thin pool's
    // data block must also be 64 KiB to 1 GiB in 64 KiB steps, and other
    // sizes are refused the same way (docs/lvol.md).
    if cluster < b.block_size() as u64
        || !(thin::options::MIN_BLOCK_SIZE..=thin::options::MAX_BLOCK_SIZE).contains(&cluster)
        || !cluster.is_multiple_of(thin::options::MIN_BLOCK_SIZE)
        || !cluster.is_multiple_of(b.block_size() as u64)
    {
        return Err(LvolError::Now(libc::EINVAL));
    }
    if b.claimed_by().is_some() {
        return Err(LvolError::Now(libc::EPERM));
    }
    let bdev_name = b.name().to_string();
    wipe(&bdev_name, clear).await?;
    let uuid = Uuid::new_v4();
    let pool = thin::create_pool(&pool_name(uuid), &bdev_name, None, pool_options(cluster))
        .await
        .map_err(claimed_is_eperm)?;
    pool.set_managed_by("lvol");
    let table = LvolTable {
        lvs_uuid: uuid,
        lvs_name: lvs_name.to_string(),
        cluster_size: cluster,
        lvols: Vec::new(),
    };
    if let Err(e) = pool.side_table_format(uuid.0, table.encode()).await {
        let _ = thin::delete_pool(pool.name()).await;
        let _ = wipe(&bdev_name, ClearMethod::None).await;
        return Err(e.into());
    }
    stores().push(Arc::new(Lvstore {
        uuid,
        pool,
        base_bdev: bdev_name,
        table: Mutex::new(table),
    }));
    Ok(uuid)
}

/// Whether the first 4 KiB of `bdev_name` say it holds an lvstore, and
/// its UUID; read through a read-only descriptor, claiming nothing.
async fn lvstore_mark(bdev_name: &str) -> Result<Option<(Uuid, u64)>, LvolError> {
    // A bdev that cannot be opened or read here (gone again, failing) is
    // not one an lvstore can be loaded from: nothing to report.
    let Ok(desc) = bdev::open(bdev_name, false, None) else {
        return Ok(None);
    };
    let b = desc.bdev().clone();
    if b.num_blocks() < head_blocks(b.block_size()) {
        return Ok(None);
    }
    let Ok(ch) = desc.io_channel() else {
        return Ok(None);
    };
    let head = match ch.read(0, head_blocks(b.block_size())).await {
        Ok(h) => h,
        Err(s) => {
            tracing::debug!(bdev = bdev_name, status = %s, "examine could not read the first block");
            return Ok(None);
        }
    };
    let Some(uuid) = thin::sidecar::marked_superblock_uuid(head.as_slice()) else {
        return Ok(None);
    };
    let block: &metadata::Block = head.as_slice()[..metadata::BLOCK_SIZE]
        .try_into()
        .map_err(|_| ThinError::Invalid("short superblock".into()))?;
    let sb =
        metadata::pdata::superblock::Superblock::unpack(block, 0).map_err(ThinError::Metadata)?;
    Ok(Some((Uuid(uuid), sb.data_block_size as u64 * 512)))
}

/// Examine: opens the lvstore on `bdev_name` if it holds one and brings
/// up every lvol in it. Ok(None) when it holds none.
pub async fn load(bdev_name: &str) -> Result<Option<Arc<Lvstore>>, LvolError> {
    let _op = op_lock().await;
    let Some((uuid, cluster)) = lvstore_mark(bdev_name).await? else {
        return Ok(None);
    };
    if by_uuid(&uuid.to_string()).is_some() {
        return Ok(None);
    }
    let pool = thin::create_pool(&pool_name(uuid), bdev_name, None, pool_options(cluster)).await?;
    pool.set_managed_by("lvol");
    let table = match pool.side_table().await {
        Ok(Some(bytes)) => LvolTable::decode(&bytes).map_err(LvolError::from),
        Ok(None) => Err(LvolError::Says(
            -libc::EINVAL,
            format!("{bdev_name} is marked as an lvstore but its pool has no lvol table"),
        )),
        Err(e) => Err(e.into()),
    };
    let table = match table {
        Ok(t) if t.lvs_uuid == uuid && by_name(&t.lvs_name).is_none() => t,
        other => {
            let _ = thin::delete_pool(pool.name()).await;
            return match other {
                Err(e) => Err(e),
                Ok(t) => Err(LvolError::Says(
                    -libc::EEXIST,
                    format!(
                        "lvstore {} on {bdev_name} is not loaded: the name is taken or its \
                         table names another store",
                        t.lvs_name
                    ),
                )),
            };
        }
    };
    crate::lvols::note_parents(&table);
    let lvs = Arc::new(Lvstore {
        uuid,
        pool,
        base_bdev: bdev_name.to_string(),
        table: Mutex::new(table.clone()),
    });
    stores().push(lvs.clone());
    for e in &table.lvols {
        if let Err(err) =
            crate::lvols::bring_up(&lvs, e, thin::Device::Existing(e.dev_id), false).await
        {
            tracing::error!(lvs = %table.lvs_name, lvol = %e.name, error = %err,
                "an lvol of a loaded lvstore did not come up");
        }
    }
    Ok(Some(lvs))
}

/// Unregisters every lvol bdev of `lvs` (their users see them removed)
/// and closes its pool; the lvstore stays on disk.
async fn unload(lvs: &Lvstore) -> Result<(), LvolError> {
    for e in lvs.table().lvols {
        match thin::deactivate(&e.uuid.to_string(), true).await {
            Ok(()) | Err(ThinError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    thin::delete_pool(lvs.pool.name()).await?;
    for e in lvs.table().lvols {
        crate::lvols::forget(e.uuid);
    }
    stores().retain(|s| s.uuid != lvs.uuid);
    Ok(())
}

/// bdev_lvol_delete_lvstore: every lvol goes, and the base bdev no longer
/// holds an lvstore.
pub async fn delete(lvs: Arc<Lvstore>) -> Result<(), LvolError> {
    let _op = op_lock().await;
    unload(&lvs).await?;
    wipe(&lvs.base_bdev, ClearMethod::None).await
}

/// Closes every lvstore (shutdown); returns what did not close.
pub async fn unload_all() -> Vec<String> {
    let _op = op_lock().await;
    let mut failed = Vec::new();
    for lvs in list() {
        if let Err(e) = unload(&lvs).await {
            failed.push(format!("lvstore {}: {e}", lvs.name()));
        }
    }
    failed
}

/// bdev_lvol_rename_lvstore: the store and every lvol alias.
pub async fn rename(old: &str, new: &str) -> Result<(), LvolError> {
    let _op = op_lock().await;
    let lvs = by_name(old)
        .ok_or_else(|| LvolError::Says(-libc::ENOENT, format!("Lvol store {old} not found")))?;
    if old == new {
        return Ok(());
    }
    if by_name(new).is_some() {
        return Err(LvolError::Later(libc::EEXIST));
    }
    if !valid_name(new) {
        return Err(LvolError::Later(libc::EINVAL));
    }
    let mut next = lvs.table();
    next.lvs_name = new.to_string();
    lvs.commit_table(next.clone()).await?;
    for e in &next.lvols {
        crate::lvols::set_alias(&next, e);
    }
    Ok(())
}

/// bdev_lvol_grow_lvstore: takes in what the base bdev grew by.
pub async fn grow(lvs: Arc<Lvstore>) -> Result<(), LvolError> {
    let _op = op_lock().await;
    thin::resize_pool(lvs.pool.name()).await?;
    Ok(())
}

/// A bdev_lvol_get_lvstores element (SPDK's keys in its order, then the
/// thin pool behind it).
#[derive(Serialize)]
pub struct LvstoreInfo {
    pub uuid: String,
    pub name: String,
    pub base_bdev: String,
    pub total_data_clusters: u64,
    pub free_clusters: u64,
    pub block_size: u32,
    pub cluster_size: u64,
    pub max_growable_size: u64,
    pub thin_pool: String,
    pub mode: &'static str,
    pub needs_check: bool,
    /// The pool's last few events (mode changes, low water), with their
    /// ids for `bdev_thin_pool_get_events`.
    pub recent_events: Vec<serde_json::Value>,
}

/// How many of a pool's events `bdev_lvol_get_lvstores` shows.
const RECENT_EVENTS: usize = 8;

fn recent_events(pool: &str) -> Vec<serde_json::Value> {
    let mine: Vec<serde_json::Value> = thin::events_since(0, usize::MAX)
        .into_iter()
        .filter(|(_, e)| e.notification().1 == pool)
        .map(|(id, e)| {
            let mut v = serde_json::json!(e);
            v["id"] = serde_json::json!(id);
            v
        })
        .collect();
    mine[mine.len().saturating_sub(RECENT_EVENTS)..].to_vec()
}

pub async fn info(lvs: &Lvstore) -> LvstoreInfo {
    let p = thin::pool_info_now(&lvs.pool).await;
    let block_size = bdev::lookup(&lvs.base_bdev).map_or(512, |b| b.block_size());
    // The side table's two blocks are not the user's.
    let total = p.stats.data_blocks.saturating_sub(2);
    LvstoreInfo {
        uuid: lvs.uuid.to_string(),
        name: lvs.name(),
        base_bdev: lvs.base_bdev.clone(),
        total_data_clusters: total,
        free_clusters: p.stats.free_data_blocks.min(total),
        block_size,
        cluster_size: lvs.cluster_size(),
        max_growable_size: total * lvs.cluster_size(),
        recent_events: recent_events(&p.name),
        thin_pool: p.name,
        mode: p.mode,
        needs_check: p.needs_check,
    }
}
