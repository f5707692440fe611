//! The view bdev_lvol_get_lvols shows, and SPDK's is_snapshot (which
//! remembers clones that are gone).

use std::collections::BTreeSet;

use bdev::Uuid;
use serde::Serialize;
use thin::{DeltaBase, DeltaKind};

use super::alias;
use crate::store::Lvstore;
use crate::table::{LvolEntry, LvolTable, Parent};
use crate::LvolError;

/// SPDK's `driver_specific.lvol` of an lvol bdev, in its key order
/// (without num_allocated_clusters, which bdev_lvol_get_lvols has), plus
/// the thin pool and device behind it.
fn driver_specific(b: &bdev::Bdev) -> Option<(&'static str, serde_json::Value)> {
    let uuid = b.uuid();
    let (lvs, t) = crate::store::list()
        .into_iter()
        .map(|l| {
            let t = l.table();
            (l, t)
        })
        .find(|(_, t)| t.by_uuid(uuid).is_some())?;
    let e = t.by_uuid(uuid)?;
    let mut o = serde_json::Map::new();
    let mut put = |k: &str, v: serde_json::Value| {
        o.insert(k.to_string(), v);
    };
    put("lvol_store_uuid", lvs.uuid.to_string().into());
    put("base_bdev", lvs.base_bdev.clone().into());
    put("thin_provision", e.thin.into());
    put("snapshot", had_clones().contains(&uuid.0).into());
    put("clone", matches!(e.parent, Parent::Lvol(_)).into());
    if let Parent::Lvol(p) = e.parent {
        if let Some(p) = t.by_uuid(p) {
            put("base_snapshot", p.name.clone().into());
        }
    }
    let clones: Vec<serde_json::Value> = t
        .clones_of(uuid)
        .iter()
        .map(|c| c.name.clone().into())
        .collect();
    if !clones.is_empty() {
        put("clones", clones.into());
    }
    put(
        "esnap_clone",
        matches!(e.parent, Parent::External(_)).into(),
    );
    if let Parent::External(x) = e.parent {
        put("external_snapshot_name", x.to_string().into());
    }
    put("thin_pool", lvs.pool.name().into());
    put("dev_id", e.dev_id.into());
    Some(("lvol", serde_json::Value::Object(o)))
}

/// The `driver_specific` every lvol bdev is registered with.
pub(crate) fn lvol_driver_specific() -> thin::DriverSpecific {
    std::sync::Arc::new(driver_specific)
}

/// A bdev_lvol_get_lvols element, SPDK's keys in its order.
#[derive(Serialize)]
pub struct LvolInfo {
    pub alias: String,
    pub uuid: String,
    pub name: String,
    pub is_thin_provisioned: bool,
    pub is_snapshot: bool,
    pub is_clone: bool,
    pub is_esnap_clone: bool,
    pub is_degraded: bool,
    pub num_allocated_clusters: u64,
    pub lvs: LvsRef,
}

#[derive(Serialize)]
pub struct LvsRef {
    pub name: String,
    pub uuid: String,
}

/// Blocks `e` holds itself: all it maps, or with a parent those that
/// differ from the parent's (dm-thin shares the rest).
async fn allocated(lvs: &Lvstore, e: &LvolEntry, mapped: u64) -> u64 {
    let Parent::Lvol(p) = e.parent else {
        return mapped;
    };
    let (name, base) = (e.uuid.to_string(), p.to_string());
    match thin::delta(&name, DeltaBase::Volume(base)).await {
        Ok(runs) => runs
            .iter()
            .filter(|(k, _, _)| matches!(k, DeltaKind::Different | DeltaKind::RightOnly))
            .map(|(_, _, len)| len)
            .sum(),
        Err(err) => {
            tracing::debug!(lvs = %lvs.name(), lvol = %e.name, error = %err, "no delta");
            mapped
        }
    }
}

/// Lvols that have had a clone since this process loaded them: SPDK's
/// is_snapshot is membership of its snapshot list, which gains an entry
/// with the first clone and keeps it (empty) until the snapshot is
/// deleted or the lvstore reloaded.
static HAD_CLONES: std::sync::Mutex<BTreeSet<[u8; 16]>> = std::sync::Mutex::new(BTreeSet::new());

fn had_clones() -> std::sync::MutexGuard<'static, BTreeSet<[u8; 16]>> {
    HAD_CLONES.lock().unwrap_or_else(|p| p.into_inner())
}

/// Notes every lvol of `t` that is a parent now.
pub(crate) fn note_parents(t: &LvolTable) {
    let mut had = had_clones();
    for l in &t.lvols {
        if let Parent::Lvol(p) = l.parent {
            had.insert(p.0);
        }
    }
}

/// Forgets `uuid` (deleted, or its lvstore unloaded).
pub(crate) fn forget(uuid: Uuid) {
    had_clones().remove(&uuid.0);
}

pub async fn list(lvs: &Lvstore) -> Result<Vec<LvolInfo>, LvolError> {
    let t = lvs.table();
    note_parents(&t);
    let devices = thin::volumes(lvs.pool.name()).await?;
    let mut out = Vec::new();
    for e in &t.lvols {
        let mapped = devices
            .iter()
            .find(|d| d.device.dev_id == e.dev_id)
            .map_or(0, |d| d.device.mapped_blocks);
        // Not inside the literal: its guard would live across the await.
        let is_snapshot = had_clones().contains(&e.uuid.0);
        out.push(LvolInfo {
            alias: alias(&t, e),
            uuid: e.uuid.to_string(),
            name: e.name.clone(),
            is_thin_provisioned: e.thin,
            is_snapshot,
            is_clone: matches!(e.parent, Parent::Lvol(_)),
            is_esnap_clone: matches!(e.parent, Parent::External(_)),
            is_degraded: bdev::lookup(&e.uuid.to_string()).is_none(),
            num_allocated_clusters: allocated(lvs, e, mapped).await,
            lvs: LvsRef {
                name: t.lvs_name.clone(),
                uuid: lvs.uuid.to_string(),
            },
        });
    }
    Ok(out)
}
