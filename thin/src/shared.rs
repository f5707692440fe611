//! State that every core reads: the pool's mode and counters, and each
//! volume's mapping table and flags. Written by the metadata core. (What
//! monitors hear about is in `events`.)

use metadata::thin::DevId;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::epoch::Epochs;
use super::events::{push_event, PoolEvent};
use super::external_origin::ExternalOrigin;
use super::options::{DiscardMode, PoolMode, PoolOptions};
use super::table::MapTable;

pub struct PoolShared {
    pub name: String,
    /// The options the pool was opened with. Those a running pool may
    /// change (bdev_thin_pool_set_options) are read through [`options`]
    /// and the getters beside it; the rest (block size, metadata core,
    /// layout) are fixed for the pool's life and read here.
    ///
    /// [`options`]: PoolShared::options
    pub opts: PoolOptions,
    live: Mutex<PoolOptions>,
    /// The live discard mode, read on every volume's I/O path.
    discard: AtomicU8,
    pub meta_core: u32,
    mode: AtomicU8,
    /// The runtime error_if_no_space (the no-space timeout sets it).
    pub error_if_no_space: AtomicBool,
    pub needs_check: AtomicBool,
    /// Data block size in data-bdev blocks.
    pub data_block_size: u64,
    /// Where the data area starts on the data bdev, in its blocks.
    pub data_offset: u64,
    pub stats: Mutex<PoolStats>,
    /// Which device each snapshot was taken of (snapshot -> origin dev id).
    /// dm-thin's metadata keeps no lineage, so this lives in memory and in
    /// saved configs (bdev_thin_activate's origin_dev_id).
    pub lineage: Mutex<std::collections::BTreeMap<u32, u32>>,
    /// This process formatted the pool when it opened it (the device was
    /// blank), as opposed to reopening one: the daemon's banner says
    /// which, so a mistyped path that made a new pool does not go unseen.
    pub formatted: AtomicBool,
    /// Each device's size when it was last active here: dm-thin's metadata
    /// keeps none, and a device deactivated then activated again should
    /// come back as it was without the caller knowing its size.
    pub sizes: Mutex<std::collections::BTreeMap<u32, u64>>,
    /// bdev_thin_pool_suspend calls not yet resumed.
    pub(crate) suspends: AtomicU32,
    /// Autoextend's state for data [0] and metadata [1].
    pub(crate) autoextend: Mutex<[crate::autoextend::Pending; 2]>,
}

/// Counts the metadata core keeps up to date after each change (for
/// bdev_thin_pool_get_pools, without a trip to that core).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PoolStats {
    pub data_blocks: u64,
    pub free_data_blocks: u64,
    pub metadata_blocks: u64,
    pub free_metadata_blocks: u64,
    pub transaction_id: u64,
    pub metadata_snap: Option<u64>,
    pub commits: u64,
    pub provisioned: u64,
    pub copied: u64,
    pub passdowns: u64,
}

impl PoolShared {
    pub fn new(
        name: String,
        opts: PoolOptions,
        meta_core: u32,
        data_block_size: u64,
        data_offset: u64,
    ) -> PoolShared {
        PoolShared {
            name,
            error_if_no_space: AtomicBool::new(opts.error_if_no_space),
            live: Mutex::new(opts.clone()),
            discard: AtomicU8::new(opts.discard as u8),
            opts,
            meta_core,
            mode: AtomicU8::new(PoolMode::Write as u8),
            needs_check: AtomicBool::new(false),
            data_block_size,
            data_offset,
            stats: Mutex::new(PoolStats::default()),
            lineage: Mutex::new(std::collections::BTreeMap::new()),
            formatted: AtomicBool::new(false),
            sizes: Mutex::new(std::collections::BTreeMap::new()),
            autoextend: Mutex::new(Default::default()),
            suspends: AtomicU32::new(0),
        }
    }

    #[inline]
    pub fn mode(&self) -> PoolMode {
        PoolMode::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// Changes the mode; emits an event when it really changed. Fail is
    /// sticky.
    pub fn set_mode(&self, mode: PoolMode) {
        let old = self.mode();
        if old == mode || old == PoolMode::Fail {
            return;
        }
        self.mode.store(mode as u8, Ordering::Release);
        tracing::warn!(pool = %self.name, from = old.name(), to = mode.name(), "thin pool mode change");
        push_event(PoolEvent::ModeChanged {
            pool: self.name.clone(),
            mode: mode.name(),
        });
    }

    /// The pool's options as they are now.
    pub fn options(&self) -> PoolOptions {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the changeable options (the caller checked which changed).
    pub(crate) fn set_options(&self, new: PoolOptions) {
        self.discard.store(new.discard as u8, Ordering::Release);
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = new;
    }

    #[inline]
    pub fn discard(&self) -> DiscardMode {
        DiscardMode::from_u8(self.discard.load(Ordering::Acquire))
    }

    pub fn stats(&self) -> PoolStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The device `dev` was snapshotted from, if known.
    pub fn origin_of(&self, dev: DevId) -> Option<u32> {
        self.lineage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&dev)
            .copied()
    }

    pub fn record_lineage(&self, dev: DevId, origin: Option<u32>) {
        let mut lineage = self.lineage.lock().unwrap_or_else(|p| p.into_inner());
        match origin {
            Some(origin) => lineage.insert(dev, origin),
            None => lineage.remove(&dev),
        };
    }

    /// The size device `dev` had when it was last active in this process.
    pub fn recorded_size(&self, dev: DevId) -> Option<u64> {
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&dev)
            .copied()
    }

    pub fn record_size(&self, dev: DevId, bytes: u64) {
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dev, bytes);
    }

    /// Device `dev` is gone: the snapshots taken of it now descend from
    /// what it descended from (or from nothing known), so no lineage names
    /// a device that no longer exists and save_config never writes one.
    pub fn forget_device(&self, dev: DevId) {
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&dev);
        let mut lineage = self.lineage.lock().unwrap_or_else(|p| p.into_inner());
        let grandparent = lineage.remove(&dev);
        let children: Vec<u32> = lineage
            .iter()
            .filter(|(_, &o)| o == dev)
            .map(|(&c, _)| c)
            .collect();
        for c in children {
            match grandparent {
                Some(g) => lineage.insert(c, g),
                None => lineage.remove(&c),
            };
        }
    }

    pub fn with_stats(&self, f: impl FnOnce(&mut PoolStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// `VolumeShared::gate`: writes take the slow path (a snapshot is being
/// taken).
const FROZEN: u8 = 1;
/// `VolumeShared::gate`: the pool failed; all I/O takes the slow path,
/// which fails it.
const FAILED: u8 = 2;
/// `VolumeShared::gate`: the volume (or its pool) is suspended; all I/O
/// takes the slow path, which holds it until resume.
const SUSPENDED: u8 = 4;
/// `VolumeShared::gate`: the volume is read-only; writes take the slow
/// path, which refuses them.
const READ_ONLY: u8 = 8;

/// One active volume, shared by its bdev's channels and the metadata core.
///
/// What every fast-path I/O reads (the epoch, the gate) comes first, in
/// the allocation's first cache line, then the table, whose first middle
/// level is inline; what the metadata core writes as it works (`changed`)
/// comes after, so that its stores do not take that line from the I/O
/// cores.
#[repr(C, align(64))]
pub struct VolumeShared {
    pub epochs: Epochs,
    gate: AtomicU8,
    pub table: MapTable,
    pub pool: Arc<PoolShared>,
    pub dev_id: DevId,
    /// Unique in the process: routes replies to channels.
    pub uid: u64,
    /// The volume has metadata changes the last commit does not hold.
    pub changed: AtomicBool,
    /// A metadata abort threw away some of this volume's changes: its next
    /// flush fails, so the writer learns.
    pub aborted: AtomicBool,
    /// Supplies unprovisioned blocks (None: they read as zeros).
    pub origin: Option<Arc<ExternalOrigin>>,
    /// bdev_thin_suspend calls not yet resumed (the pool's count adds).
    pub(crate) suspends: AtomicU32,
    /// Requests held while suspended, in arrival order.
    pub(crate) held: Mutex<std::collections::VecDeque<crate::slow_path::SlowReq>>,
    /// Slow-path requests the metadata core is serving for this volume.
    pub(crate) in_service: AtomicU32,
    /// Going away by force: held requests fail instead of waiting (read
    /// and written under `held`'s lock).
    pub(crate) going: AtomicBool,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl VolumeShared {
    pub fn new(
        pool: Arc<PoolShared>,
        dev_id: DevId,
        origin: Option<Arc<ExternalOrigin>>,
    ) -> VolumeShared {
        let gate = if pool.mode() == PoolMode::Fail {
            FAILED
        } else {
            0
        };
        VolumeShared {
            pool,
            dev_id,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            table: MapTable::default(),
            epochs: Epochs::new(),
            gate: AtomicU8::new(gate),
            changed: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            origin,
            suspends: AtomicU32::new(0),
            held: Mutex::new(std::collections::VecDeque::new()),
            in_service: AtomicU32::new(0),
            going: AtomicBool::new(false),
        }
        .with_suspension()
    }

    /// A volume made while its pool is suspended starts suspended.
    fn with_suspension(self) -> VolumeShared {
        self.set_suspended(self.pool.suspends.load(Ordering::Acquire) > 0);
        self
    }

    /// Opens or shuts the gate for suspension (the metadata core calls
    /// this whenever a count changes; the fast path sees it at its next
    /// gate read, and a drain after it waits for those that did not).
    pub(crate) fn set_suspended(&self, on: bool) {
        if on {
            self.gate.fetch_or(SUSPENDED, Ordering::SeqCst);
        } else {
            self.gate.fetch_and(!SUSPENDED, Ordering::SeqCst);
        }
    }

    /// Makes the volume read-only (or writable again): writes, unmaps and
    /// write-zeroes are refused from the next I/O on.
    pub(crate) fn set_read_only(&self, on: bool) {
        if on {
            self.gate.fetch_or(READ_ONLY, Ordering::SeqCst);
        } else {
            self.gate.fetch_and(!READ_ONLY, Ordering::SeqCst);
        }
    }

    pub fn is_read_only(&self) -> bool {
        self.gate.load(Ordering::Acquire) & READ_ONLY != 0
    }

    /// Whether its own or its pool's suspension holds this volume's I/O.
    pub fn is_suspended(&self) -> bool {
        self.gate.load(Ordering::Acquire) & SUSPENDED != 0
    }

    /// Whether the counts say it should be suspended.
    pub(crate) fn should_be_suspended(&self) -> bool {
        self.suspends.load(Ordering::Acquire) > 0 || self.pool.suspends.load(Ordering::Acquire) > 0
    }

    /// Whether an I/O may take the fast path as far as the volume is
    /// concerned: the pool has not failed, and for a write, the volume is
    /// not frozen. Read after the I/O's epoch count.
    #[inline(always)]
    pub fn open_to(&self, write: bool) -> bool {
        let shut = if write {
            FROZEN | FAILED | SUSPENDED | READ_ONLY
        } else {
            FAILED | SUSPENDED
        };
        self.gate.load(Ordering::SeqCst) & shut == 0
    }

    /// Sends writes to the slow path (published before a drain's flip).
    pub fn freeze(&self) {
        self.gate.fetch_or(FROZEN, Ordering::SeqCst);
    }

    pub fn thaw(&self) {
        self.gate.fetch_and(!FROZEN, Ordering::SeqCst);
    }

    pub fn is_frozen(&self) -> bool {
        self.gate.load(Ordering::Acquire) & FROZEN != 0
    }

    /// The pool failed: every I/O goes to the slow path, which fails it.
    /// (The fast path reads this flag, not the pool's mode, so that it
    /// reads nothing outside the volume's first cache line.)
    pub fn fail(&self) {
        self.gate.fetch_or(FAILED, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of};

    #[test]
    fn the_fast_path_reads_one_cache_line_of_the_volume() {
        assert_eq!(align_of::<VolumeShared>(), 64);
        // The epoch and the gate.
        assert_eq!(offset_of!(VolumeShared, epochs), 0);
        assert!(offset_of!(VolumeShared, gate) < 64);
        assert!(offset_of!(VolumeShared, changed) >= 64);
    }

    #[test]
    fn a_deleted_device_hands_its_snapshots_to_its_origin() {
        let p = PoolShared::new("p".into(), PoolOptions::default(), 0, 16, 0);
        // 0 <- 1 <- 2, 1 <- 3; 5 <- 6 with 5's origin unknown.
        for (d, o) in [(1, 0), (2, 1), (3, 1), (6, 5)] {
            p.record_lineage(d, Some(o));
        }
        p.forget_device(1);
        assert_eq!(
            (p.origin_of(1), p.origin_of(2), p.origin_of(3)),
            (None, Some(0), Some(0))
        );
        p.forget_device(5);
        assert_eq!(p.origin_of(6), None);
        // The root going leaves its children without an origin.
        p.forget_device(0);
        assert_eq!((p.origin_of(2), p.origin_of(3)), (None, None));
    }
}
