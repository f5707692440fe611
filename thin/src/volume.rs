//! Thin volume bdevs and their per-core channels: the fast path.
//!
//! A read or write inside one data block looks its block up in the
//! volume's table. Mapped and unshared (or any mapped block, for a read):
//! remap and submit to the data bdev on this core, the same I/O object,
//! no allocation, no message. Unmapped read: zeros. Anything else (a
//! write to an unmapped or shared block, a busy block, a frozen volume, a
//! discard, a flush with uncommitted changes) is parked on this channel
//! and handed to the metadata core, whose reply says retry, write the
//! whole block there first, or done.
//!
//! I/O that crosses a data block boundary is split into one child per
//! block, each with its own buffer (rare: the bdev reports the block as
//! its optimal I/O boundary).

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use super::block_size::BlockSize;
use super::meta;
use super::options::{DiscardMode, PoolMode};
use super::shared::VolumeShared;
use super::slow_path::{Reply, SlowKind, SlowReq};
use super::table::{MapTable, BLOCK_MASK, BUSY, MAPPED, SHARED};
use super::PoolHandle;
use bdev::{
    Bdev, BdevError, BdevFnTable, IoBox, IoBuf, IoChannel, IoDone, IoStatus, IoType, ModuleChannel,
    PassCounts,
};

pub(crate) struct Volume {
    pub vol: Arc<VolumeShared>,
    pub pool: Arc<PoolHandle>,
    /// Registered read-only (an lvol snapshot): the bdev layer refuses
    /// writes before they reach the volume.
    pub read_only: bool,
    /// A layer's own `driver_specific` (`VolumeSpec::driver_specific`).
    pub driver_specific: Option<crate::DriverSpecific>,
}

impl BdevFnTable for Volume {
    fn module_name(&self) -> &'static str {
        "thin"
    }

    fn io_type_supported(&self, io_type: IoType) -> bool {
        match io_type {
            // A read-only volume still takes write types here (channels
            // cache them; it may be made writable again): its gate sends
            // writes to the slow path, which refuses them, and `read_only`
            // tells exports. One registered read-only (an lvol snapshot)
            // takes none.
            IoType::Read | IoType::Flush | IoType::Reset => true,
            IoType::Write | IoType::WriteZeroes => !self.read_only,
            IoType::Unmap => !self.read_only && self.pool.shared.discard() != DiscardMode::Ignore,
        }
    }

    fn read_only(&self, _bdev: &Bdev) -> bool {
        self.vol.is_read_only()
    }

    fn create_channel(&self, _bdev: &Arc<Bdev>) -> Result<Box<dyn ModuleChannel>, BdevError> {
        let data = self.pool.data_channel()?;
        let core = reactor::current_core()
            .ok_or(BdevError::Reactor(reactor::ReactorError::NotOnReactor))?;
        if core == self.pool.shared.meta_core && reactor::cores().len() > 1 {
            tracing::debug!("thin volume I/O on the pool's metadata core");
        }
        let origin = match &self.vol.origin {
            Some(origin) => Some((origin.channel()?, origin.num_blocks)),
            None => None,
        };
        let counts = self.vol.epochs.counts();
        let inner = Rc::new_cyclic(|me| ChanInner {
            vol: self.vol.clone(),
            counts: counts.clone(),
            data,
            origin,
            core,
            data_block_size: BlockSize::new(self.pool.shared.data_block_size),
            data_offset: self.pool.shared.data_offset,
            slots: RefCell::new(Slots::default()),
            me: me.clone(),
        });
        CHANNELS.with(|c| c.borrow_mut().insert(self.vol.uid, Rc::downgrade(&inner)));
        // A block size that is no power of two goes the routed way.
        let (types, shift) = match inner.data_block_size.shift() {
            Some(shift) => (IoType::Read.bit() | IoType::Write.bit(), shift),
            None => (0, 0),
        };
        let fast = Fast {
            vol: inner.vol.clone(),
            counts,
            data: inner.data.clone(),
            types,
            shift,
            within: (1 << shift) - 1,
            data_offset: inner.data_offset,
        };
        Ok(Box::new(VolumeChannel { fast, inner }))
    }

    fn driver_specific(&self, bdev: &Bdev) -> Option<(&'static str, Value)> {
        if let Some(f) = &self.driver_specific {
            return f(bdev);
        }
        Some((
            "thin",
            json!({
                "pool": self.pool.shared.name,
                "dev_id": self.vol.dev_id,
                "block_size": self.pool.shared.opts.block_size,
            }),
        ))
    }

    /// Mapped data blocks are allocated, the rest are holes that read as
    /// zeros, unless an external origin supplies them (then all is data).
    fn block_status(&self, offset_blocks: u64, num_blocks: u64) -> Option<Vec<(u64, bool)>> {
        if self.vol.origin.is_some() {
            return None;
        }
        let data_block_size = self.pool.shared.data_block_size;
        let end = offset_blocks.saturating_add(num_blocks);
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut at = offset_blocks;
        while at < end {
            let vblock = at / data_block_size;
            let next = (vblock + 1).saturating_mul(data_block_size).min(end);
            let mapped = self.vol.table.get(vblock) & MAPPED != 0;
            match runs.last_mut() {
                Some((len, m)) if *m == mapped => *len += next - at,
                _ => runs.push((next - at, mapped)),
            }
            at = next;
        }
        Some(runs)
    }

    fn config_entry(&self, bdev: &Bdev) -> Option<Value> {
        if self.pool.managed_by().is_some() {
            return None;
        }
        let mut params = json!({
            "pool": self.pool.shared.name,
            "name": bdev.name(),
            "dev_id": self.vol.dev_id,
            // Bytes: a size need not be whole MiB.
            "size_bytes": bdev.size_bytes(),
            "external_origin": self.vol.origin.as_ref().map(|origin| origin.name.clone()),
            "origin_dev_id": self.pool.shared.origin_of(self.vol.dev_id),
        });
        if self.vol.is_read_only() {
            params["read_only"] = json!(true);
        }
        Some(json!({"method": "bdev_thin_activate", "params": params}))
    }
}

thread_local! {
    /// This core's volume channels, by volume uid: where replies go.
    static CHANNELS: RefCell<HashMap<u64, Weak<ChanInner>>> = RefCell::new(HashMap::new());
}

/// This core's volume channels, moved out of the thread, for a simulated
/// reactor set whose cores share one thread (`reactor::SimSet::follow`,
/// beside `bdev::sim_take_core_state`).
#[doc(hidden)]
pub fn sim_take_core_state() -> Box<dyn std::any::Any> {
    Box::new(CHANNELS.with(|c| std::mem::take(&mut *c.borrow_mut())))
}

/// Moves channels that `sim_take_core_state` took back into this thread.
#[doc(hidden)]
pub fn sim_put_core_state(m: Box<dyn std::any::Any>) {
    if let Ok(m) = m.downcast::<HashMap<u64, Weak<ChanInner>>>() {
        CHANNELS.with(|c| *c.borrow_mut() = *m);
    }
}

/// A reply from the metadata core, on the I/O's core.
pub(crate) fn deliver(uid: u64, token: u64, reply: Reply) {
    let ch = CHANNELS.with(|c| c.borrow().get(&uid).and_then(Weak::upgrade));
    match ch {
        Some(ch) => ch.on_reply(token, reply),
        None => tracing::error!("thin: reply for a closed channel (volume {uid})"),
    }
}

/// A slot in a state the protocol (`slow_path.rs`) cannot reach: a bug.
/// Tests and debug builds stop at it; a release daemon logs it and the
/// one I/O concerned fails, rather than the whole process.
#[track_caller]
fn impossible(what: std::fmt::Arguments) {
    debug_assert!(false, "thin: {what}");
    tracing::error!("thin: {what}");
}

/// Where a finished piece of I/O returns to.
#[derive(Clone, Copy)]
enum ReturnTo {
    /// The I/O the bdev layer gave us.
    Top,
    /// A child of a split I/O: its parent's slot, and where the child
    /// starts, in blocks from the parent's start (a child's own offset
    /// is remapped on its way down).
    Child(u64, u64),
}

enum Slot {
    Free,
    /// Waiting for the metadata core.
    Parked(IoBox, ReturnTo),
    /// Its whole-block write is at the data bdev.
    Writing(ReturnTo),
    /// The metadata core answered (it gave up, e.g. the pool closed)
    /// before that write came back: finish with this status when it does.
    WritingDone(ReturnTo, IoStatus),
    /// A split I/O waiting for its children.
    Parent {
        io: IoBox,
        left: u32,
        status: IoStatus,
    },
}

#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    free: Vec<u64>,
}

impl Slots {
    fn put(&mut self, slot: Slot) -> u64 {
        match self.free.pop() {
            Some(token) => {
                self.slots[token as usize] = slot;
                token
            }
            None => {
                self.slots.push(slot);
                self.slots.len() as u64 - 1
            }
        }
    }

    fn take(&mut self, token: u64) -> Slot {
        let slot = std::mem::replace(&mut self.slots[token as usize], Slot::Free);
        self.free.push(token);
        slot
    }
}

struct VolumeChannel {
    fast: Fast,
    inner: Rc<ChanInner>,
}

/// What a whole I/O's fast path reads, kept in the bdev channel's module
/// object itself: one hop from the bdev layer, not two.
struct Fast {
    vol: Arc<VolumeShared>,
    /// This channel's epoch counters (shared with `ChanInner`).
    counts: Arc<PassCounts>,
    data: IoChannel,
    /// The I/O types this path takes (none if the block size is no
    /// power of two), as `IoType::bit`s.
    types: u8,
    /// log2 of the data block size in bdev blocks.
    shift: u32,
    /// The mask of an offset's place within its data block.
    within: u64,
    data_offset: u64,
}

/// Whether an I/O may use `entry` as it stands: mapped and not busy,
/// and for a write, not shared. (The volume's gate has its say too.)
#[inline(always)]
fn direct(entry: u64, write: bool) -> bool {
    entry & BUSY == 0 && entry & MAPPED != 0 && (!write || entry & SHARED == 0)
}

/// Where bdev block `offset` of a volume lies on the data bdev, by its `entry`.
#[inline(always)]
fn remap(data_offset: u64, data_block_size: BlockSize, entry: u64, offset: u64) -> u64 {
    data_offset + (entry & BLOCK_MASK) * data_block_size.get() + data_block_size.within(offset)
}

impl Fast {
    /// The common case of a read or write inside one data block: mapped
    /// with nothing to wait for or copy, it is remapped and passed through
    /// to the data bdev, to complete straight to our submitter (the bdev
    /// layer takes back its epoch count). Anything else comes back as it was, uncounted, for
    /// `ChanInner::submit`: also an I/O that met a drain's start, which
    /// the slow path counts again (a retry here would be a loop, whose
    /// state the compiler keeps in saved registers on every I/O). `get`
    /// looks the block up: `MapTable::get_near` where it applies.
    #[inline(always)]
    fn through(&self, io: IoBox, get: impl Fn(&MapTable, u64) -> u64) -> Result<(), IoBox> {
        let vol = &self.vol;
        let io_type = io.io_type();
        let (offset, num_blocks) = (io.offset_blocks(), io.num_blocks());
        let vblock = offset >> self.shift;
        if self.types & io_type.bit() == 0 || (offset + num_blocks - 1) >> self.shift != vblock {
            return Err(io);
        }
        let Some((parity, entry)) = vol
            .epochs
            .try_enter_reading(&self.counts, || get(&vol.table, vblock))
        else {
            return Err(io);
        };
        let write = io_type == IoType::Write;
        if direct(entry, write) && vol.open_to(write) {
            let to =
                self.data_offset + ((entry & BLOCK_MASK) << self.shift) + (offset & self.within);
            match self.data.pass_through(io, layer_fast(parity), to) {
                Ok(()) => return Ok(()),
                Err(io) => {
                    self.counts.exit(parity);
                    return Err(io);
                }
            }
        }
        self.counts.exit(parity);
        Err(io)
    }
}

struct ChanInner {
    vol: Arc<VolumeShared>,
    counts: Arc<PassCounts>,
    data: IoChannel,
    /// The external origin's channel and size in blocks.
    origin: Option<(IoChannel, u64)>,
    core: u32,
    /// Data block size in bdev blocks.
    data_block_size: BlockSize,
    data_offset: u64,
    slots: RefCell<Slots>,
    me: Weak<ChanInner>,
}

impl Drop for ChanInner {
    fn drop(&mut self) {
        let _ = CHANNELS.try_with(|c| c.borrow_mut().remove(&self.vol.uid));
    }
}

// ctx of a submit to the data bdev: kind in bits 0-1, epoch parity in bit
// 2; a whole-block write's slot in bits 8 and up; a child's start within
// its parent in bits 3-23 and the parent's slot in bits 24 and up.
const CTX_FAST: u64 = 0;
const CTX_CHILD: u64 = 1;
const CTX_FLUSH: u64 = 2;
const CTX_WHOLE: u64 = 3;

/// The layer context of an I/O passed through to the data bdev: bit 0
/// set, the epoch parity in bit 1, where `PassCounts::parity_of` finds it.
#[inline(always)]
fn layer_fast(parity: u64) -> NonZeroU64 {
    NonZeroU64::MIN | parity << 1
}

impl ModuleChannel for VolumeChannel {
    fn submit(&self, io: IoBox) {
        if !MapTable::is_near(io.offset_blocks() >> self.fast.shift) {
            return self.submit_far(io);
        }
        if let Err(io) = self.fast.through(io, MapTable::get_near) {
            self.inner.submit(io);
        }
    }

    fn passes_through(&self) -> Option<&IoChannel> {
        Some(&self.fast.data)
    }

    /// A fast-path I/O's part in its completion is its epoch count, which
    /// the bdev layer takes back by its layer context (`layer_fast`).
    fn pass_counts(&self) -> Option<Arc<PassCounts>> {
        Some(self.fast.counts.clone())
    }
}

impl VolumeChannel {
    /// `submit` of an I/O past the table's first middle: out of line, so
    /// that the common case holds nothing across a call.
    #[inline(never)]
    fn submit_far(&self, io: IoBox) {
        if let Err(io) = self.fast.through(io, MapTable::get) {
            self.inner.submit(io);
        }
    }
}

impl ChanInner {
    /// Everything `Fast::through` leaves: kept out of line, so that the
    /// fast path's function holds only what it needs.
    #[inline(never)]
    fn submit(&self, io: IoBox) {
        match io.io_type() {
            IoType::Read | IoType::Write => {
                let (offset, num_blocks) = (io.offset_blocks(), io.num_blocks());
                if self.data_block_size.index(offset)
                    == self.data_block_size.index(offset + num_blocks - 1)
                    && !self.crosses_origin_end(offset, num_blocks)
                {
                    self.route(io, ReturnTo::Top);
                } else {
                    self.split(io);
                }
            }
            IoType::Flush => self.flush(io),
            IoType::Unmap => {
                let (offset, num_blocks) = (io.offset_blocks(), io.num_blocks());
                self.slow(io, ReturnTo::Top, SlowKind::Discard { offset, num_blocks });
            }
            IoType::WriteZeroes => {
                let (offset, num_blocks) = (io.offset_blocks(), io.num_blocks());
                self.slow(
                    io,
                    ReturnTo::Top,
                    SlowKind::WriteZeroes { offset, num_blocks },
                );
            }
            IoType::Reset => io.complete(IoStatus::Success),
        }
    }

    /// Submits `io` to `ch` (the data bdev or the origin) with this channel
    /// as its completion. `self` is only reached through an `Rc` that owns
    /// it (the bdev channel's, or one held by an I/O in flight), so the
    /// upgrade succeeds; were it ever to fail, the I/O fails instead of the
    /// process.
    fn down(&self, ch: &IoChannel, io: IoBox, ctx: u64) {
        match self.me.upgrade() {
            Some(me) => ch.submit(io, me, ctx),
            None => io.complete(IoStatus::IoError(libc::ENODEV)),
        }
    }

    /// Any read or write inside one data block: the fast path's every
    /// case (`Fast::through` takes the common one first for a whole I/O),
    /// or the metadata core.
    fn route(&self, mut io: IoBox, return_to: ReturnTo) {
        let vol = &self.vol;
        let offset = io.offset_blocks();
        let vblock = self.data_block_size.index(offset);
        let (parity, entry) = vol
            .epochs
            .enter_reading(&self.counts, || vol.table.get(vblock));
        // A suspended volume holds even what a failed pool would fail at
        // once: resume answers it, in order.
        if vol.pool.mode() == PoolMode::Fail && !vol.is_suspended() {
            self.counts.exit(parity);
            return self.finish(io, IoStatus::IoError(libc::EIO), return_to);
        }
        let write = io.io_type() == IoType::Write;
        if entry & BUSY == 0 {
            if direct(entry, write) && vol.open_to(write) {
                io.set_offset_blocks(remap(self.data_offset, self.data_block_size, entry, offset));
                // A whole I/O goes through to the data bdev and completes
                // straight to our submitter; the bdev layer uncounts it
                // from our `PassCounts` as it does.
                let io = match return_to {
                    ReturnTo::Top => match self.data.submit_through(io, layer_fast(parity)) {
                        Ok(()) => return,
                        Err(io) => io,
                    },
                    ReturnTo::Child(..) => io,
                };
                let ctx = match return_to {
                    ReturnTo::Top => CTX_FAST,
                    ReturnTo::Child(parent, start) => CTX_CHILD | start << 3 | parent << 24,
                } | parity << 2;
                self.down(&self.data, io, ctx);
                return;
            }
            // (Reads of unmapped blocks answer here unless the volume is
            // suspended: then they are held like the rest.)
            if entry == 0 && !write && vol.open_to(false) {
                if let Some((origin_ch, origin_blocks)) = &self.origin {
                    // Inside the origin (a whole data block always is or
                    // is not): the origin has the data, at the same place.
                    if offset < *origin_blocks {
                        let ctx = match return_to {
                            ReturnTo::Top => CTX_FAST,
                            ReturnTo::Child(parent, start) => CTX_CHILD | start << 3 | parent << 24,
                        } | parity << 2;
                        self.down(origin_ch, io, ctx);
                        return;
                    }
                }
                self.counts.exit(parity);
                for buf in io.bufs.iter_mut() {
                    buf.as_mut_slice().fill(0);
                }
                return self.finish(io, IoStatus::Success, return_to);
            }
        }
        self.counts.exit(parity);
        let kind = if write {
            let whole = self.data_block_size.within(offset) == 0
                && io.num_blocks() == self.data_block_size.get();
            SlowKind::Write { vblock, whole }
        } else {
            SlowKind::Read { vblock }
        };
        self.slow(io, return_to, kind);
    }

    /// Parks `io` and asks the metadata core.
    fn slow(&self, io: IoBox, return_to: ReturnTo, kind: SlowKind) {
        let token = self.slots.borrow_mut().put(Slot::Parked(io, return_to));
        let req = SlowReq {
            vol: self.vol.clone(),
            kind,
            reply_core: self.core,
            token,
        };
        let pool = self.vol.pool.clone();
        if reactor::send(pool.meta_core, move || meta::dispatch(pool, req)).is_err() {
            self.on_reply(token, Reply::Done(IoStatus::IoError(libc::ENODEV)));
        }
    }

    fn flush(&self, io: IoBox) {
        let vol = &self.vol;
        if vol.pool.mode() == PoolMode::Fail && !vol.is_suspended() {
            return io.complete(IoStatus::IoError(libc::EIO));
        }
        if vol.changed.load(Ordering::Acquire)
            || vol.aborted.load(Ordering::Acquire)
            || vol.is_suspended()
        {
            return self.slow(io, ReturnTo::Top, SlowKind::Flush);
        }
        // Nothing of this volume awaits a commit: the data bdev's flush is
        // all it needs (none, if it has no volatile cache).
        if !self.data.has_flush() {
            return io.complete(IoStatus::Success);
        }
        self.down(&self.data, io, CTX_FLUSH);
    }

    fn on_reply(&self, token: u64, reply: Reply) {
        match reply {
            Reply::Retry => {
                // Bind first: the slots must not stay borrowed while the
                // I/O runs on (it may complete and come back here).
                let slot = self.slots.borrow_mut().take(token);
                if let Slot::Parked(io, return_to) = slot {
                    self.route(io, return_to);
                }
            }
            Reply::WriteTo(data_block) => {
                let slot = {
                    let mut slots = self.slots.borrow_mut();
                    let old = std::mem::replace(&mut slots.slots[token as usize], Slot::Free);
                    match old {
                        Slot::Parked(io, return_to) => {
                            slots.slots[token as usize] = Slot::Writing(return_to);
                            Some(io)
                        }
                        other => {
                            slots.slots[token as usize] = other;
                            None
                        }
                    }
                };
                if let Some(mut io) = slot {
                    io.set_offset_blocks(
                        self.data_offset + data_block * self.data_block_size.get(),
                    );
                    self.down(&self.data, io, CTX_WHOLE | token << 8);
                }
            }
            Reply::Done(status) => {
                let slot = {
                    let mut slots = self.slots.borrow_mut();
                    match &slots.slots[token as usize] {
                        Slot::Writing(return_to) => {
                            let return_to = *return_to;
                            slots.slots[token as usize] = Slot::WritingDone(return_to, status);
                            return;
                        }
                        _ => slots.take(token),
                    }
                };
                match slot {
                    Slot::Parked(io, return_to) => self.finish(io, status, return_to),
                    _ => impossible(format_args!("Done for slot {token}, which is not parked")),
                }
            }
        }
    }

    fn finish(&self, io: IoBox, status: IoStatus, return_to: ReturnTo) {
        match return_to {
            ReturnTo::Top => io.complete(status),
            ReturnTo::Child(parent, start) => self.child_done(io, status, parent, start),
        }
    }

    /// One block's piece of a split I/O finished.
    fn child_done(&self, child: IoBox, status: IoStatus, parent: u64, start: u64) {
        let done = {
            let mut slots = self.slots.borrow_mut();
            let Slot::Parent {
                io,
                left,
                status: parent_status,
            } = &mut slots.slots[parent as usize]
            else {
                impossible(format_args!("a child of slot {parent}, which is no parent"));
                return;
            };
            if child.io_type() == IoType::Read && status.is_success() {
                let block_size = self.vol_block_size(io);
                let at = (start * block_size) as usize;
                io.copy_into_bufs(at, child.bufs[0].as_slice());
            }
            if !status.is_success() && parent_status.is_success() {
                *parent_status = status;
            }
            *left -= 1;
            *left == 0
        };
        if done {
            let slot = self.slots.borrow_mut().take(parent);
            if let Slot::Parent { io, status, .. } = slot {
                io.complete(status);
            }
        }
    }

    /// Whether `[offset, offset + num_blocks)` starts inside an external
    /// origin that ends inside it (only where the origin's size is not a
    /// multiple of the data block size).
    fn crosses_origin_end(&self, offset: u64, num_blocks: u64) -> bool {
        self.origin
            .as_ref()
            .is_some_and(|(_, end)| offset < *end && *end < offset + num_blocks)
    }

    fn vol_block_size(&self, io: &IoBox) -> u64 {
        (io.buf_len() as u64) / io.num_blocks().max(1)
    }

    /// Splits an I/O that crosses data blocks into one child per block.
    fn split(&self, io: IoBox) {
        let (offset, num_blocks, io_type) = (io.offset_blocks(), io.num_blocks(), io.io_type());
        let block_size = self.vol_block_size(&io);
        let data = (io_type == IoType::Write).then(|| io.gather());
        let mut pieces = Vec::new();
        let mut at = offset;
        let origin_end = self.origin.as_ref().map(|(_, n)| *n);
        while at < offset + num_blocks {
            let mut end = ((self.data_block_size.index(at) + 1) * self.data_block_size.get())
                .min(offset + num_blocks);
            // A piece is wholly inside the origin or wholly past its end.
            if let Some(oe) = origin_end.filter(|&oe| at < oe && oe < end) {
                end = oe;
            }
            pieces.push((at, end - at));
            at = end;
        }
        let parent = self.slots.borrow_mut().put(Slot::Parent {
            io,
            left: pieces.len() as u32,
            status: IoStatus::Success,
        });
        for (start, len) in pieces {
            let mut child = IoBox::new();
            child.prep(io_type, start, len);
            let mut buf = IoBuf::new((len * block_size) as usize);
            if let Some(gathered) = &data {
                let from = ((start - offset) * block_size) as usize;
                buf.as_mut_slice()
                    .copy_from_slice(&gathered[from..from + (len * block_size) as usize]);
            }
            child.set_buf(buf);
            self.route(child, ReturnTo::Child(parent, start - offset));
        }
    }
}

impl IoDone for ChanInner {
    fn io_done(&self, io: IoBox, ctx: u64) {
        let status = io.status();
        match ctx & 3 {
            CTX_FAST => {
                self.counts.exit((ctx >> 2) & 1);
                io.complete(status);
            }
            CTX_CHILD => {
                self.counts.exit((ctx >> 2) & 1);
                self.child_done(io, status, ctx >> 24, (ctx >> 3) & ((1 << 21) - 1));
            }
            CTX_FLUSH => io.complete(status),
            _ => {
                // A whole-block write landed: park the I/O again until the
                // metadata core has inserted the mapping.
                let token = ctx >> 8;
                let state = match self.slots.borrow().slots.get(token as usize) {
                    Some(Slot::Writing(return_to)) => (*return_to, None),
                    Some(Slot::WritingDone(return_to, done)) => (*return_to, Some(*done)),
                    _ => {
                        impossible(format_args!(
                            "a whole-block write landed for slot {token}, which is not writing"
                        ));
                        (ReturnTo::Top, Some(IoStatus::IoError(libc::EIO)))
                    }
                };
                let return_to = match state {
                    (return_to, Some(done)) => {
                        self.slots.borrow_mut().take(token);
                        return self.finish(io, done, return_to);
                    }
                    (return_to, None) => return_to,
                };
                self.slots.borrow_mut().slots[token as usize] = Slot::Parked(io, return_to);
                let (pool, uid, core) = (self.vol.pool.clone(), self.vol.uid, self.core);
                let meta_core = pool.meta_core;
                if reactor::send(meta_core, move || {
                    meta::confirm(pool, uid, core, token, status)
                })
                .is_err()
                {
                    self.on_reply(token, Reply::Done(IoStatus::IoError(libc::ENODEV)));
                }
            }
        }
    }
}
