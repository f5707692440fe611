//! Control operations on the metadata core. Each one that changes the
//! metadata commits before it returns, as dm-thin's messages do.

use metadata::thin::DevId;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use metadata::thin::delta::{delta, DeltaKind};

use super::commit::CommitError;
use super::{uninstall, MetaCore};
use crate::options::PoolMode;
use crate::shared::VolumeShared;
use crate::table::mapped;
use crate::ThinError;

/// How long a snapshot waits for the origin's in-flight writes.
pub(crate) const QUIESCE_TIMEOUT: Duration = Duration::from_secs(5);

/// One device as `get_volumes` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    pub dev_id: DevId,
    pub mapped_blocks: u64,
    pub exclusive_blocks: u64,
    pub shared_blocks: u64,
    pub transaction_id: u64,
    pub creation_time: u32,
    pub snapshotted_time: u32,
}

impl From<CommitError> for ThinError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Mode(m) => ThinError::Mode(m.name()),
            e => ThinError::Io(e.to_string()),
        }
    }
}

/// A device id held for one control call: no other call picks or names
/// it until this is dropped (see `MetaCore::reserved_ids`).
pub(crate) struct IdReservation {
    core: Rc<MetaCore>,
    pub id: u32,
}

impl Drop for IdReservation {
    fn drop(&mut self) {
        self.core.reserved_ids.borrow_mut().remove(&self.id);
    }
}

impl MetaCore {
    pub(crate) fn writable(&self) -> Result<(), ThinError> {
        match self.shared.mode() {
            m if m.metadata_writable() => Ok(()),
            PoolMode::OutOfMetadataSpace => Err(ThinError::NoMetadataSpace),
            m => Err(ThinError::Mode(m.name())),
        }
    }

    /// Runs a metadata change and commits it. `check` states what the
    /// change needs (the device exists, the id is free, ...); it runs after
    /// the last await before the change, so what it saw still holds when
    /// the library runs, and a refused call changes nothing. A failure of
    /// the change itself past that point is a metadata failure.
    pub(super) async fn change<T>(
        self: &Rc<Self>,
        check: impl Fn(&Self) -> Result<(), ThinError>,
        f: impl FnOnce(&mut metadata::thin::pool::Pool) -> Result<T, metadata::MetadataError>,
    ) -> Result<T, ThinError> {
        loop {
            self.writable()?;
            check(self)?;
            self.unlocked().await;
            self.writable()?;
            check(self)?;
            if self.metadata_headroom() > 0 {
                break;
            }
            self.make_metadata_room().await?;
        }
        // A staged transaction id moves with this change (and only if the
        // id is still where the stager saw it: a mismatch leaves it, and
        // the stager, which checks, commits its table on its own).
        let staged = self.staged_tid.take();
        let r = self
            .with_pool(|p| {
                let v = f(p)?;
                if let Some((from, to)) = staged.filter(|&(from, _)| p.transaction_id() == from) {
                    p.set_transaction_id(from, to)?;
                }
                Ok(v)
            })
            .ok_or(ThinError::Mode("fail"))?;
        match r {
            Ok(v) => {
                self.dirty.set(true);
                self.commit_now()
                    .await
                    .map_err(|s| ThinError::Io(format!("commit failed: {s}")))?;
                Ok(v)
            }
            Err(e) => {
                self.metadata_failed().await;
                Err(ThinError::Metadata(e))
            }
        }
    }

    pub(crate) fn exists(&self, dev: DevId) -> bool {
        self.with_pool(|p| p.details(dev).is_some())
            .unwrap_or(false)
    }

    /// The highest virtual block device `dev` maps, if it maps any.
    pub(crate) fn highest_mapped(&self, dev: DevId) -> Result<Option<u64>, ThinError> {
        let r = self
            .with_pool(|p| p.mappings(dev).map(|m| m.keys().next_back().copied()))
            .ok_or(ThinError::Mode("fail"))?;
        Ok(r?)
    }

    /// `dev` can become a new device: a 24-bit id no device has.
    pub(super) fn can_create(&self, dev: DevId) -> Result<(), ThinError> {
        if dev as u64 > metadata::thin::model::MAX_DEV_ID {
            return Err(ThinError::Invalid(format!("device id {dev} is not 24-bit")));
        }
        if self.exists(dev) {
            return Err(ThinError::Exists(format!("thin device {dev}")));
        }
        Ok(())
    }

    fn must_exist(&self, dev: DevId) -> Result<(), ThinError> {
        if self.exists(dev) {
            Ok(())
        } else {
            Err(ThinError::NotFound(format!("thin device {dev}")))
        }
    }

    /// Creates device `dev`; the caller holds its id (`pick_dev_id`).
    pub(crate) async fn create_thin(self: &Rc<Self>, dev: DevId) -> Result<(), ThinError> {
        self.change(|c| c.can_create(dev), |p| p.create_thin(dev))
            .await
    }

    /// Maps each unmapped one of the first `blocks` virtual blocks of
    /// `dev` (created first when `create`) to a fresh, zeroed data block:
    /// a thick volume, or an inflated one. Refused before any change when
    /// the pool has too few free blocks. A block that a write provisions
    /// meanwhile keeps the write's mapping.
    pub(crate) async fn provision(
        self: &Rc<Self>,
        dev: DevId,
        blocks: u64,
        create: bool,
    ) -> Result<(), ThinError> {
        let exists = move |c: &Self| {
            if create {
                c.can_create(dev)
            } else {
                c.must_exist(dev)
            }
        };
        self.writable()?;
        exists(self)?;
        let missing: Vec<u64> = if create {
            (0..blocks).collect()
        } else {
            let mapped = self
                .with_pool(|p| p.mappings(dev))
                .ok_or(ThinError::Mode("fail"))??;
            (0..blocks).filter(|vb| !mapped.contains_key(vb)).collect()
        };
        let free = self.with_pool(|p| p.nr_free_data_blocks()).unwrap_or(0);
        if free < missing.len() as u64 {
            return Err(ThinError::Invalid(format!(
                "{} data blocks are needed and the pool has {free} free",
                missing.len()
            )));
        }
        let mut got = Vec::with_capacity(missing.len());
        let give_back = |core: &Self, blocks: &[u64]| {
            core.with_pool(|p| blocks.iter().for_each(|&b| p.free_data_block(b)));
        };
        for _ in &missing {
            match self.with_pool(|p| p.alloc_data_block()).flatten() {
                Some(b) => got.push(b),
                None => {
                    give_back(self, &got);
                    return Err(ThinError::Invalid("the pool ran out of data blocks".into()));
                }
            }
        }
        for &b in &got {
            let st = self.zero_block(b).await;
            if !st.is_success() {
                give_back(self, &got);
                return Err(ThinError::Io(format!("zeroing a new block: {st}")));
            }
        }
        let applied = std::cell::Cell::new(false);
        let me = self.clone();
        let r = self
            .change(exists, |p| {
                applied.set(true);
                if create {
                    p.create_thin(dev)?;
                }
                let vol = me.volume(dev);
                for (&vb, &b) in missing.iter().zip(&got) {
                    // A write holding or having mapped this block wins.
                    let raced = me.cells.borrow().contains_key(&(dev, vb))
                        || vol.as_ref().is_some_and(|v| {
                            v.table.get(vb) & (crate::table::MAPPED | crate::table::BUSY) != 0
                        });
                    if raced {
                        p.free_data_block(b);
                        continue;
                    }
                    p.insert(dev, vb, b)?;
                    if let Some(v) = &vol {
                        v.table.set(vb, mapped(b, false));
                    }
                }
                Ok(())
            })
            .await;
        if r.is_err() && !applied.get() {
            give_back(self, &got);
        }
        r
    }

    /// Holds `dev_id`, or the smallest id neither in use nor held, for the
    /// caller's create or snapshot: two calls running at once never pick
    /// the same id, and a named id that another call holds is EEXIST.
    pub(crate) fn pick_dev_id(
        self: &Rc<Self>,
        dev_id: Option<DevId>,
    ) -> Result<IdReservation, ThinError> {
        self.writable()?;
        let id = match dev_id {
            Some(id) => {
                self.can_create(id)?;
                if self.reserved_ids.borrow().contains(&id) {
                    return Err(ThinError::Exists(format!(
                        "thin device {id} (being created by another call)"
                    )));
                }
                id
            }
            None => self
                .free_dev_id()
                .ok_or_else(|| ThinError::Busy("every device id is in use".into()))?,
        };
        self.reserved_ids.borrow_mut().insert(id);
        Ok(IdReservation {
            core: self.clone(),
            id,
        })
    }

    /// The smallest id neither in use nor held.
    fn free_dev_id(&self) -> Option<u32> {
        let used = self.with_pool(|p| p.devices())?;
        let held = self.reserved_ids.borrow();
        (0..=metadata::thin::model::MAX_DEV_ID as u32)
            .find(|id| used.binary_search(id).is_err() && !held.contains(id))
    }

    /// Makes `vol` (an existing device) active: builds its table.
    pub(crate) fn activate(&self, vol: Arc<VolumeShared>) -> Result<(), ThinError> {
        let dev = vol.dev_id;
        if self.volumes.borrow().contains_key(&dev) {
            return Err(ThinError::Busy(format!(
                "thin device {dev} is already active"
            )));
        }
        self.must_exist(dev)?;
        let (maps, snap_time) = self
            .with_pool(|p| {
                let snapshotted = p.details(dev).map(|details| details.snapshotted_time);
                p.mappings(dev).map(|mappings| (mappings, snapshotted))
            })
            .ok_or(ThinError::Mode("fail"))??;
        let snap_time =
            snap_time.ok_or_else(|| ThinError::NotFound(format!("thin device {dev}")))?;
        for (vblock, block_time) in maps {
            vol.table.set(
                vblock,
                mapped(block_time.block, snap_time > block_time.time),
            );
        }
        self.volumes.borrow_mut().insert(dev, vol);
        Ok(())
    }

    /// Drops `dev`'s volume from the pool's active set; returns it (its
    /// fast path may still have I/O in flight: see `drain`).
    pub(crate) fn deactivate(&self, dev: DevId) -> Option<Arc<VolumeShared>> {
        let gone = self.volumes.borrow_mut().remove(&dev);
        if let Some(v) = &gone {
            MetaCore::fail_held(v);
        }
        gone
    }

    /// Snapshot of `origin` as `dev`. An active origin's writes are frozen
    /// and drained first (bounded by a timeout; no lock is held across the
    /// drain, so a resize or failure handling can run meanwhile).
    pub(crate) async fn snapshot(
        self: &Rc<Self>,
        origin: u32,
        dev: DevId,
        activate: Option<Arc<VolumeShared>>,
    ) -> Result<(), ThinError> {
        let ready = |c: &Self| {
            c.must_exist(origin)?;
            c.can_create(dev)
        };
        self.writable()?;
        ready(self)?;
        let live = self.volume(origin);
        if let Some(v) = &live {
            v.freeze();
            if !self.drain(v).await {
                v.thaw();
                self.thaw.notify_all();
                return Err(ThinError::Busy(format!(
                    "the origin's writes did not drain within {QUIESCE_TIMEOUT:?}"
                )));
            }
        }
        let r = self.change(ready, |p| p.create_snap(dev, origin)).await;
        if let Some(v) = &live {
            if r.is_ok() {
                v.table.mark_all_shared();
            }
            v.thaw();
            self.thaw.notify_all();
        }
        r?;
        if let Some(vol) = activate {
            self.activate(vol)?;
        }
        Ok(())
    }

    /// Gives `dev` a new parent: each of its first `blocks` virtual blocks
    /// that it does not map, or maps to the same block as `old` (what it
    /// inherited), takes `new`'s mapping (shared) or none. Its own blocks
    /// stay. Its writes are frozen and drained meanwhile, as for a
    /// snapshot, and afterwards every block it maps counts as shared.
    pub(crate) async fn reparent(
        self: &Rc<Self>,
        dev: DevId,
        old: Option<DevId>,
        new: DevId,
        blocks: u64,
    ) -> Result<(), ThinError> {
        let ready = move |c: &Self| {
            c.must_exist(dev)?;
            c.must_exist(new)?;
            old.map_or(Ok(()), |o| c.must_exist(o))
        };
        self.writable()?;
        ready(self)?;
        let live = self.volume(dev);
        if let Some(v) = &live {
            v.freeze();
            if !self.drain(v).await {
                v.thaw();
                self.thaw.notify_all();
                return Err(ThinError::Busy(format!(
                    "the lvol's writes did not drain within {QUIESCE_TIMEOUT:?}"
                )));
            }
        }
        let table = live.clone();
        let r = self
            .change(ready, move |p| {
                let mine = p.mappings(dev)?;
                let from = old.map(|o| p.mappings(o)).transpose()?;
                let to = p.mappings(new)?;
                for vb in 0..blocks {
                    let m = mine.get(&vb).map(|bt| bt.block);
                    let inherited = m.is_some()
                        && from.as_ref().and_then(|f| f.get(&vb)).map(|bt| bt.block) == m;
                    if m.is_some() && !inherited {
                        continue;
                    }
                    match to.get(&vb).map(|bt| bt.block) {
                        Some(nb) if Some(nb) == m => {}
                        Some(nb) => {
                            p.share(dev, vb, nb)?;
                            if let Some(v) = &table {
                                v.table.set(vb, mapped(nb, true));
                            }
                        }
                        None if inherited => {
                            p.remove(dev, vb)?;
                            if let Some(v) = &table {
                                v.table.set(vb, 0);
                            }
                        }
                        None => {}
                    }
                }
                p.mark_snapshotted(dev)
            })
            .await;
        if let Some(v) = &live {
            if r.is_ok() {
                v.table.mark_all_shared();
            }
            v.thaw();
            self.thaw.notify_all();
        }
        r
    }

    /// Deletes inactive device `dev`.
    pub(crate) async fn delete(self: &Rc<Self>, dev: DevId) -> Result<(), ThinError> {
        self.change(|c| c.can_delete(dev), |p| p.delete(dev)).await
    }

    pub(crate) fn can_delete(&self, dev: DevId) -> Result<(), ThinError> {
        if self.volumes.borrow().contains_key(&dev) {
            return Err(ThinError::Busy(format!("thin device {dev} is active")));
        }
        if self.reserved_ids.borrow().contains(&dev) {
            return Err(ThinError::Busy(format!(
                "thin device {dev} is being created by another call"
            )));
        }
        self.must_exist(dev)
    }

    pub(crate) async fn set_transaction_id(
        self: &Rc<Self>,
        cur: u64,
        new: u64,
    ) -> Result<(), ThinError> {
        let expected = |c: &Self| {
            let now = c
                .with_pool(|p| p.transaction_id())
                .ok_or(ThinError::Mode("fail"))?;
            if now != cur {
                return Err(ThinError::Invalid(format!(
                    "transaction id is {now}, not {cur}"
                )));
            }
            Ok(())
        };
        self.change(expected, |p| p.set_transaction_id(cur, new))
            .await?;
        self.refresh_stats();
        Ok(())
    }

    pub(crate) async fn reserve_metadata_snap(self: &Rc<Self>) -> Result<u64, ThinError> {
        loop {
            self.writable()?;
            if self.with_pool(|p| p.metadata_snap()).flatten().is_some() {
                return Err(ThinError::Busy(
                    "a metadata snapshot is already held".into(),
                ));
            }
            if self.metadata_headroom() > 0 {
                break;
            }
            self.make_metadata_room().await?;
        }
        // Asked again inside the commit: another call may have taken the
        // snapshot while this one waited for the commit lock. Refused
        // there, it commits as any commit would (the transaction holds
        // other changes that must not be marked clean uncommitted).
        let r = self
            .commit_with(|p| match p.metadata_snap() {
                Some(_) => p.commit(&mut || Ok(())).map(|()| {
                    Err(ThinError::Busy(
                        "a metadata snapshot is already held".into(),
                    ))
                }),
                None => p.reserve_metadata_snap(&mut || Ok(())).map(Ok),
            })
            .await??;
        self.refresh_stats();
        Ok(r)
    }

    pub(crate) async fn release_metadata_snap(self: &Rc<Self>) -> Result<(), ThinError> {
        self.writable()?;
        if self.with_pool(|p| p.metadata_snap()).flatten().is_none() {
            return Err(ThinError::Invalid("no metadata snapshot is held".into()));
        }
        self.commit_with(|p| match p.metadata_snap() {
            None => p
                .commit(&mut || Ok(()))
                .map(|()| Err(ThinError::Invalid("no metadata snapshot is held".into()))),
            Some(_) => p.release_metadata_snap(&mut || Ok(())).map(Ok),
        })
        .await??;
        self.refresh_stats();
        Ok(())
    }

    /// The current size a grow starts from; refused while needs_check is
    /// set (repair comes first, as in dm-thin).
    fn growable(
        &self,
        size: impl FnOnce(&mut metadata::thin::pool::Pool) -> u64,
    ) -> Result<u64, ThinError> {
        if self.shared.needs_check.load(Ordering::Acquire) {
            return Err(ThinError::Mode("needs_check (repair first)"));
        }
        self.with_pool(size).ok_or(ThinError::Mode("fail"))
    }

    /// Grows the data space to `nr_blocks` (the data bdev grew).
    pub(crate) async fn grow_data(self: &Rc<Self>, nr_blocks: u64) -> Result<(), ThinError> {
        let cur = self.growable(|p| p.nr_data_blocks())?;
        if nr_blocks < cur {
            return Err(ThinError::Invalid(format!(
                "the data area would shrink from {cur} to {nr_blocks} blocks"
            )));
        }
        if nr_blocks == cur {
            return Ok(());
        }
        // A grow (often started by a resize event) must not carry a side
        // table staged for another call's change: set aside, put back (a
        // copy staged for a transaction id that moved meanwhile is then
        // skipped by `change`).
        let staged = self.staged_tid.take();
        let r = self.change(|_| Ok(()), |p| p.grow_data(nr_blocks)).await;
        if self.staged_tid.get().is_none() {
            self.staged_tid.set(staged);
        }
        r?;
        self.clear_low_water_latch();
        Ok(())
    }

    /// Grows the metadata space to `nr_blocks` (the metadata bdev grew).
    pub(crate) async fn grow_metadata(self: &Rc<Self>, nr_blocks: u64) -> Result<(), ThinError> {
        let cur = self.growable(|p| p.nr_metadata_blocks())?;
        let nr_blocks = nr_blocks.min(metadata::pdata::space_map::MAX_METADATA_BLOCKS);
        if nr_blocks <= cur {
            return Ok(());
        }
        let mode = self.shared.mode();
        if !mode.metadata_writable() && mode != PoolMode::OutOfMetadataSpace {
            return Err(ThinError::Mode(mode.name()));
        }
        // Not through `change`: growing is what makes room, so it cannot
        // wait for room.
        self.unlocked().await;
        self.image.borrow_mut().grow(nr_blocks);
        match self.with_pool(|p| p.grow_metadata(nr_blocks)) {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.metadata_failed().await;
                return Err(ThinError::Metadata(e));
            }
            None => return Err(ThinError::Mode("fail")),
        }
        self.dirty.set(true);
        if self.shared.mode() == PoolMode::OutOfMetadataSpace {
            self.shared.set_mode(PoolMode::Write);
        }
        // The commit decides again whether there is room enough.
        self.commit_now()
            .await
            .map_err(|s| ThinError::Io(format!("commit failed: {s}")))
    }

    /// Every device with its counts; exclusive = mapped blocks no other
    /// device maps.
    pub(crate) fn devices(&self) -> Result<Vec<DeviceInfo>, ThinError> {
        self.with_pool(|p| {
            let ids = p.devices();
            let mut maps = Vec::new();
            let mut refs: std::collections::HashMap<u64, u32> = Default::default();
            for &id in &ids {
                let mappings = p.mappings(id)?;
                for block_time in mappings.values() {
                    *refs.entry(block_time.block).or_default() += 1;
                }
                maps.push((id, mappings));
            }
            Ok::<_, metadata::MetadataError>(
                maps.into_iter()
                    .map(|(id, mappings)| {
                        let details = p.details(id).unwrap_or_default();
                        let exclusive = mappings
                            .values()
                            .filter(|block_time| refs[&block_time.block] == 1)
                            .count() as u64;
                        DeviceInfo {
                            dev_id: id,
                            mapped_blocks: details.mapped_blocks,
                            exclusive_blocks: exclusive,
                            shared_blocks: mappings.len() as u64 - exclusive,
                            transaction_id: details.transaction_id,
                            creation_time: details.creation_time,
                            snapshotted_time: details.snapshotted_time,
                        }
                    })
                    .collect(),
            )
        })
        .ok_or(ThinError::Mode("fail"))?
        .map_err(ThinError::Metadata)
    }

    /// Changed ranges of `dev` against `base` (another device, or the
    /// device as the metadata snapshot holds it when `base` is None).
    pub(crate) fn delta(
        &self,
        dev: DevId,
        base: Option<u32>,
    ) -> Result<Vec<(DeltaKind, u64, u64)>, ThinError> {
        self.with_pool(|p| {
            let right = p.mappings(dev)?;
            let left = match base {
                Some(b) => p.mappings(b)?,
                None => p.snap_mappings(dev)?,
            };
            Ok::<_, metadata::MetadataError>(delta(&left, &right))
        })
        .ok_or(ThinError::Mode("fail"))?
        .map_err(|e| ThinError::Invalid(e.to_string()))
    }

    /// Teardown without a commit (a simulated crash).
    pub(crate) fn abandon(&self) {
        self.enter_fail_mode();
        self.teardown();
    }

    /// Final commit and teardown (pool delete or shutdown).
    pub(crate) async fn close(self: &Rc<Self>) -> Result<(), ThinError> {
        let r = if self.dirty.get() && self.shared.mode().metadata_writable() {
            self.commit_now()
                .await
                .map_err(|s| ThinError::Io(format!("final commit failed: {s}")))
        } else {
            Ok(())
        };
        self.teardown();
        r
    }

    /// Stops serving: new requests are refused, timers stop, waiting tasks
    /// wake to find the pool closed, and whole-block writes in flight will
    /// not be confirmed to anyone (their waiting tasks fail them).
    fn teardown(&self) {
        self.closed.set(true);
        self.confirms.borrow_mut().clear();
        self.period.borrow_mut().take();
        self.no_space_timer.borrow_mut().take();
        self.space.notify_all();
        self.thaw.notify_all();
        uninstall(super::key(&self.shared));
    }
}
