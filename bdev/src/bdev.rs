//! The `Bdev`: a block device's identity, geometry and function table.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use reactor::IoDevice;
use serde_json::Value;

use crate::channel::{BdevChannel, IoChannel, ModuleChannel};
use crate::desc::{BdevEvent, DescState};
use crate::io_type::IoType;
use crate::stats::{BdevStats, IoStatSnapshot};
use crate::uuid::Uuid;
use crate::BdevError;

/// A bdev module's function table: what the bdev layer asks of the module
/// behind one bdev. Shared by every core; per-core work goes through the
/// channel it creates.
pub trait BdevFnTable: std::any::Any + Send + Sync {
    /// The module's name (`malloc`, `null`, `uring`, ...).
    fn module_name(&self) -> &'static str;

    fn io_type_supported(&self, t: IoType) -> bool;

    /// Creates this bdev's channel for the calling core.
    fn create_channel(&self, bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError>;

    /// `driver_specific` for `bdev_get_bdevs`: a key and its object.
    fn driver_specific(&self, _bdev: &Bdev) -> Option<(&'static str, Value)> {
        None
    }

    /// Where the bdev keeps its data, for messages that should name it
    /// (a file's path): an operator fixes a full disk, not a bdev name.
    fn backing(&self, _bdev: &Bdev) -> Option<String> {
        None
    }

    /// The bdev takes no writes just now though its channels carry them
    /// (a thin volume made read-only while running, which may be made
    /// writable again): exports present it read-only.
    fn read_only(&self, _bdev: &Bdev) -> bool {
        false
    }

    /// Grows the bdev to `num_blocks` by growing what backs it (a file),
    /// then announces the new size; `None` when the module cannot (a
    /// block device, memory): the caller asks a person or a script.
    fn grow(&self, _bdev: &Bdev, _num_blocks: u64) -> Option<Result<(), BdevError>> {
        None
    }

    /// The `{"method", "params"}` that recreates this bdev (save_config).
    fn config_entry(&self, _bdev: &Bdev) -> Option<Value> {
        None
    }

    /// Called once when the bdev is unregistered: release what it holds.
    fn unregistered(&self, _bdev: &Bdev) {}

    /// Which of `num_blocks` blocks from `offset_blocks` are allocated, as
    /// runs `(blocks, allocated)` covering the range in order; `None` when
    /// the module does not know (everything counts as allocated). Thin
    /// volumes answer from their mapping table (NBD's base:allocation).
    fn block_status(&self, _offset_blocks: u64, _num_blocks: u64) -> Option<Vec<(u64, bool)>> {
        None
    }
}

/// What a module says about a new bdev.
#[derive(Clone, Debug)]
pub struct BdevProps {
    pub name: String,
    pub aliases: Vec<String>,
    pub product_name: &'static str,
    pub uuid: Option<Uuid>,
    pub block_size: u32,
    pub num_blocks: u64,
    /// Writes must be whole multiples of this many blocks.
    pub write_unit_size: u32,
    /// A hint: I/O that does not cross a multiple of this many blocks is
    /// cheapest (0 = none).
    pub optimal_io_boundary: u32,
    /// A hint: unmaps of whole, aligned multiples of this many blocks free
    /// space (a thin volume's data block); smaller ones may do nothing.
    /// 0 = no preference.
    pub unmap_granularity: u32,
}

impl BdevProps {
    pub fn new(
        name: impl Into<String>,
        product_name: &'static str,
        block_size: u32,
        num_blocks: u64,
    ) -> Self {
        BdevProps {
            name: name.into(),
            aliases: Vec::new(),
            product_name,
            uuid: None,
            block_size,
            num_blocks,
            write_unit_size: 1,
            optimal_io_boundary: 0,
            unmap_granularity: 0,
        }
    }
}

pub(crate) struct Claim {
    pub module: String,
    /// The descriptors holding the claim: one for an exclusive-write
    /// claim, any number for a shared read-only one.
    pub desc_ids: Vec<u64>,
    /// SPDK's read_many_write_none: the holders read, no one writes.
    pub read_only: bool,
}

pub(crate) struct BdevState {
    pub claim: Option<Claim>,
    pub descs: Vec<Arc<DescState>>,
}

/// A block device. Shared (`Arc`) by every core and every user.
///
/// What the check of every I/O reads comes first, in one cache line.
#[repr(C, align(64))]
pub struct Bdev {
    /// The end of the blocks an I/O may reach: `num_blocks` while the bdev
    /// is registered, 0 once it is removed. The range check of every I/O
    /// reads it, so one compare also turns I/O away from a removed bdev.
    /// Changed under the state lock, so a resize cannot undo a removal.
    pub(crate) reach: AtomicU64,
    num_blocks: AtomicU64,
    block_size: u32,
    write_unit_size: u32,
    pub(crate) removed: AtomicBool,
    name: String,
    /// Changed only through the registry (`registry::set_aliases`), which
    /// keeps every name, alias and UUID unique.
    aliases: Mutex<Vec<String>>,
    product_name: &'static str,
    uuid: Uuid,
    optimal_io_boundary: u32,
    unmap_granularity: u32,
    module: Box<dyn BdevFnTable>,
    device: IoDevice<BdevChannel>,
    pub(crate) stats: BdevStats,
    state: Mutex<BdevState>,
}

impl Bdev {
    /// Builds a bdev (not registered yet: see [`crate::register`]).
    pub fn new(props: BdevProps, module: impl BdevFnTable) -> Result<Arc<Bdev>, BdevError> {
        validate_name(&props.name)?;
        if props.block_size < 512 || !props.block_size.is_multiple_of(512) {
            return Err(BdevError::Invalid(format!(
                "block size {} is not a multiple of 512",
                props.block_size
            )));
        }
        if props.num_blocks == 0 {
            return Err(BdevError::Invalid("a bdev needs at least one block".into()));
        }
        if props
            .num_blocks
            .checked_mul(props.block_size as u64)
            .is_none()
        {
            return Err(BdevError::Invalid("bdev size overflows".into()));
        }
        if props.write_unit_size == 0 {
            return Err(BdevError::Invalid(
                "write unit size must be at least 1".into(),
            ));
        }
        Ok(Arc::new(Bdev {
            name: props.name,
            aliases: Mutex::new(props.aliases),
            product_name: props.product_name,
            uuid: props.uuid.unwrap_or_else(Uuid::new_v4),
            block_size: props.block_size,
            reach: AtomicU64::new(props.num_blocks),
            num_blocks: AtomicU64::new(props.num_blocks),
            write_unit_size: props.write_unit_size,
            optimal_io_boundary: props.optimal_io_boundary,
            unmap_granularity: props.unmap_granularity,
            module: Box::new(module),
            device: IoDevice::new(),
            removed: AtomicBool::new(false),
            stats: BdevStats::default(),
            state: Mutex::new(BdevState {
                claim: None,
                descs: Vec::new(),
            }),
        }))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    /// A copy: aliases may change (an lvol renamed).
    pub fn aliases(&self) -> Vec<String> {
        self.aliases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    pub(crate) fn replace_aliases(&self, aliases: Vec<String>) {
        *self.aliases.lock().unwrap_or_else(|e| e.into_inner()) = aliases;
    }
    pub fn product_name(&self) -> &'static str {
        self.product_name
    }
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }
    pub fn block_size(&self) -> u32 {
        self.block_size
    }
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks.load(Ordering::Acquire)
    }
    pub fn size_bytes(&self) -> u64 {
        self.num_blocks() * self.block_size as u64
    }
    pub fn write_unit_size(&self) -> u32 {
        self.write_unit_size
    }
    pub fn optimal_io_boundary(&self) -> u32 {
        self.optimal_io_boundary
    }
    pub fn unmap_granularity(&self) -> u32 {
        self.unmap_granularity
    }
    pub fn module_name(&self) -> &'static str {
        self.module.module_name()
    }
    /// The module behind this bdev, for module-specific control calls.
    pub fn module(&self) -> &dyn BdevFnTable {
        &*self.module
    }
    pub fn io_type_supported(&self, t: IoType) -> bool {
        self.module.io_type_supported(t)
    }
    pub fn iostat(&self) -> IoStatSnapshot {
        self.stats.snapshot()
    }
    pub fn driver_specific(&self) -> Option<(&'static str, Value)> {
        self.module.driver_specific(self)
    }
    pub fn config_entry(&self) -> Option<Value> {
        self.module.config_entry(self)
    }
    /// "bdev NAME", with what backs it when the module knows ("bdev Disk0
    /// (file /var/lib/pool.img)"): the subject of an error message.
    pub fn describe(&self) -> String {
        match self.module.backing(self) {
            Some(b) => format!("bdev {} ({b})", self.name()),
            None => format!("bdev {}", self.name()),
        }
    }
    /// Allocation runs over a range (see [`BdevFnTable::block_status`]).
    pub fn block_status(&self, offset_blocks: u64, num_blocks: u64) -> Vec<(u64, bool)> {
        self.module
            .block_status(offset_blocks, num_blocks)
            .unwrap_or_else(|| vec![(num_blocks, true)])
    }
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// See `reach`: an I/O ending past it is out of range or the bdev is
    /// gone.
    #[inline(always)]
    pub(crate) fn reach(&self) -> u64 {
        self.reach.load(Ordering::Relaxed)
    }

    /// The module that claimed this bdev, if any.
    pub fn claimed_by(&self) -> Option<String> {
        self.lock_state().claim.as_ref().map(|c| c.module.clone())
    }

    pub(crate) fn lock_state(&self) -> MutexGuard<'_, BdevState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This core's channel to the bdev, created on first use.
    pub(crate) fn channel(self: &Arc<Self>, writable: bool) -> Result<IoChannel, BdevError> {
        let ch = self.device.get_or_create_rc(|| {
            let module_ch = self.module.create_channel(self)?;
            Ok::<_, BdevError>(BdevChannel::new(self.clone(), module_ch))
        })?;
        Ok(IoChannel::new(ch, writable))
    }

    /// Changes the block count and tells every open descriptor (the claimer
    /// included). Shrinking is refused while anyone has the bdev open.
    pub fn notify_resize(&self, num_blocks: u64) -> Result<(), BdevError> {
        if num_blocks == 0 || num_blocks.checked_mul(self.block_size as u64).is_none() {
            return Err(BdevError::Invalid(format!(
                "cannot resize {} to {num_blocks} blocks",
                self.name
            )));
        }
        let descs = {
            let st = self.lock_state();
            if num_blocks < self.num_blocks() && !st.descs.is_empty() {
                return Err(BdevError::Busy(
                    self.name.clone(),
                    "cannot shrink while open".into(),
                ));
            }
            self.num_blocks.store(num_blocks, Ordering::Release);
            if !self.is_removed() {
                self.reach.store(num_blocks, Ordering::Relaxed);
            }
            st.descs.clone()
        };
        crate::notify::post("bdev_resize", &self.name);
        for d in descs {
            d.notify(BdevEvent::Resize(num_blocks));
        }
        Ok(())
    }

    /// Whether writes are refused: the module does not support them, or
    /// says the bdev is read-only for now.
    pub fn is_read_only(&self) -> bool {
        !self.io_type_supported(IoType::Write) || self.module.read_only(self)
    }

    /// Grows the bdev to `num_blocks` through its module (autoextend);
    /// `Ok(false)` when the module cannot grow what backs it.
    pub fn grow(&self, num_blocks: u64) -> Result<bool, BdevError> {
        if num_blocks <= self.num_blocks() {
            return Ok(true);
        }
        match self.module.grow(self, num_blocks) {
            None => Ok(false),
            Some(r) => r.map(|()| true),
        }
    }

    /// Shrinks the bdev for its module (a thin volume's resize): I/O past
    /// the new end fails from now on and every descriptor hears of it.
    /// Refused while anyone has it open for writing unless `force` (their
    /// data past the end is cut off), as SPDK's lvol resize refuses.
    pub fn shrink(&self, num_blocks: u64, force: bool) -> Result<(), BdevError> {
        if num_blocks == 0 || num_blocks >= self.num_blocks() {
            return Err(BdevError::Invalid(format!(
                "cannot shrink {} from {} to {num_blocks} blocks",
                self.name,
                self.num_blocks()
            )));
        }
        let descs = {
            let st = self.lock_state();
            let writers = st.descs.iter().filter(|d| d.is_writable()).count();
            if writers > 0 && !force {
                return Err(BdevError::Busy(
                    self.name.clone(),
                    format!(
                        "open for writing ({writers} user(s): an export, a pool, a module); \
                         stop them first, or force the shrink"
                    ),
                ));
            }
            self.num_blocks.store(num_blocks, Ordering::Release);
            if !self.is_removed() {
                self.reach.store(num_blocks, Ordering::Relaxed);
            }
            st.descs.clone()
        };
        crate::notify::post("bdev_resize", &self.name);
        for d in descs {
            d.notify(BdevEvent::Resize(num_blocks));
        }
        Ok(())
    }

    pub(crate) fn mark_removed(&self) -> Vec<Arc<DescState>> {
        {
            let _st = self.lock_state();
            self.removed.store(true, Ordering::Relaxed);
            self.reach.store(0, Ordering::Relaxed);
        }
        self.module.unregistered(self);
        self.lock_state().descs.clone()
    }
}

fn validate_name(name: &str) -> Result<(), BdevError> {
    if name.is_empty() || name.len() > 255 || name.chars().any(|c| c.is_control() || c == '/') {
        return Err(BdevError::Invalid(format!("invalid bdev name {name:?}")));
    }
    Ok(())
}

impl std::fmt::Debug for Bdev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bdev")
            .field("name", &self.name)
            .field("module", &self.module_name())
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.num_blocks())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of};

    #[test]
    fn the_io_check_reads_one_cache_line_of_the_bdev() {
        assert_eq!(align_of::<Bdev>(), 64);
        assert_eq!(offset_of!(Bdev, reach), 0);
        assert!(offset_of!(Bdev, num_blocks) + 8 <= 64);
        assert!(offset_of!(Bdev, write_unit_size) + 4 <= 64);
        assert!(offset_of!(Bdev, block_size) + 4 <= 64);
        assert!(offset_of!(Bdev, removed) < 64);
    }
}
