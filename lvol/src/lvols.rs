//! Lvols: thin volumes whose bdev name is their UUID and alias
//! `lvs_name/lvol_name`. Here: finding one, bringing one up, create
//! (thin or thick), rename, resize, set read-only, delete; `lineage` has
//! the calls between lvols (snapshot, clones, parent links), `info` the
//! view bdev_lvol_get_lvols shows. Each changes the lvol table in the
//! same commit as the pool change it goes with (`Lvstore::with_table`).

use std::collections::BTreeSet;
use std::sync::Arc;

use bdev::{Bdev, Uuid};
use thin::{Device, ThinError, VolumeSpec};

use crate::store::{self, op_lock, Lvstore};
use crate::table::{valid_name, ClearMethod, LvolEntry, LvolTable, Parent};
use crate::LvolError;

mod info;
mod lineage;

pub(crate) use info::{forget, list, lvol_driver_specific, note_parents};
pub(crate) use lineage::{clone, clone_bdev, decouple_parent, inflate, set_parent, snapshot};

/// SPDK's product name for lvol bdevs (some tools pick lvols by it).
const PRODUCT: &str = "Logical Volume";

fn alias(t: &LvolTable, e: &LvolEntry) -> String {
    format!("{}/{}", t.lvs_name, e.name)
}

/// Gives lvol `e`'s bdev (if up) its current alias.
pub(crate) fn set_alias(t: &LvolTable, e: &LvolEntry) {
    let name = e.uuid.to_string();
    if bdev::lookup(&name).is_some() {
        if let Err(err) = bdev::set_aliases(&name, vec![alias(t, e)]) {
            tracing::warn!(lvol = %name, error = %err, "lvol alias not updated");
        }
    }
}

/// Registers lvol `e` of `lvs` as a bdev (creating its device for
/// `Device::New`).
pub(crate) async fn bring_up(
    lvs: &Lvstore,
    e: &LvolEntry,
    dev: Device,
    thick: bool,
) -> Result<Arc<Bdev>, ThinError> {
    let table = lvs.table();
    let spec = VolumeSpec {
        uuid: Some(e.uuid),
        aliases: vec![alias(&table, e)],
        read_only: e.read_only,
        thick,
        product_name: Some(PRODUCT),
        driver_specific: Some(lvol_driver_specific()),
    };
    // Unwritten blocks of an esnap clone, and of its snapshots and their
    // clones, read from the external bdev, found by its UUID.
    let origin = match external_of(&table, e) {
        Some(u) => Some(
            bdev::lookup(&u.to_string())
                .ok_or_else(|| ThinError::NotFound(format!("external snapshot bdev {u}")))?
                .name()
                .to_string(),
        ),
        None => None,
    };
    let name = e.uuid.to_string();
    thin::bring_up_with(
        lvs.pool.name(),
        &name,
        &spec,
        e.size_bytes,
        origin.as_deref(),
        dev,
    )
    .await
}

/// The external bdev at the root of `e`'s parent chain, if there is one.
fn external_of(t: &LvolTable, e: &LvolEntry) -> Option<Uuid> {
    let mut parent = e.parent;
    // A chain cannot be longer than the table (a damaged loop ends here).
    for _ in 0..=t.lvols.len() {
        match parent {
            Parent::None => return None,
            Parent::External(u) => return Some(u),
            Parent::Lvol(p) => parent = t.by_uuid(p)?.parent,
        }
    }
    None
}

/// Brings up the degraded lvols of every lvstore that wait for external
/// bdev `b` (it just appeared).
pub(crate) async fn bring_up_waiting_for(b: &Bdev) {
    let _op = op_lock().await;
    for lvs in store::list() {
        let t = lvs.table();
        for e in &t.lvols {
            let waiting =
                external_of(&t, e) == Some(b.uuid()) && bdev::lookup(&e.uuid.to_string()).is_none();
            if waiting {
                if let Err(err) = bring_up(&lvs, e, Device::Existing(e.dev_id), false).await {
                    tracing::warn!(lvol = %e.name, error = %err, "esnap clone still degraded");
                }
            }
        }
    }
}

/// An lvol by bdev name, UUID or `lvs/lvol` alias (also one whose bdev is
/// not up).
pub fn find(name: &str) -> Option<(Arc<Lvstore>, LvolEntry)> {
    if let Some((lvs_name, lvol_name)) = name.split_once('/') {
        if let Some(lvs) = store::by_name(lvs_name) {
            if let Some(e) = lvs.table().by_name(lvol_name) {
                return Some((lvs.clone(), e.clone()));
            }
        }
    }
    let uuid: Uuid = match name.parse() {
        Ok(u) => u,
        Err(_) => bdev::lookup(name)?.uuid(),
    };
    store::list()
        .into_iter()
        .find_map(|lvs| lvs.table().by_uuid(uuid).cloned().map(|e| (lvs, e)))
}

fn found(name: &str) -> Result<(Arc<Lvstore>, LvolEntry), LvolError> {
    find(name).ok_or(LvolError::Now(libc::ENODEV))
}

/// A device id neither the pool nor the table uses.
async fn free_dev_id(lvs: &Lvstore) -> Result<u32, LvolError> {
    let mut used: BTreeSet<u32> = thin::volumes(lvs.pool.name())
        .await?
        .iter()
        .map(|v| v.device.dev_id)
        .collect();
    used.extend(lvs.table().lvols.iter().map(|l| l.dev_id));
    (0..thin::sidecar::SIDECAR_DEV)
        .find(|id| !used.contains(id))
        .ok_or(LvolError::Later(libc::ENOSPC))
}

fn round_to_clusters(lvs: &Lvstore, size_in_mib: u64) -> Result<u64, LvolError> {
    let c = lvs.cluster_size();
    size_in_mib
        .checked_mul(1 << 20)
        .and_then(|b| b.checked_next_multiple_of(c))
        .filter(|&b| b > 0)
        .ok_or(LvolError::Now(libc::EINVAL))
}

/// bdev_lvol_create.
pub async fn create(
    lvs: Arc<Lvstore>,
    name: &str,
    size_in_mib: u64,
    thin_provision: bool,
    clear_method: ClearMethod,
) -> Result<Uuid, LvolError> {
    let _op = op_lock().await;
    let table = lvs.table();
    if !valid_name(name) {
        return Err(LvolError::Now(libc::EINVAL));
    }
    if table.by_name(name).is_some() {
        return Err(LvolError::Now(libc::EEXIST));
    }
    let size_bytes = round_to_clusters(&lvs, size_in_mib)?;
    if !thin_provision {
        let free = thin::pool_info_now(&lvs.pool).await.stats.free_data_blocks;
        if free < size_bytes / lvs.cluster_size() {
            return Err(LvolError::Later(libc::ENOSPC));
        }
    }
    let entry = LvolEntry {
        uuid: Uuid::new_v4(),
        name: name.to_string(),
        dev_id: free_dev_id(&lvs).await?,
        size_bytes,
        read_only: false,
        thin: thin_provision,
        parent: Parent::None,
        clear_method,
    };
    let mut next = table;
    next.lvols.push(entry.clone());
    let dev = Device::New(Some(entry.dev_id));
    lvs.with_table(next, bring_up(&lvs, &entry, dev, !thin_provision))
        .await?;
    Ok(entry.uuid)
}
/// bdev_lvol_rename: the alias changes, the UUID (bdev name) does not.
pub async fn rename(old: &str, new_name: &str) -> Result<(), LvolError> {
    let _op = op_lock().await;
    let (lvs, e) = found(old)?;
    if e.name == new_name {
        return Ok(());
    }
    let mut next = lvs.table();
    if next.by_name(new_name).is_some() {
        return Err(LvolError::Later(libc::EEXIST));
    }
    if !valid_name(new_name) {
        return Err(LvolError::Later(libc::EINVAL));
    }
    if let Some(x) = next.by_uuid_mut(e.uuid) {
        x.name = new_name.to_string();
    }
    lvs.commit_table(next.clone()).await?;
    if let Some(x) = next.by_uuid(e.uuid) {
        set_alias(&next, x);
    }
    Ok(())
}

/// bdev_lvol_resize (rounded up to clusters); a read-only lvol is EPERM.
/// Growing: the table records the size first, then the bdev grows, so a
/// crash between brings the lvol back at its new size and nothing written
/// past the old end is ever hidden. Shrinking: the other way round (see
/// below).
pub async fn resize(name: &str, size_in_mib: u64) -> Result<(), LvolError> {
    let _op = op_lock().await;
    let (lvs, e) = found(name)?;
    if e.read_only {
        return Err(LvolError::Later(libc::EPERM));
    }
    let size_bytes = round_to_clusters(&lvs, size_in_mib)?;
    if size_bytes == e.size_bytes {
        return Ok(());
    }
    let bdev_name = e.uuid.to_string();
    if size_bytes < e.size_bytes {
        // The tail goes first (unmapped, its blocks freed), then the
        // table: a crash between them leaves the old size over a tail that
        // reads zeros, never a smaller lvol hiding old data. Refused while
        // the lvol is open for writing, as SPDK refuses (EBUSY).
        if bdev::lookup(&bdev_name).is_some() {
            thin::resize_volume(&bdev_name, size_bytes, false).await?;
        }
        let mut next = lvs.table();
        if let Some(x) = next.by_uuid_mut(e.uuid) {
            x.size_bytes = size_bytes;
        }
        lvs.commit_table(next).await?;
        return Ok(());
    }
    let before = lvs.table();
    let mut next = before.clone();
    if let Some(x) = next.by_uuid_mut(e.uuid) {
        x.size_bytes = size_bytes;
    }
    lvs.commit_table(next).await?;
    if bdev::lookup(&bdev_name).is_none() {
        // A degraded lvol takes its size when it comes up.
        return Ok(());
    }
    if let Err(err) = thin::resize_volume(&bdev_name, size_bytes, false).await {
        if let Err(e2) = lvs.commit_table(before).await {
            tracing::error!(lvol = %e.name, error = %e2, "lvol size not put back after a failed resize");
        }
        return Err(err.into());
    }
    Ok(())
}

/// bdev_lvol_set_read_only: permanent. The bdev is registered again
/// read-only, so it must not be open (EBUSY otherwise; SPDK flips it in
/// place, docs/lvol.md).
pub async fn set_read_only(name: &str) -> Result<(), LvolError> {
    let _op = op_lock().await;
    let (lvs, e) = found(name)?;
    if e.read_only {
        return Ok(());
    }
    let bdev_name = e.uuid.to_string();
    thin::deactivate(&bdev_name, false).await?;
    let mut next = lvs.table();
    if let Some(x) = next.by_uuid_mut(e.uuid) {
        x.read_only = true;
    }
    let committed = lvs.commit_table(next.clone()).await;
    let now = next.by_uuid(e.uuid).cloned().unwrap_or(e.clone());
    let up = if committed.is_ok() { &now } else { &e };
    bring_up(&lvs, up, Device::Existing(e.dev_id), false).await?;
    committed
}

/// bdev_lvol_delete. A snapshot with one clone hands its place to the
/// clone (whose blocks dm-thin already shares); with more, EPERM.
pub async fn delete(name: &str) -> Result<(), LvolError> {
    let _op = op_lock().await;
    let (lvs, e) = found(name)?;
    let mut next = lvs.table();
    let clones: Vec<Uuid> = next.clones_of(e.uuid).iter().map(|c| c.uuid).collect();
    if clones.len() > 1 {
        return Err(LvolError::Later(libc::EPERM));
    }
    for c in clones {
        if let Some(x) = next.by_uuid_mut(c) {
            x.parent = e.parent;
        }
    }
    next.lvols.retain(|l| l.uuid != e.uuid);
    let bdev_name = e.uuid.to_string();
    if bdev::lookup(&bdev_name).is_some() {
        lvs.with_table(next, thin::delete_volume(&bdev_name, true))
            .await?;
    } else {
        let pool = lvs.pool.name().to_string();
        lvs.with_table(next, thin::delete_device(&pool, e.dev_id))
            .await?;
    }
    forget(e.uuid);
    Ok(())
}
