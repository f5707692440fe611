//! The thin pool's metadata at run time: devices, snapshots, mappings,
//! and transactions (commit and abort), on the copy-on-write B-trees.

use super::DevId;
use std::collections::{BTreeMap, BTreeSet};

use crate::io::BlockIo;
use crate::pdata::btree::{self, Tree};
use crate::pdata::superblock::{Superblock, NEEDS_CHECK};
use crate::pdata::tm::Tm;
use crate::pdata::values::{BlockTime, DeviceDetails};
use crate::thin::model::{PoolModel, MAX_DEV_ID};
use crate::thin::write::write_image;
use crate::MetadataError;

pub struct Pool {
    tm: Tm,
    sb: Superblock,
    details: BTreeMap<u64, DeviceDetails>,
    /// Devices whose details changed since the last commit (the details
    /// tree is written at commit, as the kernel does).
    changed: BTreeSet<u64>,
    deleted: BTreeSet<u64>,
    /// The level-0 tree's path is already this transaction's own.
    top_owned: bool,
    /// Each device's level-1 root, as the level-0 tree has it (kept in step
    /// by `set_root` and `delete`, the only writers of that tree).
    roots: BTreeMap<u64, u64>,
}

/// A mapping as a lookup sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lookup {
    pub block: u64,
    pub time: u32,
    /// The time-stamp approximation: the mapping is older than the device's
    /// last snapshot, so another device may share the data block.
    pub maybe_shared: bool,
}

fn no_device(id: u64) -> MetadataError {
    MetadataError::Invalid(format!("no thin device {id}"))
}

fn u64_of(v: &[u8]) -> u64 {
    u64::from_le_bytes(v[..8].try_into().unwrap_or([0; 8]))
}

impl Pool {
    /// Formats `io` as an empty pool.
    pub fn format(
        mut io: Box<dyn BlockIo>,
        data_block_size: u32,
        nr_data_blocks: u64,
    ) -> Result<Pool, MetadataError> {
        let m = PoolModel {
            data_block_size,
            nr_data_blocks,
            ..Default::default()
        };
        write_image(&mut *io, &m)?;
        Pool::open(io)
    }

    /// Opens committed metadata.
    pub fn open(io: Box<dyn BlockIo>) -> Result<Pool, MetadataError> {
        let (mut tm, sb) = Tm::open(io)?;
        let mut details = BTreeMap::new();
        for (id, v) in btree::range(&mut tm, sb.device_details_root, 0, u64::MAX, Tree::DETAILS)? {
            details.insert(id, DeviceDetails::unpack(&v));
        }
        Ok(Pool {
            tm,
            sb,
            details,
            changed: BTreeSet::new(),
            deleted: BTreeSet::new(),
            top_owned: false,
            roots: BTreeMap::new(),
        })
    }

    /// Closes the pool, giving its device back (uncommitted changes are lost).
    pub fn into_io(self) -> Box<dyn BlockIo> {
        self.tm.into_io()
    }

    /// Throws the transaction away and reopens the last commit.
    pub fn abort(self) -> Result<Pool, MetadataError> {
        Pool::open(self.tm.into_io())
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }
    pub fn time(&self) -> u32 {
        self.sb.time
    }
    pub fn transaction_id(&self) -> u64 {
        self.sb.trans_id
    }
    pub fn needs_check(&self) -> bool {
        self.sb.needs_check()
    }
    /// Every device's id (keys too large for an id, which only a damaged
    /// image could hold, are left out; thin_check reports them).
    pub fn devices(&self) -> Vec<DevId> {
        self.details
            .keys()
            .filter_map(|&k| DevId::try_from(k).ok())
            .collect()
    }
    pub fn details(&self, id: DevId) -> Option<DeviceDetails> {
        let id = u64::from(id);
        self.details.get(&id).copied()
    }
    pub fn nr_data_blocks(&self) -> u64 {
        self.tm.nr_data_blocks()
    }
    pub fn nr_free_data_blocks(&self) -> u64 {
        self.tm.nr_free_data_blocks()
    }
    pub fn nr_metadata_blocks(&self) -> u64 {
        self.tm.nr_metadata_blocks()
    }
    pub fn nr_free_metadata_blocks(&self) -> u64 {
        self.tm.nr_free_metadata_blocks()
    }
    /// At most how many metadata blocks the next commit allocates.
    pub fn commit_blocks_needed(&self) -> u64 {
        self.tm.commit_blocks_needed()
    }
    /// Metadata blocks the open transaction can still allocate (see
    /// `Tm::nr_allocatable_metadata_blocks`).
    pub fn nr_allocatable_metadata_blocks(&self) -> u64 {
        self.tm.nr_allocatable_metadata_blocks()
    }
    /// Reference count of a data block (for discard passdown decisions).
    pub fn data_block_count(&self, b: u64) -> u32 {
        self.tm.data_count(b)
    }

    fn root_of(&mut self, id: u64) -> Result<u64, MetadataError> {
        if let Some(&r) = self.roots.get(&id) {
            return Ok(r);
        }
        let v = btree::lookup(&mut self.tm, self.sb.data_mapping_root, id, Tree::DEVICES)?
            .ok_or_else(|| no_device(id))?;
        let r = u64_of(&v);
        self.roots.insert(id, r);
        Ok(r)
    }

    /// Points device `id` at a new level-1 root. The old root's reference
    /// was already given up when it was shadowed, so no dec on overwrite.
    fn set_root(&mut self, id: u64, root: u64) -> Result<(), MetadataError> {
        let (r, _) = btree::insert(
            &mut self.tm,
            self.sb.data_mapping_root,
            id,
            &root.to_le_bytes(),
            Tree::DEVICES,
            false,
        )?;
        self.sb.data_mapping_root = r;
        self.roots.insert(id, root);
        Ok(())
    }

    /// The level-1 root of `id`, ready for changes below it. Copy-on-write
    /// must go top-down: the level-0 leaf is made this transaction's own
    /// first, so that if it was shared (with a metadata snapshot) its copy
    /// takes a reference on every subtree root before a level-1 root is
    /// itself copied. Done once per transaction.
    fn root_for_write(&mut self, id: u64) -> Result<u64, MetadataError> {
        let root = self.root_of(id)?;
        if !self.top_owned {
            self.set_root(id, root)?;
            self.top_owned = true;
        }
        Ok(root)
    }

    fn check_new_id(&self, id: u64) -> Result<(), MetadataError> {
        if id > MAX_DEV_ID {
            return Err(MetadataError::Invalid(format!(
                "device id {id} is not a 24-bit id"
            )));
        }
        if self.details.contains_key(&id) {
            return Err(MetadataError::Invalid(format!(
                "thin device {id} already exists"
            )));
        }
        Ok(())
    }

    pub fn create_thin(&mut self, id: DevId) -> Result<(), MetadataError> {
        let id = u64::from(id);
        self.check_new_id(id)?;
        let root = btree::empty(&mut self.tm, Tree::MAPPINGS)?;
        self.set_root(id, root)?;
        let t = self.sb.time;
        self.details.insert(
            id,
            DeviceDetails {
                mapped_blocks: 0,
                transaction_id: self.sb.trans_id,
                creation_time: t,
                snapshotted_time: t,
            },
        );
        self.changed.insert(id);
        self.deleted.remove(&id);
        Ok(())
    }

    /// Snapshots `origin` as `id`: the two share the origin's mapping tree
    /// (one more reference on its root) and the pool time moves on.
    pub fn create_snap(&mut self, id: DevId, origin: DevId) -> Result<(), MetadataError> {
        let id = u64::from(id);
        let origin = u64::from(origin);
        self.check_new_id(id)?;
        let o = self
            .details
            .get(&origin)
            .copied()
            .ok_or_else(|| no_device(origin))?;
        if self.sb.time >= BlockTime::MAX_TIME {
            return Err(MetadataError::Invalid(
                "the pool time has reached 2^24: no more snapshots".into(),
            ));
        }
        let root = self.root_of(origin)?;
        self.tm.meta_inc(root);
        self.set_root(id, root)?;
        self.sb.time += 1;
        let t = self.sb.time;
        self.details.insert(
            id,
            DeviceDetails {
                mapped_blocks: o.mapped_blocks,
                transaction_id: self.sb.trans_id,
                creation_time: t,
                snapshotted_time: t,
            },
        );
        if let Some(d) = self.details.get_mut(&origin) {
            d.snapshotted_time = t;
        }
        self.changed.extend([id, origin]);
        self.deleted.remove(&id);
        Ok(())
    }

    /// Deletes a device: its mapping tree loses a reference (unshared parts
    /// are freed and give their data blocks back).
    pub fn delete(&mut self, id: DevId) -> Result<(), MetadataError> {
        let id = u64::from(id);
        if !self.details.contains_key(&id) {
            return Err(no_device(id));
        }
        let (r, _) = btree::remove(&mut self.tm, self.sb.data_mapping_root, id, Tree::DEVICES)?;
        self.roots.remove(&id);
        self.sb.data_mapping_root = r;
        self.details.remove(&id);
        self.changed.remove(&id);
        self.deleted.insert(id);
        Ok(())
    }

    pub fn lookup(&mut self, id: DevId, vblock: u64) -> Result<Option<Lookup>, MetadataError> {
        let id = u64::from(id);
        let d = self
            .details
            .get(&id)
            .copied()
            .ok_or_else(|| no_device(id))?;
        let root = self.root_of(id)?;
        let bt = btree::lookup_with(&mut self.tm, root, vblock, Tree::MAPPINGS, |v| {
            BlockTime::unpack(u64_of(v))
        })?;
        Ok(bt.map(|bt| Lookup {
            block: bt.block,
            time: bt.time,
            maybe_shared: d.snapshotted_time > bt.time,
        }))
    }

    /// A free data block (count 1 from now on), or None when full.
    pub fn alloc_data_block(&mut self) -> Option<u64> {
        self.tm.new_data_block()
    }

    /// Gives back a block from `alloc_data_block` that was never mapped
    /// (its zeroing or copy failed). It stays unallocatable until the
    /// transaction commits, like any block freed in it.
    pub fn free_data_block(&mut self, b: u64) {
        if b < self.tm.nr_data_blocks() && self.tm.data_count(b) > 0 {
            self.tm.data_dec(b);
        }
    }

    /// Whether anything changed since the last commit.
    pub fn has_changes(&self) -> bool {
        self.tm.has_changes() || !self.changed.is_empty() || !self.deleted.is_empty()
    }

    /// Device `id`'s mappings as the metadata snapshot holds them.
    pub fn snap_mappings(&mut self, id: DevId) -> Result<BTreeMap<u64, BlockTime>, MetadataError> {
        let id = u64::from(id);
        let at = self
            .metadata_snap()
            .ok_or_else(|| MetadataError::Invalid("there is no metadata snapshot".into()))?;
        let snap = Superblock::unpack(&*self.tm.read_raw(at)?, at)?;
        let v = btree::lookup(&mut self.tm, snap.data_mapping_root, id, Tree::DEVICES)?
            .ok_or_else(|| no_device(id))?;
        Ok(
            btree::range(&mut self.tm, u64_of(&v), 0, u64::MAX, Tree::MAPPINGS)?
                .into_iter()
                .map(|(k, v)| (k, BlockTime::unpack(u64_of(&v))))
                .collect(),
        )
    }

    /// Maps `vblock` of `id` to `data_block` (which the caller holds a
    /// reference on, e.g. from `alloc_data_block`). A previous mapping's
    /// data block loses its reference.
    pub fn insert(&mut self, id: DevId, vblock: u64, data_block: u64) -> Result<(), MetadataError> {
        let id = u64::from(id);
        if !self.details.contains_key(&id) {
            return Err(no_device(id));
        }
        if data_block >= self.tm.nr_data_blocks() {
            return Err(MetadataError::Invalid(format!(
                "data block {data_block} is past the end of the pool"
            )));
        }
        let bt = BlockTime {
            block: data_block,
            time: self.sb.time,
        }
        .pack()
        .ok_or_else(|| {
            MetadataError::Invalid(format!("data block {data_block} does not fit a mapping"))
        })?;
        let root = self.root_for_write(id)?;
        let (r, new) = btree::insert(
            &mut self.tm,
            root,
            vblock,
            &bt.to_le_bytes(),
            Tree::MAPPINGS,
            true,
        )?;
        if r != root {
            self.set_root(id, r)?;
        }
        if new {
            if let Some(d) = self.details.get_mut(&id) {
                d.mapped_blocks += 1;
            }
            self.changed.insert(id);
        }
        Ok(())
    }

    /// Maps `vblock` of `id` to `data_block`, which another device maps
    /// too: the block gains a reference (a previous mapping's block loses
    /// one). Follow with `mark_snapshotted`, so the device sees the block
    /// as shared.
    pub fn share(&mut self, id: DevId, vblock: u64, data_block: u64) -> Result<(), MetadataError> {
        if data_block >= self.tm.nr_data_blocks() {
            return Err(MetadataError::Invalid(format!(
                "data block {data_block} is past the end of the pool"
            )));
        }
        self.tm.data_inc(data_block);
        self.insert(id, vblock, data_block)
    }

    /// Moves the pool time on and stamps `id` as snapshotted now, as a
    /// snapshot of it would: every block it maps counts as maybe shared
    /// (dm-thin's time-stamp test), so its next write to one copies it.
    pub fn mark_snapshotted(&mut self, id: DevId) -> Result<(), MetadataError> {
        let id = u64::from(id);
        if !self.details.contains_key(&id) {
            return Err(no_device(id));
        }
        if self.sb.time >= BlockTime::MAX_TIME {
            return Err(MetadataError::Invalid(
                "the pool time has reached 2^24".into(),
            ));
        }
        self.sb.time += 1;
        let t = self.sb.time;
        if let Some(d) = self.details.get_mut(&id) {
            d.snapshotted_time = t;
        }
        self.changed.insert(id);
        Ok(())
    }

    /// Unmaps `vblock`; returns the data block it mapped.
    pub fn remove(&mut self, id: DevId, vblock: u64) -> Result<Option<u64>, MetadataError> {
        let id = u64::from(id);
        if !self.details.contains_key(&id) {
            return Err(no_device(id));
        }
        let root = self.root_for_write(id)?;
        let (r, old) = btree::remove(&mut self.tm, root, vblock, Tree::MAPPINGS)?;
        if r != root {
            self.set_root(id, r)?;
        }
        if old.is_some() {
            if let Some(d) = self.details.get_mut(&id) {
                d.mapped_blocks = d.mapped_blocks.saturating_sub(1);
            }
            self.changed.insert(id);
        }
        Ok(old.map(|v| BlockTime::unpack(u64_of(&v)).block))
    }

    /// Unmaps every block in `[lo, hi)`; returns how many were mapped.
    pub fn remove_range(&mut self, dev: DevId, lo: u64, hi: u64) -> Result<u64, MetadataError> {
        let root = self.root_of(u64::from(dev))?;
        let keys: Vec<u64> = btree::range(&mut self.tm, root, lo, hi, Tree::MAPPINGS)?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        for &k in &keys {
            self.remove(dev, k)?;
        }
        Ok(keys.len() as u64)
    }

    /// Compare-and-swap of the userland transaction id.
    pub fn set_transaction_id(&mut self, current: u64, new: u64) -> Result<(), MetadataError> {
        if self.sb.trans_id != current {
            return Err(MetadataError::Invalid(format!(
                "transaction id is {}, not {current}",
                self.sb.trans_id
            )));
        }
        self.sb.trans_id = new;
        Ok(())
    }

    /// Lowers every reference count above the references found (`meta`
    /// and `data`, per block, from a check that walked every tree):
    /// leaked blocks become free. Counts below their references are left
    /// for repair (that is damage, not a leak). Committed by the caller's
    /// next commit, as any change. Returns the metadata and data blocks
    /// changed.
    pub fn fix_counts(&mut self, meta: &[u32], data: &[u32]) -> (u64, u64) {
        let mut fixed = (0, 0);
        for (b, &want) in (0u64..).zip(meta) {
            if self.tm.meta_count(b) > want {
                while self.tm.meta_count(b) > want {
                    self.tm.meta_dec(b);
                }
                fixed.0 += 1;
            }
        }
        for (b, &want) in (0u64..).zip(data) {
            if self.tm.data_count(b) > want {
                while self.tm.data_count(b) > want {
                    self.tm.data_dec(b);
                }
                fixed.1 += 1;
            }
        }
        fixed
    }

    /// Sets the superblock's uuid field, which dm-thin keeps but does not
    /// use (the kernel's commits leave it alone; thin_dump writes it
    /// empty). ferrothin's lvol layer marks an lvstore's pool with it.
    pub fn set_uuid(&mut self, uuid: [u8; 16]) {
        self.sb.uuid = uuid;
    }

    pub fn set_needs_check(&mut self, on: bool) {
        if on {
            self.sb.flags |= NEEDS_CHECK;
        } else {
            self.sb.flags &= !NEEDS_CHECK;
        }
    }

    /// Formats `io` as an empty pool using only its first
    /// `nr_metadata_blocks` blocks for metadata (grow later).
    pub fn format_sized(
        mut io: Box<dyn BlockIo>,
        data_block_size: u32,
        nr_data_blocks: u64,
        nr_metadata_blocks: u64,
    ) -> Result<Pool, MetadataError> {
        let m = PoolModel {
            data_block_size,
            nr_data_blocks,
            ..Default::default()
        };
        crate::thin::write::write_image_sized(&mut *io, &m, nr_metadata_blocks)?;
        Pool::open(io)
    }

    /// Grows the metadata space (the device must already hold it).
    pub fn grow_metadata(&mut self, nr_blocks: u64) -> Result<(), MetadataError> {
        self.tm.extend_metadata(nr_blocks)
    }

    /// Grows the data space (new blocks free).
    pub fn grow_data(&mut self, nr_blocks: u64) -> Result<(), MetadataError> {
        self.tm.extend_data(nr_blocks)
    }

    /// Writes the transaction: device details, then the transaction
    /// manager's commit (pre-commit hook, metadata, flush, superblock,
    /// flush).
    pub fn commit(
        &mut self,
        pre_commit: &mut dyn FnMut() -> Result<(), MetadataError>,
    ) -> Result<(), MetadataError> {
        for id in std::mem::take(&mut self.deleted) {
            let (r, _) =
                btree::remove(&mut self.tm, self.sb.device_details_root, id, Tree::DETAILS)?;
            self.sb.device_details_root = r;
        }
        for id in std::mem::take(&mut self.changed) {
            let Some(d) = self.details.get(&id) else {
                continue;
            };
            let mut v = [0u8; DeviceDetails::SIZE];
            d.pack(&mut v);
            let (r, _) = btree::insert(
                &mut self.tm,
                self.sb.device_details_root,
                id,
                &v,
                Tree::DETAILS,
                false,
            )?;
            self.sb.device_details_root = r;
        }
        let mut sb = self.sb.clone();
        self.top_owned = false;
        self.tm.commit(&mut sb, pre_commit)?;
        self.sb = sb;
        Ok(())
    }

    /// Takes a metadata snapshot: commits, then keeps a frozen copy of the
    /// superblock (space-map roots zeroed) at a new block that holds one
    /// reference on each of its two tree roots, and commits again. Only
    /// one may exist.
    pub fn reserve_metadata_snap(
        &mut self,
        pre_commit: &mut dyn FnMut() -> Result<(), MetadataError>,
    ) -> Result<u64, MetadataError> {
        if self.sb.held_root != 0 {
            return Err(MetadataError::Invalid(
                "a metadata snapshot already exists".into(),
            ));
        }
        self.commit(pre_commit)?;
        let at = self.tm.new_block()?;
        let mut copy = self.sb.clone();
        copy.blocknr = at;
        copy.held_root = 0;
        copy.data_sm_root = Default::default();
        copy.metadata_sm_root = Default::default();
        self.tm.write_raw(at, copy.pack())?;
        self.tm.meta_inc(copy.data_mapping_root);
        self.tm.meta_inc(copy.device_details_root);
        self.sb.held_root = at;
        self.commit(pre_commit)?;
        Ok(at)
    }

    /// Drops the metadata snapshot: its trees lose their references (what
    /// only it still used is freed) and its block goes; then commits.
    pub fn release_metadata_snap(
        &mut self,
        pre_commit: &mut dyn FnMut() -> Result<(), MetadataError>,
    ) -> Result<(), MetadataError> {
        let at = self.sb.held_root;
        if at == 0 {
            return Err(MetadataError::Invalid(
                "there is no metadata snapshot".into(),
            ));
        }
        let snap = Superblock::unpack(&*self.tm.read_raw(at)?, at)?;
        btree::del(&mut self.tm, snap.data_mapping_root, Tree::DEVICES)?;
        btree::del(&mut self.tm, snap.device_details_root, Tree::DETAILS)?;
        self.tm.meta_dec(at);
        self.sb.held_root = 0;
        self.commit(pre_commit)
    }

    /// The metadata snapshot's block, if one is held.
    pub fn metadata_snap(&self) -> Option<u64> {
        (self.sb.held_root != 0).then_some(self.sb.held_root)
    }

    /// The device's mappings (tests and tools; reads the whole tree).
    pub fn mappings(&mut self, id: DevId) -> Result<BTreeMap<u64, BlockTime>, MetadataError> {
        let id = u64::from(id);
        let root = self.root_of(id)?;
        Ok(
            btree::range(&mut self.tm, root, 0, u64::MAX, Tree::MAPPINGS)?
                .into_iter()
                .map(|(k, v)| (k, BlockTime::unpack(u64_of(&v))))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests;
