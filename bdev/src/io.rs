//! `BdevIo`: one I/O request, pooled per core, carrying its own completion
//! stack.
//!
//! An I/O is an owned object that moves: the submitter fills it and hands it
//! to a channel, the module owns it while it runs, and completion hands it
//! back to whoever submitted it. A stacking module (error, delay, thin)
//! forwards the same object to the bdev below instead of allocating a child,
//! so every layer's submit pushes a frame (who to call back, that layer's
//! channel, its start tick, the offset to restore) and completion pops one;
//! a module whose fast path only remaps lends the I/O with no frame of its
//! own (`IoChannel::pass_through`, `submit_through`).
//!
//! Completion callbacks never run inside a submit call: a completion that
//! happens during one (a null bdev, an invalid I/O) is deferred to a per-core
//! queue that a poller drains, so a submitter that resubmits from its
//! callback cannot recurse without bound.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};

use reactor::{PollStatus, Poller};

use crate::buf::IoBuf;
use crate::frames::{Frame, Frames};
use crate::io_type::{IoStatus, IoType};
use crate::stream;

/// Called when an I/O completes. `ctx` is the value given at submit.
pub trait IoDone {
    fn io_done(&self, io: IoBox, ctx: u64);
}

impl<F: Fn(IoBox, u64)> IoDone for F {
    fn io_done(&self, io: IoBox, ctx: u64) {
        self(io, ctx)
    }
}

/// An I/O request. Obtained from [`IoBox::new`] (or a channel's `alloc_io`),
/// reused freely after completion.
pub struct BdevIo {
    io_type: IoType,
    offset_blocks: u64,
    num_blocks: u64,
    /// Scatter-gather data buffers, owned by the I/O while it runs.
    pub bufs: Vec<IoBuf>,
    status: IoStatus,
    pub(crate) frames: Frames,
    start_tick: u64,
    end_tick: u64,
    /// Free for the module that currently holds the I/O (a slot index, a
    /// deadline); meaningless to anyone else.
    pub scratch: [u64; 2],
}

impl BdevIo {
    fn fresh() -> Box<BdevIo> {
        Box::new(BdevIo {
            io_type: IoType::Read,
            offset_blocks: 0,
            num_blocks: 0,
            bufs: Vec::with_capacity(4),
            status: IoStatus::Pending,
            frames: Frames::new(),
            start_tick: 0,
            end_tick: 0,
            scratch: [0; 2],
        })
    }

    /// Sets what to do; keeps the buffers.
    pub fn prep(&mut self, io_type: IoType, offset_blocks: u64, num_blocks: u64) -> &mut Self {
        self.io_type = io_type;
        self.offset_blocks = offset_blocks;
        self.num_blocks = num_blocks;
        self.status = IoStatus::Pending;
        self
    }

    /// Replaces the buffers with one buffer.
    pub fn set_buf(&mut self, buf: IoBuf) -> &mut Self {
        self.bufs.clear();
        self.bufs.push(buf);
        self
    }

    pub fn io_type(&self) -> IoType {
        self.io_type
    }
    pub fn offset_blocks(&self) -> u64 {
        self.offset_blocks
    }
    /// Remaps the I/O (a stacking module on its way down). The submitter's
    /// offset is restored when the I/O completes back through its layer.
    pub fn set_offset_blocks(&mut self, offset: u64) {
        self.offset_blocks = offset;
    }
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }
    pub fn status(&self) -> IoStatus {
        self.status
    }
    /// Total bytes in the buffers.
    pub fn buf_len(&self) -> usize {
        self.bufs.iter().map(IoBuf::len).sum()
    }
    /// Ticks from this layer's submit to its completion (valid in `io_done`).
    pub fn latency_ticks(&self) -> u64 {
        self.end_tick.wrapping_sub(self.start_tick)
    }
    /// The tick at which this layer completed the I/O (valid in `io_done`).
    pub fn end_tick(&self) -> u64 {
        self.end_tick
    }

    /// Copies `data` into the buffers starting at byte `at` (a module's read).
    pub fn copy_into_bufs(&mut self, mut at: usize, mut data: &[u8]) {
        for b in self.bufs.iter_mut() {
            if data.is_empty() {
                break;
            }
            if at >= b.len() {
                at -= b.len();
                continue;
            }
            let n = (b.len() - at).min(data.len());
            b.as_mut_slice()[at..at + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            at = 0;
        }
    }

    /// Gathers the buffers into one contiguous vector (slow paths only).
    pub fn gather(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.buf_len());
        for b in &self.bufs {
            v.extend_from_slice(b.as_slice());
        }
        v
    }
}

/// An owned, pooled `BdevIo`. Dropping it returns it to this core's pool.
pub struct IoBox(ManuallyDrop<Box<BdevIo>>);

/// I/Os a core keeps for reuse; past this they go back to the allocator.
const IO_POOL_KEEP: usize = 8192;

struct CoreCtx {
    // The boxes are the pooled objects: an IoBox is one of them, moved out.
    #[allow(clippy::vec_box)]
    pool: RefCell<Vec<Box<BdevIo>>>,
    deferred: RefCell<VecDeque<IoBox>>,
    poller: RefCell<Option<Poller>>,
}

/// What every submit and completion reads and writes, apart from
/// `CoreCtx`: plain cells need no destructor, so reaching them is one
/// thread-relative access, without the liveness check a thread-local with
/// a destructor costs on each use (several per I/O per layer).
struct Hot {
    in_submit: Cell<u32>,
    /// The tick of the completion whose callback is running (0: none). A
    /// submit made from that callback starts then: one clock read serves
    /// both ends, and the TSC read is a large share of a null I/O's cost.
    completing_at: Cell<u64>,
    /// The start tick of the outermost submit running (0: none): a layer
    /// that submits to the bdev below (thin to its data bdev) starts
    /// there too, so a stacked I/O reads the clock once.
    submitting_at: Cell<u64>,
    /// This core's deferred completions have their poller (`CoreCtx`
    /// holds it): the per-completion test reads a plain cell.
    polled: Cell<bool>,
}

thread_local! {
    static CORE: CoreCtx = const {
        CoreCtx {
            pool: RefCell::new(Vec::new()),
            deferred: RefCell::new(VecDeque::new()),
            poller: RefCell::new(None),
        }
    };
    static HOT: Hot = const {
        Hot {
            in_submit: Cell::new(0),
            completing_at: Cell::new(0),
            submitting_at: Cell::new(0),
            polled: Cell::new(false),
        }
    };
}

/// This core's deferred completions and their poller, moved out of the
/// thread (which is left as a new core's would be). See `sim_core_state`.
pub(crate) fn take_core_queue() -> (VecDeque<IoBox>, Option<reactor::Poller>, bool) {
    let (d, p) = CORE.with(|c| {
        (
            std::mem::take(&mut *c.deferred.borrow_mut()),
            c.poller.borrow_mut().take(),
        )
    });
    (d, p, HOT.with(|h| h.polled.replace(false)))
}

/// Puts back what `take_core_queue` took.
pub(crate) fn put_core_queue(q: (VecDeque<IoBox>, Option<reactor::Poller>, bool)) {
    CORE.with(|c| {
        *c.deferred.borrow_mut() = q.0;
        *c.poller.borrow_mut() = q.1;
    });
    HOT.with(|h| h.polled.set(q.2));
}

impl IoBox {
    /// An I/O from this core's pool.
    pub fn new() -> IoBox {
        let b = CORE.try_with(|c| c.pool.borrow_mut().pop()).ok().flatten();
        IoBox(ManuallyDrop::new(b.unwrap_or_else(BdevIo::fresh)))
    }

    /// Ends the I/O at the current layer with `status` and hands it to that
    /// layer's submitter. Consumes the I/O: it completes exactly once.
    pub fn complete(mut self, status: IoStatus) {
        self.status = status;
        if HOT.with(|h| h.in_submit.get()) == 0 {
            stream::fence();
            return finish(self);
        }
        CORE.with(|c| c.deferred.borrow_mut().push_back(self));
        if !HOT.with(|h| h.polled.get()) {
            start_poller();
        }
    }
}

impl Default for IoBox {
    fn default() -> Self {
        IoBox::new()
    }
}

impl Deref for IoBox {
    type Target = BdevIo;
    fn deref(&self) -> &BdevIo {
        &self.0
    }
}

impl DerefMut for IoBox {
    fn deref_mut(&mut self) -> &mut BdevIo {
        &mut self.0
    }
}

impl Drop for IoBox {
    fn drop(&mut self) {
        // SAFETY: taken exactly once, here, and self.0 is never used again.
        let mut io = unsafe { ManuallyDrop::take(&mut self.0) };
        io.bufs.clear();
        io.frames.clear();
        let _ = CORE.try_with(|c| {
            let mut pool = c.pool.borrow_mut();
            if pool.len() < IO_POOL_KEEP {
                pool.push(io);
            }
        });
    }
}

impl std::fmt::Debug for IoBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BdevIo")
            .field("type", &self.io_type)
            .field("offset_blocks", &self.offset_blocks)
            .field("num_blocks", &self.num_blocks)
            .field("status", &self.status)
            .finish()
    }
}

/// Marks the span of a module's submit so completions inside it defer.
/// While any lives, completions on this core are deferred; guards nest.
pub(crate) struct SubmitGuard(());

impl SubmitGuard {
    /// Whether a guard is alive on this core: completions now defer.
    #[inline(always)]
    pub fn inside() -> bool {
        HOT.with(|h| h.in_submit.get()) > 0
    }

    /// Enters a module's submit of an I/O that started at `start`.
    #[inline]
    pub fn enter(start: u64) -> SubmitGuard {
        HOT.with(|h| {
            let n = h.in_submit.get();
            if n == 0 {
                h.submitting_at.set(start);
            }
            h.in_submit.set(n + 1);
        });
        SubmitGuard(())
    }
}

impl Drop for SubmitGuard {
    #[inline]
    fn drop(&mut self) {
        HOT.with(|h| {
            let n = h.in_submit.get().saturating_sub(1);
            h.in_submit.set(n);
            if n == 0 {
                h.submitting_at.set(0);
            }
        });
    }
}

/// The start tick for a submit made now.
#[inline]
pub(crate) fn submit_tick() -> u64 {
    let cached = HOT.with(|h| match h.completing_at.get() {
        0 => h.submitting_at.get(),
        t => t,
    });
    match cached {
        0 => reactor::ticks(),
        t => t,
    }
}

/// Registers this core's poller of deferred completions: once per core.
#[cold]
#[inline(never)]
fn start_poller() {
    CORE.with(|c| {
        let p = reactor::register_poller(drain_deferred);
        *c.poller.borrow_mut() = Some(p);
    });
    HOT.with(|h| h.polled.set(true));
}

/// Completes the I/Os that were deferred before this turn began.
fn drain_deferred() -> PollStatus {
    let n = CORE.with(|c| c.deferred.borrow().len());
    if n == 0 {
        return PollStatus::Idle;
    }
    // Every one of these I/Os finished its copies before it was queued:
    // one fence orders them all (and a later queue gets its own).
    stream::fence();
    for _ in 0..n {
        let Some(io) = CORE.with(|c| c.deferred.borrow_mut().pop_front()) else {
            break;
        };
        finish(io);
    }
    PollStatus::Busy
}

/// Pops the top frame and delivers the I/O to that layer's submitter.
fn finish(mut io: IoBox) {
    // A pass-through's layer ends its part first, while the frame is still
    // on: with nothing else in hand yet, the call costs no spills.
    if let Some(f) = io.frames.top() {
        if f.layer != 0 {
            f.channel.completed(&io, f.layer);
        }
    }
    let Some(frame) = io.frames.pop() else {
        // Nobody is waiting: an I/O completed that was never submitted.
        debug_assert!(false, "completed an I/O with no submitter");
        return;
    };
    // A completion inside another (a stacked bdev's I/O ending as its
    // child does) ends at the same moment: no second clock read.
    let end = match HOT.with(|h| h.completing_at.get()) {
        0 => reactor::ticks(),
        t => t,
    };
    // Taken apart, not passed on whole: a moved frame is copied through
    // the stack with wide loads over the narrow stores that wrote it,
    // which stall (see frames.rs).
    let Frame {
        done,
        ctx,
        channel,
        start,
        offset,
        layer,
    } = frame;
    io.end_tick = end;
    io.start_tick = start;
    io.offset_blocks = offset;
    if io.status() == IoStatus::NoMem {
        let frame = Frame {
            done,
            ctx,
            channel: channel.clone(),
            start,
            offset,
            layer: 0,
        };
        channel.park_nomem(io, frame);
    } else {
        channel.account(&io, layer != 0);
        let outer = HOT.with(|h| h.completing_at.replace(end));
        done.io_done(io, ctx);
        HOT.with(|h| h.completing_at.set(outer));
    }
    channel.after_complete();
}
