//! Pool modes: metadata failure (abort, needs_check, read-only, or fail),
//! running out of data space and back, and the low-water events.

use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::MetaCore;
use crate::events::{push_event, PoolEvent};
use crate::image;
use crate::options::PoolMode;
use crate::table::{mapped, MAPPED};
use crate::ThinError;

impl MetaCore {
    /// A metadata operation failed: throw the transaction away (back to
    /// the last durable commit), set needs_check, go read-only. If even
    /// that fails, fail mode.
    ///
    /// A play that failed after its superblock write went out may have
    /// left that superblock on disk all the same (a write can land and its
    /// flush fail; a torn superblock whose first sector landed is whole).
    /// Then the blocks the failed transaction took, free again in the last
    /// durable commit, are in use on disk. So nothing may take a block
    /// from here on: the pool is read-only before the first await, and
    /// needs_check reaches the disk as the durable superblock rewritten in
    /// place with the flag, which allocates nothing and is right whichever
    /// superblock the disk holds (a full commit would move space-map
    /// blocks onto the failed transaction's).
    pub(crate) async fn metadata_failed(self: &Rc<Self>) {
        if self.shared.mode() == PoolMode::Fail {
            return;
        }
        self.shared.needs_check.store(true, Ordering::Release);
        self.shared.set_mode(PoolMode::ReadOnly);
        self.image.borrow_mut().rollback();
        let Some(pool) = self.pool.borrow_mut().take() else {
            return;
        };
        let ok = match pool.abort() {
            Ok(mut p) => {
                p.set_needs_check(true);
                let sb = p.superblock().pack();
                *self.pool.borrow_mut() = Some(p);
                self.rebuild_tables();
                self.refresh_stats();
                self.write_superblock(&sb).await
            }
            Err(e) => {
                tracing::error!(pool = %self.shared.name, error = %e, "metadata abort failed");
                false
            }
        };
        if !ok {
            self.pool.borrow_mut().take();
            self.enter_fail_mode();
        }
        self.dirty.set(false);
        self.released.borrow_mut().clear();
        // Nothing can provision now: writes waiting for space give up.
        self.space.notify_all();
        self.thaw.notify_all();
    }

    /// Writes `sb` over the superblock and makes it durable.
    async fn write_superblock(&self, sb: &metadata::Block) -> bool {
        let mut staged = image::StagedIo(self.image.clone());
        use metadata::io::BlockIo;
        if staged
            .write(&[(0, sb)])
            .and_then(|()| staged.flush())
            .is_err()
        {
            return false;
        }
        image::play(&self.image, &self.meta_ch).await.is_ok()
    }

    /// Metadata blocks that changes may still take before the pool must
    /// commit: what the transaction can allocate, less the reserve and
    /// what the commit itself will take (dm-thin's free metadata count,
    /// with the commit's own needs made explicit). 0 in fail mode.
    pub(crate) fn metadata_headroom(&self) -> u64 {
        self.with_pool(|p| {
            let reserve = super::commit::metadata_reserve(p.nr_metadata_blocks());
            p.nr_allocatable_metadata_blocks()
                .saturating_sub(reserve + p.commit_blocks_needed())
        })
        .unwrap_or(0)
    }

    /// Whether the pool may stay in (or return to) write mode: room for a
    /// change and for one more changed data bitmap, which the data block
    /// allocation before a mapping may add to the commit. With room for
    /// the change only, a provision would find none after its allocation,
    /// commit, and find the same again, for ever.
    pub(crate) fn has_metadata_room(&self) -> bool {
        self.metadata_headroom() >= 2
    }

    /// Before a change that takes metadata: room for it, committing first
    /// if that gives back what the transaction shadowed; none even then
    /// is out of metadata space (as dm-thin after a data allocation). The
    /// caller checks `metadata_headroom` again after its last await.
    pub(crate) async fn make_metadata_room(self: &Rc<Self>) -> Result<(), ThinError> {
        if self.has_metadata_room() {
            return Ok(());
        }
        if self.shared.mode().metadata_writable() && self.dirty.get() {
            self.commit_now()
                .await
                .map_err(|s| ThinError::Io(format!("commit failed: {s}")))?;
        }
        if self.has_metadata_room() {
            return Ok(());
        }
        if self.shared.mode().metadata_writable() {
            tracing::warn!(pool = %self.shared.name, "out of metadata space: grow the metadata bdev, then bdev_thin_pool_resize");
            self.shared.set_mode(PoolMode::OutOfMetadataSpace);
            // Queued writes give up: no block can be mapped now.
            self.space.notify_all();
        }
        Err(ThinError::NoMetadataSpace)
    }

    /// Fail mode, for the pool and for the fast path of every volume.
    pub(crate) fn enter_fail_mode(&self) {
        self.shared.set_mode(PoolMode::Fail);
        for vol in self.volumes.borrow().values() {
            vol.fail();
        }
    }

    /// After an abort, each volume's table goes back to the committed
    /// mappings; volumes that lost changes fail their next flush.
    fn rebuild_tables(&self) {
        let vols: Vec<_> = self.volumes.borrow().values().cloned().collect();
        for vol in vols {
            if vol.changed.swap(false, Ordering::AcqRel) {
                vol.aborted.store(true, Ordering::Release);
            }
            let dev = vol.dev_id;
            let Some(Ok((maps, snap_time))) = self.with_pool(|p| {
                let snapshotted = p
                    .details(dev)
                    .map(|details| details.snapshotted_time)
                    .unwrap_or(0);
                p.mappings(dev).map(|mappings| (mappings, snapshotted))
            }) else {
                continue;
            };
            let mut stale = Vec::new();
            vol.table.for_each(|vblock, entry| {
                if entry & MAPPED != 0 && !maps.contains_key(&vblock) {
                    stale.push(vblock);
                }
            });
            for vblock in stale {
                vol.table.set(vblock, 0);
            }
            for (vblock, block_time) in maps {
                vol.table.set(
                    vblock,
                    mapped(block_time.block, snap_time > block_time.time),
                );
            }
        }
    }

    /// No data block is left even after a commit.
    pub(crate) fn enter_no_space(self: &Rc<Self>) {
        if self.shared.mode() != PoolMode::Write {
            return;
        }
        self.shared.set_mode(PoolMode::OutOfDataSpace);
        self.start_no_space_timer();
    }

    /// (Re)starts the timer after which queued writes fail, from the
    /// pool's current no_space_timeout (none: they queue forever).
    pub(crate) fn start_no_space_timer(self: &Rc<Self>) {
        self.no_space_timer.borrow_mut().take();
        if let Some(timeout) = self.shared.options().no_space_timeout() {
            let me = Rc::downgrade(self);
            let timer = reactor::after(timeout, move || {
                if let Some(core) = me.upgrade() {
                    if core.shared.mode() == PoolMode::OutOfDataSpace {
                        core.shared.error_if_no_space.store(true, Ordering::Release);
                        push_event(PoolEvent::NoSpaceTimeout {
                            pool: core.shared.name.clone(),
                        });
                        core.space.notify_all();
                    }
                }
            });
            *self.no_space_timer.borrow_mut() = Some(timer);
        }
    }

    /// Blocks are free again: back to write mode, queued writes retry.
    pub(crate) fn leave_no_space(&self) {
        self.no_space_timer.borrow_mut().take();
        self.shared
            .error_if_no_space
            .store(self.shared.options().error_if_no_space, Ordering::Release);
        self.shared.set_mode(PoolMode::Write);
        self.space.notify_all();
    }

    /// Checked before each allocation; latched until the pool is resized.
    pub(crate) fn check_data_low_water(&self, free: u64) {
        if free <= self.shared.options().low_water_mark_blocks
            && !self.low_water_latched.replace(true)
        {
            push_event(PoolEvent::DataLowWater {
                pool: self.shared.name.clone(),
                free_blocks: free,
            });
        }
    }

    pub(crate) fn clear_low_water_latch(&self) {
        self.low_water_latched.set(false);
    }

    /// Edge-triggered at min(4 MiB, a quarter of the metadata); re-arms
    /// when free space rises above it again.
    pub(crate) fn check_metadata_low_water(&self, free: u64, nr: u64) {
        let threshold = (nr / 4).min(1024);
        if free <= threshold {
            if !self.meta_low_latched.replace(true) {
                push_event(PoolEvent::MetadataLowWater {
                    pool: self.shared.name.clone(),
                    free_blocks: free,
                });
            }
        } else {
            self.meta_low_latched.set(false);
        }
    }
}
