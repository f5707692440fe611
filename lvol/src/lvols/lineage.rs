//! Lvols made from or tied to others: snapshot, clone, esnap clone, and
//! the calls that change a parent link (inflate, decouple_parent,
//! set_parent). Each commits its table change with its pool change.

use bdev::Uuid;
use thin::{Device, VolumeSpec};

use super::{
    alias, bring_up, external_of, find, found, free_dev_id, lvol_driver_specific, note_parents,
    PRODUCT,
};
use crate::store::{self, op_lock};
use crate::table::{valid_name, ClearMethod, LvolEntry, Parent};
use crate::LvolError;

/// A new snapshot's or clone's name: valid and not taken, or SPDK's
/// answer (reported after the call, as SPDK's completion reports it).
fn name_is_free(table: &crate::table::LvolTable, name: &str) -> Result<(), LvolError> {
    if !valid_name(name) {
        return Err(LvolError::Later(libc::EINVAL));
    }
    if table.by_name(name).is_some() {
        return Err(LvolError::Later(libc::EEXIST));
    }
    Ok(())
}

/// Makes `made` (an entry of `next`) a dm-thin snapshot of `from`, its
/// table committed with the snapshot: how a snapshot and a clone are both
/// made (a clone is a writable snapshot of a read-only lvol).
async fn snapshot_as(
    lvs: &crate::store::Lvstore,
    from: &LvolEntry,
    made: &LvolEntry,
    next: crate::table::LvolTable,
) -> Result<Uuid, LvolError> {
    let spec = VolumeSpec {
        uuid: Some(made.uuid),
        aliases: vec![alias(&next, made)],
        read_only: made.read_only,
        thick: false,
        product_name: Some(PRODUCT),
        driver_specific: Some(lvol_driver_specific()),
    };
    let (from_name, made_name) = (from.uuid.to_string(), made.uuid.to_string());
    lvs.with_table(
        next,
        thin::snapshot_with(&from_name, &made_name, &spec, Some(made.dev_id)),
    )
    .await?;
    note_parents(&lvs.table());
    Ok(made.uuid)
}

/// bdev_lvol_snapshot: the new snapshot takes the origin's data (shared,
/// as a dm-thin snapshot) and becomes its parent.
pub async fn snapshot(origin: &str, snapshot_name: &str) -> Result<Uuid, LvolError> {
    let _op = op_lock().await;
    let (lvs, o) = found(origin)?;
    if o.read_only {
        return Err(LvolError::Later(libc::EINVAL));
    }
    let table = lvs.table();
    name_is_free(&table, snapshot_name)?;
    let snap = LvolEntry {
        uuid: Uuid::new_v4(),
        name: snapshot_name.to_string(),
        dev_id: free_dev_id(&lvs).await?,
        size_bytes: o.size_bytes,
        read_only: true,
        thin: o.thin,
        parent: o.parent,
        clear_method: o.clear_method,
    };
    let mut next = table;
    next.lvols.push(snap.clone());
    if let Some(x) = next.by_uuid_mut(o.uuid) {
        x.parent = Parent::Lvol(snap.uuid);
        x.thin = true;
    }
    snapshot_as(&lvs, &o, &snap, next).await
}

/// bdev_lvol_clone: a writable dm-thin snapshot of a read-only lvol.
pub async fn clone(source: &str, clone_name: &str) -> Result<Uuid, LvolError> {
    let _op = op_lock().await;
    let (lvs, s) = found(source)?;
    if !s.read_only {
        return Err(LvolError::Later(libc::EINVAL));
    }
    let table = lvs.table();
    name_is_free(&table, clone_name)?;
    let c = LvolEntry {
        uuid: Uuid::new_v4(),
        name: clone_name.to_string(),
        dev_id: free_dev_id(&lvs).await?,
        size_bytes: s.size_bytes,
        read_only: false,
        thin: true,
        parent: Parent::Lvol(s.uuid),
        clear_method: s.clear_method,
    };
    let mut next = table;
    next.lvols.push(c.clone());
    snapshot_as(&lvs, &s, &c, next).await
}

/// bdev_lvol_clone_bdev: a thin lvol whose unwritten blocks read from
/// `bdev` (dm-thin's external origin), which is recorded by UUID.
pub async fn clone_bdev(
    bdev_name: &str,
    lvs_name: &str,
    clone_name: &str,
) -> Result<Uuid, LvolError> {
    let _op = op_lock().await;
    let says = |m: &str| LvolError::Says(bdev::rpc::INVALID_PARAMS, m.to_string());
    let lvs = store::by_name(lvs_name).ok_or_else(|| says("lvs does not exist"))?;
    let b = bdev::lookup(bdev_name).ok_or_else(|| says("bdev does not exist"))?;
    if find(b.name()).is_some_and(|(l, _)| l.uuid == lvs.uuid) {
        return Err(says(
            "bdev is an lvol in same lvs as clone; use bdev_lvol_clone instead",
        ));
    }
    let table = lvs.table();
    if !valid_name(clone_name) {
        return Err(LvolError::Now(libc::EINVAL));
    }
    if table.by_name(clone_name).is_some() {
        return Err(LvolError::Later(libc::EEXIST));
    }
    let c = LvolEntry {
        uuid: Uuid::new_v4(),
        name: clone_name.to_string(),
        dev_id: free_dev_id(&lvs).await?,
        size_bytes: b.size_bytes().next_multiple_of(lvs.cluster_size()),
        read_only: false,
        thin: true,
        parent: Parent::External(b.uuid()),
        clear_method: ClearMethod::Default,
    };
    let mut next = table;
    next.lvols.push(c.clone());
    let dev = Device::New(Some(c.dev_id));
    lvs.with_table(next, bring_up(&lvs, &c, dev, false)).await?;
    Ok(c.uuid)
}

/// bdev_lvol_inflate: every unmapped block gets a zeroed block of its
/// own and the parent link goes; blocks still shared with the former
/// parent stay shared (dm-thin counts references, so deleting the parent
/// leaves them), docs/lvol.md.
pub async fn inflate(name: &str) -> Result<(), LvolError> {
    let _op = op_lock().await;
    let (lvs, e) = found(name)?;
    if external_of(&lvs.table(), &e).is_some() {
        // Its unwritten blocks would have to be copied from the external
        // bdev; not done here (docs/lvol.md).
        return Err(LvolError::Later(libc::ENOTSUP));
    }
    thin::provision_volume(&e.uuid.to_string()).await?;
    let mut next = lvs.table();
    if let Some(x) = next.by_uuid_mut(e.uuid) {
        x.parent = Parent::None;
        x.thin = false;
    }
    lvs.commit_table(next).await
}

/// bdev_lvol_decouple_parent: the lvol's parent becomes its grandparent.
/// dm-thin already maps every block the parent gave it (shared by
/// reference), so only the link changes.
pub async fn decouple_parent(name: &str) -> Result<(), LvolError> {
    let _op = op_lock().await;
    let (lvs, e) = found(name)?;
    let mut next = lvs.table();
    let grandparent = match e.parent {
        Parent::Lvol(p) => next.by_uuid(p).map_or(Parent::None, |p| p.parent),
        Parent::External(_) => return Err(LvolError::Later(libc::ENOTSUP)),
        Parent::None => return Err(LvolError::Later(libc::EINVAL)),
    };
    if let Some(x) = next.by_uuid_mut(e.uuid) {
        x.parent = grandparent;
    }
    lvs.commit_table(next).await
}

/// bdev_lvol_set_parent: a thin lvol or a clone reads its unwritten
/// clusters from snapshot `parent_name` (same lvstore, same size) from
/// now on. In dm-thin terms the blocks it does not map, or inherited from
/// its old parent, take the new parent's (shared).
pub async fn set_parent(lvol_name: &str, parent_name: &str) -> Result<(), LvolError> {
    let _op = op_lock().await;
    let (lvs, e) = found(lvol_name)?;
    let (plvs, p) = found(parent_name)?;
    let t = lvs.table();
    let clone = matches!(e.parent, Parent::Lvol(_));
    let descends = {
        // The new parent must not be the lvol or one of its descendants.
        let mut at = Parent::Lvol(p.uuid);
        let mut hit = false;
        for _ in 0..=t.lvols.len() {
            match at {
                Parent::Lvol(u) if u == e.uuid => {
                    hit = true;
                    break;
                }
                Parent::Lvol(u) => at = t.by_uuid(u).map_or(Parent::None, |x| x.parent),
                _ => break,
            }
        }
        hit
    };
    if plvs.uuid != lvs.uuid
        || !p.read_only
        || p.size_bytes != e.size_bytes
        || descends
        || !(e.thin || clone)
    {
        return Err(LvolError::Later(libc::EINVAL));
    }
    if e.parent == Parent::Lvol(p.uuid) {
        return Ok(());
    }
    if external_of(&t, &e).is_some() || external_of(&t, &p).is_some() {
        // Blocks would have to come from an external bdev: not done here.
        return Err(LvolError::Later(libc::ENOTSUP));
    }
    let old = match e.parent {
        Parent::Lvol(o) => Some(o.to_string()),
        _ => None,
    };
    let mut next = t;
    if let Some(x) = next.by_uuid_mut(e.uuid) {
        x.parent = Parent::Lvol(p.uuid);
        x.thin = true;
    }
    let (name, parent) = (e.uuid.to_string(), p.uuid.to_string());
    lvs.with_table(next, thin::reparent_volume(&name, old.as_deref(), &parent))
        .await?;
    note_parents(&lvs.table());
    Ok(())
}
